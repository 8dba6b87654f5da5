//! The connection to the watchdog: handshake, the reading task, the single writer task and per-stream state.
//!
//! - One **reader** (the task running [`Worker::serve`]) decodes every complete frame in its read buffer before
//!   reading again, answers Ping itself, routes body chunks, credit and cancellation to streams, and spawns one
//!   tokio task per request.
//! - One **writer** task owns the write half. Everybody else sends it already-encoded frames over an mpsc channel;
//!   it takes everything queued (`recv_many`) and writes the batch with one vectored write (small frames are
//!   coalesced into one buffer, large payloads are written from where they are).
//! - A request task runs the handler, then encodes its ResponseHead, Data and End into a local buffer that it
//!   hands to the writer in one piece (a small response is one channel message and part of one write). A large
//!   chunk is not copied: its Data frame goes out as a small encoded head followed by the chunk itself.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{FutureExt, StreamExt};
use http::HeaderMap;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::codec::FramedRead;

use crate::codec::{
    encode_data_head, encode_frame, CodecError, FrameCodec, DEFAULT_INITIAL_WINDOW_BYTES, DEFAULT_MAX_CHUNK_BYTES,
    DEFAULT_MAX_FRAME_BYTES, HANDSHAKE_MAX_FRAME_BYTES,
};
use crate::grpc::{put_prefix, status_trailers, Code, ResponseMode};
use crate::proto::io::cloudevents::v1 as ce;
use crate::proto::watchdog::v1::{
    frame::Kind, Data, End, Error as ErrorFrame, ErrorKind, Frame, Header, Hello, InitError, Pong, Ready, RequestHead,
    ResponseHead, WindowUpdate,
};
use crate::reply::{HandlerError, Reply, ResponseBody};
use crate::request::{Body, BodyInner, Request};
use crate::{Error, Handler, Options};

/// The protocol this SDK speaks.
pub const PROTOCOL: &str = "watchdog.v1";
/// The SDK name sent in Hello.
pub const SDK_NAME: &str = "watchdog-sdk-rust";
/// The SDK version sent in Hello.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

// A request task hands its buffer to the writer once it holds this much.
const FLUSH_BYTES: usize = 256 * 1024;
// Read buffer of the connection.
const READ_BUFFER_BYTES: usize = 256 * 1024;
// Messages the writer takes from its queue per batch.
const WRITE_BATCH: usize = 1024;
// Pieces below this size are copied into one buffer by the writer; larger ones are written in place.
const COALESCE_BELOW: usize = 4096;
// A chunk at least this large is sent without copying it into its frame.
const ZERO_COPY_CHUNK: usize = 2048;
// Slices per vectored write.
const MAX_IOVECS: usize = 64;
// Longest Error message sent (a frame must stay under max_frame_bytes).
const MAX_ERROR_MESSAGE_BYTES: usize = 16 * 1024;

macro_rules! debug {
    ($($arg:tt)*) => {{
        #[cfg(feature = "tracing")]
        tracing::debug!($($arg)*);
    }};
}

type Reader = FramedRead<OwnedReadHalf, FrameCodec>;

/// What the connection negotiated; shared by every task.
pub(crate) struct Conn {
    out: mpsc::UnboundedSender<Out>,
    pub(crate) max_frame: usize,
    pub(crate) max_chunk: usize,
    pub(crate) window: u32,
    /// A body returns credit once this many bytes have been consumed (half the window).
    pub(crate) update_threshold: u32,
}

impl Conn {
    fn send(&self, frame: &Frame) {
        let mut buf = BytesMut::new();
        if encode_frame(frame, &mut buf, self.max_frame).is_ok() {
            let _ = self.out.send(Out::One(buf.freeze()));
        }
    }

    fn send_encoded(&self, out: Out) {
        let _ = self.out.send(out);
    }

    pub(crate) fn window_update(&self, stream_id: u64, increment: u32) {
        self.send(&Frame { stream_id, kind: Some(Kind::WindowUpdate(WindowUpdate { increment })) });
    }

    /// Tells the writer to write what is queued before this, then close the socket's write side.
    fn close(&self) {
        let _ = self.out.send(Out::Close);
    }
}

/// A message for the writer: whole frames, in order; the pieces of one message are never interleaved with others.
enum Out {
    One(Bytes),
    Many(Vec<Bytes>),
    /// Write what came before, then close the write side.
    Close,
}

