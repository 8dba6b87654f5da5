//! `mode=http` with `upstream_url`: a reverse proxy to the function's own HTTP server (of-watchdog's http mode),
//! which the watchdog starts, waits for, and restarts.

mod common;

use std::time::{Duration, Instant};

use common::{free_port, script, Server};
use futures_util::StreamExt;

const UPSTREAM: &str = r#"
import http.server, os, sys, time
port = int(sys.argv[1])
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self): self.answer()
    def do_POST(self): self.answer()
    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.startswith("/sleep"):
            time.sleep(2)
        if self.path.startswith("/exit"):
            os._exit(3)
        if self.path.startswith("/stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(3):
                event = f"data: {i}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
                time.sleep(0.5)
            self.wfile.write(b"0\r\n\r\n")
            return
        out = body + f" host={self.headers.get('Host')} path={self.path}".encode()
        self.send_response(201)
        self.send_header("Content-Type", self.headers.get("Content-Type", "text/plain"))
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    def log_message(self, *args):
        pass
time.sleep(float(os.environ.get("START_DELAY", "0")))
http.server.ThreadingHTTPServer.allow_reuse_address = True
with http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler) as server:
    server.serve_forever()
"#;

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn start(extra: &[(&str, &str)], start_delay: &str) -> Server {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(tmp.path().join("upstream.py"), UPSTREAM).unwrap();
    let launcher = script(
        tmp.path(),
        "upstream.sh",
        &format!("START_DELAY={start_delay} exec python3 {}/upstream.py {port}", tmp.path().display()),
    );
    let url = format!("http://127.0.0.1:{port}");
    let mut vars = vec![("mode", "http"), ("fprocess", launcher.to_str().unwrap()), ("upstream_url", url.as_str())];
    vars.extend_from_slice(extra);
    Server::start_in_unready(tmp, &vars).await
}

async fn wait_ready(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while client().get(server.url("/_/ready")).send().await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "upstream never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn forwards_method_path_query_headers_and_body() {
    let server = start(&[], "0").await;
    wait_ready(&server).await;
    let resp = client()
        .post(server.url("/fn/path?x=1&y=%20"))
        .header("content-type", "application/json")
        .body("{\"a\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "the upstream's status is kept");
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert!(resp.headers().contains_key("x-duration-seconds"));
    let text = resp.text().await.unwrap();
    assert!(text.starts_with("{\"a\":1} "), "{text}");
    assert!(text.contains("path=/fn/path?x=1&y=%20"), "{text}");
    assert!(text.contains(&format!("host={}", server.addr)), "the original Host is kept: {text}");
    server.stop().await;
}

#[tokio::test]
async fn readiness_waits_for_the_upstream_to_accept() {
    let server = start(&[], "1.0").await;
    let early = client().get(server.url("/_/ready")).send().await.unwrap();
    assert_eq!(early.status(), 503);
    assert!(early.text().await.unwrap().contains("not accepting connections yet"));
    assert_eq!(client().get(server.url("/_/health")).send().await.unwrap().status(), 503);
    wait_ready(&server).await;
    assert_eq!(client().post(server.url("/")).body("x").send().await.unwrap().status(), 201);
    server.stop().await;
}

#[tokio::test]
async fn x_timeout_and_exec_timeout_give_504() {
    let server = start(&[("exec_timeout", "5s")], "0").await;
    wait_ready(&server).await;
    let started = Instant::now();
    let resp = client().post(server.url("/sleep")).header("X-Timeout", "300ms").send().await.unwrap();
    assert_eq!(resp.status(), 504);
    assert!(started.elapsed() < Duration::from_millis(1500));
    server.stop().await;

    let server = start(&[("exec_timeout", "300ms")], "0").await;
    wait_ready(&server).await;
    let started = Instant::now();
    let resp = client().post(server.url("/sleep")).header("X-Timeout", "10s").send().await.unwrap();
    assert_eq!(resp.status(), 504, "X-Timeout cannot lengthen exec_timeout");
    assert!(started.elapsed() < Duration::from_millis(1500));
    server.stop().await;
}

#[tokio::test]
async fn a_dead_upstream_is_restarted() {
    let server = start(&[], "0").await;
    wait_ready(&server).await;
    let resp = client().post(server.url("/exit")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert!(resp.text().await.unwrap().contains("upstream"));
    // The supervisor notices the exit, waits its backoff, starts the server again and waits for it to accept.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let resp = client().post(server.url("/again")).body("x").send().await.unwrap();
        if resp.status() == 201 {
            break;
        }
        assert!(Instant::now() < deadline, "the upstream was not restarted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn event_streams_are_passed_on_as_they_come() {
    let server = start(&[], "0").await;
    wait_ready(&server).await;
    let started = Instant::now();
    let resp = client().get(server.url("/stream")).send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut chunks = resp.bytes_stream();
    let first = chunks.next().await.unwrap().unwrap();
    assert_eq!(&first[..], b"data: 0\n\n");
    assert!(started.elapsed() < Duration::from_millis(900), "the first event waited for the whole stream");
    let mut rest = Vec::new();
    while let Some(chunk) = chunks.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(rest, b"data: 1\n\ndata: 2\n\n");
    server.stop().await;
}

#[tokio::test]
async fn buffer_http_sends_a_content_length() {
    let server = start(&[("buffer_http", "true")], "0").await;
    wait_ready(&server).await;
    // A chunked upload reaches the upstream (which reads Content-Length only) whole when buffered.
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter([Ok::<_, std::io::Error>("chun"), Ok("ked")]));
    let resp = client().post(server.url("/")).body(body).send().await.unwrap();
    assert!(resp.text().await.unwrap().starts_with("chunked "));
    server.stop().await;
}

#[tokio::test]
async fn cloudevents_are_validated_then_proxied_unchanged() {
    let server = start(&[], "0").await;
    wait_ready(&server).await;
    let event = |id: &'static str| {
        client()
            .post(server.url("/events"))
            .header("ce-specversion", "1.0")
            .header("ce-id", id)
            .header("ce-source", "/s")
            .header("ce-type", "t")
            .header("content-type", "text/plain")
            .body("data")
    };
    let resp = event("1").send().await.unwrap();
    // The upstream's own answer, status and all: no reply event is made up for it.
    assert_eq!(resp.status(), 201);
    assert!(resp.headers().get("ce-id").is_none());
    assert!(resp.text().await.unwrap().starts_with("data host="));
    assert_eq!(event("").send().await.unwrap().status(), 400);

    let doc = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"x": 1}}"#;
    let resp = client()
        .post(server.url("/"))
        .header("content-type", "application/cloudevents+json")
        .body(doc)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["content-type"], "application/cloudevents+json");
    assert!(resp.text().await.unwrap().starts_with(doc), "the structured document is forwarded as sent");
    server.stop().await;
}
