//! A bare framed-echo server: the reference for http mode, with none of its work.
//!
//! `framed_echo PORT` serves HTTP/1.1 on `127.0.0.1:PORT` with hyper on one thread (as the watchdog's http mode
//! runs by default) and starts itself again as the worker, connected by a Unix socket pair. Each request body goes
//! to the worker as one frame (u32 big-endian length, u64 request id, the body); the worker echoes every complete
//! frame it has read back in one write, and the server answers 200 with the echoed body. No protobuf, no envelope,
//! headers, deadlines, flow control, metrics or logs: what is left is the cost of the second hop itself.
//! `bench/run.sh`'s `framed-echo` case measures it beside the Rust SDK's echo. A request with `ce-` headers
//! (a binary-mode CloudEvent) gets them back on its answer, as a reply event's would be, with no parsing or
//! checks: `framed-echo-ce` against `framed-echo` is what hyper alone spends on an event's headers.
//!
//! ```text
//! cargo run --release --example framed_echo -- 8092
//! ```

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::process::{Command, Stdio};
use std::rc::Rc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// Requests waiting for the worker's echo, by id.
type Pending = Rc<RefCell<HashMap<u64, oneshot::Sender<Bytes>>>>;

/// Appends one frame to `out`.
fn put_frame(out: &mut BytesMut, id: u64, body: &[u8]) {
    out.put_u32((8 + body.len()) as u32);
    out.put_u64(id);
    out.put_slice(body);
}

/// Splits the next complete frame off `buf`, if there is one.
fn take_frame(buf: &mut BytesMut) -> Option<(u64, BytesMut)> {
    if buf.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    if buf.len() < 4 + len {
        return None;
    }
    let mut frame = buf.split_to(4 + len);
    frame.advance(4);
    let id = frame.get_u64();
    Some((id, frame))
}

/// The worker: blocking reads, every complete frame echoed, one write per read.
fn worker() -> std::io::Result<()> {
    let mut socket = StdUnixStream::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut out = BytesMut::with_capacity(64 * 1024);
    loop {
        buf.reserve(64 * 1024);
        let mut chunk = buf.split_off(buf.len());
        chunk.resize(chunk.capacity(), 0);
        let n = socket.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        chunk.truncate(n);
        buf.unsplit(chunk);
        while let Some((id, body)) = take_frame(&mut buf) {
            put_frame(&mut out, id, &body);
        }
        socket.write_all(&out)?;
        out.clear();
    }
}

async fn serve(port: u16) -> std::io::Result<()> {
    let (ours, theirs) = StdUnixStream::pair()?;
    let exe = std::env::current_exe()?;
    let _worker = Command::new(exe).arg("worker").stdin(Stdio::from(OwnedFd::from(theirs))).spawn()?;
    ours.set_nonblocking(true)?;
    let (mut reader, mut writer) = UnixStream::from_std(ours)?.into_split();
    let pending: Pending = Rc::default();
    let (to_worker, mut outbox) = mpsc::unbounded_channel::<(u64, Bytes)>();

    // Everything queued goes out in one write.
    tokio::task::spawn_local(async move {
        let mut out = BytesMut::with_capacity(64 * 1024);
        while let Some((id, body)) = outbox.recv().await {
            put_frame(&mut out, id, &body);
            while let Ok((id, body)) = outbox.try_recv() {
                put_frame(&mut out, id, &body);
            }
            if writer.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    });
    let answers = Rc::clone(&pending);
    tokio::task::spawn_local(async move {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            buf.reserve(64 * 1024);
            match reader.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            while let Some((id, body)) = take_frame(&mut buf) {
                if let Some(reply) = answers.borrow_mut().remove(&id) {
                    let _ = reply.send(body.freeze());
                }
            }
        }
    });

    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    // One id sequence for every connection: requests are told apart by id alone.
    let next_id = Rc::new(Cell::new(0u64));
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let pending = Rc::clone(&pending);
        let to_worker = to_worker.clone();
        let next_id = Rc::clone(&next_id);
        tokio::task::spawn_local(async move {
            let service = service_fn(|req: Request<Incoming>| {
                let id = next_id.replace(next_id.get() + 1);
                let pending = Rc::clone(&pending);
                let to_worker = to_worker.clone();
                async move { Ok::<_, Infallible>(echo(req, id, &pending, &to_worker).await) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn echo(
    req: Request<Incoming>,
    id: u64,
    pending: &Pending,
    to_worker: &mpsc::UnboundedSender<(u64, Bytes)>,
) -> Response<Full<Bytes>> {
    let failed = |status| {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = status;
        response
    };
    let event_headers: Vec<_> = req
        .headers()
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("ce-"))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    let Ok(body) = req.into_body().collect().await else { return failed(StatusCode::BAD_REQUEST) };
    let (reply, answer) = oneshot::channel();
    pending.borrow_mut().insert(id, reply);
    if to_worker.send((id, body.to_bytes())).is_err() {
        return failed(StatusCode::BAD_GATEWAY);
    }
    match answer.await {
        Ok(body) => {
            let mut response = Response::new(Full::new(body));
            response.headers_mut().extend(event_headers);
            response
        }
        Err(_) => failed(StatusCode::BAD_GATEWAY),
    }
}

fn main() -> std::io::Result<()> {
    let arg = std::env::args().nth(1);
    if arg.as_deref() == Some("worker") {
        // The server going away ends the worker, whether mid-read or mid-write.
        return match worker() {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe && e.kind() != std::io::ErrorKind::ConnectionReset => {
                Err(e)
            }
            _ => Ok(()),
        };
    }
    let port: u16 = match arg {
        Some(p) => p.parse().expect("PORT must be a number"),
        None => 8092,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    tokio::task::LocalSet::new().block_on(&runtime, serve(port))
}
