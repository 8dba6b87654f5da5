//! Classic mode, end to end: every case of classic-watchdog 0.3.9's own test suite, against the real server,
//! plus the byte-level details SPEC §3 lists.

mod common;

use std::time::Duration;

use common::{raw, script, Server};
use futures_util::StreamExt;

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn post(server: &Server, path: &str, body: &'static str) -> reqwest::Response {
    client().post(server.url(path)).body(body).send().await.unwrap()
}

#[tokio::test]
async fn env_has_custom_header_content_length_and_duration() {
    let server = Server::start(&[("fprocess", "env")]).await;
    let resp = client().post(server.url("/")).header("custom-header", "value").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-duration-seconds"));
    let text = resp.text().await.unwrap();
    assert!(text.contains("Http_ContentLength=0\n"), "{text}");
    assert!(text.contains("Http_Content_Length=0\n"), "{text}");
    assert!(text.contains("Http_Custom_Header=value\n"), "{text}");
    assert!(text.contains("Http_Method=POST\n"), "{text}");
    // The function inherits the watchdog's environment.
    assert!(text.contains("PATH="), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn env_with_body_has_its_length() {
    let server = Server::start(&[("fprocess", "env")]).await;
    let text = post(&server, "/", "test").await.text().await.unwrap();
    assert!(text.contains("Http_ContentLength=4\n"), "{text}");
    assert!(text.contains("Http_Content_Length=4\n"), "{text}");
    server.stop().await;
}

/// A header that makes the same variable as the watchdog's own (`Method` → `Http_Method`, `Content-Length` →
/// `Http_Content_Length`) is shadowed by it: the function sees each name once, with the last value, as Go's
/// os/exec passes it.
#[tokio::test]
async fn each_variable_appears_once_with_the_watchdogs_value() {
    let server = Server::start(&[("fprocess", "env")]).await;
    let resp = client().post(server.url("/")).header("Method", "evil").body("test").send().await.unwrap();
    let text = resp.text().await.unwrap();
    for (name, value) in [("Http_Method", "POST"), ("Http_Content_Length", "4")] {
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&format!("{name}="))).collect();
        assert_eq!(lines, [format!("{name}={value}")], "{text}");
    }
    server.stop().await;
}

