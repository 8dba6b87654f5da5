//! gRPC on the main port, end to end with tonic clients: watchdog.v1.Function in classic and http mode,
//! passthrough with a descriptor set, health, reflection, deadlines, cancellation, limits and failures.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use common::{alive, script, Server};
use futures_util::StreamExt;
use ng_watchdog::envelope::pb::io::cloudevents::v1::cloud_event::cloud_event_attribute_value::Attr;
use ng_watchdog::envelope::pb::io::cloudevents::v1::cloud_event::{CloudEventAttributeValue, Data};
use ng_watchdog::envelope::pb::io::cloudevents::v1::{CloudEvent, CloudEventBatch};
use ng_watchdog::envelope::pb::watchdog::v1::cloud_events_client::CloudEventsClient;
use ng_watchdog::envelope::pb::watchdog::v1::function_client::FunctionClient;
use ng_watchdog::envelope::pb::watchdog::v1::{Chunk, InvokeRequest};
use tokio::sync::mpsc;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// An example binary, built by `cargo test` with the other examples.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join("examples").join(name);
    assert!(path.exists(), "{} is missing: cargo test builds it with the examples", path.display());
    path
}

/// The greeter's descriptor set, compiled from the checked-in proto.
fn greeter_descriptor_set() -> Vec<u8> {
    let set = protox::compile(["greeter.proto"], [Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/grpc")])
        .expect("greeter.proto compiles");
    prost::Message::encode_to_vec(&set)
}

async fn channel(server: &Server) -> Channel {
    Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap()
}

async fn function(server: &Server) -> FunctionClient<Channel> {
    FunctionClient::new(channel(server).await)
}

/// A classic-mode server running the shell `body`, in which `$DIR` is the server's TMPDIR.
async fn classic(body: &str, extra: &[(&str, &str)]) -> Server {
    let tmp = tempfile::tempdir().unwrap();
    let path = script(tmp.path(), "fn.sh", &body.replace("$DIR", tmp.path().to_str().unwrap()));
    let mut vars = vec![("fprocess", path.to_str().unwrap().to_string())];
    vars.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start_in(tmp, &vars).await
}

async fn http_mode(extra: &[(&str, &str)]) -> Server {
    let worker = example("fake_worker");
    let mut vars = vec![("mode", "http"), ("fprocess", worker.to_str().unwrap())];
    vars.extend_from_slice(extra);
    let server = Server::start(&vars).await;
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(server.url("/_/ready")).send().await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "no worker became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server
}

fn invoke_request(body: &'static [u8], content_type: &str, metadata: &[(&str, &str)]) -> InvokeRequest {
    InvokeRequest {
        body: Bytes::from_static(body),
        content_type: content_type.into(),
        metadata: metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

/// Waits until `path` exists and holds a pid.
async fn read_pid(path: &Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(pid) = std::fs::read_to_string(path).ok().and_then(|t| t.trim().parse().ok()) {
            return pid;
        }
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until process `pid` is gone.
async fn wait_dead(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} was not killed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Messages as raw bytes, for passthrough calls.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

async fn raw_unary(server: &Server, method: &'static str, message: Bytes) -> Result<Bytes, Status> {
    let mut grpc = tonic::client::Grpc::new(channel(server).await);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(method);
    grpc.unary(tonic::Request::new(message), path, Raw).await.map(|r| r.into_inner())
}

/// The greeter's server-streaming `SayHelloStream` for `name`: the texts of its replies.
async fn say_hello_stream(server: &Server, name: &str) -> Result<Vec<String>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel(server).await);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/helloworld.Greeter/SayHelloStream");
    let mut replies = grpc.server_streaming(tonic::Request::new(string_field(name)), path, Raw).await?.into_inner();
    let mut texts = Vec::new();
    while let Some(reply) = replies.next().await {
        texts.push(parse_string_field(&reply?));
    }
    Ok(texts)
}

/// `helloworld.HelloRequest { name }` / `HelloReply { message }`: field 1, a string.
fn string_field(text: &str) -> Bytes {
    let mut out = vec![0x0a, text.len() as u8];
    out.extend_from_slice(text.as_bytes());
    out.into()
}

fn parse_string_field(bytes: &[u8]) -> String {
    assert_eq!(bytes[0], 0x0a, "field 1, length-delimited");
    String::from_utf8(bytes[2..2 + bytes[1] as usize].to_vec()).unwrap()
}

#[tokio::test]
async fn invoke_in_classic_mode_sees_grpc_variables_and_metadata() {
    let server = classic(
        r#"printf '%s|%s|%s|%s|%s|' "$Http_Method" "$Http_Path" "$Grpc_Method" "$Http_X_Custom" "$Http_Content_Type"; cat"#,
        &[],
    )
    .await;
    let mut client = function(&server).await;
    let mut request = tonic::Request::new(invoke_request(b"hello", "text/plain", &[("x-custom", "from-map")]));
    request.metadata_mut().insert("x-other", "from-metadata".parse().unwrap());
    let response = client.invoke(request).await.unwrap().into_inner();
    assert_eq!(
        String::from_utf8_lossy(&response.body),
        "POST|/watchdog.v1.Function/Invoke|/watchdog.v1.Function/Invoke|from-map|text/plain|hello"
    );
    assert_eq!(response.content_type, "text/plain");
    assert!(response.metadata.contains_key("x-duration-seconds"), "{:?}", response.metadata);
    server.stop().await;
}

#[tokio::test]
async fn invoke_in_http_mode() {
    let server = http_mode(&[]).await;
    let mut client = function(&server).await;
    let response = client.invoke(invoke_request(b"over frames", "application/json", &[])).await.unwrap().into_inner();
    assert_eq!(&response.body[..], b"over frames");
    assert_eq!(response.content_type, "application/json");

    // Typed errors from the worker and its own grpc-status trailers.
    for (behaviour, code) in
        [("/permanent", Code::InvalidArgument), ("/retryable", Code::Unavailable), ("/internal", Code::Internal)]
    {
        let status = client.invoke(invoke_request(b"x", "", &[("x-fake-worker", behaviour)])).await.unwrap_err();
        assert_eq!(status.code(), code, "{behaviour}: {status:?}");
    }
    let status = client.invoke(invoke_request(b"x", "", &[("x-fake-worker", "/grpc-status")])).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "nope");
    server.stop().await;
}

/// Sends chunks one at a time, each only after the previous one came back: the function must stream both ways.
async fn ping_pong(client: &mut FunctionClient<Channel>) {
    let (tx, rx) = mpsc::channel::<Chunk>(1);
    let requests = tokio_stream_from(rx);
    tx.send(Chunk { data: Bytes::from_static(b"one ") }).await.unwrap();
    let mut responses = client.invoke_stream(requests).await.unwrap().into_inner();
    let mut received = Vec::new();
    for next in [&b"two "[..], b"three"] {
        let mut got = Vec::new();
        while got.len() < 4 {
            let chunk = responses.next().await.expect("a chunk").unwrap();
            got.extend_from_slice(&chunk.data);
        }
        received.extend_from_slice(&got);
        tx.send(Chunk { data: Bytes::from_static(next) }).await.unwrap();
    }
    drop(tx);
    while let Some(chunk) = responses.next().await {
        received.extend_from_slice(&chunk.unwrap().data);
    }
    assert_eq!(String::from_utf8_lossy(&received), "one two three");
}

fn tokio_stream_from<T: Send + 'static>(mut rx: mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn invoke_stream_streams_both_ways_in_classic_mode() {
    let server = classic("exec cat", &[]).await;
    ping_pong(&mut function(&server).await).await;
    server.stop().await;
}

#[tokio::test]
async fn invoke_stream_streams_both_ways_in_http_mode() {
    let server = http_mode(&[]).await;
    ping_pong(&mut function(&server).await).await;
    server.stop().await;
}

/// The status a stream of responses ends with; fails if it does not end within 20 s.
async fn final_status(mut responses: tonic::Streaming<Chunk>) -> Status {
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match responses.next().await {
                Some(Ok(_)) => continue,
                Some(Err(status)) => break status,
                None => break Status::ok("ended without an error"),
            }
        }
    });
    ended.await.expect("the call ends without waiting for the function")
}

