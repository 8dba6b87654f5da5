//! http mode end to end with each SDK's real worker process and the real binary: concurrency, large bodies,
//! a worker killed mid-request, stdout noise, error kinds, SIGTERM with requests in flight.
//! `scripts/test.sh` installs what the SDKs need (sdk/python/.venv, sdk/node/node_modules) before this runs.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{script, Binary};
use futures_util::StreamExt;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const PYTHON_HANDLER: &str = r#"
import os, sys, time
import watchdog_sdk

def handle(request):
    if request.kind == "cloudevent":
        return on_event(request)
    if request.path == "/sleep":
        time.sleep(1)
        return b"slept"
    if request.path == "/crash":
        os._exit(7)
    if request.path == "/print":
        print("noise from the handler", flush=True)
    if request.path == "/permanent":
        raise watchdog_sdk.PermanentError("bad input")
    if request.path == "/boom":
        raise ValueError("unexpected")
    return watchdog_sdk.Response(200, {"content-type": request.headers.get("content-type", "application/octet-stream")}, request.body)

def on_event(request):
    attrs = request.event.attributes
    kind = attrs["type"]
    if kind == "quiet":
        return None
    if kind == "permanent":
        raise watchdog_sdk.PermanentError("bad event")
    if kind == "retryable":
        raise watchdog_sdk.RetryableError("later")
    if kind == "crash":
        os._exit(3)
    if kind == "bytes":
        return request.event.data
    return watchdog_sdk.CloudEvent({"type": "com.example.own", "subject": attrs.get("subject", "") + "!"}, request.event.data.upper())

watchdog_sdk.serve(handle)
"#;

const NODE_HANDLER: &str = r#"
const { serve, Response, CloudEvent, PermanentError, RetryableError } = require(process.env.SDK_NODE);
function onEvent(request) {
  const attrs = request.event.attributes;
  switch (attrs.type) {
    case 'quiet': return null;
    case 'permanent': throw new PermanentError('bad event');
    case 'retryable': throw new RetryableError('later');
    case 'crash': process.exit(3);
    case 'bytes': return request.event.data;
    default: return new CloudEvent({ type: 'com.example.own', subject: (attrs.subject || '') + '!' }, Buffer.from(request.event.data.toString().toUpperCase()));
  }
}
serve(async (request) => {
  if (request.kind === 'cloudevent') return onEvent(request);
  if (request.path === '/sleep') { await new Promise((r) => setTimeout(r, 1000)); return Buffer.from('slept'); }
  if (request.path === '/crash') process.exit(7);
  if (request.path === '/print') console.log('noise from the handler');
  if (request.path === '/permanent') throw new PermanentError('bad input');
  if (request.path === '/boom') throw new Error('unexpected');
  return new Response(200, { 'content-type': request.headers.get('content-type') || 'application/octet-stream' }, request.body);
});
"#;

#[derive(Clone, Copy, Debug)]
enum Sdk {
    Python,
    Node,
    /// The Rust SDK's echo example (echo only).
    Rust,
}

