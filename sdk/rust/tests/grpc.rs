//! gRPC calls against the fake watchdog: call details and metadata, message framing both ways, statuses as
//! trailers, and responses (and requests) streamed message by message.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use tokio::sync::{mpsc, Notify};
use watchdog_sdk::http::{HeaderMap, HeaderValue};
use watchdog_sdk::proto::watchdog::v1::{
    envelope, frame::Kind, Envelope, ErrorKind, GrpcCall as GrpcCallProto, Header, HttpRequest, ResponseHead,
};
use watchdog_sdk::{
    grpc_frame, split_grpc_messages, Code, Error, GrpcStatus, HandlerError, Options, Reply, Request, Response,
};

type Res = Result<Reply, HandlerError>;

const GREETER_HELLO: &str = "/helloworld.Greeter/SayHello";
const GREETER_MANY: &str = "/helloworld.Greeter/SayHelloStream";
const GREETER_CHAT: &str = "/helloworld.Greeter/Chat";
const GREETER_COLLECT: &str = "/helloworld.Greeter/Collect";

fn grpc_envelope(method: &str, client_streaming: bool, server_streaming: bool, metadata: &[(&str, &str)]) -> Envelope {
    let mut headers = vec![("content-type", "application/grpc"), ("te", "trailers")];
    headers.extend_from_slice(metadata);
    Envelope {
        request_id: "g-1".into(),
        headers: headers.iter().map(|(n, v)| Header { name: (*n).into(), value: Bytes::from(v.to_string()) }).collect(),
        content_length: -1,
        transport: Some(HttpRequest {
            method: "POST".into(),
            path: Bytes::from(method.to_string()),
            host: "grpc.example.com".into(),
            version: "HTTP/2.0".into(),
            ..Default::default()
        }),
        kind: Some(envelope::Kind::Grpc(GrpcCallProto { method: method.into(), client_streaming, server_streaming })),
        ..Default::default()
    }
}