/// A request message over `grpc_max_message_bytes` ends the stream at once with RESOURCE_EXHAUSTED, whether it
/// comes first or after the function has answered: the function never sees the rest of the stream, so the call
/// must not wait for it (the request stream is still open here).
#[tokio::test]
async fn an_oversized_stream_message_ends_the_call_with_resource_exhausted() {
    let limit = [("grpc_max_message_bytes", "1000")];
    for server in [classic("exec cat", &limit).await, http_mode(&limit).await] {
        let mut client = function(&server).await;
        let (tx, rx) = mpsc::channel::<Chunk>(2);
        tx.send(Chunk { data: Bytes::from_static(b"small") }).await.unwrap();
        let mut responses = client.invoke_stream(tokio_stream_from(rx)).await.unwrap().into_inner();
        assert_eq!(&responses.next().await.expect("a chunk").unwrap().data[..], b"small");
        tx.send(Chunk { data: vec![b'a'; 2000].into() }).await.unwrap();
        let status = final_status(responses).await;
        assert_eq!(status.code(), Code::ResourceExhausted, "after an answer: {status:?}");

        let (tx, rx) = mpsc::channel::<Chunk>(1);
        tx.send(Chunk { data: vec![b'a'; 2000].into() }).await.unwrap();
        let status = match client.invoke_stream(tokio_stream_from(rx)).await {
            Ok(responses) => final_status(responses.into_inner()).await,
            Err(status) => status,
        };
        assert_eq!(status.code(), Code::ResourceExhausted, "first message: {status:?}");
        drop(tx);
        server.stop().await;
    }
}

