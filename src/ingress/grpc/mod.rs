//! gRPC on the main port (SPEC §5). A request whose `content-type` is `application/grpc*` lands here from
//! [`Ingress::handle`](super::Ingress::handle) and is routed by path:
//!
//! ```text
//!  /grpc.health.v1.Health/*                 health      computed on demand from /_/ready's rule
//!  /grpc.reflection.v1{,alpha}.ServerReflection/*  reflection  watchdog, health and user descriptors
//!  /watchdog.v1.Function/*                  function    Invoke, InvokeStream → the function
//!  /watchdog.v1.CloudEvents/*               cloudevents Send, SendBatch → the function, HTTP's reply rules
//!  /pkg.Service/Method                      passthrough raw message bytes → the function
//! ```
//!
//! Calls that reach the function share the HTTP path's limiter, in-flight gauge, metrics and access log; the
//! watchdog's own services (health, reflection) are treated like `/_/*` probes: never limited, never metered.
//! Metrics label a gRPC call with the HTTP status its gRPC code stands for ([`http_status_for_grpc`]).

mod cloudevents;
pub(crate) mod codec;
mod function;
mod health;
mod passthrough;
mod reflection;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;
use tonic::codec::{CompressionEncoding, EnabledCompressionEncodings};
use tonic::{Code, Status};

use super::{InFlight, Ingress};
use crate::backend::{Backend, BodyLimits, Invocation};
use crate::body::{RequestBody, ResponseBody};
use crate::config::Config;
use crate::envelope::pb::watchdog::v1::GrpcCall;
use crate::envelope::{self, Envelope, Kind};
use crate::error::{grpc_code_for_http, http_status_for_grpc, InvokeError};

pub use passthrough::MethodShape;

/// The bytes of a failed answer's body quoted in its status message.
const MESSAGE_QUOTE: usize = 1024;

/// Request compressions every service accepts, as grpcio and grpc-go clients can send them. Answers go out
/// uncompressed, which every client must accept, so the watchdog never spends CPU compressing.
const ACCEPTED_COMPRESSION: [CompressionEncoding; 2] = [CompressionEncoding::Gzip, CompressionEncoding::Deflate];

/// [`ACCEPTED_COMPRESSION`] as tonic's set, for servers built from a codec.
fn accepted_compression() -> EnabledCompressionEncodings {
    let mut accepted = EnabledCompressionEncodings::default();
    ACCEPTED_COMPRESSION.into_iter().for_each(|encoding| accepted.enable(encoding));
    accepted
}

/// Whether a request is gRPC: its `content-type` starts with `application/grpc` (any case).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(::http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().len() >= 16 && ct.as_bytes()[..16].eq_ignore_ascii_case(b"application/grpc"))
}

/// A gRPC service answering one request.
type Handler = Box<dyn Fn(Request<Incoming>) -> BoxFuture<'static, Response<tonic::body::Body>> + Send + Sync>;

/// What the gRPC side needs beyond the ingress: the user's methods and the reflection services, built once.
pub struct GrpcState {
    /// Streaming shape of each method of the user's services (`grpc_descriptor_set`), by full name.
    methods: HashMap<String, MethodShape>,
    /// Service names health knows: "", the watchdog's Function service, and the user's services.
    services: HashSet<String>,
    /// The user's descriptor set, for reflection.
    user: Option<prost_types::FileDescriptorSet>,
    /// grpc.reflection.v1 and v1alpha, built on first use: indexing the descriptors costs start-up time and
    /// memory that a function nobody reflects on should not pay.
    reflection: std::sync::OnceLock<(Handler, Handler)>,
}

impl GrpcState {
    /// Loads `grpc_descriptor_set` (already validated at start-up; a file that cannot be read now is logged and
    /// left out) and builds the reflection services.
    pub fn new(config: &Config) -> GrpcState {
        let user =
            config.grpc_descriptor_set.as_deref().and_then(|path| match passthrough::load_descriptor_set(path) {
                Ok(set) => Some(set),
                Err(e) => {
                    tracing::error!("grpc_descriptor_set: {e}");
                    None
                }
            });
        let methods = user.as_ref().map(passthrough::method_shapes).unwrap_or_default();
        let mut services: HashSet<String> =
            ["".to_string(), "watchdog.v1.Function".to_string(), "watchdog.v1.CloudEvents".to_string()].into();
        services
            .extend(methods.keys().filter_map(|m| m.trim_start_matches('/').split_once('/')).map(|(s, _)| s.into()));
        GrpcState { methods, services, user, reflection: std::sync::OnceLock::new() }
    }

