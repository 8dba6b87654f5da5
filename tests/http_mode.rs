//! http mode end to end, against `examples/fake_worker.rs` (a worker that misbehaves on request): readiness,
//! streaming both ways, concurrency, worker crashes and protocol violations, restarts, draining.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::Server;
use futures_util::StreamExt;

/// The fake worker binary, built by `cargo test` with the other examples.
fn fake_worker() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join("examples").join("fake_worker");
    assert!(path.exists(), "{} is missing: cargo test builds it with the examples", path.display());
    path
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn start(extra: &[(&str, &str)]) -> Server {
    let worker = fake_worker();
    let mut vars = vec![("mode", "http"), ("fprocess", worker.to_str().unwrap())];
    vars.extend_from_slice(extra);
    Server::start(&vars).await
}

/// A request body sent piece by piece, each after waiting its delay in milliseconds.
fn paced(pieces: &[(u64, &'static str)]) -> reqwest::Body {
    let pieces = futures_util::stream::iter(pieces.to_vec()).then(|(delay, piece)| async move {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        Ok::<_, std::io::Error>(piece)
    });
    reqwest::Body::wrap_stream(pieces)
}

async fn eventually_ready(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if client().get(server.url("/_/ready")).send().await.unwrap().status() == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "no worker became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn echoes_through_a_worker() {
    let server = start(&[]).await;
    let resp =
        client().post(server.url("/echo")).header("content-type", "text/plain").body("hello").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/plain");
    assert_eq!(resp.text().await.unwrap(), "hello");
    assert_eq!(client().get(server.url("/_/ready")).send().await.unwrap().status(), 200);
    server.stop().await;
}

/// The request's header map holds the response's headers (hyper then reuses it for the connection's next
/// request): none of the request's may be left in it, whichever of the two had more.
#[tokio::test]
async fn a_response_has_the_workers_headers_and_none_of_the_requests() {
    let server = start(&[]).await;
    // One connection, so each request's map is the one the answer before it went out in.
    let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
    for extra in [0, 20, 1, 40, 0] {
        let mut request = client.post(server.url("/echo")).header("content-type", "text/plain");
        for i in 0..extra {
            request = request.header(format!("x-request-only-{i}"), "yes");
        }
        let resp = request.body("hello").send().await.unwrap();
        assert_eq!(resp.status(), 200);
        // Framing is Content-Length or chunked, as the echo's data arrives with its head or after it.
        let framing = ["content-length", "transfer-encoding"];
        let mut names: Vec<&str> =
            resp.headers().keys().map(|name| name.as_str()).filter(|name| !framing.contains(name)).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "date"], "after a request with {extra} more headers");
        assert_eq!(resp.text().await.unwrap(), "hello");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_response_that_arrives_whole_has_a_content_length_and_a_streamed_one_is_chunked() {
    let server = start(&[]).await;
    let resp = client().post(server.url("/whole")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], "12");
    assert!(resp.headers().get("transfer-encoding").is_none());
    assert_eq!(resp.text().await.unwrap(), "whole answer");
    // The echo's head comes before the request body has ended, so the response's length is not known then.
    let resp = client().post(server.url("/echo")).body(paced(&[(100, "stream"), (100, "ed")])).send().await.unwrap();
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    assert!(resp.headers().get("content-length").is_none());
    assert_eq!(resp.text().await.unwrap(), "streamed");
    server.stop().await;
}

#[tokio::test]
async fn the_deadline_covers_the_wait_for_the_head_and_then_the_body() {
    let server = start(&[("exec_timeout", "300ms")]).await;
    eventually_ready(&server).await;
    // The fake worker answers /sleep after 2 s.
    let resp = client().post(server.url("/sleep")).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    // The echo's head comes at once; its body, still streaming when the deadline passes, is cut there.
    let resp = client().post(server.url("/echo")).body(paced(&[(0, "piece"), (1000, "piece")])).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // Without the deadline it would end normally, after the second piece.
    assert!(resp.bytes().await.is_err(), "a response cut at the deadline must not look complete");
    server.stop().await;
}

#[tokio::test]
async fn many_requests_at_once_on_one_worker() {
    let server = start(&[]).await;
    let requests = (0..64).map(|i| {
        let url = server.url("/echo");
        async move {
            let body = format!("request number {i}");
            let text = client().post(url).body(body.clone()).send().await.unwrap().text().await.unwrap();
            assert_eq!(text, body);
        }
    });
    futures_util::stream::iter(requests).buffer_unordered(64).collect::<Vec<_>>().await;
    server.stop().await;
}

#[tokio::test]
async fn eight_mebibytes_both_ways() {
    let server = start(&[]).await;
    let chunk: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 253) as u8).collect();
    let expected: Vec<u8> = chunk.iter().copied().cycle().take(8 << 20).collect();
    let stream = futures_util::stream::iter((0..8).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let resp = client().post(server.url("/echo")).body(reqwest::Body::wrap_stream(stream)).send().await.unwrap();
    let status = resp.status();
    let body = resp.bytes().await.unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body[..body.len().min(500)]));
    assert_eq!(body.len(), expected.len());
    assert!(body[..] == expected[..]);
    server.stop().await;
}