/// Per-stream state shared by the reader, the request's body and its responder.
pub(crate) struct StreamState {
    pub(crate) id: u64,
    // Bytes we may still send on this stream.
    send_credit: AtomicI64,
    send_credit_added: Notify,
    // Bytes the watchdog may still send on this stream.
    pub(crate) recv_credit: AtomicI64,
    pub(crate) cancelled: AtomicBool,
    // Request body chunks on their way from the reader to the handler's `Body`.
    body: Mutex<BodyQueue>,
}

#[derive(Default)]
pub(crate) struct BodyQueue {
    pub(crate) chunks: VecDeque<Bytes>,
    /// End arrived.
    pub(crate) end: bool,
    /// The stream went away (cancelled, connection lost) before End.
    pub(crate) aborted: bool,
    /// The handler dropped the body.
    pub(crate) dropped: bool,
    pub(crate) waker: Option<Waker>,
}

impl StreamState {
    fn new(id: u64, window: u32) -> Self {
        StreamState {
            id,
            send_credit: AtomicI64::new(i64::from(window)),
            send_credit_added: Notify::new(),
            recv_credit: AtomicI64::new(i64::from(window)),
            cancelled: AtomicBool::new(false),
            body: Mutex::new(BodyQueue::default()),
        }
    }

    pub(crate) fn body(&self) -> MutexGuard<'_, BodyQueue> {
        self.body.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a request body chunk for the handler; gives it back if the handler dropped the body.
    fn push_body(&self, chunk: Bytes) -> Result<(), Bytes> {
        let waker = {
            let mut q = self.body();
            if q.dropped {
                return Err(chunk);
            }
            q.chunks.push_back(chunk);
            q.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    fn finish_body(&self, end: bool) {
        let waker = {
            let mut q = self.body();
            if end {
                q.end = true;
            } else {
                q.aborted = true;
            }
            q.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Takes up to `want` bytes of send credit, if there is any. Only the stream's responder takes credit, so
    /// the credit read cannot shrink before `fetch_sub`.
    fn take_credit(&self, want: usize) -> Option<usize> {
        let credit = self.send_credit.load(Ordering::Acquire);
        if credit <= 0 {
            return None;
        }
        let n = want.min(credit as usize);
        self.send_credit.fetch_sub(n as i64, Ordering::AcqRel);
        Some(n)
    }

    async fn wait_credit(&self, want: usize) -> usize {
        loop {
            if let Some(n) = self.take_credit(want) {
                return n;
            }
            // `notify_one` stores a permit when nobody waits, so an update between the check and here is not lost.
            self.send_credit_added.notified().await;
        }
    }

    fn add_credit(&self, n: u32) {
        self.send_credit.fetch_add(i64::from(n), Ordering::AcqRel);
        self.send_credit_added.notify_one();
    }
}

/// A connected worker that has completed the Hello/HelloAck handshake but has not sent Ready yet.
///
/// Use it to load the function after connecting (the watchdog's pings are answered meanwhile), then call
/// [`Worker::serve`], or report a failed initialisation with [`Worker::init_error`]. [`crate::serve`] does
/// `Worker::connect` then `serve` in one step.
pub struct Worker {
    conn: Arc<Conn>,
    worker_id: u32,
    idle: Option<IdleTask>,
    writer: Option<JoinHandle<io::Result<()>>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("worker_id", &self.worker_id).finish_non_exhaustive()
    }
}

// The pre-Ready task and the switch that stops it.
type IdleTask = (oneshot::Sender<()>, JoinHandle<Result<Idle, Error>>);

// What happened on the connection before Ready.
struct Idle {
    reader: Reader,
    drained: bool,
    shutdown: bool,
}

impl Worker {
    /// Connects to the watchdog at `$WATCHDOG_SOCKET` and performs the handshake.
    pub async fn connect(options: Options) -> Result<Worker, Error> {
        if let Some(p) = std::env::var_os("WATCHDOG_PROTOCOL") {
            if p != PROTOCOL {
                return Err(Error::Protocol(format!("WATCHDOG_PROTOCOL is {p:?}, this SDK speaks {PROTOCOL:?}")));
            }
        }
        let path = std::env::var_os("WATCHDOG_SOCKET").ok_or(Error::NoSocket)?;
        Worker::connect_at(path, options).await
    }

    /// Connects to the watchdog listening at `path` and performs the handshake.
    pub async fn connect_at(path: impl AsRef<Path>, options: Options) -> Result<Worker, Error> {
        let stream = UnixStream::connect(path).await?;
        let (read_half, mut write_half) = stream.into_split();

        let hello = Frame {
            stream_id: 0,
            kind: Some(Kind::Hello(Hello {
                protocol: PROTOCOL.to_owned(),
                sdk_name: SDK_NAME.to_owned(),
                sdk_version: SDK_VERSION.to_owned(),
                max_concurrency: options.concurrency,
            })),
        };
        let mut buf = BytesMut::new();
        encode_frame(&hello, &mut buf, HANDSHAKE_MAX_FRAME_BYTES)?;
        write_half.write_all(&buf).await?;

        let mut reader =
            FramedRead::with_capacity(read_half, FrameCodec::new(HANDSHAKE_MAX_FRAME_BYTES), READ_BUFFER_BYTES);
        let ack = match reader.next().await {
            Some(Ok(Frame { stream_id: 0, kind: Some(Kind::HelloAck(ack)) })) => ack,
            Some(Ok(frame)) => {
                return Err(Error::Protocol(format!("expected HelloAck, got {}", describe(&frame))));
            }
            Some(Err(e)) => return Err(e.into()),
            None => return Err(Error::Disconnected),
        };
        let max_frame = match ack.max_frame_bytes {
            0 => DEFAULT_MAX_FRAME_BYTES,
            n => n as usize,
        };
        // A Data frame adds at most 19 bytes of protobuf to its payload; keep it within max_frame_bytes.
        let max_chunk = match ack.max_chunk_bytes {
            0 => DEFAULT_MAX_CHUNK_BYTES,
            n => n as usize,
        }
        .min(max_frame.saturating_sub(32))
        .max(1);
        let window = match ack.initial_window_bytes {
            0 => DEFAULT_INITIAL_WINDOW_BYTES,
            n => n,
        };
        reader.decoder_mut().set_max_frame_bytes(max_frame);
        debug!(worker_id = ack.worker_id, max_frame, max_chunk, window, "watchdog handshake done");

        let (out, queue) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_loop(queue, write_half));
        let conn = Arc::new(Conn { out, max_frame, max_chunk, window, update_threshold: (window / 2).max(1) });
        let (stop, stopped) = oneshot::channel();
        let idle = tokio::spawn(idle_loop(reader, conn.clone(), stopped));
        Ok(Worker { conn, worker_id: ack.worker_id, idle: Some((stop, idle)), writer: Some(writer) })
    }

    /// The watchdog's number for this worker (for logs).
    pub fn worker_id(&self) -> u32 {
        self.worker_id
    }

    /// Sends Ready and serves requests with `handler` until the watchdog sends Shutdown and the open requests
    /// are done (then `Ok`), or the connection fails.
    pub async fn serve<H: Handler>(mut self, handler: H) -> Result<(), Error> {
        let idle = self.stop_idle().await?;
        self.conn.send(&Frame { stream_id: 0, kind: Some(Kind::Ready(Ready {})) });
        debug!("ready");
        let writer = self.writer.take().expect("writer present until serve or init_error");
        let conn = self.conn.clone();
        let mut session = Session {
            conn: conn.clone(),
            handler: Arc::new(handler),
            streams: HashMap::default(),
            done_tx: None,
            draining: idle.drained || idle.shutdown,
            shutting_down: idle.shutdown,
        };
        let result = session.run(idle.reader).await;
        conn.close();
        match &result {
            Ok(()) => {
                // Shut down cleanly: everything queued is written before `serve` returns. A watchdog that has
                // already gone away is not an error any more.
                let _ = writer.await;
            }
            Err(_) => {
                // The connection is broken: give the writer a moment, no more.
                let abort = writer.abort_handle();
                if tokio::time::timeout(Duration::from_secs(1), writer).await.is_err() {
                    abort.abort();
                }
            }
        }
        result
    }

    /// Reports that the function could not initialise: sends InitError with `message` and closes the
    /// connection. The process should then exit; the watchdog restarts it with backoff.
    pub async fn init_error(mut self, message: impl Into<String>) -> Result<(), Error> {
        let _ = self.stop_idle().await;
        let mut message = message.into();
        truncate(&mut message, MAX_ERROR_MESSAGE_BYTES);
        self.conn.send(&Frame { stream_id: 0, kind: Some(Kind::InitError(InitError { message })) });
        self.conn.close();
        if let Some(writer) = self.writer.take() {
            writer.await.map_err(|e| Error::Io(io::Error::other(e)))??;
        }
        Ok(())
    }

    async fn stop_idle(&mut self) -> Result<Idle, Error> {
        let (stop, idle) = self.idle.take().expect("idle task present until serve or init_error");
        let _ = stop.send(());
        idle.await.map_err(|e| Error::Io(io::Error::other(e)))?
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some((_, idle)) = &self.idle {
            idle.abort();
        }
    }
}

/// Before Ready: answer pings, remember Drain and Shutdown, until `serve` takes the connection over.
async fn idle_loop(mut reader: Reader, conn: Arc<Conn>, mut stop: oneshot::Receiver<()>) -> Result<Idle, Error> {
    let (mut drained, mut shutdown) = (false, false);
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => return Ok(Idle { reader, drained, shutdown }),
            frame = reader.next() => match frame {
                None => return Err(Error::Disconnected),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(frame)) => match frame.kind {
                    Some(Kind::Ping(p)) => conn.send(&pong(p.nonce)),
                    Some(Kind::Drain(_)) => drained = true,
                    Some(Kind::Shutdown(_)) => shutdown = true,
                    Some(Kind::RequestHead(_)) => {
                        return Err(Error::Protocol(format!("RequestHead on stream {} before Ready", frame.stream_id)));
                    }
                    _ => debug!(frame = describe(&frame), "ignored before Ready"),
                },
            },
        }
    }
}