    /// The reflection services, built the first time they are asked for.
    fn reflection(&self) -> &(Handler, Handler) {
        self.reflection.get_or_init(|| reflection::services(self.user.clone()))
    }
}

/// Where a gRPC request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Health,
    ReflectionV1,
    ReflectionV1alpha,
    Function,
    CloudEvents,
    Passthrough,
}

impl Route {
    fn of(path: &str) -> Route {
        let service = path.trim_start_matches('/').split('/').next().unwrap_or_default();
        match service {
            "grpc.health.v1.Health" => Route::Health,
            "grpc.reflection.v1.ServerReflection" => Route::ReflectionV1,
            "grpc.reflection.v1alpha.ServerReflection" => Route::ReflectionV1alpha,
            "watchdog.v1.Function" => Route::Function,
            "watchdog.v1.CloudEvents" => Route::CloudEvents,
            _ => Route::Passthrough,
        }
    }
}

/// A started call on one of the gRPC services: tonic's servers never fail (every failure is a status).
type Call = BoxFuture<'static, Result<Response<tonic::body::Body>, Infallible>>;

/// The response of a [`Call`].
fn settle(result: Result<Response<tonic::body::Body>, Infallible>) -> Response<tonic::body::Body> {
    match result {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// Answers one gRPC request; every failure is a status in the response.
///
/// The call is started here, before the returned future, which then holds only the started call and the
/// access record: a future keeps every value it borrowed for its whole life, and the request kept that way made
/// each call's future kilobytes.
pub(super) fn handle(
    ingress: Arc<Ingress>,
    req: Request<Incoming>,
) -> BoxFuture<'static, Result<Response<ResponseBody>, Infallible>> {
    let path = req.uri().path().to_string();
    let route = Route::of(&path);
    match route {
        Route::Health => return untracked(health::serve(Arc::clone(&ingress), req)),
        Route::ReflectionV1 => return untracked(answered((ingress.grpc.reflection().0)(req))),
        Route::ReflectionV1alpha => return untracked(answered((ingress.grpc.reflection().1)(req))),
        _ => {}
    }
    let start = Instant::now();
    let quiet =
        req.headers().get(::http::header::USER_AGENT).is_some_and(|ua| ua.as_bytes().starts_with(b"kube-probe"));
    let request_id = super::caller_request_id(req.headers());
    let in_flight = InFlight::enter(&ingress.metrics);
    let slot = ingress.limiter.acquire();
    let trailing = TrailingMetadata::default();
    let call: Call = match (&slot, route) {
        (None, _) => {
            let refused = InvokeError::Overloaded { max: ingress.config.max_inflight }.grpc_status().into_http();
            Box::pin(std::future::ready(Ok(refused)))
        }
        (Some(_), _) if matches!(ingress.backend, Backend::Proxy(_)) => {
            Box::pin(proxy(Arc::clone(&ingress), req).map(Ok))
        }
        (Some(_), Route::CloudEvents) => cloudevents::serve(Arc::clone(&ingress), req),
        (Some(_), Route::Function) => function::serve(Arc::clone(&ingress), req, trailing.clone()),
        (Some(_), _) => passthrough::serve(Arc::clone(&ingress), req, trailing.clone()),
    };
    let metrics = Arc::clone(&ingress.metrics);
    drop(ingress);
    Box::pin(async move {
        let response = settle(call.await);
        let on_end = move |code: Code, sent: u64| {
            drop(slot);
            drop(in_flight);
            let elapsed = start.elapsed();
            let status = http_status_for_grpc(code);
            metrics.observe("grpc", &Method::POST, status, elapsed.as_secs_f64());
            if !quiet {
                tracing::info!(
                    target: "access",
                    request_id = request_id.as_deref(),
                    "POST {path} - {status} - grpc-status: {} - ContentLength: {} ({}s)",
                    code as i32,
                    crate::logging::HumanSize(sent),
                    crate::logging::Seconds(elapsed)
                );
            }
        };
        Ok(convert(response, Some(trailing), on_end))
    })
}

/// A call to a service that is not a function call (health, reflection): no access line, no metrics.
fn untracked(call: Call) -> BoxFuture<'static, Result<Response<ResponseBody>, Infallible>> {
    Box::pin(async move { Ok(convert(settle(call.await), None, |_, _| {})) })
}