#[tokio::test]
async fn passthrough_unary_and_server_streaming_with_a_descriptor_set() {
    let tmp = tempfile::tempdir().unwrap();
    let fds = tmp.path().join("greeter.binpb");
    std::fs::write(&fds, greeter_descriptor_set()).unwrap();
    let greeter = example("grpc_greeter");
    let server = Server::start_in(
        tmp,
        &[("fprocess", greeter.to_str().unwrap()), ("grpc_descriptor_set", fds.to_str().unwrap())],
    )
    .await;
    let reply = raw_unary(&server, "/helloworld.Greeter/SayHello", string_field("gRPC")).await.unwrap();
    assert_eq!(parse_string_field(&reply), "Hello, gRPC!");

    let texts = say_hello_stream(&server, "stream").await.unwrap();
    assert_eq!(texts, ["Hello #1, stream!", "Hello #2, stream!", "Hello #3, stream!"]);

    // An unknown method reaches the function too, which fails it: INTERNAL with its stderr.
    let status = raw_unary(&server, "/helloworld.Greeter/Nope", Bytes::new()).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert!(status.message().contains("exit status 2"), "{status:?}");
    assert!(status.message().contains("unknown method"), "{status:?}");
    server.stop().await;
}

#[tokio::test]
async fn checked_in_greeter_descriptor_set_matches_the_proto() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/grpc/greeter.binpb");
    let compiled = greeter_descriptor_set();
    if std::env::var_os("UPDATE_DESCRIPTORS").is_some() {
        std::fs::write(&path, &compiled).unwrap();
    }
    assert_eq!(std::fs::read(&path).unwrap(), compiled, "regenerate with UPDATE_DESCRIPTORS=1 cargo test --test grpc");
}

#[tokio::test]
async fn health_follows_readiness_and_shutdown() {
    let mut server = classic("cat", &[("healthcheck_interval", "30s")]).await;
    let mut health = HealthClient::new(channel(&server).await);
    let check = |service: &str| tonic::Request::new(HealthCheckRequest { service: service.into() });
    for service in ["", "watchdog.v1.Function"] {
        let status = health.check(check(service)).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    assert_eq!(health.check(check("no.Such")).await.unwrap_err().code(), Code::NotFound);

    let mut watch = health.watch(check("")).await.unwrap().into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().status, ServingStatus::Serving as i32);
    server.begin_stop();
    assert_eq!(watch.next().await.unwrap().unwrap().status, ServingStatus::NotServing as i32);
    // Still answering during healthcheck_interval, honestly.
    assert_eq!(health.check(check("")).await.unwrap().into_inner().status, ServingStatus::NotServing as i32);
    assert!(watch.next().await.is_none(), "the watch ends once draining, so it does not hold the drain open");
}

