//! The framed backend (`mode=http`): requests go to long-lived workers as watchdog.v1 frames over a Unix socket
//! (see `proto/README.md`). `codec` frames bytes, `connection` owns one worker's socket and streams, `pool`
//! starts, supervises and leases workers; this module turns one request into one stream and back.

pub mod codec;
pub mod connection;
pub mod pool;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body::Frame as BodyFrame;
use http_body_util::BodyExt;
use tokio::time::{sleep_until, timeout_at, Instant, Sleep};

use self::connection::{Connection, StreamEvent, StreamShared};
use self::pool::{Lease, LeaseError, LeaseNow, WorkerPool, WorkerSpec};
use super::{BodyLimits, Invocation};
use crate::body::{RequestBody, ResponseBody};
use crate::config::Config;
use crate::envelope::pb::watchdog::v1::ErrorKind;
use crate::error::InvokeError;

/// Waiting requests allowed when `max_inflight` is 0.
const DEFAULT_QUEUE: usize = 1024;

/// Runs requests on a pool of long-lived workers.
pub struct FramedBackend {
    pool: Arc<WorkerPool>,
    timeout: Option<Duration>,
    queue_limit: usize,
    /// Keeps the sockets' private directory until the backend goes.
    _socket_dir: tempfile::TempDir,
}

impl FramedBackend {
    /// Starts the workers for `config`.
    pub fn start(
        config: &Config,
        children: Arc<crate::reaper::ChildRegistry>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> std::io::Result<FramedBackend> {
        let socket_dir = socket_dir(&config.tmp_dir)?;
        let spec = WorkerSpec {
            argv: config.fprocess.clone(),
            socket_dir: socket_dir.path().to_path_buf(),
            log_buffer_size: config.log_buffer_size,
            children,
            metrics,
            timing: config.worker_timing,
        };
        let queue = if config.max_inflight > 0 { config.max_inflight } else { DEFAULT_QUEUE };
        let pool = WorkerPool::start(config.workers, queue, spec);
        Ok(FramedBackend { pool, timeout: config.request_timeout(), queue_limit: queue, _socket_dir: socket_dir })
    }

    /// The deadline a request gets.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// `Ok` when a worker is ready, else why not.
    pub fn readiness(&self) -> Result<(), String> {
        self.pool.readiness()
    }

    /// Resolves when the first worker is ready.
    pub async fn first_ready(&self) {
        self.pool.first_ready().await
    }

    /// Stops the workers.
    pub async fn shutdown(&self) {
        self.pool.shutdown(Duration::from_secs(2)).await
    }

    /// Runs one request on a worker.
    ///
    /// When a worker has room the request goes to it now, so the future holds the open stream rather than the
    /// envelope: a few hundred bytes instead of kilobytes, allocated and copied once per request. Otherwise it
    /// waits in the queue first.
    pub fn invoke(
        self: &Arc<Self>,
        invocation: Invocation,
    ) -> BoxFuture<'static, Result<Response<ResponseBody>, InvokeError>> {
        // The nearer of the configured deadline and the caller's own (gRPC's grpc-timeout).
        let timeout = match (self.timeout, invocation.timeout) {
            (Some(ours), Some(theirs)) => Some(ours.min(theirs)),
            (ours, theirs) => ours.or(theirs),
        };
        let deadline = timeout.map(|t| Instant::now() + t);
        match self.pool.lease_now() {
            Ok(LeaseNow::Leased(lease)) => Box::pin(Exchange::open(lease, invocation, deadline, timeout).run()),
            Ok(LeaseNow::Queued(waiting)) => {
                let backend = Arc::clone(self);
                Box::pin(async move {
                    let lease = match backend.pool.wait(waiting, deadline).await {
                        Ok(lease) => lease,
                        Err(error) => return Err(backend.lease_error(error)),
                    };
                    Exchange::open(lease, invocation, deadline, timeout).run().await
                })
            }
            Err(error) => Box::pin(std::future::ready(Err(self.lease_error(error)))),
        }
    }