#[tokio::test]
async fn error_kinds_map_to_status_codes() {
    let server = start(&[]).await;
    for (path, status) in [("/permanent", 400), ("/retryable", 503), ("/internal", 500)] {
        let resp = client().post(server.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), status, "{path}");
        assert!(resp.text().await.unwrap().contains("failure"), "{path}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_crash_mid_request_is_502_naming_the_exit_and_the_worker_restarts() {
    let server = start(&[]).await;
    let resp = client().post(server.url("/crash")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let text = resp.text().await.unwrap();
    assert!(text.contains("exit status 7"), "{text}");
    eventually_ready(&server).await;
    let resp = client().post(server.url("/echo")).body("again").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "again");
    server.stop().await;
}

#[tokio::test]
async fn every_request_in_flight_on_a_crashing_worker_gets_one_answer() {
    let server = start(&[]).await;
    let slow: Vec<_> = (0..5).map(|_| tokio::spawn(client().post(server.url("/sleep")).send())).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let crash = client().post(server.url("/crash")).send().await.unwrap();
    assert_eq!(crash.status(), 502);
    for request in slow {
        let resp = request.await.unwrap().unwrap();
        assert_eq!(resp.status(), 502);
        assert!(resp.text().await.unwrap().contains("exit status 7"));
    }
    server.stop().await;
}

#[tokio::test]
async fn a_protocol_violation_kills_and_restarts_the_worker() {
    let server = start(&[]).await;
    let resp = client().post(server.url("/garbage")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert!(resp.text().await.unwrap().contains("protocol"));
    eventually_ready(&server).await;
    assert_eq!(client().post(server.url("/echo")).body("ok").send().await.unwrap().text().await.unwrap(), "ok");
    server.stop().await;
}

#[tokio::test]
async fn stdout_noise_is_logged_not_mixed_with_frames() {
    let server = start(&[]).await;
    for _ in 0..20 {
        let resp = client().post(server.url("/noise")).body("payload").send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "payload");
    }
    server.stop().await;
}

#[tokio::test]
async fn two_workers_share_the_load_and_one_crash_spares_the_other() {
    let server = start(&[("workers", "2")]).await;
    eventually_ready(&server).await;
    let slow = tokio::spawn(client().post(server.url("/sleep")).body("survivor").send());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The least-loaded worker (the idle one) takes the crash.
    assert_eq!(client().post(server.url("/crash")).send().await.unwrap().status(), 502);
    let resp = slow.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "survivor");
    server.stop().await;
}

