//! A deliberately simple http-mode worker for the watchdog's own tests: it speaks watchdog.v1 with the
//! watchdog's codec and misbehaves on request, so tests can check how the watchdog copes.
//!
//! `FAKE_WORKER` selects start-up behaviour: `normal` (default), `never-ready`, `init-error`, `exit-early`,
//! `no-pong` (serves requests but never answers pings).
//! The request path selects per-request behaviour: `/crash` exits with status 7 mid-request, `/garbage` writes
//! bytes that are not a frame, `/sleep` answers after 2 s, `/permanent`, `/retryable` and `/internal` answer
//! with that error kind, `/noise` prints to stdout first, `/crash-after-echo` echoes the first body chunk and
//! then exits with status 7, `/grpc-status` answers 500 with trailers `grpc-status: 5` and `grpc-message: nope`,
//! `/whole` answers `whole answer` with its head, data and end in one write; anything else echoes the body back,
//! streamed. A gRPC call has no path of its own: its `x-fake-worker` header
//! (metadata) names the behaviour instead.
//! With `FAKE_WORKER_IDS=<file>`, every stream id received is appended to that file.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use ng_watchdog::backend::framed::codec::{FrameCodec, MAX_FRAME};
use ng_watchdog::envelope::pb::watchdog::v1::{
    frame::Kind, Data, End, Error, ErrorKind, Frame, Header, Hello, InitError, Ready, ResponseHead, WindowUpdate,
};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, Mutex, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite};

