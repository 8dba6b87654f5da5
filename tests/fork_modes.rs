//! of-watchdog's fork modes, end to end: `mode=streaming` and `mode=serializing`.

mod common;

use std::time::{Duration, Instant};

use common::{script, Server};
use futures_util::StreamExt;

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

#[tokio::test]
async fn streaming_echoes_with_the_default_content_type() {
    let server = Server::start(&[("fprocess", "cat"), ("mode", "streaming")]).await;
    let resp = client().post(server.url("/")).header("content-type", "text/plain").body("hello").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    assert_eq!(resp.text().await.unwrap(), "hello");
    server.stop().await;
}

#[tokio::test]
async fn streaming_sends_output_before_the_function_exits() {
    let tmp = tempfile::tempdir().unwrap();
    let f = script(tmp.path(), "f.sh", "echo first; sleep 3; echo second");
    let server = Server::start_in(tmp, &[("fprocess", f.to_str().unwrap()), ("mode", "streaming")]).await;
    let started = Instant::now();
    let resp = client().post(server.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut chunks = resp.bytes_stream();
    let first = chunks.next().await.unwrap().unwrap();
    assert_eq!(&first[..], b"first\n");
    assert!(started.elapsed() < Duration::from_secs(2), "first chunk came only at exit");
    let mut rest = Vec::new();
    while let Some(chunk) = chunks.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(rest, b"second\n");
    server.stop().await;
}

#[tokio::test]
async fn streaming_failure_before_output_is_500() {
    let tmp = tempfile::tempdir().unwrap();
    let f = script(tmp.path(), "f.sh", "echo oops >&2; exit 3");
    let server = Server::start_in(tmp, &[("fprocess", f.to_str().unwrap()), ("mode", "streaming")]).await;
    let resp = client().post(server.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.text().await.unwrap(), "exit status 3", "stderr is logged, never returned");
    server.stop().await;
}

#[tokio::test]
async fn streaming_failure_after_output_keeps_the_200() {
    let tmp = tempfile::tempdir().unwrap();
    let f = script(tmp.path(), "f.sh", "echo partial; exit 3");
    let server = Server::start_in(tmp, &[("fprocess", f.to_str().unwrap()), ("mode", "streaming")]).await;
    let resp = client().post(server.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "partial\n");
    server.stop().await;
}

#[tokio::test]
async fn streaming_silent_success_is_an_empty_200() {
    let server = Server::start(&[("fprocess", "true"), ("mode", "streaming")]).await;
    let resp = client().post(server.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "");
    server.stop().await;
}

#[tokio::test]
async fn streaming_exec_timeout_kills() {
    let server = Server::start(&[("fprocess", "sleep 5"), ("mode", "streaming"), ("exec_timeout", "200ms")]).await;
    let started = Instant::now();
    let resp = client().post(server.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.text().await.unwrap(), "signal: killed");
    assert!(started.elapsed() < Duration::from_secs(3));
    server.stop().await;
}

#[tokio::test]
async fn streaming_large_body_both_ways() {
    let server = Server::start(&[("fprocess", "cat"), ("mode", "streaming")]).await;
    let chunk: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let expected: Vec<u8> = chunk.iter().copied().cycle().take(8 << 20).collect();
    let stream = futures_util::stream::iter((0..8).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let resp = client().post(server.url("/")).body(reqwest::Body::wrap_stream(stream)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len(), expected.len());
    assert!(body[..] == expected[..]);
    server.stop().await;
}

#[tokio::test]
async fn of_watchdog_environment() {
    let server = Server::start(&[("fprocess", "env"), ("mode", "streaming")]).await;
    let text = client()
        .put(server.url("/p/a%2Fb?x=1"))
        .header("x-custom", "v")
        .body("abc")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("Http_Method=PUT\n"), "{text}");
    assert!(text.contains("Http_X_Custom=v\n"), "{text}");
    assert!(text.contains("Http_Path=/p/a/b\n"), "{text}");
    assert!(text.contains("Http_Query=x=1\n"), "{text}");
    assert!(!text.contains("Http_ContentLength="), "of-watchdog sets no Http_ContentLength: {text}");
    server.stop().await;
}

#[tokio::test]
async fn serializing_success_and_headers() {
    let server = Server::start(&[("fprocess", "cat"), ("mode", "serializing"), ("content_type", "text/plain")]).await;
    let resp = client().post(server.url("/")).body("hello").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/plain");
    assert!(resp.headers().contains_key("x-duration-seconds"));
    assert_eq!(resp.text().await.unwrap(), "hello");
    server.stop().await;
}

#[tokio::test]
async fn serializing_failure_is_500_with_the_exit_status_only() {
    let server = Server::start(&[("fprocess", "stat x"), ("mode", "serializing")]).await;
    let resp = client().post(server.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 500);
    assert!(resp.headers().contains_key("x-duration-seconds"));
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    assert_eq!(resp.text().await.unwrap(), "exit status 1");
    server.stop().await;
}

#[tokio::test]
async fn serializing_exec_timeout_is_signal_killed() {
    let server = Server::start(&[("fprocess", "sleep 5"), ("mode", "serializing"), ("exec_timeout", "200ms")]).await;
    let resp = client().post(server.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.text().await.unwrap(), "signal: killed");
    server.stop().await;
}

#[tokio::test]
async fn fork_modes_accept_any_method() {
    for mode in ["streaming", "serializing"] {
        let server = Server::start(&[("fprocess", "cat"), ("mode", mode)]).await;
        let resp = client().request(reqwest::Method::OPTIONS, server.url("/")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{mode}");
        server.stop().await;
    }
}

#[tokio::test]
async fn streaming_function_stops_when_its_client_goes_away() {
    // No exec_timeout or write_timeout: only the closed pipe can stop `yes`.
    let server =
        Server::start(&[("fprocess", "yes"), ("mode", "streaming"), ("exec_timeout", "0"), ("write_timeout", "0")])
            .await;
    let resp = client().post(server.url("/")).send().await.unwrap();
    let mut chunks = resp.bytes_stream();
    assert!(!chunks.next().await.unwrap().unwrap().is_empty());
    drop(chunks);
    let me = std::process::id() as i32;
    let running_yes = || {
        common::processes().into_iter().any(|(pid, state, ppid, _)| {
            ppid == me
                && state != 'Z'
                && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "yes")
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while running_yes() {
        assert!(Instant::now() < deadline, "`yes` kept running after its client left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}
