//! Request and response body types shared by the ingress and the backends.

use bytes::Bytes;
use futures_util::{stream, StreamExt, TryStreamExt};
use http_body::Frame;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, StreamBody};

use crate::backend::spill::{FileChunks, Output};

/// Any error from a request body (a client reset, a protocol error).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body as a backend sees it: a stream of chunks, whatever the ingress.
pub type RequestBody = UnsyncBoxBody<Bytes, BoxError>;

/// A response body: in memory, from a file, or streamed as a function writes it.
pub type ResponseBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// A response body holding `data`.
pub fn full(data: impl Into<Bytes>) -> ResponseBody {
    Full::new(data.into()).map_err(|never| match never {}).boxed_unsync()
}

/// An empty response body.
pub fn empty() -> ResponseBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A response body of `prefix` followed by collected function output.
pub fn from_output(prefix: Option<Bytes>, output: Output) -> ResponseBody {
    let prefix = prefix.filter(|p| !p.is_empty());
    match output {
        Output::Memory(data) => match prefix {
            None => full(data),
            // Joined (the output is small, under the spill threshold), so the length is known and goes out as a
            // Content-Length, as Go's server sends it for a short answer.
            Some(prefix) => {
                let mut joined = bytes::BytesMut::with_capacity(prefix.len() + data.len());
                joined.extend_from_slice(&prefix);
                joined.extend_from_slice(&data);
                full(joined.freeze())
            }
        },
        Output::File { file, len, .. } => {
            let head = stream::iter(prefix.map(|p| Ok::<_, std::io::Error>(Frame::data(p))));
            let rest = stream::iter(FileChunks::new(file, len)).map_ok(Frame::data);
            StreamBody::new(head.chain(rest)).boxed_unsync()
        }
    }
}

/// A response body fed chunk by chunk through a channel; an `Err` item aborts the response.
pub fn from_channel(rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>) -> ResponseBody {
    let chunks = tokio_stream_from(rx).map_ok(Frame::data);
    StreamBody::new(chunks).boxed_unsync()
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A request body from bytes, for tests and internal probes.
pub fn request_from(data: impl Into<Bytes>) -> RequestBody {
    Full::new(data.into()).map_err(|never| match never {}).boxed_unsync()
}

/// A response body that calls `on_end` with the bytes sent once the body is finished or dropped, so metrics
/// and the access log cover streamed responses too, and so a concurrency slot is held until the end.
pub struct TrackedBody<F: FnOnce(u64) + Send> {
    inner: ResponseBody,
    sent: u64,
    on_end: Option<F>,
}

impl<F: FnOnce(u64) + Send> TrackedBody<F> {
    /// Wraps `inner`.
    pub fn new(inner: ResponseBody, on_end: F) -> TrackedBody<F> {
        TrackedBody { inner, sent: 0, on_end: Some(on_end) }
    }
}

impl<F: FnOnce(u64) + Send + Unpin> http_body::Body for TrackedBody<F> {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
            }
            std::task::Poll::Ready(_) => {
                if let Some(on_end) = this.on_end.take() {
                    on_end(this.sent);
                }
            }
            std::task::Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<F: FnOnce(u64) + Send> Drop for TrackedBody<F> {
    fn drop(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            on_end(self.sent);
        }
    }
}