fn frame(stream_id: u64, kind: Kind) -> Frame {
    Frame { stream_id, kind: Some(kind) }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mode = std::env::var("FAKE_WORKER").unwrap_or_else(|_| "normal".into());
    if mode == "exit-early" {
        eprintln!("fake worker: exiting before connecting");
        std::process::exit(4);
    }
    let path = std::env::var("WATCHDOG_SOCKET").expect("WATCHDOG_SOCKET is set by the watchdog");
    let stream = UnixStream::connect(path).await.expect("connect");
    let (read, write) = stream.into_split();
    let mut reader = FramedRead::new(read, FrameCodec::new(MAX_FRAME));
    let writer = Arc::new(Mutex::new(FramedWrite::new(write, FrameCodec::new(MAX_FRAME))));
    let send = |f: Frame| {
        let writer = Arc::clone(&writer);
        async move {
            let _ = writer.lock().await.send(f).await;
        }
    };
    let hello = Hello {
        protocol: "watchdog.v1".into(),
        sdk_name: "fake-worker".into(),
        sdk_version: "0".into(),
        max_concurrency: 0,
    };
    send(frame(0, Kind::Hello(hello))).await;
    let _ack = reader.next().await;
    match mode.as_str() {
        "never-ready" => {
            println!("fake worker: connected, never ready");
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        "init-error" => {
            send(frame(0, Kind::InitError(InitError { message: "cannot load the model".into() }))).await;
            std::process::exit(3);
        }
        _ => send(frame(0, Kind::Ready(Ready {}))).await,
    }

    // stream id → (sender of body chunks to the stream's task, credit for response data)
    let mut streams: std::collections::HashMap<u64, (mpsc::UnboundedSender<Option<Bytes>>, Arc<Semaphore>)> =
        Default::default();
    loop {
        let f = match reader.next().await {
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                eprintln!("fake worker: bad frame from the watchdog: {e}");
                std::process::exit(9);
            }
            None => break,
        };
        let id = f.stream_id;
        match f.kind {
            Some(Kind::Ping(_)) if mode == "no-pong" => {}
            Some(Kind::Ping(p)) => {
                send(frame(0, Kind::Pong(ng_watchdog::envelope::pb::watchdog::v1::Pong { nonce: p.nonce }))).await
            }
            Some(Kind::Shutdown(_)) => std::process::exit(0),
            Some(Kind::RequestHead(head)) => {
                if let Ok(path) = std::env::var("FAKE_WORKER_IDS") {
                    use std::io::Write;
                    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("ids file");
                    writeln!(file, "{id}").expect("write id");
                }
                let envelope = head.envelope.unwrap_or_default();
                let path = match envelope.header("x-fake-worker") {
                    Some(behaviour) => String::from_utf8_lossy(behaviour).into_owned(),
                    None => envelope.http().map(|h| String::from_utf8_lossy(&h.path).into_owned()).unwrap_or_default(),
                };
                let content_type = envelope.header("content-type").map(|v| v.to_vec());
                let (tx, mut rx) = mpsc::unbounded_channel::<Option<Bytes>>();
                let credit = Arc::new(Semaphore::new(256 * 1024));
                streams.insert(id, (tx, Arc::clone(&credit)));
                let writer = Arc::clone(&writer);
                tokio::spawn(async move {
                    let send = |f: Frame| {
                        let writer = Arc::clone(&writer);
                        async move {
                            let _ = writer.lock().await.send(f).await;
                        }
                    };
                    match path.as_str() {
                        "/crash" => std::process::exit(7),
                        "/garbage" => {
                            let mut w = writer.lock().await;
                            let _ = w.get_mut().write_all(b"\x00\x00\x00\x05garbage!").await;
                            return;
                        }
                        "/sleep" => tokio::time::sleep(Duration::from_secs(2)).await,
                        "/noise" => println!("fake worker: some noise on stdout for stream {id}"),
                        "/grpc-status" => {
                            let head = ResponseHead { status: 500, ..Default::default() };
                            send(frame(id, Kind::ResponseHead(Box::new(head)))).await;
                            let trailers = vec![
                                Header { name: "grpc-status".into(), value: Bytes::from_static(b"5") },
                                Header { name: "grpc-message".into(), value: Bytes::from_static(b"nope") },
                            ];
                            send(frame(id, Kind::End(End { trailers }))).await;
                            return;
                        }
                        "/whole" => {
                            let mut w = writer.lock().await;
                            let head = ResponseHead { status: 200, ..Default::default() };
                            let _ = w.feed(frame(id, Kind::ResponseHead(Box::new(head)))).await;
                            let data = Data { data: Bytes::from_static(b"whole answer") };
                            let _ = w.feed(frame(id, Kind::Data(data))).await;
                            let _ = w.feed(frame(id, Kind::End(End { trailers: vec![] }))).await;
                            let _ = w.flush().await;
                            return;
                        }
                        "/permanent" | "/retryable" | "/internal" => {
                            let kind = match path.as_str() {
                                "/permanent" => ErrorKind::Permanent,
                                "/retryable" => ErrorKind::Retryable,
                                _ => ErrorKind::Internal,
                            };
                            let message = format!("{} failure", &path[1..]);
                            send(frame(id, Kind::Error(Error { kind: kind as i32, message }))).await;
                            return;
                        }
                        _ => {}
                    }
                    let mut headers = vec![];
                    if let Some(ct) = content_type {
                        headers.push(Header { name: "content-type".into(), value: ct.into() });
                    }
                    let head = ResponseHead { status: 200, headers, ..Default::default() };
                    send(frame(id, Kind::ResponseHead(Box::new(head)))).await;
                    // Echo the body as it arrives, returning credit for what was received.
                    while let Some(Some(chunk)) = rx.recv().await {
                        let len = chunk.len() as u32;
                        // Respect the watchdog's window for response data.
                        match credit.acquire_many(len).await {
                            Ok(permit) => permit.forget(),
                            Err(_) => return,
                        }
                        send(frame(id, Kind::Data(Data { data: chunk }))).await;
                        if path == "/crash-after-echo" {
                            std::process::exit(7);
                        }
                        send(frame(id, Kind::WindowUpdate(WindowUpdate { increment: len }))).await;
                    }
                    send(frame(id, Kind::End(End { trailers: vec![] }))).await;
                });
            }
            Some(Kind::Data(data)) => {
                if let Some((tx, _)) = streams.get(&id) {
                    let _ = tx.send(Some(data.data));
                }
            }
            Some(Kind::WindowUpdate(update)) => {
                if let Some((_, credit)) = streams.get(&id) {
                    credit.add_permits(update.increment as usize);
                }
            }
            Some(Kind::End(_)) => {
                if let Some((tx, _)) = streams.get(&id) {
                    let _ = tx.send(None);
                }
            }
            Some(Kind::Cancel(_)) => {
                if let Some((tx, credit)) = streams.remove(&id) {
                    let _ = tx.send(None);
                    credit.close();
                }
            }
            _ => {}
        }
    }
}
