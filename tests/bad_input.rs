//! Bad input and faults (SPEC §8): oversized headers, bodies and outputs, slow clients, runaway functions.

mod common;

use std::time::{Duration, Instant};

use common::{raw, read_response, script, Binary, Server};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

fn request_with_headers(count: usize, value_len: usize) -> Vec<u8> {
    let mut req = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n".to_vec();
    let value = "v".repeat(value_len);
    for i in 0..count {
        req.extend_from_slice(format!("X-Header-{i}: {value}\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    req
}

#[tokio::test]
async fn two_hundred_headers_and_a_mebibyte_of_header_bytes_are_accepted() {
    let server = Server::start(&[("fprocess", "env")]).await;
    let resp = raw(server.addr, &request_with_headers(200, 16)).await;
    assert_eq!(resp.status, 200);
    assert!(resp.text().contains("Http_X_Header_199=vvvv"), "{}", resp.text());
    // 16 headers of 60 KiB: just under 1 MiB of header bytes.
    let resp = raw(server.addr, &request_with_headers(16, 60 * 1024)).await;
    assert_eq!(resp.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn oversized_headers_are_431() {
    let server = Server::start(&[("fprocess", "cat")]).await;
    let resp = raw(server.addr, &request_with_headers(40, 64 * 1024)).await;
    assert_eq!(resp.status, 431);
    let resp = raw(server.addr, &request_with_headers(5000, 4)).await;
    assert_eq!(resp.status, 431);
    server.stop().await;
}

#[tokio::test]
async fn http2_accepts_large_header_lists() {
    let server = Server::start(&[("fprocess", "env")]).await;
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let mut req = h2.post(server.url("/"));
    for i in 0..200 {
        req = req.header(format!("x-h2-{i}"), "v".repeat(1024));
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("Http_X_H2_199="));
    server.stop().await;
}

#[tokio::test]
async fn body_over_max_body_bytes_is_413() {
    let server = Server::start(&[("fprocess", "wc -c"), ("max_body_bytes", "1000")]).await;
    // Declared length: refused before the function runs.
    let resp = client().post(server.url("/")).body(vec![b'x'; 1001]).send().await.unwrap();
    assert_eq!(resp.status(), 413);
    assert!(resp.text().await.unwrap().contains("max_body_bytes (1000 bytes)"));
    // Chunked: cut off when the limit is passed.
    let stream = futures_util::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 500])));
    let resp = client().post(server.url("/")).body(reqwest::Body::wrap_stream(stream)).send().await.unwrap();
    assert_eq!(resp.status(), 413);
    // At the limit: fine.
    let resp = client().post(server.url("/")).body(vec![b'x'; 1000]).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap().trim(), "1000");
    server.stop().await;
}

#[tokio::test]
async fn slow_header_is_cut_by_read_timeout() {
    let server = Server::start(&[("fprocess", "cat"), ("read_timeout", "300ms")]).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read(&mut stream, &mut buf)).await;
    assert!(read.is_ok(), "connection not cut");
    assert!(started.elapsed() < Duration::from_secs(3));
    server.stop().await;
}

#[tokio::test]
async fn slow_body_is_cut_by_read_timeout() {
    let server = Server::start(&[("fprocess", "cat"), ("read_timeout", "400ms")]).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly part").await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), read_response(&mut stream)).await.expect("an answer");
    assert_eq!(resp.status, 408);
    assert!(resp.text().contains("read_timeout"), "{}", resp.text());
    server.stop().await;
}

#[tokio::test]
async fn write_timeout_bounds_a_request() {
    let server = Server::start(&[("fprocess", "sleep 10"), ("write_timeout", "300ms")]).await;
    let started = Instant::now();
    let resp = client().post(server.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(3));
    server.stop().await;
}

#[tokio::test]
async fn function_that_ignores_stdin_still_answers_a_large_upload() {
    let server = Server::start(&[("fprocess", "echo done")]).await;
    let chunk = vec![b'x'; 1 << 20];
    let stream = futures_util::stream::iter((0..8).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let resp = client().post(server.url("/")).body(reqwest::Body::wrap_stream(stream)).send().await;
    // The function exits without reading; the answer is its output (the client may see the connection close
    // while still sending, which reqwest reports as an error).
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "done\n");
    }
    // The server is still fine.
    assert_eq!(client().post(server.url("/")).send().await.unwrap().text().await.unwrap(), "done\n");
    server.stop().await;
}

/// Peak resident memory grows by less than `limit_mib` while `work` runs against the real binary.
async fn assert_peak_growth_below(binary: &Binary, limit_mib: u64, work: impl std::future::Future<Output = ()>) {
    let before = binary.status_kb("VmHWM");
    work.await;
    let after = binary.status_kb("VmHWM");
    let grown_mib = after.saturating_sub(before) / 1024;
    assert!(grown_mib < limit_mib, "peak RSS grew by {grown_mib} MiB (from {before} kB to {after} kB)");
}

#[tokio::test]
async fn a_large_upload_does_not_grow_memory() {
    let binary = Binary::start(&[("fprocess", "wc -c")]).await;
    // Warm up (first-request allocations), then stream 512 MiB.
    client().post(binary.url("/")).body("warm").send().await.unwrap();
    let total: u64 = 512 << 20;
    assert_peak_growth_below(&binary, 8, async {
        let chunk = bytes::Bytes::from(vec![b'z'; 1 << 20]);
        let stream = futures_util::stream::iter((0..512).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
        let resp = client().post(binary.url("/")).body(reqwest::Body::wrap_stream(stream)).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap().trim(), total.to_string());
    })
    .await;
}

#[tokio::test]
async fn a_flood_of_output_does_not_grow_memory() {
    let tmp = tempfile::tempdir().unwrap();
    // 256 MiB on stdout and stderr together (combined: held until exit, on disk past the threshold).
    let f = script(tmp.path(), "f.sh", "head -c 134217728 /dev/zero; head -c 134217728 /dev/zero >&2");
    let binary = Binary::start_in(tmp, &[("fprocess", f.to_str().unwrap())]).await;
    client().post(binary.url("/")).body("warm").send().await.unwrap().bytes().await.unwrap();
    assert_peak_growth_below(&binary, 16, async {
        let resp = client().post(binary.url("/")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut received = 0usize;
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
            received += chunk.unwrap().len();
        }
        assert_eq!(received, 256 << 20);
    })
    .await;
}

#[tokio::test]
async fn a_flood_of_stderr_to_the_log_does_not_grow_memory() {
    let tmp = tempfile::tempdir().unwrap();
    // 256 MiB of stderr without a newline: logged in log_buffer_size pieces.
    let f = script(tmp.path(), "f.sh", "head -c 268435456 /dev/zero | tr '\\0' 'e' >&2; echo ok");
    let binary = Binary::start_in(
        tmp,
        &[("fprocess", f.to_str().unwrap()), ("combine_output", "false"), ("log_buffer_size", "4096")],
    )
    .await;
    client().post(binary.url("/")).body("warm").send().await.unwrap().bytes().await.unwrap();
    assert_peak_growth_below(&binary, 16, async {
        let resp = client().post(binary.url("/")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "ok\n");
    })
    .await;
}
