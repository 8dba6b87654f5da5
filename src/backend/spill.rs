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
use tokio::io::{AsyncRead, AsyncReadExt};

/// Output kept in memory up to this many bytes; past it the whole output moves to a temporary file.
pub const SPILL_THRESHOLD: usize = 256 * 1024;
/// How many leading bytes stay in memory for content sniffing.
const HEAD_BYTES: usize = 512;
/// Room made when a read needs it: most outputs fit in one read, and the buffer is never zeroed.
const READ_ROOM: usize = 16 * 1024;
/// Below this much spare room the buffer grows before the next read (growing copies what it holds, so a read
/// that finds the end of the output must not trigger it).
const MIN_ROOM: usize = 4 * 1024;
/// The largest single read once the output is on disk.
const FILE_READ: usize = 64 * 1024;

/// Collects output, spilling to disk past [`SPILL_THRESHOLD`].
pub struct SpillBuffer {
    memory: BytesMut,
    /// The first bytes, copied out of `memory` when it moves to the file.
    head: Vec<u8>,
    /// The last read, once the output is on disk.
    scratch: BytesMut,
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
        SpillBuffer {
            memory: BytesMut::new(),
            head: Vec::new(),
            scratch: BytesMut::new(),
            file: None,
            len: 0,
            dir,
            threshold,
        }
    }

    /// Reads once from `reader`, straight into the buffer while it is in memory; returns the bytes read, none
    /// at the end of input.
    pub async fn read_from<R: AsyncRead + Unpin>(&mut self, reader: &mut R) -> std::io::Result<&[u8]> {
        if self.file.is_none() {
            if self.memory.capacity() - self.memory.len() < MIN_ROOM {
                self.memory.reserve(READ_ROOM);
            }
            let start = self.memory.len();
            let n = reader.read_buf(&mut self.memory).await?;
            self.len += n as u64;
            if self.memory.len() <= self.threshold {
                return Ok(&self.memory[start..]);
            }
            let (file, held) = self.new_file()?;
            self.file = Some(file);
            // The read that crossed the threshold stays visible to the caller; the big buffer goes.
            self.scratch = BytesMut::from(&held[start..]);
            return Ok(&self.scratch);
        }
        self.scratch.clear();
        self.scratch.reserve(FILE_READ);
        let n = reader.read_buf(&mut self.scratch).await?;
        self.len += n as u64;
        self.file.as_mut().expect("checked above").write_all(&self.scratch)?;
        Ok(&self.scratch)
    }

    /// A temporary file holding what `memory` held, which is handed back (its head kept for sniffing).
    fn new_file(&mut self) -> std::io::Result<(File, BytesMut)> {
        let mut file = tempfile::tempfile_in(&self.dir)?;
        file.write_all(&self.memory)?;
        self.head = self.memory[..self.memory.len().min(HEAD_BYTES)].to_vec();
        Ok((file, std::mem::take(&mut self.memory)))
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

    /// Reads `input` through `read_from` in pieces of at most `piece` bytes; returns what each read gave back.
    async fn read_all(buf: &mut SpillBuffer, input: &[u8], piece: usize) -> Vec<Vec<u8>> {
        let (mut tx, mut rx) = tokio::io::duplex(piece);
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            tx.write_all(&input).await.unwrap();
        });
        let mut reads = Vec::new();
        loop {
            let chunk = buf.read_from(&mut rx).await.unwrap().to_vec();
            if chunk.is_empty() {
                break;
            }
            reads.push(chunk);
        }
        writer.await.unwrap();
        reads
    }

    #[tokio::test]
    async fn reads_in_place_and_spills_past_the_threshold() {
        let input: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut buf = SpillBuffer::with_threshold(std::env::temp_dir(), 1000);
        let reads = read_all(&mut buf, &input, 300).await;
        // Every read is handed back, also the one that crossed the threshold and those after it.
        assert_eq!(reads.concat(), input);
        assert_eq!(buf.len(), input.len() as u64);
        let output = buf.finish().unwrap();
        assert_eq!(output.head(), &input[..512]);
        let Output::File { file, len, .. } = output else { panic!("expected a file") };
        let read: Vec<u8> = FileChunks::new(file, len).flat_map(|c| c.unwrap().to_vec()).collect();
        assert_eq!(read, input);

        let mut small = SpillBuffer::with_threshold(std::env::temp_dir(), 1000);
        assert_eq!(read_all(&mut small, b"hello", 300).await.concat(), b"hello");
        match small.finish().unwrap() {
            Output::Memory(b) => assert_eq!(&b[..], b"hello"),
            other => panic!("expected memory, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_first_read_past_the_threshold_keeps_its_head_for_sniffing() {
        // The threshold is below the sniffing head and one read crosses it: the head still comes whole.
        let mut buf = SpillBuffer::with_threshold(std::env::temp_dir(), 16);
        let expected: Vec<u8> = (0..100u32).flat_map(|i| vec![i as u8; 1000]).collect();
        assert_eq!(read_all(&mut buf, &expected, 1000).await.concat(), expected);
        let output = buf.finish().unwrap();
        assert_eq!(output.len(), 100_000);
        assert_eq!(output.head(), &expected[..512]);
        let Output::File { file, len, .. } = output else { panic!("expected a file") };
        let read: Vec<u8> = FileChunks::new(file, len).flat_map(|c| c.unwrap().to_vec()).collect();
        assert_eq!(read, expected);
    }
}
