//! The transport under hyper: a TCP stream whose reads are capped in size.
//!
//! hyper keeps one `max_buf_size` for both the request head and body reads. We need it above 1 MiB so large
//! header sets are accepted (SPEC §3), but then a fast upload makes hyper read — and hold until the function
//! has consumed it — up to 1 MiB per connection at a time. Capping each read keeps body chunks (and hyper's
//! adaptive read buffer) small, while a large head still accumulates over several reads.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BufMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Largest single read from a client connection, by default.
pub const READ_CAP: usize = 64 * 1024;

/// The read cap in the fork modes. There a body chunk waits in memory until the function's stdin pipe takes it,
/// for each of possibly many concurrent requests; half the default kept 32 concurrent 1 MiB uploads in streaming
/// mode at about 17 MiB peak instead of 25 (http mode's frames have their own flow control, and bigger chunks
/// mean fewer of them).
pub const FORK_READ_CAP: usize = 32 * 1024;

/// A TCP stream whose reads return at most `cap` bytes.
pub struct CappedReads {
    /// The client connection.
    pub stream: TcpStream,
    /// Largest single read.
    pub cap: usize,
}

impl AsyncRead for CappedReads {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() <= this.cap {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        // Read straight into the caller's uninitialised spare room, limited to `cap`: a window carved out with
        // `initialize_unfilled_to` would zero up to `cap` bytes before every read (each 1 MiB upload paid a
        // 1 MiB memset, 5 % of the watchdog's CPU samples in http mode with 1 MiB bodies).
        loop {
            std::task::ready!(this.stream.poll_read_ready(cx))?;
            match this.stream.try_read_buf(&mut BufMut::limit(&mut *buf, this.cap)) {
                Ok(_) => return Poll::Ready(Ok(())),
                // Readiness was stale; `try_read_buf` cleared it, so the next poll registers the waker.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for CappedReads {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_are_capped_and_data_is_intact() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let data: Vec<u8> = (0..(READ_CAP * 3 + 17) as u32).map(|i| i as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&sent).await.unwrap();
        });
        let (stream, _) = listener.accept().await.unwrap();
        writer.await.unwrap();
        let mut capped = CappedReads { stream, cap: READ_CAP };
        let mut received = Vec::new();
        let mut buf = vec![0u8; READ_CAP * 4];
        loop {
            let n = capped.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            assert!(n <= READ_CAP, "read of {n} bytes");
            received.extend_from_slice(&buf[..n]);
        }
        assert_eq!(received, data);
    }
}
