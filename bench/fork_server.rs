//! A minimal fork-per-request HTTP server: what an experienced Rust developer writes in an hour, with none of the
//! watchdog's features (no CGI environment, no limits, no timeouts, no metrics, no logs).
//!
//! Listens on `127.0.0.1:PORT` (first argument, default 8091); for every request it spawns `cat` with
//! `tokio::process`, writes the request body to its stdin, and answers 200 with its stdout. `bench/run.sh`'s
//! `fork-server` case measures it beside the spawn floor, to show how much of the gap between classic mode and the
//! floor any HTTP front costs on this machine.
//!
//! ```text
//! cargo run --release --example fork_server -- 8091
//! ```

use std::convert::Infallible;
use std::process::Stdio;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::process::Command;

async fn run_cat(req: Request<Incoming>) -> std::io::Result<Bytes> {
    let body = req.into_body().collect().await.map_err(std::io::Error::other)?.to_bytes();
    let mut child = Command::new("cat").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    // Fed while the output is read: `cat` stops reading once its stdout pipe is full.
    let feed = async move { stdin.write_all(&body).await };
    let (fed, output) = tokio::join!(feed, child.wait_with_output());
    fed?;
    Ok(Bytes::from(output?.stdout))
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match run_cat(req).await {
        Ok(out) => Response::new(Full::new(out)),
        Err(e) => {
            let mut r = Response::new(Full::new(Bytes::from(e.to_string())));
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r
        }
    })
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = match std::env::args().nth(1) {
        Some(p) => p.parse().expect("PORT must be a number"),
        None => 8091,
    };
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let io = TokioIo::new(stream);
            let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(io, service_fn(handle)).await;
        });
    }
}