#[tokio::test]
async fn health_is_not_serving_until_a_worker_is_ready() {
    let worker = example("fake_worker");
    let tmp = tempfile::tempdir().unwrap();
    // FAKE_WORKER reaches the worker through the inherited environment only in the real binary; here we wrap it.
    let wrapper = script(tmp.path(), "never.sh", &format!("FAKE_WORKER=never-ready exec {}", worker.display()));
    let server = Server::start_in_unready(tmp, &[("mode", "http"), ("fprocess", wrapper.to_str().unwrap())]).await;
    let mut health = HealthClient::new(channel(&server).await);
    let status = health.check(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner().status;
    assert_eq!(status, ServingStatus::NotServing as i32);
    // Not yet started is not shutting down: the watch stays open after NOT_SERVING.
    let mut watch = health.watch(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().status, ServingStatus::NotServing as i32);
    let next = tokio::time::timeout(Duration::from_millis(600), watch.next()).await;
    assert!(next.is_err(), "the watch ended or changed before the worker was ready: {next:?}");
    server.stop().await;
}

#[tokio::test]
async fn reflection_lists_services_v1_and_v1alpha() {
    use tonic_reflection::pb::{v1, v1alpha};
    let tmp = tempfile::tempdir().unwrap();
    let fds = tmp.path().join("greeter.binpb");
    std::fs::write(&fds, greeter_descriptor_set()).unwrap();
    let server = Server::start_in(tmp, &[("fprocess", "cat"), ("grpc_descriptor_set", fds.to_str().unwrap())]).await;

    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel(&server).await);
    let request = v1::ServerReflectionRequest {
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
        ..Default::default()
    };
    let mut responses =
        client.server_reflection_info(futures_util::stream::iter([request])).await.unwrap().into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) = response.message_response
    else {
        panic!("expected a service list: {response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in ["watchdog.v1.Function", "watchdog.v1.CloudEvents", "grpc.health.v1.Health", "helloworld.Greeter"] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }

    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel(&server).await);
    let request = v1alpha::ServerReflectionRequest {
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
            "helloworld.Greeter".into(),
        )),
        ..Default::default()
    };
    let mut responses =
        client.server_reflection_info(futures_util::stream::iter([request])).await.unwrap().into_inner();
    let response = responses.next().await.unwrap().unwrap();
    assert!(
        matches!(
            response.message_response,
            Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
        ),
        "{response:?}"
    );
    server.stop().await;
}

/// A failed lookup is answered in the stream with an `error_response` (NOT_FOUND), as the reflection protocol
/// says, and the same stream then answers the next request, in v1 and v1alpha. Each request is sent only after
/// the previous answer came, so the stream is known to be open between them.
#[tokio::test]
async fn reflection_failed_lookups_are_error_responses_and_the_stream_goes_on() {
    let server = Server::start(&[("fprocess", "cat")]).await;
    macro_rules! check {
        ($version:ident) => {{
            use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
            use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
            use tonic_reflection::pb::$version::ServerReflectionRequest;
            let version = stringify!($version);
            let (tx, mut rx) = mpsc::channel::<ServerReflectionRequest>(1);
            let requests = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
            // Compressed, as grpcio and grpc-go clients may send it: both versions accept gzip.
            let mut client = ServerReflectionClient::new(channel(&server).await)
                .send_compressed(tonic::codec::CompressionEncoding::Gzip);
            let ask = |message| ServerReflectionRequest { host: "h".into(), message_request: Some(message) };
            let mut responses = client.server_reflection_info(requests).await.unwrap().into_inner();
            for unknown in [
                MessageRequest::FileContainingSymbol("no.Such".into()),
                MessageRequest::FileByFilename("no/such.proto".into()),
            ] {
                tx.send(ask(unknown.clone())).await.unwrap();
                let response = responses.next().await.expect("an answer").expect("an answer, not a status");
                assert_eq!(response.original_request, Some(ask(unknown)), "{version}");
                let Some(MessageResponse::ErrorResponse(error)) = &response.message_response else {
                    panic!("{version}: expected an error response: {response:?}");
                };
                assert_eq!(error.error_code, Code::NotFound as i32, "{version}: {error:?}");

                tx.send(ask(MessageRequest::ListServices(String::new()))).await.unwrap();
                let response = responses.next().await.expect("an answer").expect("an answer, not a status");
                let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
                    panic!("{version}: expected a service list: {response:?}");
                };
                assert!(list.service.iter().any(|s| s.name == "watchdog.v1.Function"), "{version}: {list:?}");
            }
            drop(tx);
            assert!(responses.next().await.is_none(), "{version}: the stream ends cleanly");
        }};
    }
    check!(v1);
    check!(v1alpha);
    server.stop().await;
}

/// One gRPC call over a plain hyper h2c client, so no client-side deadline races the server's answer:
/// returns the gRPC status code from the head or the trailers.
async fn bare_call(server: &Server, path: &str, headers: &[(&str, &str)], message: &[u8]) -> i32 {
    let (head, trailers) = bare_response(server, path, headers, message).await;
    let code = |map: &http::HeaderMap| map.get("grpc-status").map(|v| v.to_str().unwrap().parse::<i32>().unwrap());
    code(&head).or_else(|| code(trailers.as_ref().expect("trailers"))).expect("grpc-status")
}

/// One gRPC call over a plain hyper h2c client: the response's headers and trailers, as sent.
async fn bare_response(
    server: &Server,
    path: &str,
    headers: &[(&str, &str)],
    message: &[u8],
) -> (http::HeaderMap, Option<http::HeaderMap>) {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<Bytes>>();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    let mut request =
        http::Request::post(server.url(path)).header("content-type", "application/grpc").header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client.request(request.body(http_body_util::Full::new(Bytes::from(framed))).unwrap()).await.unwrap();
    let (parts, body) = response.into_parts();
    (parts.headers, body.collect().await.unwrap().trailers().cloned())
}

