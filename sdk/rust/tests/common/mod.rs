//! A fake watchdog: listens on a Unix socket in a fresh temporary directory, runs the SDK's `serve_at` in-process
//! against it, and plays the watchdog's side of `watchdog.v1` frame by frame, checking the SDK as it goes.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;
use watchdog_sdk::codec::{FrameCodec, DEFAULT_MAX_FRAME_BYTES, HANDSHAKE_MAX_FRAME_BYTES};
use watchdog_sdk::proto::io::cloudevents::v1 as ce;
use watchdog_sdk::proto::watchdog::v1::{
    envelope, frame::Kind, Cancel, Data, Drain, End, Envelope, Error as ErrorFrame, Frame, Header, Hello, HelloAck,
    HttpRequest, Ping, RequestHead, ResponseHead, Shutdown, WindowUpdate,
};
use watchdog_sdk::{Error, Handler, Options};

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);
/// How long the fake takes to "consume" response bytes before returning credit.
pub const GRANT_DELAY: Duration = Duration::from_millis(3);

pub fn default_ack() -> HelloAck {
    HelloAck {
        max_frame_bytes: 2 * 1024 * 1024,
        max_chunk_bytes: 64 * 1024,
        initial_window_bytes: 256 * 1024,
        worker_id: 3,
    }
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("wdsdk-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What came back on one stream.
#[derive(Debug, Default)]
pub struct Resp {
    pub head: Option<ResponseHead>,
    pub body: Vec<u8>,
    pub chunks: Vec<usize>,
    pub end: Option<End>,
    pub error: Option<ErrorFrame>,
}

impl Resp {
    pub fn finished(&self) -> bool {
        self.end.is_some() || self.error.is_some()
    }

    pub fn status(&self) -> u32 {
        self.head.as_ref().expect("a ResponseHead").status
    }

    pub fn header(&self, name: &str) -> Vec<String> {
        let head = self.head.as_ref().expect("a ResponseHead");
        head.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8(h.value.to_vec()).unwrap())
            .collect()
    }
}

pub struct Fake {
    pub io: Framed<UnixStream, FrameCodec>,
    pub serve: JoinHandle<Result<(), Error>>,
    pub hello: Hello,
    pub ack: HelloAck,
    pub next_id: u64,
    pub _dir: TempDir,
}

/// Listens, accepts the SDK's connection and completes the handshake (Hello → HelloAck → Ready).
pub async fn start<H: Handler>(options: Options, ack: HelloAck, handler: H) -> Fake {
    let dir = TempDir::new();
    let path = dir.0.join("w.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let serve = tokio::spawn(watchdog_sdk::serve_at(path, options, handler));
    let (mut io, hello) = accept_hello(&listener).await;
    io.send(frame(0, Kind::HelloAck(ack))).await.unwrap();
    io.codec_mut().set_max_frame_bytes(if ack.max_frame_bytes == 0 {
        DEFAULT_MAX_FRAME_BYTES
    } else {
        ack.max_frame_bytes as usize
    });
    let mut fake = Fake { io, serve, hello, ack, next_id: 1, _dir: dir };
    let ready = fake.recv().await;
    assert_eq!(ready.stream_id, 0);
    assert!(matches!(ready.kind, Some(Kind::Ready(_))), "expected Ready, got {ready:?}");
    fake
}

pub async fn accept_hello(listener: &UnixListener) -> (Framed<UnixStream, FrameCodec>, Hello) {
    let (sock, _) = tokio::time::timeout(WAIT, listener.accept()).await.expect("the SDK connects").unwrap();
    let mut io = Framed::new(sock, FrameCodec::new(HANDSHAKE_MAX_FRAME_BYTES));
    let first = tokio::time::timeout(WAIT, io.next()).await.expect("Hello in time").expect("a frame").unwrap();
    assert_eq!(first.stream_id, 0, "Hello goes on stream 0");
    let Some(Kind::Hello(hello)) = first.kind else { panic!("expected Hello first, got {first:?}") };
    (io, hello)
}

pub fn frame(stream_id: u64, kind: Kind) -> Frame {
    Frame { stream_id, kind: Some(kind) }
}

pub fn http_envelope(method: &str, path: &str, headers: &[(&str, &str)]) -> Envelope {
    Envelope {
        request_id: "req-1".into(),
        headers: headers.iter().map(|(n, v)| Header { name: (*n).into(), value: Bytes::from(v.to_string()) }).collect(),
        content_length: -1,
        kind: Some(envelope::Kind::Http(HttpRequest {
            method: method.into(),
            path: Bytes::from(path.to_string()),
            host: "example.com".into(),
            version: "HTTP/1.1".into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub fn cloudevent_envelope(ev: ce::CloudEvent) -> Envelope {
    Envelope {
        request_id: "ce-1".into(),
        content_length: -1,
        kind: Some(envelope::Kind::Cloudevent(ev)),
        ..Default::default()
    }
}

impl Fake {
    pub fn window(&self) -> i64 {
        i64::from(self.ack.initial_window_bytes)
    }

    pub async fn send(&mut self, f: Frame) {
        tokio::time::timeout(WAIT, self.io.send(f)).await.expect("send in time").unwrap();
    }

    /// The next frame from the SDK; fails the test on timeout, EOF or a codec error.
    pub async fn recv(&mut self) -> Frame {
        match tokio::time::timeout(WAIT, self.io.next()).await {
            Err(_) => panic!("timed out waiting for a frame from the SDK"),
            Ok(None) => panic!("the SDK closed the connection"),
            Ok(Some(Err(e))) => panic!("bad frame from the SDK: {e}"),
            Ok(Some(Ok(f))) => f,
        }
    }

    /// `Some(frame)` if one arrives within `d`.
    pub async fn try_recv(&mut self, d: Duration) -> Option<Frame> {
        match tokio::time::timeout(d, self.io.next()).await {
            Err(_) => None,
            Ok(None) => panic!("the SDK closed the connection"),
            Ok(Some(Err(e))) => panic!("bad frame from the SDK: {e}"),
            Ok(Some(Ok(f))) => Some(f),
        }
    }

    /// Opens a stream with a RequestHead; returns its id.
    pub async fn open(&mut self, envelope: Envelope) -> u64 {
        let id = self.next_id;
        self.next_id += 2;
        self.send(frame(id, Kind::RequestHead(Box::new(RequestHead { envelope: Some(envelope) })))).await;
        id
    }

    pub async fn data(&mut self, id: u64, bytes: impl Into<Bytes>) {
        self.send(frame(id, Kind::Data(Data { data: bytes.into() }))).await;
    }

    pub async fn end(&mut self, id: u64) {
        self.send(frame(id, Kind::End(End::default()))).await;
    }

    pub async fn ping(&mut self, nonce: u64) {
        self.send(frame(0, Kind::Ping(Ping { nonce }))).await;
    }

    pub async fn cancel(&mut self, id: u64) {
        self.send(frame(id, Kind::Cancel(Cancel { reason: "client disconnected".into() }))).await;
    }

    pub async fn drain(&mut self) {
        self.send(frame(0, Kind::Drain(Drain {}))).await;
    }

    pub async fn shutdown(&mut self) {
        self.send(frame(0, Kind::Shutdown(Shutdown { grace_ms: 5000 }))).await;
    }

    /// One request with a body that fits in the window, then its response.
    pub async fn call(&mut self, envelope: Envelope, body: &[u8]) -> Resp {
        let id = self.open(envelope).await;
        self.exchange(vec![(id, Bytes::copy_from_slice(body))]).await.remove(&id).unwrap()
    }

    /// Sends each request body (respecting the SDK's window and max_chunk_bytes, waiting for its WindowUpdates)
    /// and End, while collecting the responses, granting the SDK credit only GRANT_DELAY after each half-window
    /// has arrived, and asserting that the SDK never sends beyond its window or above max_chunk_bytes. Returns
    /// once every stream got End or Error.
    pub async fn exchange(&mut self, requests: Vec<(u64, Bytes)>) -> HashMap<u64, Resp> {
        struct Out {
            body: Bytes,
            sent: usize,
            ended: bool,
            credit: i64,
        }
        let window = self.window();
        let chunk = self.ack.max_chunk_bytes as usize;
        let mut order: Vec<u64> = requests.iter().map(|(id, _)| *id).collect();
        order.sort_unstable();
        let mut out: HashMap<u64, Out> =
            requests.into_iter().map(|(id, body)| (id, Out { body, sent: 0, ended: false, credit: window })).collect();
        let mut resps: HashMap<u64, Resp> = order.iter().map(|id| (*id, Resp::default())).collect();
        let mut sdk_credit: HashMap<u64, i64> = order.iter().map(|id| (*id, window)).collect();
        let mut unacked: HashMap<u64, i64> = order.iter().map(|id| (*id, 0)).collect();
        // Credit is returned to the SDK GRANT_DELAY after the bytes arrived: an SDK that sends without waiting
        // for WindowUpdates overruns its window meanwhile and trips the assertion below.
        let mut grants: Vec<(Instant, u64, i64)> = Vec::new();
        loop {
            let now = Instant::now();
            for &(_, id, inc) in grants.iter().filter(|g| g.0 <= now) {
                *sdk_credit.get_mut(&id).unwrap() += inc;
                self.io.feed(frame(id, Kind::WindowUpdate(WindowUpdate { increment: inc as u32 }))).await.unwrap();
            }
            grants.retain(|g| g.0 > now);
            for id in &order {
                let o = out.get_mut(id).unwrap();
                while o.sent < o.body.len() && o.credit > 0 {
                    let n = chunk.min(o.body.len() - o.sent).min(o.credit as usize);
                    let piece = o.body.slice(o.sent..o.sent + n);
                    self.io.feed(frame(*id, Kind::Data(Data { data: piece }))).await.unwrap();
                    o.sent += n;
                    o.credit -= n as i64;
                }
                if o.sent == o.body.len() && !o.ended {
                    self.io.feed(frame(*id, Kind::End(End::default()))).await.unwrap();
                    o.ended = true;
                }
            }
            tokio::time::timeout(WAIT, SinkExt::<Frame>::flush(&mut self.io)).await.expect("flush in time").unwrap();
            if resps.values().all(Resp::finished) {
                return resps;
            }
            let f = match grants.iter().map(|g| g.0).min() {
                None => self.recv().await,
                Some(at) => match self.try_recv(at.saturating_duration_since(Instant::now())).await {
                    Some(f) => f,
                    None => continue,
                },
            };
            let id = f.stream_id;
            let kind = f.kind.expect("frames have a kind");
            if let Kind::WindowUpdate(w) = &kind {
                assert!(w.increment > 0, "zero WindowUpdate");
                if let Some(o) = out.get_mut(&id) {
                    o.credit += i64::from(w.increment);
                    assert!(o.credit <= window, "stream {id}: the SDK granted more than it received");
                }
                continue;
            }
            let resp = resps.get_mut(&id).unwrap_or_else(|| panic!("frame for unexpected stream {id}: {kind:?}"));
            assert!(!resp.finished(), "stream {id}: frame after End/Error: {kind:?}");
            match kind {
                Kind::ResponseHead(h) => {
                    assert!(resp.head.is_none(), "stream {id}: two ResponseHeads");
                    resp.head = Some(*h);
                }
                Kind::Data(d) => {
                    assert!(resp.head.is_some(), "stream {id}: Data before ResponseHead");
                    let n = d.data.len();
                    assert!(n > 0, "stream {id}: empty Data frame");
                    assert!(n <= chunk, "stream {id}: Data of {n} bytes > max_chunk_bytes {chunk}");
                    let credit = sdk_credit.get_mut(&id).unwrap();
                    *credit -= n as i64;
                    assert!(*credit >= 0, "stream {id}: the SDK exceeded its window by {} bytes", -*credit);
                    let un = unacked.get_mut(&id).unwrap();
                    *un += n as i64;
                    if *un >= window / 2 {
                        grants.push((Instant::now() + GRANT_DELAY, id, std::mem::take(un)));
                    }
                    resp.chunks.push(n);
                    resp.body.extend_from_slice(&d.data);
                }
                Kind::End(e) => {
                    assert!(resp.head.is_some(), "stream {id}: End without ResponseHead");
                    resp.end = Some(e);
                }
                Kind::Error(e) => resp.error = Some(e),
                other => panic!("unexpected frame on stream {id}: {other:?}"),
            }
        }
    }

    /// Waits for `serve` to return.
    pub async fn serve_result(self) -> Result<(), Error> {
        tokio::time::timeout(WAIT, self.serve).await.expect("serve returns in time").expect("serve did not panic")
    }
}