/// A toy `HelloRequest { string name = 1; }` / `HelloReply { string message = 1; }` codec, enough for tests.
fn pb_string(s: &str) -> Bytes {
    let mut v = vec![0x0a, s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v.into()
}

fn pb_string_decode(b: &[u8]) -> String {
    assert_eq!(b[0], 0x0a, "field 1, length-delimited");
    String::from_utf8(b[2..2 + b[1] as usize].to_vec()).unwrap()
}

/// A Greeter: unary SayHello, server-streaming SayHelloStream, bidi Chat (answers each message as it arrives),
/// client-streaming Collect (joins every name).
async fn greeter(mut req: Request) -> Res {
    let Some(call) = req.grpc() else { return Err(HandlerError::permanent("gRPC only")) };
    match call.method() {
        GREETER_HELLO => {
            let name = pb_string_decode(&req.grpc_messages().await?[0]);
            if name.is_empty() {
                return Err(GrpcStatus::invalid_argument("name is required").into());
            }
            let mut headers = HeaderMap::new();
            headers.insert("x-initial", HeaderValue::from_static("yes"));
            let mut trailers = HeaderMap::new();
            trailers.insert("x-trailing", HeaderValue::from_static("done"));
            Ok(Response { status: 200, headers, body: pb_string(&format!("Hello {name}")).into(), trailers }.into())
        }
        GREETER_MANY => {
            let name = pb_string_decode(&req.grpc_messages().await?[0]);
            let greetings = ["Hello", "Hi", "Hey"].map(|g| pb_string(&format!("{g} {name}")));
            Ok(Reply::stream(futures_util::stream::iter(greetings)))
        }
        GREETER_CHAT => Ok(Reply::try_stream(
            req.grpc_message_stream().map(|m| m.map(|m| pb_string(&pb_string_decode(&m).to_uppercase()))),
        )),
        GREETER_COLLECT => match req.grpc_messages().await {
            Ok(messages) => {
                let names: Vec<String> = messages.iter().map(|m| pb_string_decode(m)).collect();
                Ok(Reply::bytes(pb_string(&names.join(","))))
            }
            Err(e @ Error::Framing(_)) => Ok(GrpcStatus::invalid_argument(e.to_string()).into()),
            Err(e) => Err(e.into()),
        },
        _ => Ok(Reply::grpc_status(Code::Unimplemented, format!("no method {}", call.method()))),
    }
}

fn trailers(r: &Resp) -> Vec<(String, String)> {
    let end = r.end.as_ref().expect("End");
    end.trailers.iter().map(|h| (h.name.clone(), String::from_utf8(h.value.to_vec()).unwrap())).collect()
}

/// The next frame on stream `id` (WindowUpdates skipped).
async fn next_on(fake: &mut Fake, id: u64) -> Kind {
    loop {
        let f = fake.recv().await;
        assert_eq!(f.stream_id, id, "unexpected frame {f:?}");
        match f.kind.unwrap() {
            Kind::WindowUpdate(_) => continue,
            k => return k,
        }
    }
}

async fn expect_head(fake: &mut Fake, id: u64) -> ResponseHead {
    match next_on(fake, id).await {
        Kind::ResponseHead(h) => *h,
        other => panic!("expected ResponseHead, got {other:?}"),
    }
}

async fn expect_data(fake: &mut Fake, id: u64) -> Bytes {
    match next_on(fake, id).await {
        Kind::Data(d) => d.data,
        other => panic!("expected Data, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn call_details_metadata_and_transport_are_visible() {
    let (tx, mut rx) = mpsc::unbounded_channel::<HashMap<&'static str, String>>();
    let mut fake = start(Options::default(), default_ack(), move |req: Request| {
        let tx = tx.clone();
        async move {
            let Some(call) = req.grpc() else { return Ok(Reply::empty()) };
            let mut m = HashMap::new();
            m.insert("method", call.method().to_owned());
            m.insert("flags", format!("{} {}", call.client_streaming(), call.server_streaming()));
            m.insert("framed", format!("{} {}", call.request_framed(), call.response_framed()));
            m.insert("passthrough", call.is_passthrough().to_string());
            m.insert("grpc_method", format!("{:?}", req.grpc_method()));
            m.insert("ct", req.metadata().get("Content-Type").unwrap().to_str().unwrap().to_owned());
            let user: Vec<_> =
                req.metadata().get_all("x-user").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
            m.insert("user", user.join("|"));
            m.insert("timeout", format!("{:?}", req.metadata().get("grpc-timeout")));
            m.insert("same", (req.metadata() == req.headers()).to_string());
            m.insert("host", req.host().to_owned());
            m.insert("transport", format!("{:?}", req.transport().map(|t| (t.method.as_str(), t.version.as_str()))));
            tx.send(m).unwrap();
            Ok(Reply::empty())
        }
    })
    .await;
    let env = grpc_envelope(GREETER_CHAT, true, true, &[("x-user", "a"), ("x-user", "b"), ("grpc-timeout", "5S")]);
    let r = fake.call(env, b"").await;
    assert_eq!(r.status(), 200, "Reply::empty() is OK for a gRPC call");
    assert!(r.body.is_empty(), "no message for a server-streaming call");
    let m = rx.recv().await.unwrap();
    assert_eq!(m["method"], GREETER_CHAT);
    assert_eq!(m["flags"], "true true");
    assert_eq!(m["framed"], "true true");
    assert_eq!(m["passthrough"], "true");
    assert_eq!(m["grpc_method"], format!("Some({GREETER_CHAT:?})"));
    assert_eq!(m["ct"], "application/grpc");
    assert_eq!(m["user"], "a|b", "repeated metadata kept in order");
    assert_eq!(m["timeout"], "Some(\"5S\")");
    assert_eq!(m["same"], "true");
    assert_eq!(m["host"], "grpc.example.com", "from Envelope.transport");
    assert_eq!(m["transport"], "Some((\"POST\", \"HTTP/2.0\"))");

    let r = fake.call(grpc_envelope("/watchdog.v1.Function/InvokeStream", true, true, &[]), b"").await;
    assert_eq!(r.status(), 200);
    let m = rx.recv().await.unwrap();
    assert_eq!(m["flags"], "true true");
    assert_eq!(m["framed"], "false false", "InvokeStream carries plain chunks");
    assert_eq!(m["passthrough"], "false");

    let r = fake.call(http_envelope("GET", "/", &[]), b"").await;
    assert_eq!(r.status(), 202, "not a gRPC call: Accepted stays 202");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unary_passthrough_raw_message_initial_and_trailing_metadata() {
    let mut fake = start(Options::default(), default_ack(), greeter).await;
    let r = fake.call(grpc_envelope(GREETER_HELLO, false, false, &[]), &pb_string("Ada")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.body, pb_string("Hello Ada"), "one raw message, not framed");
    assert_eq!(r.header("x-initial"), ["yes"], "ResponseHead.headers = initial metadata");
    assert_eq!(trailers(&r), [("x-trailing".to_owned(), "done".to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_status_becomes_trailers() {
    let mut fake = start(Options::default(), default_ack(), |req: Request| async move {
        match req.grpc_method().unwrap_or_default() {
            "/t.S/Reply" => {
                let mut md = HeaderMap::new();
                md.insert("x-retry-after", HeaderValue::from_static("3"));
                Ok(GrpcStatus::new(Code::ResourceExhausted, "slow down: quota é").with_trailers(md).into())
            }
            "/t.S/Err" => Err(GrpcStatus::not_found("no user 7").into()),
            "/t.S/Question" => {
                let id: u32 = "x".parse().map_err(|_| GrpcStatus::invalid_argument("id must be a number"))?;
                Ok(Reply::bytes(id.to_string()))
            }
            "/t.S/MidStream" => {
                let items = vec![
                    Ok(Bytes::from_static(b"one")),
                    Ok(Bytes::from_static(b"two")),
                    Err(HandlerError::from(GrpcStatus::new(Code::Aborted, "conflict"))),
                    Ok(Bytes::from_static(b"never sent")),
                ];
                Ok(Reply::try_stream(futures_util::stream::iter(items)))
            }
            "/t.S/Multiline" => Ok(Reply::grpc_status(Code::Internal, "line 1\nline 2")),
            "/t.S/Permanent" => Err(HandlerError::permanent("bad input")),
            _ => Ok(Reply::grpc_status(Code::NotFound, "gone")),
        }
    })
    .await;
    let status = |r: &Resp| -> (String, Option<String>) {
        let t: HashMap<_, _> = trailers(r).into_iter().collect();
        (t["grpc-status"].clone(), t.get("grpc-message").cloned())
    };

    let r = fake.call(grpc_envelope("/t.S/Reply", false, false, &[]), b"").await;
    assert_eq!(r.status(), 200, "the trailers carry the status; the HTTP status stays OK");
    assert!(r.body.is_empty(), "no response message");
    assert_eq!(
        trailers(&r),
        [
            ("x-retry-after".to_owned(), "3".to_owned()),
            ("grpc-status".to_owned(), "8".to_owned()),
            ("grpc-message".to_owned(), "slow down: quota é".to_owned()),
        ]
    );
    let r = fake.call(grpc_envelope("/t.S/Err", false, false, &[]), b"").await;
    assert!(r.error.is_none(), "a status is not an Error frame");
    assert_eq!(status(&r), ("5".to_owned(), Some("no user 7".to_owned())));
    let r = fake.call(grpc_envelope("/t.S/Question", false, false, &[]), b"").await;
    assert_eq!(status(&r), ("3".to_owned(), Some("id must be a number".to_owned())), "`?` on a GrpcStatus");

    let r = fake.call(grpc_envelope("/t.S/MidStream", false, true, &[]), b"").await;
    assert_eq!(split_grpc_messages(Bytes::from(r.body.clone())).unwrap(), [&b"one"[..], b"two"]);
    assert_eq!(status(&r), ("10".to_owned(), Some("conflict".to_owned())), "the stream ends with its status");

    let r = fake.call(grpc_envelope("/t.S/Multiline", false, false, &[]), b"").await;
    assert_eq!(status(&r), ("13".to_owned(), Some("line 1 line 2".to_owned())), "no CR/LF in a header value");

    // Existing behaviour: errors stay Error frames (the watchdog maps them to INVALID_ARGUMENT and so on).
    let r = fake.call(grpc_envelope("/t.S/Permanent", false, false, &[]), b"").await;
    let e = r.error.expect("an Error frame");
    assert_eq!((e.kind, e.message.as_str()), (ErrorKind::Permanent as i32, "bad input"));

    // A status for a request that is not a gRPC call: its HTTP status, the message as body.
    let r = fake.call(http_envelope("GET", "/", &[]), b"").await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.header("content-type"), ["text/plain"]);
    assert_eq!(r.body, b"gone");
    assert!(trailers(&r).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_streaming_messages_are_framed_and_sent_as_produced() {
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let mut fake = start(Options::default(), default_ack(), move |mut req: Request| {
        let gate = g.clone();
        async move {
            let name = String::from_utf8(req.grpc_messages().await?.remove(0).to_vec()).unwrap();
            // Each message after the first waits for the test's go: it must have arrived before that.
            let messages = futures_util::stream::unfold(0, move |i| {
                let (gate, name) = (gate.clone(), name.clone());
                async move {
                    if i == 3 {
                        return None;
                    }
                    if i > 0 {
                        gate.notified().await;
                    }
                    Some((format!("{name} #{i}"), i + 1))
                }
            });
            let mut headers = HeaderMap::new();
            headers.insert("x-initial", HeaderValue::from_static("1"));
            let mut trailers = HeaderMap::new();
            trailers.insert("x-count", HeaderValue::from_static("3"));
            let mut reply = Reply::stream(messages);
            if let Reply::Response(r) = &mut reply {
                r.headers = headers;
                r.trailers = trailers;
            }
            Ok(reply)
        }
    })
    .await;
    let id = fake.open(grpc_envelope(GREETER_MANY, false, true, &[])).await;
    fake.data(id, "Ada").await;
    fake.end(id).await;
    let head = expect_head(&mut fake, id).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.headers[0].name, "x-initial");
    for i in 0..3 {
        let data = expect_data(&mut fake, id).await;
        assert_eq!(data, grpc_frame(format!("Ada #{i}").as_bytes()), "message {i}: one framed message per item");
        if i < 2 {
            assert!(fake.try_recv(Duration::from_millis(100)).await.is_none(), "nothing before the next item");
            gate.notify_one();
        }
    }
    match next_on(&mut fake, id).await {
        Kind::End(end) => {
            assert_eq!(end.trailers.len(), 1);
            assert_eq!((end.trailers[0].name.as_str(), &end.trailers[0].value[..]), ("x-count", &b"3"[..]));
        }
        other => panic!("expected End, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_streaming_greeter_and_invoke_stream_chunks() {
    let mut fake = start(Options::default(), default_ack(), |req: Request| async move {
        if req.grpc_method() == Some("/watchdog.v1.Function/InvokeStream") {
            return Ok(Reply::stream(futures_util::stream::iter(["raw ", "chunks"])));
        }
        greeter(req).await
    })
    .await;
    let r = fake.call(grpc_envelope(GREETER_MANY, false, true, &[]), &pb_string("Bo")).await;
    let messages = split_grpc_messages(Bytes::from(r.body.clone())).unwrap();
    let got: Vec<String> = messages.iter().map(|m| pb_string_decode(m)).collect();
    assert_eq!(got, ["Hello Bo", "Hi Bo", "Hey Bo"]);
    assert_eq!(r.chunks.len(), 3, "one Data frame per message");
    assert!(trailers(&r).is_empty());

    let r = fake.call(grpc_envelope("/watchdog.v1.Function/InvokeStream", true, true, &[]), b"").await;
    assert_eq!(r.body, b"raw chunks", "InvokeStream chunks are not framed");
    assert_eq!(r.chunks, [4, 6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_streamed_messages_respect_flow_control() {
    // 40 messages of 100 KiB: more than the window, each larger than a chunk.
    let mut fake = start(Options::default(), default_ack(), |_req: Request| async move {
        Ok(Reply::stream(futures_util::stream::iter((0..40u8).map(|i| vec![i; 100 * 1024]))))
    })
    .await;
    let id = fake.open(grpc_envelope("/big.S/Download", false, true, &[])).await;
    let r = fake.exchange(vec![(id, Bytes::new())]).await.remove(&id).unwrap();
    let messages = split_grpc_messages(Bytes::from(r.body)).unwrap();
    assert_eq!(messages.len(), 40);
    for (i, m) in messages.iter().enumerate() {
        assert!(m.len() == 100 * 1024 && m.iter().all(|b| *b == i as u8), "message {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_streaming_messages_are_split_and_truncation_reported() {
    let mut fake = start(Options::default(), default_ack(), greeter).await;
    let mut body = Vec::new();
    for name in ["a", "bb", "", "ccc"] {
        body.extend_from_slice(&grpc_frame(&pb_string(name)));
    }
    // Split at awkward places: inside prefixes and messages.
    let id = fake.open(grpc_envelope(GREETER_COLLECT, true, false, &[])).await;
    for piece in body.chunks(3) {
        fake.data(id, Bytes::copy_from_slice(piece)).await;
    }
    fake.end(id).await;
    let head = expect_head(&mut fake, id).await;
    assert_eq!(head.status, 200);
    assert_eq!(expect_data(&mut fake, id).await, pb_string("a,bb,,ccc"), "unary response: raw, not framed");
    assert!(matches!(next_on(&mut fake, id).await, Kind::End(_)));

    let mut truncated = grpc_frame(&pb_string("ok")).to_vec();
    truncated.extend_from_slice(&grpc_frame(&pb_string("cut short"))[..7]);
    let r = fake.call(grpc_envelope(GREETER_COLLECT, true, false, &[]), &truncated).await;
    let t: HashMap<_, _> = trailers(&r).into_iter().collect();
    assert_eq!(t["grpc-status"], "3");
    assert_eq!(t["grpc-message"], "truncated gRPC message: 2 of its 11 bytes present");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bidi_handler_answers_each_message_as_it_arrives() {
    let mut fake = start(Options::default(), default_ack(), greeter).await;
    let id = fake.open(grpc_envelope(GREETER_CHAT, true, true, &[])).await;
    let first = grpc_frame(&pb_string("hello"));
    // The first message in two Data frames: no answer until it is complete.
    fake.data(id, first.slice(..4)).await;
    // The head (initial metadata) goes out as soon as the handler returns its stream, before any message.
    assert_eq!(expect_head(&mut fake, id).await.status, 200);
    assert!(fake.try_recv(Duration::from_millis(100)).await.is_none(), "half a message is no message");
    fake.data(id, first.slice(4..)).await;
    assert_eq!(expect_data(&mut fake, id).await, grpc_frame(&pb_string("HELLO")));
    // The request is still open: the answer came before End.
    fake.data(id, grpc_frame(&pb_string("again"))).await;
    assert_eq!(expect_data(&mut fake, id).await, grpc_frame(&pb_string("AGAIN")));
    fake.end(id).await;
    assert!(matches!(next_on(&mut fake, id).await, Kind::End(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_method_gets_unimplemented() {
    let mut fake = start(Options::default(), default_ack(), greeter).await;
    let r = fake.call(grpc_envelope("/helloworld.Greeter/Nope", false, false, &[]), b"").await;
    let t: HashMap<_, _> = trailers(&r).into_iter().collect();
    assert_eq!(t["grpc-status"], "12");
    assert_eq!(t["grpc-message"], "no method /helloworld.Greeter/Nope");
}