fn pong(nonce: u64) -> Frame {
    Frame { stream_id: 0, kind: Some(Kind::Pong(Pong { nonce })) }
}

/// The single writer: takes every message queued and writes the batch with one vectored write.
async fn write_loop(mut queue: mpsc::UnboundedReceiver<Out>, mut socket: OwnedWriteHalf) -> io::Result<()> {
    let mut batch: Vec<Out> = Vec::with_capacity(WRITE_BATCH);
    let mut pieces: VecDeque<Bytes> = VecDeque::with_capacity(2 * MAX_IOVECS);
    let mut small = BytesMut::with_capacity(64 * 1024);
    loop {
        if queue.recv_many(&mut batch, WRITE_BATCH).await == 0 {
            return socket.shutdown().await;
        }
        let mut close = false;
        for out in batch.drain(..) {
            match out {
                Out::One(b) => stage(b, &mut small, &mut pieces),
                Out::Many(v) => v.into_iter().for_each(|b| stage(b, &mut small, &mut pieces)),
                Out::Close => {
                    close = true;
                    break;
                }
            }
        }
        if !small.is_empty() {
            pieces.push_back(small.split().freeze());
        }
        write_all_vectored(&mut socket, &mut pieces).await?;
        if close {
            return socket.shutdown().await;
        }
    }
}