#[tokio::test]
async fn a_worker_that_never_gets_ready_keeps_readiness_503() {
    let tmp = tempfile::tempdir().unwrap();
    let worker = fake_worker();
    // FAKE_WORKER reaches the worker through the inherited environment only in the real binary; here we wrap it.
    let wrapper = common::script(tmp.path(), "never.sh", &format!("FAKE_WORKER=never-ready exec {}", worker.display()));
    let server = Server::start_in_unready(
        tmp,
        &[("mode", "http"), ("fprocess", wrapper.to_str().unwrap()), ("exec_timeout", "500ms")],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ready = client().get(server.url("/_/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.headers().contains_key("retry-after"));
    assert_eq!(client().get(server.url("/_/health")).send().await.unwrap().status(), 503, "no lock file before ready");
    let resp = client().post(server.url("/echo")).send().await.unwrap();
    assert_eq!(resp.status(), 503, "a request waits for its deadline, then gets 503");
    assert!(resp.headers().contains_key("retry-after"));
    server.stop().await;
}

#[tokio::test]
async fn an_init_error_is_reported_in_readiness() {
    let tmp = tempfile::tempdir().unwrap();
    let worker = fake_worker();
    let wrapper = common::script(tmp.path(), "init.sh", &format!("FAKE_WORKER=init-error exec {}", worker.display()));
    let server = Server::start_in_unready(tmp, &[("mode", "http"), ("fprocess", wrapper.to_str().unwrap())]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = client().get(server.url("/_/ready")).send().await.unwrap();
        assert_eq!(ready.status(), 503);
        let text = ready.text().await.unwrap();
        if text.contains("cannot load the model") {
            break;
        }
        assert!(Instant::now() < deadline, "readiness never named the init error: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn shutdown_lets_requests_in_flight_finish() {
    let server = start(&[("write_timeout", "10s")]).await;
    let in_flight: Vec<_> =
        (0..4).map(|_| tokio::spawn(client().post(server.url("/sleep")).body("done").send())).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = tokio::spawn(server.stop());
    for request in in_flight {
        let resp = request.await.unwrap().unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "done");
    }
    stopping.await.unwrap();
}

/// The fake worker records the stream ids it sees; they must arrive in increasing order (proto/README.md).
#[tokio::test]
async fn stream_ids_reach_the_worker_in_increasing_order() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("ids");
    let worker = fake_worker();
    let wrapper =
        common::script(tmp.path(), "ids.sh", &format!("FAKE_WORKER_IDS={} exec {}", log.display(), worker.display()));
    let server = Server::start_in(tmp, &[("mode", "http"), ("fprocess", wrapper.to_str().unwrap())]).await;
    let requests = (0..200).map(|_| {
        let url = server.url("/echo");
        async move {
            assert_eq!(client().post(url).body("x").send().await.unwrap().status(), 200);
        }
    });
    futures_util::stream::iter(requests).buffer_unordered(64).collect::<Vec<_>>().await;
    let ids: Vec<u64> = std::fs::read_to_string(&log).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(ids.len(), 200);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "out of order: {ids:?}");
    server.stop().await;
}

fn quick_timing() -> ng_watchdog::backend::framed::pool::Timing {
    ng_watchdog::backend::framed::pool::Timing {
        restart: ng_watchdog::backend::process::RestartPolicy {
            min: Duration::from_millis(50),
            max: Duration::from_millis(400),
            ..Default::default()
        },
        ping_interval: Duration::from_millis(100),
        ping_timeout: Duration::from_millis(500),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_worker_that_stops_answering_pings_is_killed_and_restarted() {
    let tmp = tempfile::tempdir().unwrap();
    let worker = fake_worker();
    let wrapper = common::script(tmp.path(), "nopong.sh", &format!("FAKE_WORKER=no-pong exec {}", worker.display()));
    let server = Server::start_adjusted(tmp, &[("mode", "http"), ("fprocess", wrapper.to_str().unwrap())], |c| {
        c.worker_timing = quick_timing()
    })
    .await;
    // A request on a slow stream is in flight when the worker is declared dead: it gets a 502 naming pings.
    let resp = client().post(server.url("/sleep")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert!(resp.text().await.unwrap().contains("stopped answering pings"));
    server.stop().await;
}

#[tokio::test]
async fn restarts_back_off_and_readiness_names_the_last_error() {
    let tmp = tempfile::tempdir().unwrap();
    let worker = fake_worker();
    let wrapper = common::script(
        tmp.path(),
        "early.sh",
        &format!("echo started >> {}/starts; FAKE_WORKER=exit-early exec {}", tmp.path().display(), worker.display()),
    );
    let starts = tmp.path().join("starts");
    let server = Server::start_adjusted(tmp, &[("mode", "http"), ("fprocess", wrapper.to_str().unwrap())], |c| {
        c.worker_timing = quick_timing()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // 50 + 100 + 200 + 400 + 400 … ms between starts: about 5 starts in 1.5 s, far fewer than without backoff.
    let count = std::fs::read_to_string(&starts).unwrap().lines().count();
    assert!((3..=8).contains(&count), "{count} starts in 1.5 s");
    let ready = client().get(server.url("/_/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("exited before connecting (exit status 4)"));
    server.stop().await;
}
