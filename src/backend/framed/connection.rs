//! One connected worker: a reader task that routes the worker's frames to the streams they belong to, a writer
//! task that batches outgoing frames into single writes, and the per-stream state (flow-control credit, the
//! queue of response events).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, Notify};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::codec::{encode_data_head, encode_frame, encode_request_head, FrameCodec};
use crate::envelope::pb::watchdog::v1::{
    frame::Kind, Cancel, Data, End, Envelope, ErrorKind, Frame, Header, Pong, RequestHead, ResponseHead, WindowUpdate,
};

/// Limits announced in HelloAck.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest Data payload.
    pub max_chunk: usize,
    /// Initial window per stream and direction.
    pub initial_window: i64,
}

/// What a stream's response side receives.
#[derive(Debug)]
pub enum StreamEvent {
    /// The response head (boxed: it is by far the largest event, and every event takes its size in the queue).
    Head(Box<ResponseHead>),
    /// A piece of the response body.
    Data(Bytes),
    /// The response ended, with trailers.
    End(Vec<Header>),
    /// The worker reported a failure.
    Error(ErrorKind, String),
    /// The worker is gone; the reason names the exit status or protocol error.
    Gone(String),
    /// The request side failed (body too large, client too slow).
    Aborted(Box<crate::error::InvokeError>),
}

/// A stream's response events in arrival order, for its one reader.
///
/// A queue in the stream's shared state rather than a channel of its own: a tokio channel allocates a block of
/// 32 events up front, kilobytes for a request that receives two or three.
#[derive(Default)]
struct EventQueue {
    state: Mutex<EventQueueState>,
}

#[derive(Default)]
struct EventQueueState {
    events: VecDeque<StreamEvent>,
    /// The reader waiting for the next event.
    waker: Option<Waker>,
}