#[tokio::test]
async fn grpc_timeout_kills_the_function_with_deadline_exceeded() {
    let server = classic(r#"echo $$ > "$DIR/pid"; sleep 60"#, &[]).await;
    let pid_file = server.tmp.path().join("pid");
    let message = prost::Message::encode_to_vec(&invoke_request(b"", "", &[]));
    let code = bare_call(&server, "/watchdog.v1.Function/Invoke", &[("grpc-timeout", "300m")], &message).await;
    assert_eq!(Code::from(code), Code::DeadlineExceeded);
    wait_dead(read_pid(&pid_file).await).await;

    // Passthrough too.
    std::fs::remove_file(&pid_file).unwrap();
    let code = bare_call(&server, "/pkg.Svc/Slow", &[("grpc-timeout", "1S")], b"x").await;
    assert_eq!(Code::from(code), Code::DeadlineExceeded);
    wait_dead(read_pid(&pid_file).await).await;
    server.stop().await;
}

#[tokio::test]
async fn client_cancelling_a_stream_kills_the_function() {
    let server = classic(r#"echo $$ > "$DIR/pid"; head -c 3; sleep 60"#, &[]).await;
    let pid_file = server.tmp.path().join("pid");
    let mut client = function(&server).await;
    let (tx, rx) = mpsc::channel::<Chunk>(1);
    tx.send(Chunk { data: Bytes::from_static(b"abc") }).await.unwrap();
    let mut responses = client.invoke_stream(tokio_stream_from(rx)).await.unwrap().into_inner();
    assert_eq!(&responses.next().await.unwrap().unwrap().data[..], b"abc");
    let pid = read_pid(&pid_file).await;
    assert!(alive(pid));
    drop(responses);
    drop(tx);
    wait_dead(pid).await;
    server.stop().await;
}

/// CloudEvents/Send is a gRPC call like any other: cancelling it (here, dropping the call's future) kills the
/// function, where an event delivered over HTTP runs to its end.
#[tokio::test]
async fn cancelling_a_cloudevents_send_kills_the_function() {
    let server = classic(r#"echo $$ > "$DIR/pid"; sleep 60"#, &[]).await;
    let pid_file = server.tmp.path().join("pid");
    let mut client = CloudEventsClient::new(channel(&server).await);
    let call = tokio::spawn(async move { client.send(event("e1", "com.example.slow", "x")).await });
    let pid = read_pid(&pid_file).await;
    assert!(alive(pid));
    call.abort();
    wait_dead(pid).await;
    server.stop().await;
}

#[tokio::test]
async fn oversized_messages_are_resource_exhausted_both_ways() {
    let server = classic(
        r#"if [ "$Http_X_Big" = yes ]; then head -c 2000 /dev/zero; else cat; fi"#,
        &[("grpc_max_message_bytes", "1024")],
    )
    .await;
    let mut client = function(&server).await;
    let big = InvokeRequest { body: vec![1u8; 2000].into(), ..Default::default() };
    let status = client.invoke(big).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "request: {status:?}");
    let status = client.invoke(invoke_request(b"small", "", &[("x-big", "yes")])).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "response: {status:?}");
    let ok = client.invoke(invoke_request(b"small", "", &[])).await.unwrap().into_inner();
    assert_eq!(&ok.body[..], b"small");

    // Passthrough: the raw codec enforces the same limit.
    let status = raw_unary(&server, "/pkg.Svc/Echo", vec![7u8; 2000].into()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "raw request: {status:?}");
    let mut grpc = tonic::client::Grpc::new(channel(&server).await);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(Bytes::from_static(b"x"));
    request.metadata_mut().insert("x-big", "yes".parse().unwrap());
    let path = http::uri::PathAndQuery::from_static("/pkg.Svc/Echo");
    let status = grpc.unary(request, path, Raw).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "raw response: {status:?}");
    server.stop().await;
}

#[tokio::test]
async fn compressed_requests_are_decompressed_within_the_message_limit() {
    let server = classic("cat", &[("grpc_max_message_bytes", "65536")]).await;
    let mut client = function(&server).await.send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let body = Bytes::from(vec![b'a'; 60_000]);
    let reply = client.invoke(InvokeRequest { body: body.clone(), ..Default::default() }).await.unwrap();
    assert_eq!(reply.into_inner().body, body);
    // A megabyte of zeros gzips to about a kilobyte: it is refused by its decompressed size, before the function.
    let bomb = InvokeRequest { body: vec![0u8; 1 << 20].into(), ..Default::default() };
    let status = client.invoke(bomb).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    server.stop().await;
}