/// As Go's ServeMux: a path that is not clean gets 301 to its cleaned form, and the function never runs.
#[tokio::test]
async fn unclean_paths_are_redirected_to_the_clean_path() {
    let server = Server::start(&[("fprocess", "env")]).await;
    let resp = raw(server.addr, b"GET //double//slash?q=1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await;
    assert_eq!(resp.status, 301);
    assert_eq!(resp.header("location"), Some("/double/slash?q=1"));
    assert_eq!(resp.text(), "<a href=\"/double/slash?q=1\">Moved Permanently</a>.\n\n");
    let resp =
        raw(server.addr, b"POST /a/../b HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
    assert_eq!(resp.status, 301);
    assert_eq!(resp.header("location"), Some("/b"));
    // `OPTIONS *` is about the server: Go's server answers it itself.
    let resp = raw(server.addr, b"OPTIONS * HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await;
    assert_eq!(resp.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn host_header_is_passed() {
    let server = Server::start(&[("fprocess", "env")]).await;
    let text = post(&server, "/function", "test").await.text().await.unwrap();
    assert!(text.contains(&format!("Http_Host={}\n", server.addr)), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn chunked_body_gives_minus_one_and_transfer_encoding() {
    let server = Server::start(&[("fprocess", "env")]).await;
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter([Ok::<_, std::io::Error>("Message")]));
    let resp = client().post(server.url("/")).body(body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("Http_ContentLength=-1\n"), "{text}");
    assert!(text.contains("Http_Transfer_Encoding=chunked\n"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn full_path_and_query() {
    let server = Server::start(&[("fprocess", "env")]).await;
    let text = post(&server, "/my/full/path?q=x", "").await.text().await.unwrap();
    assert!(text.contains("Http_Path=/my/full/path\n"), "{text}");
    assert!(text.contains("Http_Query=q=x\n"), "{text}");
    // The path is decoded, the query is raw; an empty query sets no variable.
    let text = post(&server, "/a%20b/c?x=%20y", "").await.text().await.unwrap();
    assert!(text.contains("Http_Path=/a b/c\n"), "{text}");
    assert!(text.contains("Http_Query=x=%20y\n"), "{text}");
    let text = post(&server, "/plain", "").await.text().await.unwrap();
    assert!(!text.contains("Http_Query="), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn invalid_path_escape_is_400() {
    let server = Server::start(&[("fprocess", "env")]).await;
    let resp = raw(server.addr, b"GET /bad%zz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(resp.status, 400);
    assert!(resp.text().contains("invalid URL escape"), "{}", resp.text());
    server.stop().await;
}

#[tokio::test]
async fn without_cgi_headers_no_http_variables() {
    let server = Server::start(&[("fprocess", "env"), ("cgi_headers", "false")]).await;
    let resp = client().post(server.url("/")).header("custom-header", "value").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-duration-seconds"));
    let text = resp.text().await.unwrap();
    assert!(!text.contains("Http_Custom_Header"), "{text}");
    assert!(!text.contains("Http_Method"), "{text}");
    assert!(text.contains("PATH="), "the environment is still inherited: {text}");
    server.stop().await;
}

#[tokio::test]
async fn stderr_in_response_with_combine_output() {
    let server = Server::start(&[("fprocess", "stat x")]).await;
    let resp = post(&server, "/", "").await;
    assert_eq!(resp.status(), 500);
    assert!(!resp.headers().contains_key("x-duration-seconds"), "X-Duration-Seconds is on 200 only");
    // A short answer has its length, as Go's server sends it.
    let length: usize = resp.headers()["content-length"].to_str().unwrap().parse().unwrap();
    let text = resp.text().await.unwrap();
    assert_eq!(length, text.len());
    assert!(text.starts_with("exit status 1\n"), "{text}");
    assert!(text.contains("No such file or directory"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn stderr_not_in_response_without_combine_output() {
    let server = Server::start(&[("fprocess", "stat x"), ("combine_output", "false")]).await;
    let resp = post(&server, "/", "").await;
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.text().await.unwrap(), "exit status 1\n");
    server.stop().await;
}

#[tokio::test]
async fn stdout_and_stderr_interleave_in_write_order() {
    let tmp = tempfile::tempdir().unwrap();
    let f = script(tmp.path(), "f.sh", "echo one; echo two >&2; echo three");
    let server = Server::start_in(tmp, &[("fprocess", f.to_str().unwrap())]).await;
    assert_eq!(post(&server, "/", "").await.text().await.unwrap(), "one\ntwo\nthree\n");
    server.stop().await;
}

#[tokio::test]
async fn cat_echoes_for_every_allowed_method() {
    let server = Server::start(&[("fprocess", "cat")]).await;
    for method in ["POST", "PUT", "DELETE", "PATCH", "GET"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = client().request(method.clone(), server.url("/")).body("hello").send().await.unwrap();
        assert_eq!(resp.status(), 200, "{method}");
        assert!(resp.headers().contains_key("x-duration-seconds"));
        assert_eq!(resp.text().await.unwrap(), "hello", "{method}");
    }
    server.stop().await;
}

#[tokio::test]
async fn other_methods_are_405() {
    let server = Server::start(&[("fprocess", "cat")]).await;
    for method in ["OPTIONS", "HEAD", "UNKNOWN", "TRACE"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = client().request(method.clone(), server.url("/")).send().await.unwrap();
        assert_eq!(resp.status(), 405, "{method}");
    }
    server.stop().await;
}

#[tokio::test]
async fn get_without_body() {
    let server = Server::start(&[("fprocess", "date")]).await;
    let resp = client().get(server.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(!resp.text().await.unwrap().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn exec_timeout_is_408_killed_process() {
    let server = Server::start(&[("fprocess", "sleep 2"), ("exec_timeout", "100ms")]).await;
    let started = std::time::Instant::now();
    let resp = post(&server, "/", "hello").await;
    assert_eq!(resp.status(), 408);
    assert_eq!(resp.text().await.unwrap(), "Killed process.\n");
    assert!(started.elapsed() < Duration::from_millis(1500), "answered at the timeout, not at exit");
    server.stop().await;
}

#[tokio::test]
async fn health_follows_the_lock_file() {
    let server = Server::start(&[("fprocess", "cat")]).await;
    let resp = client().get(server.url("/_/health")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "OK");
    for method in [reqwest::Method::POST, reqwest::Method::PUT, reqwest::Method::DELETE] {
        let resp = client().request(method, server.url("/_/health")).send().await.unwrap();
        assert_eq!(resp.status(), 405);
    }
    std::fs::remove_file(server.tmp.path().join(".lock")).unwrap();
    let resp = client().get(server.url("/_/health")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let resp = client().get(server.url("/_/ready")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    server.stop().await;
}

#[tokio::test]
async fn suppress_lock_writes_no_lock_file() {
    let server = Server::start(&[("fprocess", "cat"), ("suppress_lock", "true")]).await;
    assert!(!server.tmp.path().join(".lock").exists());
    // As in the original, health needs the lock file.
    assert_eq!(client().get(server.url("/_/health")).send().await.unwrap().status(), 503);
    assert_eq!(post(&server, "/", "x").await.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn ready_is_200_when_idle() {
    let server = Server::start(&[("fprocess", "cat")]).await;
    assert_eq!(client().get(server.url("/_/ready")).send().await.unwrap().status(), 200);
    assert_eq!(client().post(server.url("/_/ready")).send().await.unwrap().status(), 405);
    server.stop().await;
}

#[tokio::test]
async fn ready_path_asks_the_function() {
    let tmp = tempfile::tempdir().unwrap();
    let f = script(tmp.path(), "f.sh", r#"if [ "$Http_Path" = "/healthz" ]; then echo not-yet; exit 3; fi; echo ok"#);
    let server = Server::start_in(tmp, &[("fprocess", f.to_str().unwrap()), ("ready_path", "/healthz")]).await;
    let resp = client().get(server.url("/_/ready")).send().await.unwrap();
    assert_eq!(resp.status(), 500);
    assert!(resp.text().await.unwrap().contains("not-yet"));
    server.stop().await;
}

#[tokio::test]
async fn content_type_rules() {
    let server = Server::start(&[("fprocess", "cat")]).await;
    // The request's type is echoed.
    let resp =
        client().post(server.url("/")).header("content-type", "application/json").body("{}").send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "application/json");
    // None given: sniffed like Go's net/http.
    let resp =
        raw(server.addr, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello").await;
    assert_eq!(resp.header("content-type"), Some("text/plain; charset=utf-8"));
    let resp =
        raw(server.addr, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\n\x00\x01\x02")
            .await;
    assert_eq!(resp.header("content-type"), Some("application/octet-stream"));
    // Empty output: no Content-Type at all.
    let resp = raw(server.addr, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), None);
    server.stop().await;

    let server = Server::start(&[("fprocess", "cat"), ("content_type", "text/csv")]).await;
    let resp =
        client().post(server.url("/")).header("content-type", "application/json").body("a,b").send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/csv");
    server.stop().await;
}

#[tokio::test]
async fn x_duration_seconds_is_go_percent_f() {
    let server = Server::start(&[("fprocess", "cat")]).await;
    let resp = post(&server, "/", "hello").await;
    let value = resp.headers()["x-duration-seconds"].to_str().unwrap().to_string();
    let (whole, fraction) = value.split_once('.').unwrap();
    assert!(whole.parse::<u64>().is_ok() && fraction.len() == 6, "{value}");
    server.stop().await;
}

#[tokio::test]
async fn marshal_request_sends_classic_json() {
    let server = Server::start(&[("fprocess", "cat"), ("marshal_request", "true")]).await;
    let resp = raw(
        server.addr,
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nX-Custom: <a&b>\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.text(),
        r#"{"header":{"Connection":["close"],"Content-Length":["5"],"Content-Type":["text/plain"],"X-Custom":["\u003ca\u0026b\u003e"]},"body":{"raw":"aGVsbG8="}}"#
    );
    server.stop().await;
}

/// HTTP/1.1 header names are spelled as Go's net/http spells them, for clients (and greps) that match bytes.
#[tokio::test]
async fn response_header_names_are_canonical_on_http1() {
    let server = Server::start(&[("fprocess", "cat")]).await;
    let resp = raw(
        server.addr,
        b"POST / HTTP/1.1\r\nHost: h\r\ncontent-type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    )
    .await;
    assert_eq!(resp.status, 200);
    for name in ["Content-Type", "X-Duration-Seconds", "Content-Length", "Date"] {
        assert!(resp.head.contains(&format!("\r\n{name}: ")), "{name} in {:?}", resp.head);
    }
    server.stop().await;
}

#[tokio::test]
async fn max_inflight_refuses_with_429() {
    let server = Server::start(&[("fprocess", "sleep 1"), ("max_inflight", "1")]).await;
    let first = tokio::spawn(client().post(server.url("/")).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = post(&server, "/", "").await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["x-openfaas-internal"], "faas-middleware");
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(resp.text().await.unwrap(), "Concurrent request limit exceeded. Max concurrent requests: 1\n");
    let ready = client().get(server.url("/_/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 429);
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    assert_eq!(post(&server, "/", "").await.status(), 200, "the slot is released");
    server.stop().await;
}

#[tokio::test]
async fn missing_function_binary_is_500_with_go_message() {
    let server = Server::start(&[("fprocess", "no-such-function-binary")]).await;
    let resp = post(&server, "/", "").await;
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.text().await.unwrap(), "exec: \"no-such-function-binary\": executable file not found in $PATH\n");
    server.stop().await;

    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("not-executable");
    std::fs::write(&path, "#!/bin/sh\necho hi\n").unwrap();
    let server = Server::start_in(tmp, &[("fprocess", path.to_str().unwrap())]).await;
    let resp = post(&server, "/", "").await;
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.text().await.unwrap(), format!("fork/exec {}: permission denied\n", path.display()));
    server.stop().await;
}

#[tokio::test]
async fn function_killed_by_a_signal_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let f = script(tmp.path(), "f.sh", "echo partial; kill -KILL $$");
    let server = Server::start_in(tmp, &[("fprocess", f.to_str().unwrap())]).await;
    let resp = post(&server, "/", "").await;
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.text().await.unwrap(), "signal: killed\npartial\n");
    server.stop().await;
}

#[tokio::test]
async fn large_output_spills_and_comes_back_whole() {
    // 3 MiB of output (past the in-memory threshold) with a known pattern.
    let tmp = tempfile::tempdir().unwrap();
    let f = script(
        tmp.path(),
        "f.sh",
        "i=0; while [ $i -lt 3 ]; do head -c 1048576 /dev/zero | tr '\\0' \"$i\"; i=$((i+1)); done",
    );
    let server = Server::start_in(tmp, &[("fprocess", f.to_str().unwrap())]).await;
    let resp = post(&server, "/", "").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], "3145728");
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len(), 3 << 20);
    for (i, part) in body.chunks(1 << 20).enumerate() {
        assert!(part.iter().all(|b| *b == b'0' + i as u8), "part {i}");
    }
    server.stop().await;
}

/// A failing function's spilled output still comes back whole after `exit status N`, with its length.
#[tokio::test]
async fn large_output_of_a_failure_comes_back_whole_with_its_length() {
    let tmp = tempfile::tempdir().unwrap();
    let f = script(tmp.path(), "f.sh", "head -c 3145728 /dev/zero; exit 3");
    let server = Server::start_in(tmp, &[("fprocess", f.to_str().unwrap())]).await;
    let resp = post(&server, "/", "").await;
    assert_eq!(resp.status(), 500);
    let prefix = b"exit status 3\n";
    assert_eq!(resp.headers()["content-length"], (prefix.len() + (3 << 20)).to_string().as_str());
    let body = resp.bytes().await.unwrap();
    assert_eq!(&body[..prefix.len()], prefix);
    assert!(body[prefix.len()..].iter().all(|b| *b == 0) && body.len() == prefix.len() + (3 << 20));
    server.stop().await;
}

#[tokio::test]
async fn large_body_is_streamed_to_stdin() {
    let server = Server::start(&[("fprocess", "wc -c")]).await;
    let chunk = vec![b'x'; 1 << 20];
    let stream = futures_util::stream::iter((0..16).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let resp = client().post(server.url("/")).body(reqwest::Body::wrap_stream(stream)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap().trim(), (16u64 << 20).to_string());
    server.stop().await;
}

#[tokio::test]
async fn http2_prior_knowledge_on_the_same_port() {
    let server = Server::start(&[("fprocess", "cat")]).await;
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let resp = h2.post(server.url("/")).body("over h2").send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "over h2");
    // And HTTP/1.1 still works on the same listener.
    assert_eq!(post(&server, "/", "h1").await.text().await.unwrap(), "h1");
    server.stop().await;
}

#[tokio::test]
async fn concurrent_requests_are_independent() {
    let server = Server::start(&[("fprocess", "cat")]).await;
    let requests = (0..32).map(|i| {
        let url = server.url("/");
        async move {
            let body = format!("request {i}");
            let text = client().post(url).body(body.clone()).send().await.unwrap().text().await.unwrap();
            assert_eq!(text, body);
        }
    });
    futures_util::stream::iter(requests).buffer_unordered(32).collect::<Vec<_>>().await;
    server.stop().await;
}