    fn lease_error(&self, error: LeaseError) -> InvokeError {
        match error {
            LeaseError::QueueFull => InvokeError::QueueFull(self.queue_limit),
            LeaseError::TimedOut(reason) => InvokeError::Unavailable(reason),
        }
    }
}

/// One request's stream on a worker, from its RequestHead to the response head.
struct Exchange {
    lease: Lease,
    conn: Arc<Connection>,
    id: u64,
    shared: Arc<StreamShared>,
    /// Cancels the stream if the exchange is dropped before the response head.
    guard: CancelOnDrop,
    /// The request body's pump, polled beside the wait for the head.
    pump: Pin<Box<dyn Future<Output = ()> + Send>>,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    /// Room the response's header map keeps beyond the worker's headers: an event's reply gets its `ce-`
    /// headers added, and a map that grows is allocated and filled twice.
    header_room: usize,
    /// The request's header map, emptied, to hold the response's headers. hyper hands a response's map back as
    /// the connection's next request's, so passing the same one round saves allocating two maps per request,
    /// and the growing of the request's when it has more headers than the last response had.
    headers: HeaderMap,
}

impl Exchange {
    /// Sends the request's head on a new stream and readies its body's pump.
    fn open(lease: Lease, invocation: Invocation, deadline: Option<Instant>, timeout: Option<Duration>) -> Exchange {
        let conn = Arc::clone(&lease.conn);
        let header_room =
            if invocation.envelope.cloudevent().is_some() { crate::cloudevent::USUAL_BINARY_HEADER_COUNT } else { 0 };
        let (id, shared) = conn.open(invocation.envelope);
        let guard = CancelOnDrop { conn: Arc::clone(&conn), id, armed: true };
        let pump = Box::pin(pump_body(Arc::clone(&conn), id, Arc::clone(&shared), invocation.body, invocation.limits));
        let mut headers = invocation.head.headers;
        headers.clear();
        Exchange { lease, conn, id, shared, guard, pump, deadline, timeout, header_room, headers }
    }

    /// Waits for the response head and returns the response, its body still streaming.
    async fn run(self) -> Result<Response<ResponseBody>, InvokeError> {
        let Exchange { lease, conn, id, shared, mut guard, mut pump, deadline, timeout, header_room, mut headers } =
            self;
        // The body is pumped from this task while the head is awaited: a small body is sent without a task of
        // its own and the hops between tasks that would cost. Whatever is left once the head arrives (a worker
        // that answers before reading everything) goes on in a task, beside the response.
        let mut pumping = true;
        let next_head = async {
            loop {
                tokio::select! {
                    biased;
                    event = shared.next_event() => break event,
                    () = &mut pump, if pumping => pumping = false,
                }
            }
        };
        // One timer for the whole exchange: the wait for the head and then the body share it.
        let mut deadline = deadline.map(|d| Box::pin(sleep_until(d)));
        let head = match deadline.as_mut() {
            Some(deadline) => tokio::select! {
                biased;
                event = next_head => event,
                () = deadline.as_mut() => return Err(InvokeError::DeadlineExceeded(timeout.unwrap_or_default())),
            },
            None => next_head.await,
        };
        if pumping {
            tokio::spawn(pump);
        }
        let head = match head {
            StreamEvent::Head(head) => *head,
            StreamEvent::Error(kind, message) => {
                guard.armed = false;
                return Err(function_error(kind, message));
            }
            StreamEvent::Gone(reason) => {
                guard.armed = false;
                return Err(InvokeError::WorkerFailed(reason));
            }
            StreamEvent::Aborted(error) => return Err(*error),
            // The connection checks that a head comes first; this is only a guard.
            StreamEvent::Data(_) | StreamEvent::End(_) => {
                return Err(InvokeError::WorkerFailed("the stream ended without a response".into()))
            }
        };
        let status = match head.status {
            0 => StatusCode::OK,
            code => StatusCode::from_u16(code as u16)
                .map_err(|_| InvokeError::WorkerFailed(format!("invalid status code {code}")))?,
        };
        headers.reserve(head.headers.len() + header_room);
        for header in head.headers {
            // The values are slices of the frame's buffer: taken as they are, without a copy.
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(header.name.as_bytes()), HeaderValue::from_maybe_shared(header.value))
            {
                headers.append(name, value);
            }
        }
        guard.armed = false;
        // A response that arrived whole (the usual small answer: head, data and end in one read) goes out with a
        // Content-Length, as Go's server sends a short answer, instead of chunked.
        let framing_given = headers.contains_key(CONTENT_LENGTH) || headers.contains_key(TRANSFER_ENCODING);
        let remaining = if head.trailers.is_empty() && !framing_given { shared.complete_len() } else { None };
        let body = FramedBody {
            conn,
            shared,
            id,
            remaining,
            consumed: 0,
            deadline,
            timeout: timeout.unwrap_or_default(),
            trailers: head.trailers,
            finished: false,
            _lease: lease,
        };
        let mut response = Response::new(body.boxed_unsync());
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        if let Some(reply) = head.reply {
            response.extensions_mut().insert(super::ReplyEvent(reply));
        }
        Ok(response)
    }
}