#[tokio::test]
async fn classic_failures_are_internal_with_the_stderr_tail() {
    let server =
        classic(r#"if [ "$Http_X_When" = late ]; then head -c 3; fi; echo "something broke" >&2; exit 3"#, &[]).await;
    let mut client = function(&server).await;
    let status = client.invoke(invoke_request(b"", "", &[])).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert!(status.message().contains("exit status 3"), "{status:?}");
    assert!(status.message().contains("something broke"), "{status:?}");

    // Mid-stream: the chunks already written arrive, then the status.
    let mut request = tonic::Request::new(futures_util::stream::iter([Chunk { data: Bytes::from_static(b"abc") }]));
    request.metadata_mut().insert("x-when", "late".parse().unwrap());
    let mut responses = client.invoke_stream(request).await.unwrap().into_inner();
    assert_eq!(&responses.next().await.unwrap().unwrap().data[..], b"abc");
    let status = responses.next().await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert!(status.message().contains("something broke"), "{status:?}");
    server.stop().await;
}

#[tokio::test]
async fn worker_crash_mid_stream_is_unavailable_naming_the_cause() {
    let server = http_mode(&[]).await;
    let mut client = function(&server).await;
    let mut request = tonic::Request::new(futures_util::stream::iter([Chunk { data: Bytes::from_static(b"abc") }]));
    request.metadata_mut().insert("x-fake-worker", "/crash-after-echo".parse().unwrap());
    let mut data = Vec::new();
    // The worker may be seen gone before or after its response head: either way one UNAVAILABLE ends the call.
    let status = match client.invoke_stream(request).await {
        Err(status) => status,
        Ok(responses) => {
            let mut responses = responses.into_inner();
            loop {
                match responses.next().await.expect("the stream ends with a status") {
                    Ok(chunk) => data.extend_from_slice(&chunk.data),
                    Err(status) => break status,
                }
            }
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("exit status 7"), "{status:?}");
    assert!(data.is_empty() || data == b"abc");
    server.stop().await;
}

#[tokio::test]
async fn max_inflight_is_resource_exhausted() {
    let server = classic(
        r#"touch "$DIR/started"; while [ ! -f "$DIR/go" ]; do sleep 0.02; done; cat"#,
        &[("max_inflight", "1")],
    )
    .await;
    let tmp = server.tmp.path().to_path_buf();
    let mut first = function(&server).await;
    let running = tokio::spawn(async move { first.invoke(invoke_request(b"first", "", &[])).await });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !tmp.join("started").exists() {
        assert!(Instant::now() < deadline, "the first call never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = function(&server).await.invoke(invoke_request(b"second", "", &[])).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    std::fs::write(tmp.join("go"), b"").unwrap();
    assert_eq!(&running.await.unwrap().unwrap().into_inner().body[..], b"first");
    server.stop().await;
}

#[tokio::test]
async fn http_and_grpc_interleave_on_one_port() {
    let server = classic("cat", &[]).await;
    let client = function(&server).await;
    let http = reqwest::Client::new();
    let calls = (0..24).map(|i| {
        let mut client = client.clone();
        let http = http.clone();
        let url = server.url("/");
        async move {
            let body = format!("call {i}");
            if i % 2 == 0 {
                let text = http.post(url).body(body.clone()).send().await.unwrap().text().await.unwrap();
                assert_eq!(text, body);
            } else {
                let request = InvokeRequest { body: body.clone().into(), ..Default::default() };
                let response = client.invoke(request).await.unwrap().into_inner();
                assert_eq!(response.body, body.as_bytes());
            }
        }
    });
    futures_util::stream::iter(calls).buffer_unordered(24).collect::<Vec<_>>().await;
    server.stop().await;
}

fn event(id: &str, kind: &str, data: &str) -> CloudEvent {
    let mut event = CloudEvent {
        id: id.into(),
        source: "/grpc/tests".into(),
        spec_version: "1.0".into(),
        r#type: kind.into(),
        data: Some(Data::TextData(data.into())),
        ..Default::default()
    };
    event
        .attributes
        .insert("datacontenttype".into(), CloudEventAttributeValue { attr: Some(Attr::CeString("text/plain".into())) });
    event.attributes.insert("priority".into(), CloudEventAttributeValue { attr: Some(Attr::CeInteger(7)) });
    event
}

fn text_attr(event: &CloudEvent, name: &str) -> String {
    ng_watchdog::cloudevent::attribute_text(&event.attributes[name])
}

#[tokio::test]
async fn cloudevents_send_replies_like_http() {
    let server = classic(r#"printf '%s|%s|%s|' "$CE_TYPE" "$CE_PRIORITY" "$Grpc_Method"; cat"#, &[]).await;
    let mut client = CloudEventsClient::new(channel(&server).await);
    let reply = client.send(event("e1", "com.example.made", "payload")).await.unwrap().into_inner().reply.unwrap();
    assert_eq!(reply.r#type, "com.example.made.reply");
    assert_eq!(reply.source, "/fwatchdog");
    assert_eq!(reply.spec_version, "1.0");
    assert!(!reply.id.is_empty() && reply.id != "e1");
    assert_eq!(text_attr(&reply, "datacontenttype"), "text/plain");
    assert_eq!(reply.data, Some(Data::TextData("com.example.made|7||payload".into())));
    server.stop().await;
}

#[tokio::test]
async fn cloudevents_send_without_output_has_no_reply_and_failures_have_codes() {
    let server = classic(r#"[ "$CE_TYPE" = fail ] && { echo oops >&2; exit 2; }; true"#, &[]).await;
    let mut client = CloudEventsClient::new(channel(&server).await);
    let response = client.send(event("e1", "quiet", "x")).await.unwrap().into_inner();
    assert!(response.reply.is_none());
    let status = client.send(event("e2", "fail", "x")).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(status.message().contains("exit status 2") && status.message().contains("oops"), "{status:?}");
    let mut invalid = event("e3", "t", "x");
    invalid.source.clear();
    let status = client.send(invalid).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("source"), "{status:?}");
    server.stop().await;
}

#[tokio::test]
async fn cloudevents_send_batch_in_order_and_stops_at_the_first_failure() {
    let server = classic(r#"echo "$CE_ID" >> "$DIR/order"; [ "$CE_ID" != bad ] && printf 'r-%s' "$CE_ID""#, &[]).await;
    let mut client = CloudEventsClient::new(channel(&server).await);
    let batch = CloudEventBatch { events: vec![event("a", "t", ""), event("b", "t", "")] };
    let replies = client.send_batch(batch).await.unwrap().into_inner().replies;
    let data: Vec<_> = replies.iter().map(|r| r.data.clone()).collect();
    assert_eq!(data, [Some(Data::TextData("r-a".into())), Some(Data::TextData("r-b".into()))]);
    let batch = CloudEventBatch { events: vec![event("c", "t", ""), event("bad", "t", ""), event("never", "t", "")] };
    let status = client.send_batch(batch).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    let order = std::fs::read_to_string(server.tmp.path().join("order")).unwrap();
    assert_eq!(order, "a\nb\nc\nbad\n");
    server.stop().await;
}

#[tokio::test]
async fn grpc_calls_are_metered() {
    let (server, metrics) = Server::start_with_metrics(&[("fprocess", "cat")]).await;
    let mut client = function(&server).await;
    client.invoke(invoke_request(b"x", "", &[])).await.unwrap();
    let text = reqwest::get(format!("http://127.0.0.1:{metrics}/metrics")).await.unwrap().text().await.unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("watchdog_invocations_total{") && l.contains("protocol=\"grpc\"")),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn grpc_is_forwarded_to_an_upstream_over_h2c() {
    let echo = example("grpc_echo");
    let port = common::free_port();
    let fprocess = format!("{} 127.0.0.1:{port}", echo.display());
    let upstream = format!("http://127.0.0.1:{port}");
    let server = Server::start(&[("mode", "http"), ("fprocess", &fprocess), ("upstream_url", &upstream)]).await;
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(server.url("/_/ready")).send().await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "the upstream never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut function = function(&server).await;
    let response = function.invoke(invoke_request(b"proxied", "text/plain", &[])).await.unwrap().into_inner();
    assert_eq!(&response.body[..], b"proxied");
    assert_eq!(response.content_type, "text/plain");
    ping_pong(&mut function).await;
    server.stop().await;
}

/// A Node SDK greeter (messages are one string field, encoded by hand so no protobuf package is needed).
const NODE_GREETER: &str = r#"
const { serve, GrpcStatus, StatusCode } = require(process.env.SDK_NODE);
const field = (s) => { const b = Buffer.from(s); return Buffer.concat([Buffer.from([0x0a, b.length]), b]); };
const name = (m) => m.subarray(2, 2 + m[1]).toString();
serve(async (request) => {
  switch (request.grpcMethod) {
    case '/helloworld.Greeter/SayHello':
      return field(`Hello, ${name(request.grpcMessages()[0])}!`);
    case '/helloworld.Greeter/SayHelloStream': {
      const who = name(request.grpcMessages()[0]);
      return (async function* () { for (let i = 0; i < 3; i++) yield field(`Hello, ${who}! #${i}`); })();
    }
    default:
      throw new GrpcStatus(StatusCode.UNIMPLEMENTED, `no method ${request.grpcMethod}`);
  }
});
"#;

/// An http-mode server whose worker is `fprocess`, with the greeter's descriptor set, once a worker is ready.
async fn sdk_greeter_server(tmp: tempfile::TempDir, fprocess: &str) -> Server {
    let fds = tmp.path().join("greeter.binpb");
    std::fs::write(&fds, greeter_descriptor_set()).unwrap();
    let vars = [("mode", "http"), ("fprocess", fprocess), ("grpc_descriptor_set", fds.to_str().unwrap())];
    let server = Server::start_in(tmp, &vars).await;
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(server.url("/_/ready")).send().await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "the greeter never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server
}

/// SayHello, SayHelloStream (each reply unframed by the watchdog as the SDK framed it) and an unknown method.
async fn greet(server: &Server) {
    let reply = raw_unary(server, "/helloworld.Greeter/SayHello", string_field("SDK")).await.unwrap();
    assert_eq!(parse_string_field(&reply), "Hello, SDK!");
    let texts = say_hello_stream(server, "stream").await.unwrap();
    assert_eq!(texts, ["Hello, stream! #0", "Hello, stream! #1", "Hello, stream! #2"]);
    let status = raw_unary(server, "/helloworld.Greeter/Nope", Bytes::new()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
}

#[tokio::test]
async fn passthrough_in_http_mode_with_the_rust_sdk_greeter() {
    // Built by `cargo test --workspace` (or `cargo build --examples -p watchdog-sdk`) with the SDK's examples.
    let exe = std::env::current_exe().unwrap();
    let greeter = exe.parent().unwrap().parent().unwrap().join("examples").join("greeter");
    assert!(greeter.exists(), "{} is missing: cargo test --workspace builds it", greeter.display());
    let server = sdk_greeter_server(tempfile::tempdir().unwrap(), greeter.to_str().unwrap()).await;
    greet(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn passthrough_carries_the_functions_response_metadata() {
    let exe = std::env::current_exe().unwrap();
    let greeter = exe.parent().unwrap().parent().unwrap().join("examples").join("greeter");
    let server = sdk_greeter_server(tempfile::tempdir().unwrap(), greeter.to_str().unwrap()).await;
    let mut grpc = tonic::client::Grpc::new(channel(&server).await);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/helloworld.Greeter/SayHello");
    let response = grpc.unary(tonic::Request::new(string_field("meta")), path, Raw).await.unwrap();
    // The handler's headers and trailers are the response metadata (tonic merges a unary call's trailers in).
    assert_eq!(response.metadata().get("x-served-by").unwrap(), "watchdog-sdk");
    assert_eq!(response.metadata().get("x-greeted").unwrap(), "meta");
    assert_eq!(parse_string_field(response.get_ref()), "Hello, meta!");

    // Its trailers are the trailing metadata, next to grpc-status 0, as the raw HTTP/2 response shows.
    let (head, trailers) = bare_response(&server, "/helloworld.Greeter/SayHello", &[], &string_field("raw")).await;
    assert_eq!(head["x-served-by"], "watchdog-sdk");
    assert!(head.get("x-greeted").is_none(), "trailing metadata stays in the trailers: {head:?}");
    let trailers = trailers.expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-greeted"], "raw");
    server.stop().await;
}

#[tokio::test]
async fn passthrough_in_http_mode_with_the_node_sdk_greeter() {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk/node");
    assert!(sdk.join("node_modules").exists(), "sdk/node/node_modules is missing: scripts/test.sh installs it");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("greeter.js"), NODE_GREETER).unwrap();
    let worker = script(
        tmp.path(),
        "worker.sh",
        &format!("SDK_NODE={} exec node {}/greeter.js", sdk.display(), tmp.path().display()),
    );
    let server = sdk_greeter_server(tmp, worker.to_str().unwrap()).await;
    greet(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn client_cancelling_a_unary_call_kills_the_function() {
    let server = classic(r#"echo $$ > "$DIR/pid"; sleep 60"#, &[]).await;
    let pid_file = server.tmp.path().join("pid");
    let mut client = function(&server).await;
    let call = tokio::spawn(async move { client.invoke(invoke_request(b"", "", &[])).await });
    let pid = read_pid(&pid_file).await;
    call.abort();
    wait_dead(pid).await;
    server.stop().await;
}
