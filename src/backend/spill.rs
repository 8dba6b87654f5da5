//! Function output held until the process exits (the status depends on the exit code): in memory while
//! small, in an unlinked temporary file past a threshold, so a function that prints gigabytes cannot
//! exhaust the watchdog's memory.
//!
//! The file is written and read in place on the async worker rather than through tokio's blocking pool: each
//! call moves at most 64 KiB to or from the page cache, which takes microseconds, while a hop to the blocking
//! pool per chunk cost more CPU than the copy itself and grew dozens of threads under load.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};

/// Output kept in memory up to this many bytes; past it the whole output moves to a temporary file.
pub const SPILL_THRESHOLD: usize = 256 * 1024;
/// How many leading bytes stay in memory for content sniffing.
const HEAD_BYTES: usize = 512;

/// Collects output, spilling to disk past [`SPILL_THRESHOLD`].
pub struct SpillBuffer {
    memory: BytesMut,
    head: Vec<u8>,
    file: Option<File>,
    len: u64,
    dir: PathBuf,
    threshold: usize,
}

/// Collected output, ready to become a response body.
#[derive(Debug)]
pub enum Output {
    /// Small output, in memory.
    Memory(Bytes),
    /// Large output in an unlinked temporary file, positioned at its start.
    File {
        /// The file, read from its start.
        file: File,
        /// Its length in bytes.
        len: u64,
        /// Its first bytes, for content sniffing.
        head: Bytes,
    },
}

impl Output {
    /// Total length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Output::Memory(b) => b.len() as u64,
            Output::File { len, .. } => *len,
        }
    }

    /// Whether there is no output at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first bytes, for content sniffing.
    pub fn head(&self) -> &[u8] {
        match self {
            Output::Memory(b) => &b[..b.len().min(HEAD_BYTES)],
            Output::File { head, .. } => head,
        }
    }
}

impl SpillBuffer {
    /// An empty buffer whose temporary file, if needed, goes in `dir`.
    pub fn new(dir: PathBuf) -> SpillBuffer {
        SpillBuffer::with_threshold(dir, SPILL_THRESHOLD)
    }

    /// An empty buffer with a custom spill threshold.
    pub fn with_threshold(dir: PathBuf, threshold: usize) -> SpillBuffer {
        SpillBuffer { memory: BytesMut::new(), head: Vec::new(), file: None, len: 0, dir, threshold }
    }

    /// Appends `chunk`.
    pub fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        if self.head.len() < HEAD_BYTES {
            let take = (HEAD_BYTES - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
        }
        self.len += chunk.len() as u64;
        if self.file.is_none() && self.memory.len() + chunk.len() <= self.threshold {
            self.memory.extend_from_slice(chunk);
            return Ok(());
        }
        if self.file.is_none() {
            let mut file = tempfile::tempfile_in(&self.dir)?;
            file.write_all(&self.memory)?;
            self.memory = BytesMut::new();
            self.file = Some(file);
        }
        self.file.as_mut().expect("file was just created").write_all(chunk)
    }

    /// Bytes collected so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was collected.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The collected output, ready to read from its start.
    pub fn finish(self) -> std::io::Result<Output> {
        match self.file {
            None => Ok(Output::Memory(self.memory.freeze())),
            Some(mut file) => {
                file.seek(SeekFrom::Start(0))?;
                Ok(Output::File { file, len: self.len, head: Bytes::from(self.head) })
            }
        }
    }
}

/// Reads a spilled output file in chunks, in place (see the module comment).
pub struct FileChunks {
    file: File,
    remaining: u64,
}

impl FileChunks {
    /// Chunks of `file`, `len` bytes from its current position.
    pub fn new(file: File, len: u64) -> FileChunks {
        FileChunks { file, remaining: len }
    }
}

impl Iterator for FileChunks {
    type Item = std::io::Result<Bytes>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        let size = self.remaining.min(64 * 1024) as usize;
        let mut chunk = vec![0u8; size];
        match self.file.read_exact(&mut chunk) {
            Ok(()) => {
                self.remaining -= size as u64;
                Some(Ok(Bytes::from(chunk)))
            }
            Err(e) => {
                self.remaining = 0;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_output_stays_in_memory() {
        let mut buf = SpillBuffer::with_threshold(std::env::temp_dir(), 16);
        buf.write(b"hello ").unwrap();
        buf.write(b"world").unwrap();
        match buf.finish().unwrap() {
            Output::Memory(b) => assert_eq!(&b[..], b"hello world"),
            other => panic!("expected memory, got {other:?}"),
        }
    }

    #[test]
    fn large_output_spills_to_a_file_and_reads_back_whole() {
        let mut buf = SpillBuffer::with_threshold(std::env::temp_dir(), 16);
        let mut expected = Vec::new();
        for i in 0..100u32 {
            let chunk = vec![i as u8; 1000];
            buf.write(&chunk).unwrap();
            expected.extend_from_slice(&chunk);
        }
        let output = buf.finish().unwrap();
        assert_eq!(output.len(), 100_000);
        assert_eq!(output.head(), &expected[..512]);
        let Output::File { file, len, .. } = output else { panic!("expected a file") };
        let read: Vec<u8> = FileChunks::new(file, len).flat_map(|c| c.unwrap().to_vec()).collect();
        assert_eq!(read, expected);
    }
}