/// Starts the real binary in http mode with `sdk`'s test handler.
async fn start(sdk: Sdk, extra: &[(&str, &str)]) -> Binary {
    let tmp = tempfile::tempdir().unwrap();
    let worker = match sdk {
        Sdk::Python => {
            let python = repo().join("sdk/python/.venv/bin/python");
            assert!(python.exists(), "{} is missing: run scripts/test.sh, which creates it", python.display());
            std::fs::write(tmp.path().join("handler.py"), PYTHON_HANDLER).unwrap();
            script(
                tmp.path(),
                "worker.sh",
                &format!(
                    "PYTHONPATH={} exec {} {}/handler.py",
                    repo().join("sdk/python").display(),
                    python.display(),
                    tmp.path().display()
                ),
            )
        }
        Sdk::Node => {
            let modules = repo().join("sdk/node/node_modules");
            assert!(modules.exists(), "{} is missing: run scripts/test.sh, which installs it", modules.display());
            std::fs::write(tmp.path().join("handler.js"), NODE_HANDLER).unwrap();
            script(
                tmp.path(),
                "worker.sh",
                &format!(
                    "SDK_NODE={} exec node {}/handler.js",
                    repo().join("sdk/node").display(),
                    tmp.path().display()
                ),
            )
        }
        Sdk::Rust => {
            // Built by `cargo test --workspace` with the other examples.
            let exe = std::env::current_exe().unwrap();
            let echo = exe.parent().unwrap().parent().unwrap().join("examples/echo");
            assert!(echo.exists(), "{} is missing: cargo test --workspace builds it", echo.display());
            echo
        }
    };
    let mut vars = vec![("mode", "http"), ("fprocess", worker.to_str().unwrap()), ("healthcheck_interval", "0")];
    vars.extend_from_slice(extra);
    let worker_path = worker.to_str().unwrap().to_string();
    let vars: Vec<(&str, &str)> =
        vars.iter().map(|(k, v)| (*k, if *k == "fprocess" { worker_path.as_str() } else { *v })).collect();
    Binary::start_in(tmp, &vars).await
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn ready(binary: &Binary) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while client().get(binary.url("/_/ready")).send().await.unwrap().status() != 200 {
        assert!(std::time::Instant::now() < deadline, "worker not ready again; log:\n{}", binary.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn concurrency_and_large_bodies(sdk: Sdk) {
    let binary = start(sdk, &[]).await;
    let requests = (0..64).map(|i| {
        let url = binary.url("/echo");
        async move {
            let body = format!("{i} says hello");
            let resp = client().post(url).header("content-type", "text/plain").body(body.clone()).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["content-type"], "text/plain");
            assert_eq!(resp.text().await.unwrap(), body);
        }
    });
    futures_util::stream::iter(requests).buffer_unordered(64).collect::<Vec<_>>().await;

    let body: Vec<u8> = (0..(8u32 << 20)).map(|i| (i % 251) as u8).collect();
    let resp = client().post(binary.url("/echo")).body(body.clone()).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{sdk:?}");
    let echoed = resp.bytes().await.unwrap();
    assert_eq!(echoed.len(), body.len(), "{sdk:?}");
    assert!(echoed[..] == body[..], "{sdk:?}");
}

async fn failures(sdk: Sdk) {
    let binary = start(sdk, &[]).await;
    let resp = client().post(binary.url("/permanent")).send().await.unwrap();
    assert_eq!(resp.status(), 400, "{sdk:?}");
    assert!(resp.text().await.unwrap().contains("bad input"));
    let resp = client().post(binary.url("/boom")).send().await.unwrap();
    assert_eq!(resp.status(), 500, "{sdk:?}");
    let text = resp.text().await.unwrap();
    assert!(text.contains("unexpected") && !text.contains("Traceback") && !text.contains("    at "), "{text}");

    // stdout is free for logs: noise never corrupts the frames.
    for _ in 0..10 {
        let resp = client().post(binary.url("/print")).body("still fine").send().await.unwrap();
        assert_eq!(resp.text().await.unwrap(), "still fine");
    }

    // A worker killed mid-request: the request in flight gets 502 naming the exit, the next one succeeds.
    let in_flight = tokio::spawn(client().post(binary.url("/sleep")).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let crash = client().post(binary.url("/crash")).send().await.unwrap();
    assert_eq!(crash.status(), 502, "{sdk:?}");
    assert!(crash.text().await.unwrap().contains("exit status 7"));
    let slept = in_flight.await.unwrap().unwrap();
    assert_eq!(slept.status(), 502);
    ready(&binary).await;
    let resp = client().post(binary.url("/echo")).body("after the crash").send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "after the crash");
    let log = binary.log();
    assert!(log.contains("noise from the handler"), "worker stdout is logged: {log}");
}

async fn sigterm_drains(sdk: Sdk) {
    let mut binary = start(sdk, &[("write_timeout", "10s")]).await;
    let in_flight: Vec<_> = (0..4).map(|_| tokio::spawn(client().post(binary.url("/sleep")).send())).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    binary.sigterm();
    for request in in_flight {
        let resp = request.await.unwrap().unwrap();
        assert_eq!(resp.status(), 200, "{sdk:?}");
        assert_eq!(resp.text().await.unwrap(), "slept");
    }
    let status = tokio::time::timeout(Duration::from_secs(10), binary.child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0));
}

/// A binary-mode event of type `kind`.
fn event(binary: &Binary, kind: &str, data: &'static str) -> reqwest::RequestBuilder {
    client()
        .post(binary.url("/"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "e-1")
        .header("ce-source", "/tests")
        .header("ce-type", kind)
        .header("ce-subject", "caf%C3%A9")
        .header("content-type", "text/plain")
        .body(data)
}

async fn cloudevents(sdk: Sdk) {
    let binary = start(sdk, &[]).await;
    // The function's own reply event: its attributes win, the watchdog fills id, source and specversion.
    let resp = event(&binary, "com.example.created", "hi").send().await.unwrap();
    assert_eq!(resp.status(), 200, "{sdk:?}");
    let h = resp.headers().clone();
    assert_eq!(h["ce-type"], "com.example.own", "{sdk:?}");
    assert_eq!(h["ce-subject"], "caf%C3%A9!", "{sdk:?}");
    assert_eq!(h["ce-specversion"], "1.0");
    assert!(!h["ce-id"].is_empty() && !h["ce-source"].is_empty(), "{h:?}");
    assert_eq!(resp.text().await.unwrap(), "HI");
    // Bytes become the data of a default reply event.
    let resp = event(&binary, "bytes", "raw").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["ce-type"], "bytes.reply", "{sdk:?}");
    assert_eq!(resp.headers()["ce-source"], "/fwatchdog", "{sdk:?}");
    assert_eq!(resp.text().await.unwrap(), "raw");
    let resp = event(&binary, "quiet", "x").send().await.unwrap();
    assert_eq!(resp.status(), 202, "{sdk:?}");
    assert!(resp.headers().get("ce-id").is_none());
    assert!(resp.bytes().await.unwrap().is_empty());
    assert_eq!(event(&binary, "permanent", "x").send().await.unwrap().status(), 400, "{sdk:?}");
    let resp = event(&binary, "retryable", "x").send().await.unwrap();
    assert_eq!(resp.status(), 503, "{sdk:?}");
    assert_eq!(resp.headers()["retry-after"], "1");
    // A crash is a 500 for an event (Knative retries it), not the 502 plain HTTP gets.
    let resp = event(&binary, "crash", "x").send().await.unwrap();
    assert_eq!(resp.status(), 500, "{sdk:?}");
    assert!(resp.text().await.unwrap().contains("exit status 3"));
}

#[tokio::test]
async fn python_cloudevents() {
    cloudevents(Sdk::Python).await;
}

#[tokio::test]
async fn node_cloudevents() {
    cloudevents(Sdk::Node).await;
}

#[tokio::test]
async fn python_concurrency_and_large_bodies() {
    concurrency_and_large_bodies(Sdk::Python).await;
}

#[tokio::test]
async fn python_failures() {
    failures(Sdk::Python).await;
}

#[tokio::test]
async fn python_sigterm_drains() {
    sigterm_drains(Sdk::Python).await;
}

#[tokio::test]
async fn node_concurrency_and_large_bodies() {
    concurrency_and_large_bodies(Sdk::Node).await;
}

#[tokio::test]
async fn node_failures() {
    failures(Sdk::Node).await;
}

#[tokio::test]
async fn node_sigterm_drains() {
    sigterm_drains(Sdk::Node).await;
}

#[tokio::test]
async fn rust_concurrency_and_large_bodies() {
    concurrency_and_large_bodies(Sdk::Rust).await;
}

#[tokio::test]
async fn rust_a_large_stream_both_ways_keeps_the_watchdogs_memory_flat() {
    let binary = start(Sdk::Rust, &[]).await;
    client().post(binary.url("/echo")).body("warm up").send().await.unwrap().bytes().await.unwrap();
    let before = binary.status_kb("VmHWM");
    let chunk = bytes::Bytes::from(vec![7u8; 1 << 20]);
    let upload = futures_util::stream::iter((0..256).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let resp = client().post(binary.url("/echo")).body(reqwest::Body::wrap_stream(upload)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut received = 0usize;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        received += chunk.unwrap().len();
    }
    assert_eq!(received, 256 << 20);
    let grown_mib = binary.status_kb("VmHWM").saturating_sub(before) / 1024;
    assert!(grown_mib < 16, "peak RSS grew by {grown_mib} MiB streaming 256 MiB each way");
}