impl EventQueue {
    fn push(&self, event: StreamEvent) {
        let waker = {
            let mut state = lock(&self.state);
            state.events.push_back(event);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The body length of a response already queued whole: Data events up to an End without trailers. `None`
    /// while any of it is still to come, or when it ends any other way.
    fn complete_len(&self) -> Option<u64> {
        let state = lock(&self.state);
        let mut len = 0u64;
        for event in &state.events {
            match event {
                StreamEvent::Data(data) => len += data.len() as u64,
                StreamEvent::End(trailers) if trailers.is_empty() => return Some(len),
                _ => return None,
            }
        }
        None
    }

    fn poll_next(&self, cx: &mut Context<'_>) -> Poll<StreamEvent> {
        let mut state = lock(&self.state);
        if let Some(event) = state.events.pop_front() {
            return Poll::Ready(event);
        }
        if !state.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            state.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// State shared between a stream's request pump, its response side, and the reader task.
pub struct StreamShared {
    events: EventQueue,
    /// Bytes of request body the watchdog may still send.
    send_credit: AtomicI64,
    credit_changed: Notify,
    /// Bytes of response body the worker may still send before we return credit.
    recv_window: AtomicI64,
    /// Whether the response side saw a head.
    head_seen: AtomicBool,
    /// Set when the stream is over for the watchdog (answered, failed or cancelled).
    closed: AtomicBool,
}

impl StreamShared {
    /// Whether the stream is over.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.credit_changed.notify_waiters();
    }

    /// Takes up to `want` bytes of send credit, waiting for a WindowUpdate when there is none.
    /// `None` once the stream is closed.
    pub async fn take_credit(&self, want: usize) -> Option<usize> {
        loop {
            let notified = self.credit_changed.notified();
            if self.is_closed() {
                return None;
            }
            let credit = self.send_credit.load(Ordering::SeqCst);
            if credit > 0 {
                let take = credit.min(want as i64);
                if self.send_credit.compare_exchange(credit, credit - take, Ordering::SeqCst, Ordering::SeqCst).is_ok()
                {
                    return Some(take as usize);
                }
                continue;
            }
            notified.await;
        }
    }

    /// Reports a request-side failure to the response side.
    pub fn abort(&self, error: crate::error::InvokeError) {
        self.events.push(StreamEvent::Aborted(Box::new(error)));
    }

    /// The next response event, once there is one.
    pub fn poll_event(&self, cx: &mut Context<'_>) -> Poll<StreamEvent> {
        self.events.poll_next(cx)
    }

    /// The body length of a response whose every remaining event has arrived (see `EventQueue::complete_len`).
    pub fn complete_len(&self) -> Option<u64> {
        self.events.complete_len()
    }

    /// Waits for the next response event.
    pub async fn next_event(&self) -> StreamEvent {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }
}

/// Open streams by id, looked up several times per request. The ids are our own counter's: a worker's frame
/// naming any other id is refused before a lookup, so an unkeyed fast hash is safe.
type StreamMap = HashMap<u64, Arc<StreamShared>, foldhash::fast::FixedState>;

/// A connected, ready worker.
pub struct Connection {
    /// The worker's number.
    pub id: u32,
    /// Requests it takes at once (0: no limit).
    pub max_concurrency: u32,
    /// Limits of the connection.
    pub limits: Limits,
    outgoing: mpsc::UnboundedSender<Frame>,
    streams: Mutex<StreamMap>,
    next_stream: AtomicU64,
    last_pong: AtomicU64,
    /// Cancelled when the connection is finished (either side).
    pub closed: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Connection {
    /// Wraps a connected socket after the handshake; starts the writer task. The caller runs [`Connection::read`].
    pub fn start(id: u32, max_concurrency: u32, limits: Limits, write: OwnedWriteHalf) -> Arc<Connection> {
        let (outgoing, rx) = mpsc::unbounded_channel();
        let conn = Arc::new(Connection {
            id,
            max_concurrency,
            limits,
            outgoing,
            streams: Mutex::new(StreamMap::default()),
            next_stream: AtomicU64::new(1),
            last_pong: AtomicU64::new(0),
            closed: CancellationToken::new(),
        });
        tokio::spawn(write_loop(rx, write, conn.closed.clone()));
        conn
    }

    /// Queues a frame for the writer task.
    pub fn send(&self, frame: Frame) {
        let _ = self.outgoing.send(frame);
    }

    /// Opens a stream for `envelope`: sends its RequestHead and returns the stream's id and shared state, where
    /// its response events arrive.
    pub fn open(&self, envelope: Envelope) -> (u64, Arc<StreamShared>) {
        // Ids go out in increasing order (workers may rely on it): pick the id and queue the head under one lock.
        let mut streams = lock(&self.streams);
        let id = self.next_stream.fetch_add(2, Ordering::SeqCst);
        let shared = Arc::new(StreamShared {
            events: EventQueue::default(),
            send_credit: AtomicI64::new(self.limits.initial_window),
            credit_changed: Notify::new(),
            recv_window: AtomicI64::new(self.limits.initial_window),
            head_seen: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        if self.closed.is_cancelled() {
            shared.events.push(StreamEvent::Gone("the worker connection is closed".into()));
        } else {
            streams.insert(id, Arc::clone(&shared));
            self.send(Frame {
                stream_id: id,
                kind: Some(Kind::RequestHead(Box::new(RequestHead { envelope: Some(envelope) }))),
            });
        }
        drop(streams);
        (id, shared)
    }

    /// Sends request body bytes (the caller holds credit for them).
    pub fn send_data(&self, stream_id: u64, data: Bytes) {
        self.send(Frame { stream_id, kind: Some(Kind::Data(Data { data })) });
    }

    /// Ends the request body.
    pub fn send_end(&self, stream_id: u64) {
        self.send(Frame { stream_id, kind: Some(Kind::End(End { trailers: vec![] })) });
    }

    /// Returns `increment` bytes of response credit to the worker.
    pub fn return_credit(&self, stream_id: u64, shared: &StreamShared, increment: usize) {
        if shared.is_closed() {
            return;
        }
        shared.recv_window.fetch_add(increment as i64, Ordering::SeqCst);
        self.send(Frame { stream_id, kind: Some(Kind::WindowUpdate(WindowUpdate { increment: increment as u32 })) });
    }

    /// Gives up on a stream: tells the worker, forgets it.
    pub fn cancel(&self, stream_id: u64, reason: &str) {
        if let Some(shared) = lock(&self.streams).remove(&stream_id) {
            shared.close();
            self.send(Frame { stream_id, kind: Some(Kind::Cancel(Cancel { reason: reason.to_string() })) });
        }
    }

    /// Marks a stream finished without telling the worker (it finished it).
    pub fn finish(&self, stream_id: u64) {
        if let Some(shared) = lock(&self.streams).remove(&stream_id) {
            shared.close();
        }
    }

    /// Streams currently open.
    pub fn open_streams(&self) -> usize {
        lock(&self.streams).len()
    }

    /// The nonce of the last Pong received.
    pub fn last_pong(&self) -> u64 {
        self.last_pong.load(Ordering::SeqCst)
    }

    /// Fails every open stream with `reason` and closes the connection.
    pub fn fail_all(&self, reason: &str) {
        self.closed.cancel();
        let streams: Vec<_> = lock(&self.streams).drain().collect();
        for (_, shared) in streams {
            shared.close();
            shared.events.push(StreamEvent::Gone(reason.to_string()));
        }
    }

    /// Reads the worker's frames until the connection ends. `Err` names a protocol violation.
    pub async fn read(self: &Arc<Self>, mut reader: FramedRead<OwnedReadHalf, FrameCodec>) -> Result<(), String> {
        let result = loop {
            let frame = tokio::select! {
                next = reader.next() => next,
                _ = self.closed.cancelled() => break Ok(()),
            };
            let frame = match frame {
                None => break Ok(()),
                Some(Err(e)) => break Err(e.to_string()),
                Some(Ok(frame)) => frame,
            };
            if let Err(violation) = self.dispatch(frame) {
                break Err(violation);
            }
        };
        self.closed.cancel();
        result
    }

    fn dispatch(&self, frame: Frame) -> Result<(), String> {
        let id = frame.stream_id;
        let kind = frame.kind.ok_or("frame without a kind")?;
        let stream = |what: &str| -> Result<Option<Arc<StreamShared>>, String> {
            if id == 0 || id.is_multiple_of(2) || id >= self.next_stream.load(Ordering::SeqCst) {
                return Err(format!("{what} on stream {id}, which the watchdog never opened"));
            }
            Ok(lock(&self.streams).get(&id).cloned())
        };
        match kind {
            Kind::Ping(ping) => self.send(Frame { stream_id: 0, kind: Some(Kind::Pong(Pong { nonce: ping.nonce })) }),
            Kind::Pong(pong) => {
                self.last_pong.fetch_max(pong.nonce, Ordering::SeqCst);
            }
            Kind::Log(log) => {
                tracing::info!(target: "function", stream = log.stream.as_str(), "{}", String::from_utf8_lossy(&log.line));
            }
            Kind::Ready(_) | Kind::Hello(_) => {}
            Kind::InitError(e) => return Err(format!("init error after ready: {}", e.message)),
            Kind::ResponseHead(head) => {
                if let Some(shared) = stream("ResponseHead")? {
                    if shared.head_seen.swap(true, Ordering::SeqCst) {
                        return Err(format!("second ResponseHead on stream {id}"));
                    }
                    shared.events.push(StreamEvent::Head(head));
                }
            }
            Kind::Data(data) => {
                if let Some(shared) = stream("Data")? {
                    if !shared.head_seen.load(Ordering::SeqCst) {
                        return Err(format!("Data before ResponseHead on stream {id}"));
                    }
                    if data.data.len() > self.limits.max_chunk {
                        return Err(format!("Data of {} bytes exceeds max_chunk_bytes", data.data.len()));
                    }
                    let left = shared.recv_window.fetch_sub(data.data.len() as i64, Ordering::SeqCst);
                    if left < data.data.len() as i64 {
                        return Err(format!("stream {id} sent past its flow-control window"));
                    }
                    shared.events.push(StreamEvent::Data(data.data));
                }
            }
            Kind::End(end) => {
                if let Some(shared) = stream("End")? {
                    if !shared.head_seen.load(Ordering::SeqCst) {
                        return Err(format!("End before ResponseHead on stream {id}"));
                    }
                    self.finish(id);
                    shared.events.push(StreamEvent::End(end.trailers));
                }
            }
            Kind::Error(error) => {
                if let Some(shared) = stream("Error")? {
                    self.finish(id);
                    let kind = ErrorKind::try_from(error.kind).unwrap_or(ErrorKind::Internal);
                    shared.events.push(StreamEvent::Error(kind, error.message));
                }
            }
            Kind::WindowUpdate(update) => {
                if id == 0 {
                    return Ok(());
                }
                if let Some(shared) = stream("WindowUpdate")? {
                    shared.send_credit.fetch_add(i64::from(update.increment), Ordering::SeqCst);
                    shared.credit_changed.notify_waiters();
                }
            }
            Kind::HelloAck(_) | Kind::RequestHead(_) | Kind::Cancel(_) | Kind::Drain(_) | Kind::Shutdown(_) => {
                return Err("the worker sent a frame only the watchdog may send".into())
            }
        }
        Ok(())
    }
}

/// Data payloads at least this large go to the socket as they are, after their frame head; smaller frames are
/// copied together into one buffer.
const WRITE_AS_IS: usize = 4 * 1024;
/// Most bytes gathered into one batch before it is written.
const BATCH_BYTES: usize = 256 * 1024;
/// Most pieces handed to one vectored write.
const MAX_IOVECS: usize = 64;

/// Writes queued frames, each batch of whatever is queued in one vectored write.
async fn write_loop(mut rx: mpsc::UnboundedReceiver<Frame>, mut write: OwnedWriteHalf, closed: CancellationToken) {
    let mut small = BytesMut::with_capacity(64 * 1024);
    let mut pieces: VecDeque<Bytes> = VecDeque::with_capacity(8);
    loop {
        let first = tokio::select! {
            frame = rx.recv() => frame,
            _ = closed.cancelled() => None,
        };
        let Some(first) = first else { break };
        let mut batched = stage(first, &mut small, &mut pieces);
        while batched < BATCH_BYTES {
            match rx.try_recv() {
                Ok(frame) => batched += stage(frame, &mut small, &mut pieces),
                Err(_) => break,
            }
        }
        if !small.is_empty() {
            pieces.push_back(small.split().freeze());
        }
        if write_all_vectored(&mut write, &mut pieces).await.is_err() {
            closed.cancel();
            break;
        }
        if small.capacity() > 1024 * 1024 {
            small = BytesMut::with_capacity(64 * 1024);
        }
    }
}

/// Queues `frame` for the next write and returns its size: a large Data payload as its own piece (after its
/// head, which closes the run of small frames before it), anything else encoded into `small`.
fn stage(frame: Frame, small: &mut BytesMut, pieces: &mut VecDeque<Bytes>) -> usize {
    match frame {
        Frame { stream_id, kind: Some(Kind::Data(Data { data })) } if data.len() >= WRITE_AS_IS => {
            let before = small.len();
            encode_data_head(stream_id, data.len(), small);
            let head = small.len() - before;
            pieces.push_back(small.split().freeze());
            let len = data.len();
            pieces.push_back(data);
            head + len
        }
        Frame { stream_id, kind: Some(Kind::RequestHead(mut head)) } => {
            let before = small.len();
            match head.envelope.take() {
                Some(envelope) => {
                    encode_request_head(stream_id, &envelope, small);
                    // Its strings and header list become the next request's.
                    crate::envelope::recycle(envelope, small.len() - before);
                }
                None => encode_frame(&Frame { stream_id, kind: Some(Kind::RequestHead(head)) }, small),
            }
            small.len() - before
        }
        frame => {
            let before = small.len();
            encode_frame(&frame, small);
            small.len() - before
        }
    }
}

/// Writes every piece, in order, as few vectored writes as the socket allows.
async fn write_all_vectored(write: &mut OwnedWriteHalf, pieces: &mut VecDeque<Bytes>) -> std::io::Result<()> {
    while !pieces.is_empty() {
        let mut written = if pieces.len() == 1 {
            write.write(&pieces[0]).await?
        } else {
            let slices: [std::io::IoSlice<'_>; MAX_IOVECS] =
                std::array::from_fn(|i| std::io::IoSlice::new(pieces.get(i).map_or(&[], |p| &p[..])));
            write.write_vectored(&slices[..pieces.len().min(MAX_IOVECS)]).await?
        };
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let front = pieces.front_mut().expect("written bytes come from queued pieces");
            if front.len() <= written {
                written -= front.len();
                pieces.pop_front();
            } else {
                bytes::Buf::advance(front, written);
                written = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::framed::codec::MAX_FRAME;

    use futures_util::SinkExt;
    use tokio_util::codec::FramedWrite;

    /// The worker's end of a test connection: what it writes, and (kept open) what it would read.
    struct Worker {
        frames: FramedWrite<OwnedWriteHalf, FrameCodec>,
        _incoming: OwnedReadHalf,
    }

    impl Worker {
        async fn send(&mut self, frame: Frame) {
            self.frames.send(frame).await.unwrap();
        }
    }

    /// A connection whose worker side the test drives by hand.
    fn connected() -> (Arc<Connection>, FramedRead<OwnedReadHalf, FrameCodec>, Worker) {
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        let (read, write) = ours.into_split();
        let limits = Limits { max_chunk: 64 * 1024, initial_window: 1024 };
        let conn = Connection::start(0, 0, limits, write);
        let (incoming, outgoing) = theirs.into_split();
        let worker = Worker { frames: FramedWrite::new(outgoing, FrameCodec::new(MAX_FRAME)), _incoming: incoming };
        (conn, FramedRead::new(read, FrameCodec::new(MAX_FRAME)), worker)
    }

    fn head(stream_id: u64) -> Frame {
        Frame {
            stream_id,
            kind: Some(Kind::ResponseHead(Box::new(ResponseHead { status: 200, ..Default::default() }))),
        }
    }

    #[tokio::test]
    async fn frames_for_a_stream_never_opened_are_a_protocol_error() {
        let (conn, reader, mut worker) = connected();
        let reading = tokio::spawn({
            let conn = Arc::clone(&conn);
            async move { conn.read(reader).await }
        });
        worker.send(head(99)).await;
        let result = reading.await.unwrap();
        assert!(result.unwrap_err().contains("never opened"));
    }

    #[tokio::test]
    async fn frames_for_a_finished_stream_are_ignored() {
        let (conn, reader, mut worker) = connected();
        let (id, shared) = conn.open(Envelope::default());
        conn.cancel(id, "client gone");
        let reading = tokio::spawn({
            let conn = Arc::clone(&conn);
            async move { conn.read(reader).await }
        });
        worker.send(head(id)).await;
        worker
            .send(Frame { stream_id: 0, kind: Some(Kind::Ping(crate::envelope::pb::watchdog::v1::Ping { nonce: 1 })) })
            .await;
        drop(worker);
        assert!(reading.await.unwrap().is_ok(), "a late frame on a cancelled stream is not an error");
        assert!(lock(&shared.events.state).events.is_empty(), "nothing delivered for the cancelled stream");
    }

    #[tokio::test]
    async fn data_past_the_window_is_a_protocol_error() {
        let (conn, reader, mut worker) = connected();
        let (id, _) = conn.open(Envelope::default());
        let reading = tokio::spawn({
            let conn = Arc::clone(&conn);
            async move { conn.read(reader).await }
        });
        worker.send(head(id)).await;
        let data = Frame { stream_id: id, kind: Some(Kind::Data(Data { data: vec![0u8; 2048].into() })) };
        worker.send(data).await;
        assert!(reading.await.unwrap().unwrap_err().contains("window"));
    }

    #[tokio::test]
    async fn a_worker_gone_fails_every_open_stream_once() {
        let (conn, _reader, _worker) = connected();
        let (_, a) = conn.open(Envelope::default());
        let (_, b) = conn.open(Envelope::default());
        conn.fail_all("worker exited (exit status 1)");
        for shared in [a, b] {
            match shared.next_event().await {
                StreamEvent::Gone(reason) => assert!(reason.contains("exit status 1")),
                other => panic!("expected Gone, got {other:?}"),
            }
            assert!(lock(&shared.events.state).events.is_empty(), "exactly one event");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn request_heads_leave_in_id_order_under_contention() {
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        let (_read, write) = ours.into_split();
        let limits = Limits { max_chunk: 64 * 1024, initial_window: 256 * 1024 };
        let conn = Connection::start(0, 0, limits, write);
        let opens_per_thread = 2000;
        let threads = 8;
        let reader = tokio::spawn(async move {
            let mut frames = FramedRead::new(theirs, FrameCodec::new(MAX_FRAME));
            let mut ids = Vec::new();
            while ids.len() < opens_per_thread * threads {
                let frame = frames.next().await.unwrap().unwrap();
                ids.push(frame.stream_id);
            }
            ids
        });
        std::thread::scope(|scope| {
            for _ in 0..threads {
                let conn = &conn;
                scope.spawn(move || {
                    for _ in 0..opens_per_thread {
                        let (id, _) = conn.open(Envelope::default());
                        conn.finish(id);
                    }
                });
            }
        });
        let ids = reader.await.unwrap();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "stream ids left out of order");
    }

    #[tokio::test]
    async fn large_payloads_written_as_they_are_keep_the_frames_in_order() {
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        let (_unused, write) = ours.into_split();
        let data = |id: u64, len: usize| Frame {
            stream_id: id,
            kind: Some(Kind::Data(Data { data: vec![id as u8; len].into() })),
        };
        // Small and large frames interleaved, all queued before the writer runs, so they share batches.
        let sent = vec![
            head(1),
            data(1, WRITE_AS_IS),
            data(2, 10),
            data(3, 300_000),
            data(1, WRITE_AS_IS - 1),
            data(2, 70_000),
            data(4, 0),
            head(5),
        ];
        let (tx, rx) = mpsc::unbounded_channel();
        for frame in sent.clone() {
            tx.send(frame).unwrap();
        }
        drop(tx);
        tokio::spawn(write_loop(rx, write, CancellationToken::new()));
        let mut reader = FramedRead::new(theirs, FrameCodec::new(MAX_FRAME));
        for expected in sent {
            assert_eq!(reader.next().await.unwrap().unwrap(), expected);
        }
    }
}