/// A private directory for the workers' sockets: under TMPDIR, or /tmp when that path would be too long for a
/// Unix socket (107 bytes).
fn socket_dir(tmp: &std::path::Path) -> std::io::Result<tempfile::TempDir> {
    const LONGEST_NAME: usize = "/watchdog-XXXXXX/worker-99999.sock".len();
    let base = if tmp.as_os_str().len() + LONGEST_NAME <= 107 { tmp } else { std::path::Path::new("/tmp") };
    std::fs::create_dir_all(base)?;
    tempfile::Builder::new().prefix("watchdog-").tempdir_in(base)
}

/// Trailers from the worker (ResponseHead's and End's together) as an HTTP trailers map; invalid entries are
/// dropped, as invalid response headers are.
fn trailer_map(trailers: &[crate::envelope::Header]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for trailer in trailers {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(trailer.name.as_bytes()), HeaderValue::from_bytes(&trailer.value))
        {
            map.append(name, value);
        }
    }
    map
}

fn function_error(kind: ErrorKind, message: String) -> InvokeError {
    match kind {
        ErrorKind::Permanent => InvokeError::Permanent(message),
        ErrorKind::Retryable => InvokeError::Retryable(message),
        _ => InvokeError::FunctionInternal(message),
    }
}

/// Sends Cancel for a stream abandoned before its response head (client gone, deadline, failure).
struct CancelOnDrop {
    conn: Arc<Connection>,
    id: u64,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.conn.cancel(self.id, "request abandoned");
        }
    }
}

/// Streams the request body to the worker within the stream's credit; enforces the body limits.
async fn pump_body(
    conn: Arc<Connection>,
    id: u64,
    shared: Arc<StreamShared>,
    mut body: RequestBody,
    limits: BodyLimits,
) {
    let mut received: u64 = 0;
    loop {
        if shared.is_closed() {
            return;
        }
        let next = match limits.read_deadline {
            Some(deadline) => match timeout_at(deadline, body.frame()).await {
                Ok(frame) => frame,
                Err(_) => {
                    shared.abort(InvokeError::ReadTimeout(limits.read_timeout));
                    return;
                }
            },
            None => body.frame().await,
        };
        let Some(frame) = next else { break };
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                // Usually the client is gone, and its response with it; a gRPC call whose request stream failed
                // (an oversized message) is still there and gets that failure's status.
                conn.cancel(id, "client request body failed");
                shared.abort(InvokeError::from_body_error(error));
                return;
            }
        };
        let Ok(mut data) = frame.into_data() else { continue };
        received += data.len() as u64;
        if limits.max_bytes > 0 && received > limits.max_bytes {
            shared.abort(InvokeError::BodyTooLarge { limit: limits.max_bytes });
            return;
        }
        while !data.is_empty() {
            let want = data.len().min(conn.limits.max_chunk);
            let Some(granted) = shared.take_credit(want).await else { return };
            conn.send_data(id, data.split_to(granted));
        }
    }
    if !shared.is_closed() {
        conn.send_end(id);
    }
}