/// A call whose answer cannot fail, as a [`Call`].
fn answered(answer: BoxFuture<'static, Response<tonic::body::Body>>) -> Call {
    Box::pin(async move { Ok(answer.await) })
}

/// Forwards a gRPC call unchanged to `upstream_url` over h2c.
async fn proxy(ingress: Arc<Ingress>, req: Request<Incoming>) -> Response<tonic::body::Body> {
    let Backend::Proxy(proxy) = &ingress.backend else {
        return Status::internal("not a proxy").into_http();
    };
    let timeout = grpc_timeout(req.headers());
    let (parts, body) = req.into_parts();
    let body = body.map_err(|e| Box::new(e) as crate::body::BoxError).boxed_unsync();
    match proxy.forward_grpc(Request::from_parts(parts, body), timeout).await {
        Ok(response) => response.map(|body| tonic::body::Body::new(body.map_err(|e| io_status(&e)))),
        Err(error) => error.grpc_status().into_http(),
    }
}

/// The `grpc-timeout` header (`<digits><unit>`, units H M S m u n), if present and valid.
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.saturating_mul(3600)),
        "M" => Duration::from_secs(value.saturating_mul(60)),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

/// The nearer of two optional limits.
fn nearer(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A gRPC call's envelope: the HTTP request's, as a [`GrpcCall`] carried by it (so `Http_Method=POST`,
/// `Http_Path=<method>` and the metadata as `Http_*` in classic mode).
fn call_envelope(
    ingress: &Ingress,
    head: &::http::request::Parts,
    call: GrpcCall,
    content_length: i64,
    timeout: Option<Duration>,
) -> Result<Envelope, Status> {
    let deadline = nearer(ingress.backend.timeout(), timeout);
    let envelope =
        envelope::from_http(head, content_length, deadline).map_err(|e| InvokeError::from(e).grpc_status())?;
    Ok(envelope.into_kind(Kind::Grpc(call)))
}

/// Starts the function for a gRPC call; a failure before its answer is the failure's status.
fn call_function(
    ingress: &Ingress,
    envelope: Envelope,
    head: ::http::request::Parts,
    body: RequestBody,
    timeout: Option<Duration>,
) -> impl Future<Output = Result<Response<ResponseBody>, Status>> + Send + 'static {
    // read_timeout is not applied: a stream may rightly last long, and grpc-timeout bounds the call.
    let limits = BodyLimits {
        max_bytes: ingress.config.max_body_bytes,
        read_deadline: None,
        read_timeout: ingress.config.read_timeout,
    };
    let invocation = Invocation { envelope, body, limits, head, timeout, stop_when_abandoned: true };
    ingress.backend.invoke(invocation).map(|answer| answer.map_err(|e| e.grpc_status()))
}

/// The status a response body's error stands for: the typed [`InvokeError`] or [`Status`] a backend put inside,
/// else UNKNOWN with its text.
fn io_status(error: &std::io::Error) -> Status {
    let inner = error.get_ref();
    if let Some(invoke) = inner.and_then(|e| e.downcast_ref::<InvokeError>()) {
        return invoke.grpc_status();
    }
    if let Some(status) = inner.and_then(|e| e.downcast_ref::<Status>()) {
        return status.clone();
    }
    Status::unknown(error.to_string())
}

/// A non-OK `grpc-status` in a header or trailer map (a worker or upstream that speaks gRPC codes itself).
fn failed_status(map: &HeaderMap) -> Option<Status> {
    Status::from_header_map(map).filter(|s| s.code() != Code::Ok)
}

/// A function's whole answer to a call with a unary response.
#[derive(Debug)]
struct UnaryAnswer {
    /// Its status and headers (the initial metadata, once [`metadata`] has filtered them).
    head: ::http::response::Parts,
    /// The response message.
    message: Bytes,
    /// The trailers it ended with, empty when none.
    trailers: HeaderMap,
}

/// A function's whole answer for a unary response: its body (at most `max` bytes), or the status it stands for.
/// A non-2xx answer maps by gRPC's HTTP-to-gRPC table, unless headers or trailers carry `grpc-status`, which win.
async fn unary_answer(response: Response<ResponseBody>, max: usize) -> Result<UnaryAnswer, Status> {
    let (parts, mut body) = response.into_parts();
    if let Some(status) = Status::from_header_map(&parts.headers) {
        if status.code() != Code::Ok {
            return Err(status);
        }
    }
    let success = parts.status.is_success();
    let mut data = BytesMut::new();
    let mut trailers = None;
    let mut overflow = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| io_status(&e))?;
        match frame.into_data() {
            Ok(chunk) => {
                if data.len() + chunk.len() > max {
                    overflow = true;
                    break;
                }
                data.extend_from_slice(&chunk);
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    let trailers = trailers.unwrap_or_default();
    let ok_in_trailers = match Status::from_header_map(&trailers) {
        Some(status) if status.code() != Code::Ok => return Err(status),
        Some(_) => true,
        None => false,
    };
    if !ok_in_trailers && !success {
        let quoted = String::from_utf8_lossy(&data[..data.len().min(MESSAGE_QUOTE)]).trim().to_string();
        let message = if quoted.is_empty() { format!("the function answered HTTP {}", parts.status) } else { quoted };
        return Err(Status::new(grpc_code_for_http(parts.status.as_u16()), message));
    }
    if overflow {
        return Err(too_large("response", max));
    }
    Ok(UnaryAnswer { head: parts, message: data.freeze(), trailers })
}

/// A function's answer for a streamed response: the body's pieces as they come, ending with the status its
/// error or trailers carry; trailers that end it well go to `trailing`. A non-2xx head is the status of
/// [`unary_answer`].
async fn streamed_answer(
    response: Response<ResponseBody>,
    max: usize,
    trailing: TrailingMetadata,
) -> Result<futures_util::stream::BoxStream<'static, Result<Bytes, Status>>, Status> {
    if !response.status().is_success() || failed_status(response.headers()).is_some() {
        return Err(match unary_answer(response, max).await {
            Err(status) => status,
            Ok(_) => Status::unknown("the function failed"),
        });
    }
    let body = response.into_body();
    let pieces = futures_util::stream::unfold(Some((body, trailing)), |state| async move {
        let (mut body, trailing) = state?;
        loop {
            match body.frame().await? {
                Err(e) => return Some((Err(io_status(&e)), None)),
                Ok(frame) => match frame.into_data() {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => return Some((Ok(data), Some((body, trailing)))),
                    Err(frame) => {
                        let trailers = frame.into_trailers().ok()?;
                        if let Some(status) = failed_status(&trailers) {
                            return Some((Err(status), None));
                        }
                        trailing.set(&trailers);
                        return None;
                    }
                },
            }
        }
    });
    Ok(Box::pin(pieces))
}

/// Whether a function's response header or trailer is metadata, rather than HTTP framing or gRPC's own.
fn is_metadata(name: &HeaderName) -> bool {
    let name = name.as_str();
    !matches!(
        name,
        "content-type"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "upgrade"
    ) && !name.starts_with("grpc-")
}

/// The metadata among a function's response headers or trailers.
fn metadata(map: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in map {
        if is_metadata(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// A tonic response carrying the function's response headers as its initial metadata.
fn with_metadata<T>(headers: &HeaderMap, message: T) -> tonic::Response<T> {
    let metadata = tonic::metadata::MetadataMap::from_headers(metadata(headers));
    tonic::Response::from_parts(metadata, message, tonic::Extensions::default())
}

/// Trailing metadata a function ended a successful answer with. tonic sends no custom trailers with an OK status,
/// so the service that called the function leaves them here and [`GrpcBody`] adds them to the trailers tonic
/// writes.
#[derive(Clone, Default)]
struct TrailingMetadata(Arc<std::sync::Mutex<HeaderMap>>);

impl TrailingMetadata {
    /// Keeps the metadata among `trailers`.
    fn set(&self, trailers: &HeaderMap) {
        let kept = metadata(trailers);
        if !kept.is_empty() {
            *self.0.lock().unwrap_or_else(|p| p.into_inner()) = kept;
        }
    }

    /// What was kept, leaving nothing.
    fn take(&self) -> HeaderMap {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// RESOURCE_EXHAUSTED for a message over `grpc_max_message_bytes`.
fn too_large(what: &str, max: usize) -> Status {
    Status::resource_exhausted(format!("{what} message larger than grpc_max_message_bytes ({max} bytes)"))
}

/// tonic reports a message over its size limits as OUT_OF_RANGE; SPEC §5 answers RESOURCE_EXHAUSTED.
fn rewrite_size_status(map: &mut HeaderMap) {
    let out_of_range = map.get("grpc-status").is_some_and(|v| v.as_bytes() == b"11");
    let about_size = map
        .get("grpc-message")
        .is_some_and(|m| m.to_str().is_ok_and(|m| m.contains("too large") || m.contains("too%20large")));
    if out_of_range && about_size {
        map.insert("grpc-status", HeaderValue::from(Code::ResourceExhausted as i32));
    }
}

/// The gRPC code a finished response carried, if any.
fn code_in(map: &HeaderMap) -> Option<Code> {
    let value = map.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(Code::from(value))
}

/// Turns a tonic response into the crate's response body, rewriting size statuses, adding the function's
/// `trailing` metadata to its trailers, and calling `on_end` with the call's gRPC code (CANCELLED when the client
/// left first) and the message bytes sent.
fn convert(
    response: Response<tonic::body::Body>,
    trailing: Option<TrailingMetadata>,
    on_end: impl FnOnce(Code, u64) + Send + 'static,
) -> Response<ResponseBody> {
    let (mut parts, inner) = response.into_parts();
    rewrite_size_status(&mut parts.headers);
    // A trailers-only response carries its status in the head.
    let code = code_in(&parts.headers);
    let body = GrpcBody { inner, code, sent: 0, trailing, on_end: Some(Box::new(on_end)) };
    Response::from_parts(parts, http_body_util::BodyExt::boxed_unsync(body))
}

/// A gRPC response body on its way to the client: status rewriting and end-of-call accounting.
struct GrpcBody {
    inner: tonic::body::Body,
    code: Option<Code>,
    sent: u64,
    /// The function's trailing metadata, added to the trailers.
    trailing: Option<TrailingMetadata>,
    on_end: Option<Box<dyn FnOnce(Code, u64) + Send>>,
}

impl GrpcBody {
    fn end(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            on_end(self.code.unwrap_or(Code::Cancelled), self.sent);
        }
    }
}

impl http_body::Body for GrpcBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_trailers() {
                    Ok(mut trailers) => {
                        rewrite_size_status(&mut trailers);
                        if let Some(trailing) = &this.trailing {
                            trailers.extend(trailing.take());
                        }
                        this.code = code_in(&trailers).or(this.code);
                        Frame::trailers(trailers)
                    }
                    Err(frame) => {
                        if let Some(data) = frame.data_ref() {
                            this.sent += data.len() as u64;
                        }
                        frame
                    }
                };
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(status))) => {
                this.code = Some(status.code());
                this.end();
                Poll::Ready(Some(Err(std::io::Error::other(status))))
            }
            Poll::Ready(None) => {
                this.end();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for GrpcBody {
    fn drop(&mut self) {
        self.end();
    }
}

/// Serves `service` (a generated tonic server), which never fails: errors are statuses in its responses.
fn boxed<S>(service: S) -> Handler
where
    S: tonic::codegen::Service<Request<Incoming>, Response = Response<tonic::body::Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    Box::new(move |req| {
        let mut service = service.clone();
        Box::pin(async move {
            match service.call(req).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types() {
        let mut headers = HeaderMap::new();
        assert!(!is_grpc(&headers));
        for (ct, expected) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("Application/GRPC-web", true),
            ("application/json", false),
            ("application/grp", false),
        ] {
            headers.insert("content-type", HeaderValue::from_static(ct));
            assert_eq!(is_grpc(&headers), expected, "{ct}");
        }
    }

    #[test]
    fn routes() {
        assert_eq!(Route::of("/grpc.health.v1.Health/Check"), Route::Health);
        assert_eq!(Route::of("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"), Route::ReflectionV1);
        assert_eq!(Route::of("/grpc.reflection.v1alpha.ServerReflection/X"), Route::ReflectionV1alpha);
        assert_eq!(Route::of("/watchdog.v1.Function/Invoke"), Route::Function);
        assert_eq!(Route::of("/watchdog.v1.CloudEvents/Send"), Route::CloudEvents);
        assert_eq!(Route::of("/helloworld.Greeter/SayHello"), Route::Passthrough);
    }

    #[test]
    fn timeouts() {
        let mut headers = HeaderMap::new();
        assert_eq!(grpc_timeout(&headers), None);
        for (text, expected) in [
            ("1H", Some(Duration::from_secs(3600))),
            ("2M", Some(Duration::from_secs(120))),
            ("3S", Some(Duration::from_secs(3))),
            ("250m", Some(Duration::from_millis(250))),
            ("7u", Some(Duration::from_micros(7))),
            ("9n", Some(Duration::from_nanos(9))),
            ("S", None),
            ("1x", None),
            ("123456789S", None),
        ] {
            headers.insert("grpc-timeout", HeaderValue::from_static(text));
            assert_eq!(grpc_timeout(&headers), expected, "{text}");
        }
    }

    #[test]
    fn size_statuses_become_resource_exhausted() {
        let mut map = HeaderMap::new();
        map.insert("grpc-status", HeaderValue::from_static("11"));
        map.insert("grpc-message", HeaderValue::from_static("Error, decoded message length too large: found 9"));
        rewrite_size_status(&mut map);
        assert_eq!(map["grpc-status"], "8");
        let mut other = HeaderMap::new();
        other.insert("grpc-status", HeaderValue::from_static("11"));
        other.insert("grpc-message", HeaderValue::from_static("seek past the end"));
        rewrite_size_status(&mut other);
        assert_eq!(other["grpc-status"], "11", "a function's own OUT_OF_RANGE is kept");
    }

    #[test]
    fn metadata_leaves_out_framing_and_grpc_names() {
        let mut map = HeaderMap::new();
        for (name, value) in [
            ("content-type", "application/grpc"),
            ("content-length", "12"),
            ("grpc-status", "0"),
            ("grpc-message", "fine"),
            ("x-served-by", "a"),
            ("x-served-by", "b"),
            ("x-trace-bin", "AAEC"),
        ] {
            map.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        let kept = metadata(&map);
        assert_eq!(kept.len(), 3, "{kept:?}");
        assert_eq!(kept.get_all("x-served-by").iter().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(kept["x-trace-bin"], "AAEC");

        let trailing = TrailingMetadata::default();
        trailing.set(&map);
        assert_eq!(trailing.take().len(), 3);
        assert!(trailing.take().is_empty(), "taken once");
    }

    #[tokio::test]
    async fn non_2xx_answers_map_by_the_table_unless_trailers_say() {
        let answer =
            |status: u16, body: &'static str| Response::builder().status(status).body(crate::body::full(body)).unwrap();
        let err = unary_answer(answer(404, "no such thing"), 100).await.unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented);
        assert_eq!(err.message(), "no such thing");
        let err = unary_answer(answer(503, ""), 100).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        let err = unary_answer(answer(200, "0123456789"), 5).await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);

        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("5"));
        trailers.insert("grpc-message", HeaderValue::from_static("nope"));
        let frames = futures_util::stream::iter(vec![
            Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"x"))),
            Ok(Frame::trailers(trailers)),
        ]);
        let body = http_body_util::StreamBody::new(frames).boxed_unsync();
        let err = unary_answer(Response::builder().status(500).body(body).unwrap(), 100).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(err.message(), "nope");
    }

    #[test]
    fn typed_body_errors_become_their_status() {
        let error = std::io::Error::other(InvokeError::WorkerFailed("exit status 7".into()));
        assert_eq!(io_status(&error).code(), Code::Unavailable);
        assert_eq!(io_status(&std::io::Error::other("plain")).code(), Code::Unknown);
    }
}
