//! The transport under hyper: a TCP stream whose reads are capped in size.
//!
//! hyper keeps one `max_buf_size` for both the request head and body reads. We need it above 1 MiB so large
//! header sets are accepted (SPEC §3), but then a fast upload makes hyper read — and hold until the function
//! has consumed it — up to 1 MiB per connection at a time. Capping each read keeps body chunks (and hyper's
//! adaptive read buffer) small, while a large head still accumulates over several reads.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Largest single read from a client connection.
pub const READ_CAP: usize = 64 * 1024;

/// A TCP stream whose reads return at most [`READ_CAP`] bytes.
pub struct CappedReads(pub TcpStream);

impl AsyncRead for CappedReads {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if buf.remaining() <= READ_CAP {
            return Pin::new(&mut self.0).poll_read(cx, buf);
        }
        let window = buf.initialize_unfilled_to(READ_CAP);
        let mut limited = ReadBuf::new(window);
        match Pin::new(&mut self.0).poll_read(cx, &mut limited) {
            Poll::Ready(Ok(())) => {
                let n = limited.filled().len();
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for CappedReads {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
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
        let mut capped = CappedReads(stream);
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
