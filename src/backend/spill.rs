//! Function output held until the process exits (the status depends on the exit code): in memory while
//! small, in an unlinked temporary file past a threshold, so a function that prints gigabytes cannot
//! exhaust the watchdog's memory.

use std::io::SeekFrom;
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

/// Output kept in memory up to this many bytes; past it the whole output moves to a temporary file.
pub const SPILL_THRESHOLD: usize = 256 * 1024;
/// How many leading bytes stay in memory for content sniffing.
const HEAD_BYTES: usize = 512;

/// Collects output, spilling to disk past [`SPILL_THRESHOLD`].
pub struct SpillBuffer {
    memory: BytesMut,
    head: Vec<u8>,
    file: Option<tokio::fs::File>,
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
        file: tokio::fs::File,
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
    pub async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
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
            let dir = self.dir.clone();
            let std_file = tokio::task::spawn_blocking(move || tempfile::tempfile_in(dir))
                .await
                .map_err(std::io::Error::other)??;
            let mut file = tokio::fs::File::from_std(std_file);
            file.write_all(&self.memory).await?;
            self.memory = BytesMut::new();
            self.file = Some(file);
        }
        self.file.as_mut().expect("file was just created").write_all(chunk).await
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
    pub async fn finish(self) -> std::io::Result<Output> {
        match self.file {
            None => Ok(Output::Memory(self.memory.freeze())),
            Some(mut file) => {
                file.flush().await?;
                file.seek(SeekFrom::Start(0)).await?;
                Ok(Output::File { file, len: self.len, head: Bytes::from(self.head) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn small_output_stays_in_memory() {
        let mut buf = SpillBuffer::with_threshold(std::env::temp_dir(), 16);
        buf.write(b"hello ").await.unwrap();
        buf.write(b"world").await.unwrap();
        match buf.finish().await.unwrap() {
            Output::Memory(b) => assert_eq!(&b[..], b"hello world"),
            other => panic!("expected memory, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn large_output_spills_to_a_file_and_reads_back_whole() {
        let mut buf = SpillBuffer::with_threshold(std::env::temp_dir(), 16);
        let mut expected = Vec::new();
        for i in 0..100u8 {
            let chunk = vec![i; 7];
            buf.write(&chunk).await.unwrap();
            expected.extend_from_slice(&chunk);
        }
        let output = buf.finish().await.unwrap();
        assert_eq!(output.len(), 700);
        assert_eq!(output.head(), &expected[..512]);
        let Output::File { mut file, .. } = output else { panic!("expected a file") };
        let mut read = Vec::new();
        file.read_to_end(&mut read).await.unwrap();
        assert_eq!(read, expected);
    }
}