/// The response body as the worker streams it; returns credit as the client consumes it, and cancels the
/// stream if dropped before the end.
struct FramedBody {
    conn: Arc<Connection>,
    shared: Arc<StreamShared>,
    id: u64,
    /// Body bytes still to come, when the whole response had arrived with its head.
    remaining: Option<u64>,
    consumed: usize,
    deadline: Option<Pin<Box<Sleep>>>,
    /// The deadline's length, for the error.
    timeout: Duration,
    /// Trailers the ResponseHead carried; sent with End's at the end of the body.
    trailers: Vec<crate::envelope::Header>,
    finished: bool,
    _lease: Lease,
}

impl http_body::Body for FramedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                this.finished = true;
                this.conn.cancel(this.id, "deadline exceeded");
                return Poll::Ready(Some(Err(std::io::Error::other(InvokeError::DeadlineExceeded(this.timeout)))));
            }
        }
        match this.shared.poll_event(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(StreamEvent::Data(data)) => {
                if let Some(remaining) = this.remaining.as_mut() {
                    *remaining = remaining.saturating_sub(data.len() as u64);
                }
                this.consumed += data.len();
                let half = (this.conn.limits.initial_window / 2) as usize;
                if this.consumed >= half {
                    this.conn.return_credit(this.id, &this.shared, this.consumed);
                    this.consumed = 0;
                }
                Poll::Ready(Some(Ok(BodyFrame::data(data))))
            }
            Poll::Ready(StreamEvent::End(trailers)) => {
                this.finished = true;
                // gRPC status and metadata from the worker end the body as an HTTP trailers frame.
                let mut all = std::mem::take(&mut this.trailers);
                all.extend(trailers);
                if all.is_empty() {
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Ok(BodyFrame::trailers(trailer_map(&all)))))
            }
            // Failures travel typed inside the io::Error, so the gRPC layer can turn them into a status.
            Poll::Ready(StreamEvent::Error(kind, message)) => {
                this.finished = true;
                let error = function_error(kind, format!("the function failed mid-response: {message}"));
                Poll::Ready(Some(Err(std::io::Error::other(error))))
            }
            Poll::Ready(StreamEvent::Gone(reason)) => {
                this.finished = true;
                Poll::Ready(Some(Err(std::io::Error::other(InvokeError::WorkerFailed(reason)))))
            }
            Poll::Ready(StreamEvent::Aborted(error)) => {
                this.finished = true;
                this.conn.cancel(this.id, "request aborted");
                Poll::Ready(Some(Err(std::io::Error::other(*error))))
            }
            Poll::Ready(StreamEvent::Head(_)) => {
                this.finished = true;
                Poll::Ready(Some(Err(std::io::Error::other("second response head"))))
            }
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.remaining.map_or_else(http_body::SizeHint::default, http_body::SizeHint::with_exact)
    }
}

impl Drop for FramedBody {
    fn drop(&mut self) {
        if !self.finished {
            self.conn.cancel(self.id, "client disconnected");
        }
    }
}

#[cfg(test)]
mod tests {
    /// The size of the future an async fn of one argument returns, known without calling it.
    fn future_size<A, F: std::future::Future>(_: fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// What each request allocates for its exchange with the worker stays well within glibc's per-thread cache
    /// of small blocks (1032 bytes): an invocation (750 bytes) held across an await would not fit, and with
    /// the request head and envelope held that way it was kilobytes.
    #[test]
    fn a_requests_exchange_future_stays_small() {
        const LIMIT: usize = 640;
        let size = future_size(super::Exchange::run);
        assert!(size <= LIMIT, "Exchange::run's future is {size} bytes");
        let size = future_size(crate::ingress::cloudevents::Delivery::finish);
        assert!(size <= LIMIT, "Delivery::finish's future is {size} bytes");
        let invocation = std::mem::size_of::<super::Invocation>();
        assert!(invocation > LIMIT, "the limit no longer catches a held invocation ({invocation} bytes)");
    }
}