// Small pieces are copied together; a large one ends the current run of small ones and goes out as it is.
fn stage(b: Bytes, small: &mut BytesMut, pieces: &mut VecDeque<Bytes>) {
    if b.len() < COALESCE_BELOW {
        small.extend_from_slice(&b);
    } else {
        if !small.is_empty() {
            pieces.push_back(small.split().freeze());
        }
        pieces.push_back(b);
    }
}

async fn write_all_vectored(socket: &mut OwnedWriteHalf, pieces: &mut VecDeque<Bytes>) -> io::Result<()> {
    while !pieces.is_empty() {
        let mut n = if pieces.len() == 1 {
            socket.write(&pieces[0]).await?
        } else {
            let slices: Vec<IoSlice<'_>> = pieces.iter().take(MAX_IOVECS).map(|b| IoSlice::new(b)).collect();
            socket.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let front = pieces.front_mut().expect("written bytes come from queued pieces");
            if front.len() <= n {
                n -= front.len();
                pieces.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
    Ok(())
}

// The reader's view of one open stream.
struct Entry {
    state: Arc<StreamState>,
    // Request body frames are still expected (false after End or Cancel).
    body_open: bool,
    abort: AbortHandle,
    // Bytes received after the handler dropped the body, not yet credited back.
    discarded: u32,
}

struct Session<H> {
    conn: Arc<Conn>,
    handler: Arc<H>,
    // Every stream whose task has not finished yet (including cancelled ones being torn down). Ids come from the
    // watchdog, not from clients, so an unkeyed fast hash is safe, and each request looks its stream up several
    // times.
    streams: HashMap<u64, Entry, foldhash::fast::FixedState>,
    done_tx: Option<mpsc::UnboundedSender<u64>>,
    draining: bool,
    shutting_down: bool,
}

enum Flow {
    Continue,
    Stop,
}

impl<H: Handler> Session<H> {
    async fn run(&mut self, mut reader: Reader) -> Result<(), Error> {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<u64>();
        self.done_tx = Some(done_tx);
        let result = if self.shutting_down {
            Ok(())
        } else {
            loop {
                tokio::select! {
                    biased;
                    Some(id) = done_rx.recv() => {
                        if let Some(entry) = self.streams.remove(&id) {
                            if entry.body_open {
                                // A body that outlives its handler ends with an error instead of waiting forever.
                                entry.state.finish_body(false);
                            }
                        }
                        if self.shutting_down && self.streams.is_empty() {
                            break Ok(());
                        }
                    }
                    frame = reader.next() => match frame {
                        Some(Ok(frame)) => match self.on_frame(frame) {
                            Ok(Flow::Continue) => {}
                            Ok(Flow::Stop) => break Ok(()),
                            Err(e) => break Err(e),
                        },
                        Some(Err(e)) => break Err(e.into()),
                        None if self.shutting_down => break Ok(()),
                        None => break Err(Error::Disconnected),
                    },
                }
            }
        };
        // Only reached with open streams after an error or EOF: stop their handlers.
        for entry in self.streams.values() {
            entry.state.cancelled.store(true, Ordering::Release);
            entry.state.finish_body(false);
            entry.abort.abort();
        }
        self.streams.clear();
        result
    }

    fn on_frame(&mut self, frame: Frame) -> Result<Flow, Error> {
        let id = frame.stream_id;
        let Some(kind) = frame.kind else {
            return Err(Error::Protocol(format!("frame on stream {id} has no kind")));
        };
        match kind {
            Kind::Ping(p) => self.conn.send(&pong(p.nonce)),
            Kind::RequestHead(head) => self.open(id, *head)?,
            Kind::Data(d) => {
                let Some(entry) = self.streams.get_mut(&id) else { return Ok(Flow::Continue) };
                if entry.state.cancelled.load(Ordering::Acquire) {
                    return Ok(Flow::Continue);
                }
                let len = d.data.len();
                let left = entry.state.recv_credit.fetch_sub(len as i64, Ordering::AcqRel) - len as i64;
                if left < 0 {
                    return Err(Error::Protocol(format!(
                        "stream {id}: the watchdog sent {} bytes more than the window allows",
                        -left
                    )));
                }
                if entry.body_open && len > 0 && entry.state.push_body(d.data).is_err() {
                    // The handler dropped the body: discard, and return the credit so the upload can finish.
                    entry.discarded = entry.discarded.saturating_add(len as u32);
                    if entry.discarded >= self.conn.update_threshold {
                        let n = std::mem::take(&mut entry.discarded);
                        entry.state.recv_credit.fetch_add(i64::from(n), Ordering::AcqRel);
                        self.conn.window_update(id, n);
                    }
                }
            }
            Kind::End(_) => {
                if let Some(entry) = self.streams.get_mut(&id) {
                    if std::mem::take(&mut entry.body_open) {
                        entry.state.finish_body(true);
                    }
                }
            }
            Kind::WindowUpdate(w) => {
                if let Some(entry) = self.streams.get(&id) {
                    entry.state.add_credit(w.increment);
                }
            }
            Kind::Cancel(_c) => {
                if let Some(entry) = self.streams.get_mut(&id) {
                    debug!(stream = id, reason = %_c.reason, "cancelled");
                    entry.state.cancelled.store(true, Ordering::Release);
                    if std::mem::take(&mut entry.body_open) {
                        entry.state.finish_body(false);
                    }
                    entry.abort.abort();
                }
            }
            Kind::Drain(_) => {
                debug!("drain");
                self.draining = true;
            }
            Kind::Shutdown(_) => {
                debug!(open = self.streams.len(), "shutdown");
                self.draining = true;
                self.shutting_down = true;
                if self.streams.is_empty() {
                    return Ok(Flow::Stop);
                }
            }
            // Worker-to-watchdog frames, a late HelloAck, Pong, Log: nothing to do.
            Kind::Hello(_)
            | Kind::HelloAck(_)
            | Kind::Ready(_)
            | Kind::InitError(_)
            | Kind::ResponseHead(_)
            | Kind::Error(_)
            | Kind::Pong(_)
            | Kind::Log(_) => {
                debug!(stream = id, "ignored frame");
            }
        }
        Ok(Flow::Continue)
    }

    fn open(&mut self, id: u64, head: RequestHead) -> Result<(), Error> {
        // Ids are odd and never reused. proto/README.md also says "increasing", but a watchdog writing heads from
        // several tasks may reorder them slightly: only a clash with an open stream is fatal.
        if id == 0 || id.is_multiple_of(2) || self.streams.contains_key(&id) {
            return Err(Error::Protocol(format!("RequestHead on stream {id}: not an odd id, or already open")));
        }
        if self.draining {
            let mut buf = BytesMut::new();
            push_error(&mut buf, id, ErrorKind::Retryable, "the worker is draining".to_owned(), self.conn.max_frame);
            self.conn.send_encoded(Out::One(buf.freeze()));
            return Ok(());
        }
        let state = Arc::new(StreamState::new(id, self.conn.window));
        let body =
            Body::streaming(BodyInner { conn: self.conn.clone(), state: state.clone(), consumed: 0, ended: false });
        let mut responder = Responder {
            conn: self.conn.clone(),
            state: state.clone(),
            buf: BytesMut::new(),
            pieces: Vec::new(),
            pending: 0,
            finished: false,
            done: self.done_tx.clone(),
            mode: ResponseMode::default(),
        };
        let handler = self.handler.clone();
        let envelope = head.envelope.unwrap_or_default();
        responder.mode = ResponseMode::of(&envelope);
        let task = tokio::spawn(async move {
            let result = handler.call(Request::new(envelope, body)).await;
            responder.respond(result).await;
        });
        self.streams.insert(id, Entry { state, body_open: true, abort: task.abort_handle(), discarded: 0 });
        Ok(())
    }
}

/// Sends one stream's answer. Its `Drop` guarantees an Error frame when the handler panicked, and tells the
/// reader that the stream's task is over.
struct Responder {
    conn: Arc<Conn>,
    state: Arc<StreamState>,
    // Encoded frames not yet handed to the writer...
    buf: BytesMut,
    // ...preceded by these pieces (encoded frames and uncopied chunks), when a large chunk was sent.
    pieces: Vec<Bytes>,
    // Bytes in `buf` and `pieces`.
    pending: usize,
    finished: bool,
    done: Option<mpsc::UnboundedSender<u64>>,
    // gRPC call or not, framed messages or not.
    mode: ResponseMode,
}

impl Responder {
    async fn respond(&mut self, result: Result<Reply, HandlerError>) {
        let outcome = match result {
            Ok(reply) => self.reply(reply).await,
            // A status is an answer, not a failure: the same as returning it as a reply.
            Err(HandlerError::Status(status)) => self.reply(Reply::GrpcStatus(*status)).await,
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            let (kind, message) = match e {
                HandlerError::Permanent(m) => (ErrorKind::Permanent, m),
                HandlerError::Retryable(m) => (ErrorKind::Retryable, m),
                HandlerError::Internal(m) => (ErrorKind::Internal, m),
                // Only after the head went out on a request that is not a gRPC call: the nearest Error kind.
                HandlerError::Status(s) => (error_kind(s.code), s.message),
            };
            push_error(&mut self.buf, self.state.id, kind, message, self.conn.max_frame);
        }
        self.finished = true;
        self.flush();
    }

    async fn reply(&mut self, reply: Reply) -> Result<(), HandlerError> {
        let grpc = self.mode.grpc;
        let (head, body, mut trailers) = match reply {
            Reply::Accepted => {
                // gRPC reads any status but 200 as an error (202 would be UNKNOWN).
                let status = if grpc { 200 } else { 202 };
                (ResponseHead { status, ..Default::default() }, ResponseBody::empty(), Vec::new())
            }
            Reply::Response(r) => (
                ResponseHead { status: u32::from(r.status), headers: to_headers(&r.headers), ..Default::default() },
                r.body,
                to_headers(&r.trailers),
            ),
            Reply::CloudEvent(ev) => (
                ResponseHead { status: 200, reply: Some(reply_event(ev.attributes)), ..Default::default() },
                ev.data,
                Vec::new(),
            ),
            Reply::GrpcStatus(s) if grpc => (
                ResponseHead { status: 200, ..Default::default() },
                // No message at all, even for a unary call: the status is the answer.
                ResponseBody::empty(),
                status_trailers(&s, self.max_status_message()),
            ),
            Reply::GrpcStatus(s) => {
                let headers = vec![Header { name: "content-type".into(), value: Bytes::from_static(b"text/plain") }];
                (
                    ResponseHead { status: u32::from(s.code.http_status()), headers, ..Default::default() },
                    ResponseBody::Full(s.message.into()),
                    to_headers(&s.trailers),
                )
            }
        };
        self.push(Kind::ResponseHead(Box::new(head)))
            .map_err(|e| HandlerError::Internal(format!("the response head cannot be sent: {e}")))?;
        let framed = self.mode.framed;
        match body {
            // An empty body of a server-streaming call is no message (Accepted); any other body is one message.
            ResponseBody::Full(bytes) if framed && !bytes.is_empty() => self.send_message(bytes).await?,
            ResponseBody::Full(bytes) => self.send_data(bytes).await?,
            ResponseBody::Stream(mut stream) => loop {
                // Hand what is buffered to the writer only when the stream is about to wait.
                let item = match stream.next().now_or_never() {
                    Some(item) => item,
                    None => {
                        self.flush();
                        stream.next().await
                    }
                };
                match item {
                    None => break,
                    Some(Ok(bytes)) if framed => self.send_message(bytes).await?,
                    Some(Ok(bytes)) => self.send_data(bytes).await?,
                    // A status ends a gRPC call normally, after the messages already sent.
                    Some(Err(HandlerError::Status(s))) if grpc => {
                        trailers.extend(status_trailers(&s, self.max_status_message()));
                        break;
                    }
                    Some(Err(e)) => return Err(e),
                }
            },
        }
        self.push(Kind::End(End { trailers }))
            .map_err(|e| HandlerError::Internal(format!("the response trailers cannot be sent: {e}")))
    }

    fn max_status_message(&self) -> usize {
        MAX_ERROR_MESSAGE_BYTES.min(self.conn.max_frame / 2)
    }

    /// Sends one response message in gRPC's framing.
    async fn send_message(&mut self, message: Bytes) -> Result<(), HandlerError> {
        let mut prefix = BytesMut::with_capacity(5 + message.len().min(ZERO_COPY_CHUNK));
        put_prefix(&mut prefix, message.len());
        if message.len() < ZERO_COPY_CHUNK {
            // Small: one Data frame for prefix and message.
            prefix.extend_from_slice(&message);
            self.send_data(prefix.freeze()).await
        } else {
            // Large: the prefix in a frame of its own, so the message is not copied.
            self.send_data(prefix.freeze()).await?;
            self.send_data(message).await
        }
    }

    async fn send_data(&mut self, mut data: Bytes) -> Result<(), HandlerError> {
        while !data.is_empty() {
            let want = data.len().min(self.conn.max_chunk);
            let n = match self.state.take_credit(want) {
                Some(n) => n,
                None => {
                    self.flush();
                    self.state.wait_credit(want).await
                }
            };
            let chunk = data.split_to(n);
            let pushed = if n >= ZERO_COPY_CHUNK {
                let before = self.buf.len();
                encode_data_head(self.state.id, n, &mut self.buf, self.conn.max_frame).map(|()| {
                    self.pending += self.buf.len() - before + n;
                    self.pieces.push(self.buf.split().freeze());
                    self.pieces.push(chunk);
                })
            } else {
                self.push(Kind::Data(Data { data: chunk }))
            };
            pushed.map_err(|e| HandlerError::Internal(format!("a body chunk cannot be sent: {e}")))?;
            if self.pending >= FLUSH_BYTES {
                self.flush();
            }
        }
        Ok(())
    }

    fn push(&mut self, kind: Kind) -> Result<(), CodecError> {
        let before = self.buf.len();
        encode_frame(&Frame { stream_id: self.state.id, kind: Some(kind) }, &mut self.buf, self.conn.max_frame)?;
        self.pending += self.buf.len() - before;
        Ok(())
    }

    fn flush(&mut self) {
        let out = if self.pieces.is_empty() {
            if self.buf.is_empty() {
                return;
            }
            Out::One(self.buf.split().freeze())
        } else {
            if !self.buf.is_empty() {
                self.pieces.push(self.buf.split().freeze());
            }
            Out::Many(std::mem::take(&mut self.pieces))
        };
        self.pending = 0;
        // Nothing more goes out once the watchdog has cancelled the stream.
        if !self.state.cancelled.load(Ordering::Acquire) {
            self.conn.send_encoded(out);
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if !self.finished && !self.state.cancelled.load(Ordering::Acquire) {
            // The handler (or its body stream) panicked: the stream still gets its one answer.
            push_error(
                &mut self.buf,
                self.state.id,
                ErrorKind::Internal,
                "the handler panicked".to_owned(),
                self.conn.max_frame,
            );
            self.flush();
        }
        if let Some(done) = self.done.take() {
            let _ = done.send(self.state.id);
        }
    }
}

/// The Error kind nearest to a gRPC code (the watchdog maps kinds back to INVALID_ARGUMENT, UNAVAILABLE, INTERNAL).
fn error_kind(code: Code) -> ErrorKind {
    match code {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => ErrorKind::Permanent,
        Code::Unavailable => ErrorKind::Retryable,
        _ => ErrorKind::Internal,
    }
}

fn push_error(buf: &mut BytesMut, stream_id: u64, kind: ErrorKind, mut message: String, max_frame: usize) {
    truncate(&mut message, MAX_ERROR_MESSAGE_BYTES.min(max_frame / 2));
    let frame = Frame { stream_id, kind: Some(Kind::Error(ErrorFrame { kind: kind as i32, message })) };
    let _ = encode_frame(&frame, buf, max_frame);
}

pub(crate) fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

fn to_headers(map: &HeaderMap) -> Vec<Header> {
    map.iter()
        .map(|(name, value)| Header { name: name.as_str().to_owned(), value: Bytes::copy_from_slice(value.as_bytes()) })
        .collect()
}

/// The reply event's attributes: the required ones as fields (`id` made up when missing), the rest as strings.
fn reply_event(attributes: Vec<(String, String)>) -> ce::CloudEvent {
    use ce::cloud_event::{cloud_event_attribute_value::Attr, CloudEventAttributeValue};
    let mut ev = ce::CloudEvent::default();
    for (name, value) in attributes {
        match name.as_str() {
            "id" => ev.id = value,
            "source" => ev.source = value,
            "specversion" => ev.spec_version = value,
            "type" => ev.r#type = value,
            _ => {
                ev.attributes.insert(name, CloudEventAttributeValue { attr: Some(Attr::CeString(value)) });
            }
        }
    }
    if ev.id.is_empty() {
        ev.id = uuid::Uuid::new_v4().to_string();
    }
    ev
}

fn describe(frame: &Frame) -> String {
    let kind = match &frame.kind {
        None => "nothing",
        Some(Kind::Hello(_)) => "Hello",
        Some(Kind::HelloAck(_)) => "HelloAck",
        Some(Kind::Ready(_)) => "Ready",
        Some(Kind::InitError(_)) => "InitError",
        Some(Kind::RequestHead(_)) => "RequestHead",
        Some(Kind::Data(_)) => "Data",
        Some(Kind::End(_)) => "End",
        Some(Kind::ResponseHead(_)) => "ResponseHead",
        Some(Kind::Error(_)) => "Error",
        Some(Kind::Cancel(_)) => "Cancel",
        Some(Kind::Ping(_)) => "Ping",
        Some(Kind::Pong(_)) => "Pong",
        Some(Kind::Drain(_)) => "Drain",
        Some(Kind::Shutdown(_)) => "Shutdown",
        Some(Kind::Log(_)) => "Log",
        Some(Kind::WindowUpdate(_)) => "WindowUpdate",
    };
    format!("{kind} on stream {}", frame.stream_id)
}
