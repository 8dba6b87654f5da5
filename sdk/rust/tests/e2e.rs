//! End-to-end tests: the SDK's `serve` against a fake watchdog speaking `watchdog.v1` over a Unix socket.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::*;
use futures_util::SinkExt;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, Barrier, Notify};
use watchdog_sdk::http::{header::CONTENT_TYPE, HeaderMap, HeaderValue};
use watchdog_sdk::proto::io::cloudevents::v1 as ce;
use watchdog_sdk::proto::watchdog::v1::{
    envelope, frame::Kind, Data, Envelope, ErrorKind, GrpcCall, HelloAck, TraceContext, WindowUpdate,
};
use watchdog_sdk::{Error, HandlerError, Kind as RequestKind, Options, Reply, Request, Response, ResponseBody, Worker};

type Res = Result<Reply, HandlerError>;

async fn echo(req: Request) -> Res {
    let mut headers = HeaderMap::new();
    if let Some(ct) = req.headers().get(CONTENT_TYPE) {
        headers.insert(CONTENT_TYPE, ct.clone());
    }
    Ok(Reply::response(200, headers, req.into_body()))
}

async fn buffered_echo(req: Request) -> Res {
    Ok(Reply::bytes(req.bytes().await?))
}

fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 13) as u8).collect::<Vec<u8>>().into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handshake_sends_hello_then_ready() {
    let fake = start(Options { concurrency: 7 }, default_ack(), echo).await;
    assert_eq!(fake.hello.protocol, "watchdog.v1");
    assert_eq!(fake.hello.sdk_name, "watchdog-sdk-rust");
    assert_eq!(fake.hello.sdk_version, env!("CARGO_PKG_VERSION"));
    assert!(!fake.hello.sdk_version.is_empty());
    assert_eq!(fake.hello.max_concurrency, 7);
    // (`start` asserted Ready on stream 0 right after HelloAck.)
    let fake2 = start(Options::default(), default_ack(), echo).await;
    assert_eq!(fake2.hello.max_concurrency, 0, "default concurrency is unlimited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ready_waits_for_hello_ack_and_worker_id_is_reported() {
    let dir = TempDir::new();
    let path = dir.0.join("w.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let connect = tokio::spawn(Worker::connect_at(path, Options::default()));
    let (mut io, _hello) = accept_hello(&listener).await;
    // Nothing may follow Hello before HelloAck.
    let early = tokio::time::timeout(Duration::from_millis(200), futures_util::StreamExt::next(&mut io)).await;
    assert!(early.is_err(), "the SDK sent {early:?} before HelloAck");
    io.send(frame(0, Kind::HelloAck(HelloAck { worker_id: 42, ..default_ack() }))).await.unwrap();
    let worker = tokio::time::timeout(WAIT, connect).await.unwrap().unwrap().unwrap();
    assert_eq!(worker.worker_id(), 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bytes_reply_is_200_and_empty_reply_is_202() {
    let mut fake = start(Options::default(), default_ack(), |req: Request| async move {
        match req.path() {
            "/bytes" => Ok(Reply::bytes("hello")),
            "/empty" => Ok(Reply::empty()),
            "/accepted" => Ok(Reply::Accepted),
            "/unit" => Ok(().into()),
            _ => Err(HandlerError::permanent("no such path")),
        }
    })
    .await;
    let r = fake.call(http_envelope("GET", "/bytes", &[]), b"").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.body, b"hello");
    assert!(r.end.is_some() && r.error.is_none());

    for path in ["/empty", "/accepted", "/unit"] {
        let r = fake.call(http_envelope("POST", path, &[]), b"ignored body").await;
        assert_eq!(r.status(), 202, "{path}");
        assert!(r.body.is_empty() && r.chunks.is_empty(), "{path}: 202 carries no Data");
        assert!(r.end.is_some(), "{path}: End");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn response_with_status_headers_streamed_body_and_trailers() {
    let mut fake = start(Options::default(), default_ack(), |req: Request| async move {
        if req.path() == "/trailers" {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            return Ok(Reply::Response(Response {
                status: 200,
                headers: HeaderMap::new(),
                body: "msg".into(),
                trailers,
            }));
        }
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        headers.insert("x-custom", HeaderValue::from_static("yes"));
        let chunks = futures_util::stream::iter(["one,", "two,", "three"].map(Ok::<_, HandlerError>));
        Ok(Reply::response(201, headers, ResponseBody::stream(chunks)))
    })
    .await;
    let r = fake.call(http_envelope("GET", "/", &[]), b"").await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.header("content-type"), ["text/plain"]);
    assert_eq!(r.header("set-cookie"), ["a=1", "b=2"], "repeated headers kept, in order");
    assert_eq!(r.header("x-custom"), ["yes"]);
    assert_eq!(r.body, b"one,two,three");
    assert!(r.end.as_ref().unwrap().trailers.is_empty());

    let r = fake.call(http_envelope("GET", "/trailers", &[]), b"").await;
    assert_eq!(r.body, b"msg");
    let trailers = &r.end.as_ref().expect("End").trailers;
    assert_eq!(trailers.len(), 1);
    assert_eq!(trailers[0].name, "grpc-status");
    assert_eq!(&trailers[0].value[..], b"0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_accessors_http_and_grpc() {
    let (tx, mut rx) = mpsc::unbounded_channel::<HashMap<&'static str, String>>();
    let mut fake = start(Options::default(), default_ack(), move |req: Request| {
        let tx = tx.clone();
        async move {
            let mut m = HashMap::new();
            m.insert("kind", req.kind().to_string());
            m.insert("method", req.method().to_owned());
            m.insert("path", req.path().to_owned());
            m.insert("query", req.query().to_owned());
            m.insert("host", req.host().to_owned());
            m.insert("grpc", format!("{:?}", req.grpc_method()));
            m.insert("event", format!("{:?}", req.event().is_some()));
            m.insert("id", req.request_id().to_owned());
            m.insert("deadline", format!("{:?}", req.deadline()));
            m.insert("len", format!("{:?}", req.content_length()));
            m.insert("traceparent", req.traceparent().to_owned());
            let multi: Vec<_> =
                req.headers().get_all("X-MULTI").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
            m.insert("multi", multi.join("|"));
            m.insert("ct", format!("{:?}", req.headers().get("content-type")));
            m.insert("body", String::from_utf8(req.bytes().await?.to_vec()).unwrap());
            tx.send(m).unwrap();
            Ok(Reply::empty())
        }
    })
    .await;

    let deadline = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    let mut env = http_envelope(
        "PUT",
        "/a b/c",
        &[("Content-Type", "text/plain"), ("x-multi", "1"), ("X-Multi", "2"), ("x-other", "z")],
    );
    if let Some(envelope::Kind::Http(h)) = &mut env.kind {
        h.query = "x=1&y=%20".into();
    }
    env.request_id = "call-123".into();
    env.deadline = Some(deadline.into());
    env.content_length = 4;
    env.trace = Some(TraceContext { traceparent: "00-abc-def-01".into(), tracestate: String::new() });
    let r = fake.call(env, b"body").await;
    assert_eq!(r.status(), 202);
    let m = rx.recv().await.unwrap();
    assert_eq!(m["kind"], "http");
    assert_eq!(m["method"], "PUT");
    assert_eq!(m["path"], "/a b/c");
    assert_eq!(m["query"], "x=1&y=%20");
    assert_eq!(m["host"], "example.com");
    assert_eq!(m["grpc"], "None");
    assert_eq!(m["event"], "false");
    assert_eq!(m["id"], "call-123");
    assert_eq!(m["deadline"], format!("{:?}", Some(deadline)));
    assert_eq!(m["len"], "Some(4)");
    assert_eq!(m["traceparent"], "00-abc-def-01");
    assert_eq!(m["multi"], "1|2", "case-insensitive, repeated values kept in order");
    assert_eq!(m["ct"], "Some(\"text/plain\")");
    assert_eq!(m["body"], "body");

    let env = Envelope {
        request_id: "g".into(),
        content_length: -1,
        headers: vec![watchdog_sdk::proto::watchdog::v1::Header {
            name: "x-md".into(),
            value: Bytes::from_static(b"v"),
        }],
        kind: Some(envelope::Kind::Grpc(GrpcCall { method: "/pkg.Svc/Do".into(), ..Default::default() })),
        ..Default::default()
    };
    let r = fake.call(env, b"\x0a\x01x").await;
    // `Reply::empty()` answers a gRPC call with 200: gRPC would read 202 as UNKNOWN.
    assert_eq!(r.status(), 200);
    let m = rx.recv().await.unwrap();
    assert_eq!(m["kind"], "grpc");
    assert_eq!(m["grpc"], "Some(\"/pkg.Svc/Do\")");
    assert_eq!(m["method"], "POST");
    assert_eq!(m["path"], "/pkg.Svc/Do");
    assert_eq!(m["deadline"], "None");
    assert_eq!(m["len"], "None");
    assert_eq!(m["body"], "\n\u{1}x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_requests() {
    sixty_four_concurrent_requests_body().await;
}

/// The same on a current-thread runtime (the echo example's flavour).
#[tokio::test(flavor = "current_thread")]
async fn sixty_four_concurrent_requests_current_thread() {
    sixty_four_concurrent_requests_body().await;
}

async fn sixty_four_concurrent_requests_body() {
    let barrier = Arc::new(Barrier::new(64));
    let mut fake = start(Options { concurrency: 64 }, default_ack(), move |req: Request| {
        let barrier = barrier.clone();
        async move {
            // Every one of the 64 handlers must be running at once to get past this.
            barrier.wait().await;
            buffered_echo(req).await
        }
    })
    .await;
    assert_eq!(fake.hello.max_concurrency, 64);
    let mut requests = Vec::new();
    for i in 0..64u8 {
        let id = fake.open(http_envelope("POST", &format!("/{i}"), &[])).await;
        requests.push((id, pattern(1000 + usize::from(i) * 97, i)));
    }
    let expected: HashMap<u64, Bytes> = requests.iter().cloned().collect();
    let resps = fake.exchange(requests).await;
    assert_eq!(resps.len(), 64);
    for (id, r) in resps {
        assert_eq!(r.status(), 200, "stream {id}");
        assert!(r.error.is_none());
        assert_eq!(r.body, expected[&id], "stream {id}: its own body back");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_mib_both_ways_with_flow_control() {
    eight_mib_both_ways_with_flow_control_body().await;
}

/// The same on a current-thread runtime (the echo example's flavour).
#[tokio::test(flavor = "current_thread")]
async fn eight_mib_both_ways_with_flow_control_current_thread() {
    eight_mib_both_ways_with_flow_control_body().await;
}

async fn eight_mib_both_ways_with_flow_control_body() {
    let mut fake = start(Options::default(), default_ack(), |req: Request| async move {
        match req.path() {
            "/stream" => echo(req).await,
            _ => buffered_echo(req).await,
        }
    })
    .await;
    let size = 8 * 1024 * 1024;
    for (path, seed) in [("/stream", 1u8), ("/buffered", 2)] {
        let body = pattern(size, seed);
        let id = fake.open(http_envelope("POST", path, &[("content-type", "application/x-test")])).await;
        // `exchange` sends only within the window the SDK grants, so the upload completes only if the SDK
        // returns credit; it asserts that the SDK never exceeds its own window or max_chunk_bytes.
        let mut resps = fake.exchange(vec![(id, body.clone())]).await;
        let r = resps.remove(&id).unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.error.is_none(), "{path}: {:?}", r.error);
        assert_eq!(r.body.len(), size, "{path}");
        assert!(r.body == body, "{path}: body differs");
        assert!(r.chunks.len() >= size / (64 * 1024), "{path}: sent in chunks");
        if path == "/stream" {
            assert_eq!(r.header("content-type"), ["application/x-test"]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn small_limits_are_respected() {
    let ack = HelloAck { max_frame_bytes: 4096, max_chunk_bytes: 1000, initial_window_bytes: 3000, worker_id: 1 };
    let mut fake = start(Options::default(), ack, echo).await;
    let body = pattern(100_000, 9);
    let id = fake.open(http_envelope("POST", "/", &[])).await;
    let r = fake.exchange(vec![(id, body.clone())]).await.remove(&id).unwrap();
    assert_eq!(r.body, body);
    assert!(r.chunks.iter().all(|&n| n <= 1000));

    // A head that cannot fit in max_frame_bytes becomes an INTERNAL error instead of an oversized frame.
    let mut fake = start(Options::default(), ack, |_req: Request| async move {
        let mut h = HeaderMap::new();
        h.insert("x-big", HeaderValue::from_str(&"v".repeat(5000)).unwrap());
        Ok(Reply::response(200, h, "x"))
    })
    .await;
    let r = fake.call(http_envelope("GET", "/", &[]), b"").await;
    assert!(r.head.is_none());
    let e = r.error.expect("an Error frame");
    assert_eq!(e.kind, ErrorKind::Internal as i32);
    assert!(e.message.contains("max_frame_bytes"), "{}", e.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_body_is_streamed_chunk_by_chunk() {
    let (tx, mut seen) = mpsc::unbounded_channel::<Bytes>();
    let mut fake = start(Options::default(), default_ack(), move |mut req: Request| {
        let tx = tx.clone();
        async move {
            let mut total = 0;
            let body = req.body_stream();
            while let Some(chunk) = body.chunk().await? {
                total += chunk.len();
                tx.send(chunk).unwrap();
            }
            Ok(Reply::bytes(total.to_string()))
        }
    })
    .await;
    let id = fake.open(http_envelope("POST", "/", &[])).await;
    for i in 0..5u8 {
        let chunk = Bytes::from(vec![b'a' + i; 10 + usize::from(i)]);
        fake.data(id, chunk.clone()).await;
        // The handler sees each chunk before the next one (or the End) is even sent.
        let got = tokio::time::timeout(WAIT, seen.recv()).await.expect("chunk reaches the handler").unwrap();
        assert_eq!(got, chunk);
    }
    fake.end(id).await;
    let mut resp = Resp::default();
    while !resp.finished() {
        let f = fake.recv().await;
        assert_eq!(f.stream_id, id);
        match f.kind.unwrap() {
            Kind::ResponseHead(h) => resp.head = Some(*h),
            Kind::Data(d) => resp.body.extend_from_slice(&d.data),
            Kind::End(e) => resp.end = Some(e),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.body, b"60");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_body_still_returns_credit() {
    let go = Arc::new(Notify::new());
    let drop_now = Arc::new(Notify::new());
    let (go2, drop2) = (go.clone(), drop_now.clone());
    let mut fake = start(Options::default(), default_ack(), move |req: Request| {
        let (go, drop_now) = (go2.clone(), drop2.clone());
        async move {
            let body = req.into_body();
            // Dropped with a full window of unread chunks queued: that credit must come back too.
            drop_now.notified().await;
            drop(body);
            go.notified().await;
            Ok(Reply::bytes("done"))
        }
    })
    .await;
    let id = fake.open(http_envelope("POST", "/", &[])).await;
    // 1 MiB is four windows: the upload completes only if the SDK credits what it never read.
    let body = pattern(1024 * 1024, 3);
    let mut credit = fake.window();
    let mut sent = 0;
    let mut dropped = false;
    while sent < body.len() {
        while credit > 0 && sent < body.len() {
            let n = (64 * 1024).min(credit as usize).min(body.len() - sent);
            fake.data(id, body.slice(sent..sent + n)).await;
            sent += n;
            credit -= n as i64;
        }
        if !dropped {
            dropped = true;
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop_now.notify_one();
        }
        if sent < body.len() {
            let f = fake.recv().await;
            match f.kind.unwrap() {
                Kind::WindowUpdate(WindowUpdate { increment }) if f.stream_id == id => credit += i64::from(increment),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    fake.end(id).await;
    go.notify_one();
    let mut got = HashMap::new();
    got.insert(id, Resp::default());
    loop {
        let f = fake.recv().await;
        let r = got.get_mut(&f.stream_id).unwrap();
        match f.kind.unwrap() {
            Kind::WindowUpdate(_) => {}
            Kind::ResponseHead(h) => r.head = Some(*h),
            Kind::Data(d) => r.body.extend_from_slice(&d.data),
            Kind::End(_) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got[&id].body, b"done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cloudevent_attributes_and_reply() {
    use ce::cloud_event::{cloud_event_attribute_value::Attr, CloudEventAttributeValue};
    let (tx, mut rx) = mpsc::unbounded_channel::<(RequestKind, HashMap<String, String>, Bytes)>();
    let mut fake = start(Options::default(), default_ack(), move |req: Request| {
        let tx = tx.clone();
        async move {
            let kind = req.kind();
            let event = req.event().cloned().ok_or_else(|| HandlerError::permanent("not an event"))?;
            let keep_id = event.attribute("keepid").is_some();
            let data = req.bytes().await?;
            tx.send((kind, event.attributes().clone(), data.clone())).unwrap();
            let mut attrs = vec![
                ("type", "com.example.reply".to_owned()),
                ("source", "/fn".to_owned()),
                ("specversion", event.spec_version().to_owned()),
                ("datacontenttype", "text/plain".to_owned()),
                ("myext", "v".to_owned()),
            ];
            if keep_id {
                attrs.push(("id", "reply-7".to_owned()));
            }
            Ok(Reply::cloud_event(attrs, data))
        }
    })
    .await;
    let v = |a| CloudEventAttributeValue { attr: Some(a) };
    let mut ev = ce::CloudEvent {
        id: "e-1".into(),
        source: "/src".into(),
        spec_version: "1.0".into(),
        r#type: "com.example.t".into(),
        ..Default::default()
    };
    ev.attributes.insert("time".into(), v(Attr::CeString("2024-05-06T07:08:09.5+02:00".into())));
    ev.attributes.insert("subject".into(), v(Attr::CeString("s".into())));
    ev.attributes.insert("count".into(), v(Attr::CeInteger(12)));
    ev.attributes.insert("flag".into(), v(Attr::CeBoolean(true)));
    ev.attributes.insert("raw".into(), v(Attr::CeBytes(Bytes::from_static(b"hi!"))));
    ev.attributes.insert("dataschema".into(), v(Attr::CeUri("https://x/s".into())));
    let r = fake.call(cloudevent_envelope(ev.clone()), b"{\"a\":1}").await;
    let (kind, attrs, data) = rx.recv().await.unwrap();
    assert_eq!(kind, RequestKind::CloudEvent);
    assert_eq!(data, Bytes::from_static(b"{\"a\":1}"));
    let want: HashMap<String, String> = [
        ("specversion", "1.0"),
        ("id", "e-1"),
        ("source", "/src"),
        ("type", "com.example.t"),
        ("time", "2024-05-06T07:08:09.5+02:00"),
        ("subject", "s"),
        ("count", "12"),
        ("flag", "true"),
        ("raw", "aGkh"),
        ("dataschema", "https://x/s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(attrs, want);

    assert_eq!(r.status(), 200);
    assert_eq!(r.body, b"{\"a\":1}", "the reply's data is the body");
    let reply = r.head.as_ref().unwrap().reply.clone().expect("reply event in ResponseHead");
    assert_eq!(uuid::Uuid::parse_str(&reply.id).map(|u| u.get_version_num()), Ok(4), "fresh uuid id: {}", reply.id);
    assert_eq!(reply.source, "/fn");
    assert_eq!(reply.spec_version, "1.0");
    assert_eq!(reply.r#type, "com.example.reply");
    assert_eq!(reply.attributes.len(), 2, "{:?}", reply.attributes);
    assert_eq!(reply.attributes["datacontenttype"], v(Attr::CeString("text/plain".into())));
    assert_eq!(reply.attributes["myext"], v(Attr::CeString("v".into())));
    assert!(reply.data.is_none(), "data travels as the body");

    // Two replies never share an id; an explicit id is kept.
    let r2 = fake.call(cloudevent_envelope(ev.clone()), b"x").await;
    let _ = rx.recv().await.unwrap();
    assert_ne!(r2.head.unwrap().reply.unwrap().id, reply.id);
    ev.attributes.insert("keepid".into(), v(Attr::CeString("1".into())));
    let r3 = fake.call(cloudevent_envelope(ev), b"x").await;
    let _ = rx.recv().await.unwrap();
    assert_eq!(r3.head.unwrap().reply.unwrap().id, "reply-7");

    // Not an event: the handler's permanent error.
    let r = fake.call(http_envelope("POST", "/", &[]), b"").await;
    assert_eq!(r.error.unwrap().kind, ErrorKind::Permanent as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handler_errors_become_error_frames() {
    let mut fake = start(Options::default(), default_ack(), |req: Request| async move {
        match req.path() {
            "/permanent" => Err(HandlerError::Permanent("bad input".into())),
            "/retryable" => Err(HandlerError::retryable("try later")),
            "/internal" => Err(HandlerError::Internal("boom".into())),
            "/question-mark" => {
                let n: u32 = "not a number".parse()?;
                Ok(Reply::bytes(n.to_string()))
            }
            "/panic" => panic!("kaboom"),
            "/midstream" => {
                let items = vec![Ok(Bytes::from_static(b"part")), Err(HandlerError::retryable("lost upstream"))];
                Ok(Reply::response(200, HeaderMap::new(), ResponseBody::stream(futures_util::stream::iter(items))))
            }
            _ => Ok(Reply::empty()),
        }
    })
    .await;
    for (path, kind, message) in [
        ("/permanent", ErrorKind::Permanent, "bad input"),
        ("/retryable", ErrorKind::Retryable, "try later"),
        ("/internal", ErrorKind::Internal, "boom"),
        ("/question-mark", ErrorKind::Internal, "invalid digit found in string"),
        ("/panic", ErrorKind::Internal, "the handler panicked"),
    ] {
        let r = fake.call(http_envelope("GET", path, &[]), b"").await;
        assert!(r.head.is_none(), "{path}: Error instead of a response");
        let e = r.error.unwrap_or_else(|| panic!("{path}: an Error frame"));
        assert_eq!(e.kind, kind as i32, "{path}");
        assert_eq!(e.message, message, "{path}");
    }
    let r = fake.call(http_envelope("GET", "/midstream", &[]), b"").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.body, b"part");
    let e = r.error.expect("Error after the head");
    assert_eq!(e.kind, ErrorKind::Retryable as i32);
    assert_eq!(e.message, "lost upstream");
    // The worker is still fine.
    let r = fake.call(http_envelope("GET", "/ok", &[]), b"").await;
    assert_eq!(r.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ping_is_answered_while_a_handler_is_busy() {
    ping_is_answered_while_a_handler_is_busy_body().await;
}

/// The same on a current-thread runtime (the echo example's flavour).
#[tokio::test(flavor = "current_thread")]
async fn ping_is_answered_while_a_handler_is_busy_current_thread() {
    ping_is_answered_while_a_handler_is_busy_body().await;
}

async fn ping_is_answered_while_a_handler_is_busy_body() {
    let release = Arc::new(Notify::new());
    let started = Arc::new(Notify::new());
    let (r2, s2) = (release.clone(), started.clone());
    let mut fake = start(Options::default(), default_ack(), move |_req: Request| {
        let (release, started) = (r2.clone(), s2.clone());
        async move {
            started.notify_one();
            release.notified().await;
            Ok(Reply::bytes("late"))
        }
    })
    .await;
    let id = fake.open(http_envelope("GET", "/", &[])).await;
    fake.end(id).await;
    tokio::time::timeout(WAIT, started.notified()).await.expect("handler started");
    for nonce in [7u64, u64::MAX] {
        fake.ping(nonce).await;
        let f = fake.try_recv(Duration::from_secs(2)).await.expect("a Pong while the handler is busy");
        assert_eq!(f.stream_id, 0);
        assert!(matches!(f.kind, Some(Kind::Pong(p)) if p.nonce == nonce), "{f:?}");
    }
    release.notify_one();
    let r = fake.exchange(vec![(id, Bytes::new())]).await.remove(&id).unwrap();
    assert_eq!(r.body, b"late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_aborts_the_handler() {
    cancel_aborts_the_handler_body().await;
}

/// The same on a current-thread runtime (the echo example's flavour).
#[tokio::test(flavor = "current_thread")]
async fn cancel_aborts_the_handler_current_thread() {
    cancel_aborts_the_handler_body().await;
}

async fn cancel_aborts_the_handler_body() {
    struct DropSignal(mpsc::UnboundedSender<&'static str>);
    impl Drop for DropSignal {
        fn drop(&mut self) {
            let _ = self.0.send("dropped");
        }
    }
    let (tx, mut events) = mpsc::unbounded_channel();
    let finished = Arc::new(AtomicUsize::new(0));
    let f2 = finished.clone();
    let mut fake = start(Options::default(), default_ack(), move |req: Request| {
        let (tx, finished) = (tx.clone(), f2.clone());
        async move {
            if req.path() == "/quick" {
                return Ok(Reply::bytes("quick"));
            }
            let _guard = DropSignal(tx.clone());
            tx.send("started").unwrap();
            tokio::time::sleep(Duration::from_secs(3)).await;
            finished.fetch_add(1, Ordering::SeqCst);
            Ok(Reply::bytes("too late"))
        }
    })
    .await;
    let id = fake.open(http_envelope("GET", "/slow", &[])).await;
    fake.end(id).await;
    assert_eq!(tokio::time::timeout(WAIT, events.recv()).await.unwrap(), Some("started"));
    fake.cancel(id).await;
    let dropped = tokio::time::timeout(Duration::from_secs(2), events.recv()).await;
    assert_eq!(dropped, Ok(Some("dropped")), "the handler's future is dropped at once");
    // Nothing more on the cancelled stream; late frames for it are ignored; the connection still works.
    fake.data(id, Bytes::from_static(b"late")).await;
    fake.end(id).await;
    fake.cancel(id).await;
    let r = fake.call(http_envelope("GET", "/quick", &[]), b"").await;
    assert_eq!(r.body, b"quick");
    assert!(fake.try_recv(Duration::from_millis(3500)).await.is_none(), "no frame after Cancel");
    assert_eq!(finished.load(Ordering::SeqCst), 0, "the handler did not run to completion");
    fake.shutdown().await;
    assert!(fake.serve_result().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frames_for_unknown_streams_are_ignored() {
    let mut fake = start(Options::default(), default_ack(), buffered_echo).await;
    fake.data(99, Bytes::from_static(b"x")).await;
    fake.end(99).await;
    fake.send(frame(99, Kind::WindowUpdate(WindowUpdate { increment: 10 }))).await;
    fake.cancel(99).await;
    fake.send(frame(0, Kind::Pong(watchdog_sdk::proto::watchdog::v1::Pong { nonce: 1 }))).await;
    fake.next_id = 101;
    let r = fake.call(http_envelope("POST", "/", &[]), b"still here").await;
    assert_eq!(r.body, b"still here");
    assert!(!fake.serve.is_finished());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_waits_for_open_requests_then_serve_returns_ok() {
    let release = Arc::new(Notify::new());
    let r2 = release.clone();
    let mut fake = start(Options::default(), default_ack(), move |req: Request| {
        let release = r2.clone();
        async move {
            release.notified().await;
            buffered_echo(req).await
        }
    })
    .await;
    let id = fake.open(http_envelope("POST", "/", &[])).await;
    fake.data(id, Bytes::from_static(b"in flight")).await;
    fake.end(id).await;
    fake.shutdown().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!fake.serve.is_finished(), "serve returned with a request still open");
    // Pings are still answered while shutting down.
    fake.ping(5).await;
    assert!(matches!(fake.recv().await.kind, Some(Kind::Pong(p)) if p.nonce == 5));
    release.notify_one();
    let mut body = Vec::new();
    loop {
        match fake.recv().await.kind.unwrap() {
            Kind::ResponseHead(h) => assert_eq!(h.status, 200),
            Kind::Data(d) => body.extend_from_slice(&d.data),
            Kind::End(_) => break,
            Kind::WindowUpdate(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(body, b"in flight");
    // The SDK closes the connection and serve returns Ok.
    let eof = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut fake.io)).await.unwrap();
    assert!(eof.is_none(), "EOF after shutdown, got {eof:?}");
    fake.serve_result().await.expect("serve returns Ok after Shutdown");

    // With nothing open, Shutdown returns at once.
    let fake = start(Options::default(), default_ack(), buffered_echo).await;
    let mut fake = fake;
    fake.shutdown().await;
    fake.serve_result().await.expect("Ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_refuses_new_requests_and_finishes_open_ones() {
    let release = Arc::new(Notify::new());
    let r2 = release.clone();
    let mut fake = start(Options::default(), default_ack(), move |req: Request| {
        let release = r2.clone();
        async move {
            release.notified().await;
            buffered_echo(req).await
        }
    })
    .await;
    let open = fake.open(http_envelope("POST", "/", &[])).await;
    fake.drain().await;
    let late = fake.open(http_envelope("POST", "/", &[])).await;
    release.notify_one();
    let resps = fake.exchange(vec![(open, Bytes::from_static(b"kept")), (late, Bytes::from_static(b"new"))]).await;
    assert_eq!(resps[&open].body, b"kept");
    let e = resps[&late].error.as_ref().expect("the new request is refused");
    assert_eq!(e.kind, ErrorKind::Retryable as i32);
    assert!(!fake.serve.is_finished(), "Drain alone does not end serve");
    fake.shutdown().await;
    fake.serve_result().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn protocol_errors_end_serve() {
    // A frame longer than max_frame_bytes.
    let ack = HelloAck { max_frame_bytes: 4096, ..default_ack() };
    let mut fake = start(Options::default(), ack, echo).await;
    fake.io.codec_mut().set_max_frame_bytes(1 << 20);
    fake.data(1, Bytes::from(vec![0u8; 5000])).await;
    assert!(matches!(fake.serve_result().await, Err(Error::Protocol(m)) if m.contains("exceeds")));

    // Data beyond the window the SDK granted.
    let ack = HelloAck { initial_window_bytes: 1000, ..default_ack() };
    let mut fake = start(Options::default(), ack, |req: Request| async move {
        let _unread_body = req; // holds the window: nothing is credited back
        std::future::pending::<()>().await;
        Ok(Reply::Accepted)
    })
    .await;
    let id = fake.open(http_envelope("POST", "/", &[])).await;
    fake.data(id, Bytes::from(vec![1u8; 1000])).await;
    fake.send(frame(id, Kind::Data(Data { data: Bytes::from_static(b"x") }))).await;
    assert!(matches!(fake.serve_result().await, Err(Error::Protocol(m)) if m.contains("window")));

    // A RequestHead for a stream that is still open, or with an even id.
    for bad_id in [1u64, 4] {
        let mut fake = start(Options::default(), default_ack(), |_req: Request| async move {
            std::future::pending::<()>().await;
            Ok(Reply::Accepted)
        })
        .await;
        fake.open(http_envelope("POST", "/", &[])).await;
        fake.next_id = bad_id;
        fake.open(http_envelope("POST", "/", &[])).await;
        assert!(matches!(fake.serve_result().await, Err(Error::Protocol(m)) if m.contains("RequestHead")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_heads_slightly_out_of_order_are_served() {
    let mut fake = start(Options::default(), default_ack(), buffered_echo).await;
    fake.next_id = 5;
    let five = fake.open(http_envelope("POST", "/", &[])).await;
    fake.next_id = 3;
    let three = fake.open(http_envelope("POST", "/", &[])).await;
    fake.next_id = 7;
    let resps = fake.exchange(vec![(five, Bytes::from_static(b"5")), (three, Bytes::from_static(b"3"))]).await;
    assert_eq!(resps[&five].body, b"5");
    assert_eq!(resps[&three].body, b"3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watchdog_disconnect_ends_serve_and_aborts_handlers() {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    struct Guard(mpsc::UnboundedSender<()>);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }
    let fake = start(Options::default(), default_ack(), move |_req: Request| {
        let g = Guard(tx.clone());
        async move {
            let _g = g;
            std::future::pending::<()>().await;
            Ok(Reply::Accepted)
        }
    })
    .await;
    let mut fake = fake;
    let id = fake.open(http_envelope("GET", "/", &[])).await;
    fake.end(id).await;
    let Fake { io, serve, _dir, .. } = fake;
    drop(io);
    let result = tokio::time::timeout(WAIT, serve).await.unwrap().unwrap();
    assert!(matches!(result, Err(Error::Disconnected)), "{result:?}");
    tokio::time::timeout(WAIT, rx.recv()).await.expect("the handler was dropped");
    drop(_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn init_error_is_reported_and_pings_answered_during_init() {
    let dir = TempDir::new();
    let path = dir.0.join("w.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let worker = tokio::spawn(async move {
        let worker = Worker::connect_at(path, Options::default()).await?;
        // "Loading the model": the connection keeps answering pings meanwhile.
        tokio::time::sleep(Duration::from_millis(500)).await;
        worker.init_error("model file missing").await
    });
    let (mut io, _) = accept_hello(&listener).await;
    io.send(frame(0, Kind::HelloAck(default_ack()))).await.unwrap();
    io.send(frame(0, Kind::Ping(watchdog_sdk::proto::watchdog::v1::Ping { nonce: 9 }))).await.unwrap();
    let pong = next_frame(&mut io).await.unwrap().unwrap();
    assert!(matches!(pong.kind, Some(Kind::Pong(p)) if p.nonce == 9), "{pong:?}");
    let f = next_frame(&mut io).await.unwrap().unwrap();
    match f.kind {
        Some(Kind::InitError(e)) => assert_eq!(e.message, "model file missing"),
        other => panic!("expected InitError, got {other:?}"),
    }
    assert!(next_frame(&mut io).await.is_none(), "the connection is closed after InitError");
    tokio::time::timeout(WAIT, worker).await.unwrap().unwrap().unwrap();
}

async fn next_frame(
    io: &mut tokio_util::codec::Framed<tokio::net::UnixStream, watchdog_sdk::codec::FrameCodec>,
) -> Option<Result<watchdog_sdk::proto::watchdog::v1::Frame, watchdog_sdk::codec::CodecError>> {
    tokio::time::timeout(WAIT, futures_util::StreamExt::next(io)).await.expect("a frame or EOF in time")
}
