//! What a handler receives: [`Request`], its streaming [`Body`] and, for events, [`CloudEvent`].

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::conn::{Conn, StreamState};
use crate::grpc::{GrpcCall, GrpcMessages};
use crate::proto::io::cloudevents::v1 as ce;
use crate::proto::watchdog::v1::{envelope, Envelope, HttpRequest};
use crate::Error;

/// Which ingress received the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A plain HTTP request.
    Http,
    /// A gRPC call (`watchdog.v1.Function/Invoke` or a passthrough method).
    Grpc,
    /// A CloudEvent (binary, structured, batched or `watchdog.v1.CloudEvents/Send`); its data is the body.
    CloudEvent,
}

impl Kind {
    /// `"http"`, `"grpc"` or `"cloudevent"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::Grpc => "grpc",
            Kind::CloudEvent => "cloudevent",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The attributes of an incoming CloudEvent. Its data is the request body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloudEvent {
    attributes: HashMap<String, String>,
}

impl CloudEvent {
    /// Every attribute (`specversion`, `id`, `source`, `type`, the optional ones and every extension), as strings
    /// in the CloudEvents canonical form.
    pub fn attributes(&self) -> &HashMap<String, String> {
        &self.attributes
    }

    /// One attribute by name.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).map(String::as_str)
    }

    /// The `id` attribute.
    pub fn id(&self) -> &str {
        self.attribute("id").unwrap_or_default()
    }

    /// The `source` attribute.
    pub fn source(&self) -> &str {
        self.attribute("source").unwrap_or_default()
    }

    /// The `type` attribute.
    pub fn ty(&self) -> &str {
        self.attribute("type").unwrap_or_default()
    }

    /// The `specversion` attribute.
    pub fn spec_version(&self) -> &str {
        self.attribute("specversion").unwrap_or_default()
    }

    /// Consumes the event, returning its attributes.
    pub fn into_attributes(self) -> HashMap<String, String> {
        self.attributes
    }

    pub(crate) fn from_proto(ev: &ce::CloudEvent) -> Self {
        let mut attributes = HashMap::with_capacity(ev.attributes.len() + 4);
        for (name, value) in &ev.attributes {
            attributes.insert(name.clone(), canonical(value));
        }
        // The four required attributes travel as fields; they win over a same-named map entry.
        attributes.insert("specversion".to_owned(), ev.spec_version.clone());
        attributes.insert("id".to_owned(), ev.id.clone());
        attributes.insert("source".to_owned(), ev.source.clone());
        attributes.insert("type".to_owned(), ev.r#type.clone());
        CloudEvent { attributes }
    }
}

/// An attribute value in the CloudEvents canonical string form.
fn canonical(value: &ce::cloud_event::CloudEventAttributeValue) -> String {
    use ce::cloud_event::cloud_event_attribute_value::Attr;
    match &value.attr {
        None => String::new(),
        Some(Attr::CeBoolean(b)) => if *b { "true" } else { "false" }.to_owned(),
        Some(Attr::CeInteger(i)) => i.to_string(),
        Some(Attr::CeString(s)) | Some(Attr::CeUri(s)) | Some(Attr::CeUriRef(s)) => s.clone(),
        Some(Attr::CeBytes(b)) => base64(b),
        Some(Attr::CeTimestamp(t)) => t.to_string(), // RFC 3339, UTC
    }
}

/// Standard base64 with padding (RFC 4648), the canonical form of a `Binary` attribute.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One request handed to the handler: the envelope's fields and the body, as a stream of chunks.
pub struct Request {
    envelope: Envelope,
    kind: Kind,
    headers: HeaderMap,
    // Built from the envelope on first use: a handler that never looks at the attributes (an echo) does not pay
    // for a map of strings per event.
    event: OnceLock<Option<CloudEvent>>,
    // Set only when the decoded path is not UTF-8.
    lossy_path: Option<String>,
    body: Body,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("kind", &self.kind)
            .field("request_id", &self.request_id())
            .field("method", &self.method())
            .field("path", &self.path())
            .field("query", &self.query())
            .field("grpc", &self.grpc())
            .field("headers", &self.headers)
            .field("event", &self.event())
            .finish_non_exhaustive()
    }
}

impl Request {
    /// Builds a request from an envelope and a body; handy to unit-test a handler without a watchdog.
    pub fn new(envelope: Envelope, body: Body) -> Self {
        let (kind, lossy_path) = match &envelope.kind {
            Some(envelope::Kind::Grpc(_)) => (Kind::Grpc, None),
            Some(envelope::Kind::Cloudevent(_)) => (Kind::CloudEvent, None),
            Some(envelope::Kind::Http(h)) => {
                let lossy = match std::str::from_utf8(&h.path) {
                    Ok(_) => None,
                    Err(_) => Some(String::from_utf8_lossy(&h.path).into_owned()),
                };
                (Kind::Http, lossy)
            }
            None => (Kind::Http, None),
        };
        let mut headers = HeaderMap::with_capacity(envelope.headers.len());
        for h in &envelope.headers {
            // Names and values the watchdog forwards are valid HTTP; anything else is skipped.
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(h.name.as_bytes()), HeaderValue::from_maybe_shared(h.value.clone()))
            {
                headers.append(name, value);
            }
        }
        Request { envelope, kind, headers, event: OnceLock::new(), lossy_path, body }
    }

    /// HTTP, gRPC or CloudEvent.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The HTTP method; `"POST"` for gRPC calls and CloudEvents (the only method either arrives with).
    pub fn method(&self) -> &str {
        match &self.envelope.kind {
            Some(envelope::Kind::Http(h)) => &h.method,
            _ => "POST",
        }
    }

    /// The percent-decoded path, without the query string (lossily converted if it is not UTF-8: see
    /// [`Request::path_bytes`]). For a gRPC call, the full method name; for a CloudEvent, the path it was posted
    /// to (empty when it came over gRPC).
    pub fn path(&self) -> &str {
        if let Some(p) = &self.lossy_path {
            return p;
        }
        match &self.envelope.kind {
            Some(envelope::Kind::Grpc(g)) => &g.method,
            _ => std::str::from_utf8(self.path_bytes()).unwrap_or_default(),
        }
    }

    /// The percent-decoded path exactly as received (a decoded path need not be UTF-8).
    pub fn path_bytes(&self) -> &[u8] {
        match (&self.envelope.kind, &self.envelope.transport) {
            (Some(envelope::Kind::Http(h)), _) => &h.path,
            (Some(envelope::Kind::Grpc(g)), _) => g.method.as_bytes(),
            (Some(envelope::Kind::Cloudevent(_)), Some(t)) => &t.path,
            _ => b"",
        }
    }

    /// The raw query string, without the `?` (empty when none; for a CloudEvent, that of the request it was
    /// posted with).
    pub fn query(&self) -> &str {
        match (&self.envelope.kind, &self.envelope.transport) {
            (Some(envelope::Kind::Http(h)), _) => &h.query,
            (Some(envelope::Kind::Cloudevent(_)), Some(t)) => &t.query,
            _ => "",
        }
    }

    /// The `Host` (`:authority`) of the HTTP request (for a gRPC call or a CloudEvent, of the one that carried it).
    pub fn host(&self) -> &str {
        match (&self.envelope.kind, &self.envelope.transport) {
            (Some(envelope::Kind::Http(h)), _) | (_, Some(h)) => &h.host,
            _ => "",
        }
    }

    /// The HTTP request that carried a gRPC call or a CloudEvent (method, path, query, host, version), when the
    /// watchdog reports it; `None` for a plain HTTP request, whose own fields are [`Request::method`] and the rest.
    pub fn transport(&self) -> Option<&HttpRequest> {
        self.envelope.transport.as_ref()
    }

    /// Transport headers or gRPC metadata: case-insensitive, repeated names kept in order.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The full gRPC method name, `/package.Service/Method`, for a gRPC call.
    pub fn grpc_method(&self) -> Option<&str> {
        match &self.envelope.kind {
            Some(envelope::Kind::Grpc(g)) => Some(&g.method),
            _ => None,
        }
    }

    /// The gRPC call's details (method, streaming flags, how the body is framed), for a gRPC call.
    pub fn grpc(&self) -> Option<GrpcCall<'_>> {
        match &self.envelope.kind {
            Some(envelope::Kind::Grpc(g)) => Some(GrpcCall::new(g)),
            _ => None,
        }
    }

    /// The gRPC request metadata: the same map as [`Request::headers`] (lower-case names; `content-type`, `te`,
    /// `grpc-timeout` and the caller's own entries, `-bin` values as received).
    pub fn metadata(&self) -> &HeaderMap {
        &self.headers
    }

    /// Takes the body and reads it as gRPC request messages: for a client-streaming passthrough call, the body
    /// split in gRPC's 5-byte framing ([`Error::Framing`] when it ends inside a message); otherwise the whole
    /// body as one message (a unary call's request, or `Invoke`'s body).
    pub async fn grpc_messages(&mut self) -> Result<Vec<Bytes>, Error> {
        self.grpc_message_stream().collect().await
    }

    /// Takes the body as a stream of gRPC request messages, each yielded as soon as it has arrived in full: a
    /// client-streaming handler can answer before the client has finished sending. Framing as
    /// [`Request::grpc_messages`].
    pub fn grpc_message_stream(&mut self) -> GrpcMessages {
        let framed = self.grpc().is_some_and(|g| g.request_framed());
        GrpcMessages::new(self.take_body(), framed)
    }

    /// The event's attributes, for a CloudEvent (its data is the body).
    pub fn event(&self) -> Option<&CloudEvent> {
        self.event
            .get_or_init(|| match &self.envelope.kind {
                Some(envelope::Kind::Cloudevent(ev)) => Some(CloudEvent::from_proto(ev)),
                _ => None,
            })
            .as_ref()
    }

    /// The request id (the caller's `X-Call-Id`, or one the watchdog made).
    pub fn request_id(&self) -> &str {
        &self.envelope.request_id
    }

    /// When the watchdog gives up on this request, if it has a deadline.
    pub fn deadline(&self) -> Option<SystemTime> {
        self.envelope.deadline.and_then(|t| SystemTime::try_from(t).ok())
    }

    /// The W3C `traceparent` of the request (empty when absent).
    pub fn traceparent(&self) -> &str {
        self.envelope.trace.as_ref().map(|t| t.traceparent.as_str()).unwrap_or_default()
    }

    /// The W3C `tracestate` of the request (empty when absent).
    pub fn tracestate(&self) -> &str {
        self.envelope.trace.as_ref().map(|t| t.tracestate.as_str()).unwrap_or_default()
    }

    /// The declared body length, when known.
    pub fn content_length(&self) -> Option<u64> {
        u64::try_from(self.envelope.content_length).ok()
    }

    /// The envelope as received (every field of the protocol).
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The body, to read chunk by chunk while keeping the request.
    pub fn body_stream(&mut self) -> &mut Body {
        &mut self.body
    }

    /// Takes the body out of the request (leaving an empty one).
    pub fn take_body(&mut self) -> Body {
        std::mem::take(&mut self.body)
    }

    /// Consumes the request, returning its body.
    pub fn into_body(self) -> Body {
        self.body
    }

    /// Reads the whole body into memory.
    pub async fn bytes(self) -> Result<Bytes, Error> {
        self.body.bytes().await
    }
}

pub(crate) struct BodyInner {
    pub(crate) conn: Arc<Conn>,
    pub(crate) state: Arc<StreamState>,
    // Bytes handed to the application and not yet returned to the watchdog as window credit.
    pub(crate) consumed: u32,
    pub(crate) ended: bool,
}

impl BodyInner {
    fn give_credit(&mut self, extra: u32) {
        let n = self.consumed.saturating_add(extra);
        self.consumed = 0;
        if n > 0 && !self.state.cancelled.load(Ordering::Relaxed) {
            self.state.recv_credit.fetch_add(i64::from(n), Ordering::AcqRel);
            self.conn.window_update(self.state.id, n);
        }
    }
}

impl Drop for BodyInner {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        // Dropped before the end: return the credit for everything received so the watchdog can finish
        // sending (the connection task credits what still arrives, and discards it).
        let buffered = {
            let mut q = self.state.body();
            q.dropped = true;
            q.waker = None;
            q.chunks.drain(..).map(|b| b.len() as u32).fold(0u32, u32::saturating_add)
        };
        self.give_credit(buffered);
    }
}

/// A request body: a [`Stream`] of `Bytes` chunks as they arrive from the watchdog.
///
/// Reading a chunk returns its size to the watchdog as flow-control credit, so a handler that reads slowly slows
/// the sender down instead of buffering: a 1 GiB upload can be processed chunk by chunk in constant memory.
#[derive(Default)]
pub struct Body {
    inner: Option<BodyInner>,
    // A body built from memory (tests, `Body::from`).
    full: Option<Bytes>,
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Body").field("streaming", &self.inner.is_some()).finish_non_exhaustive()
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Body { inner: None, full: (!b.is_empty()).then_some(b) }
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Self {
        Bytes::from(v).into()
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Self {
        Bytes::from_static(s.as_bytes()).into()
    }
}

impl Body {
    /// An empty body.
    pub fn empty() -> Self {
        Body::default()
    }

    pub(crate) fn streaming(inner: BodyInner) -> Self {
        Body { inner: Some(inner), full: None }
    }

    /// The next chunk, or `None` at the end of the body.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, Error> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await.transpose()
    }

    /// Reads the rest of the body into memory.
    pub async fn bytes(mut self) -> Result<Bytes, Error> {
        let Some(first) = self.chunk().await? else { return Ok(Bytes::new()) };
        let Some(second) = self.chunk().await? else { return Ok(first) };
        let mut all = BytesMut::with_capacity(first.len() + second.len() * 2);
        all.extend_from_slice(&first);
        all.extend_from_slice(&second);
        while let Some(chunk) = self.chunk().await? {
            all.extend_from_slice(&chunk);
        }
        Ok(all.freeze())
    }
}

impl Stream for Body {
    type Item = Result<Bytes, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(b) = self.full.take() {
            return Poll::Ready(Some(Ok(b)));
        }
        let Some(inner) = self.inner.as_mut() else { return Poll::Ready(None) };
        let mut q = inner.state.body();
        if let Some(chunk) = q.chunks.pop_front() {
            drop(q);
            inner.consumed = inner.consumed.saturating_add(chunk.len() as u32);
            if inner.consumed >= inner.conn.update_threshold {
                inner.give_credit(0);
            }
            return Poll::Ready(Some(Ok(chunk)));
        }
        if q.end || q.aborted {
            let end = q.end;
            drop(q);
            inner.ended = true;
            self.inner = None;
            // Without End the stream was cancelled or the connection lost.
            return Poll::Ready(if end { None } else { Some(Err(Error::BodyIncomplete)) });
        }
        if !q.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            q.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::io::cloudevents::v1::cloud_event::{cloud_event_attribute_value::Attr, CloudEventAttributeValue};

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want, "{input:?}");
        }
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn canonical_attribute_forms() {
        let v = |a| CloudEventAttributeValue { attr: Some(a) };
        assert_eq!(canonical(&v(Attr::CeBoolean(true))), "true");
        assert_eq!(canonical(&v(Attr::CeBoolean(false))), "false");
        assert_eq!(canonical(&v(Attr::CeInteger(-42))), "-42");
        assert_eq!(canonical(&v(Attr::CeString("x y".into()))), "x y");
        assert_eq!(canonical(&v(Attr::CeUri("https://e/x".into()))), "https://e/x");
        assert_eq!(canonical(&v(Attr::CeUriRef("/x".into()))), "/x");
        assert_eq!(canonical(&v(Attr::CeBytes(Bytes::from_static(b"hi")))), "aGk=");
        let ts = prost_types::Timestamp { seconds: 1_700_000_000, nanos: 500_000_000 };
        assert_eq!(canonical(&v(Attr::CeTimestamp(ts))), "2023-11-14T22:13:20.500Z");
        assert_eq!(canonical(&CloudEventAttributeValue { attr: None }), "");
    }

    #[test]
    fn a_cloudevent_has_the_path_and_query_it_was_posted_to() {
        use crate::proto::io::cloudevents::v1::CloudEvent;
        use crate::proto::watchdog::v1::HttpRequest;
        let event = Some(envelope::Kind::Cloudevent(CloudEvent::default()));
        let transport = HttpRequest {
            method: "POST".into(),
            path: Bytes::from_static(b"/events/in"),
            query: "x=1".into(),
            host: "sink.test".into(),
            ..Default::default()
        };
        let posted = Envelope { kind: event.clone(), transport: Some(transport), ..Default::default() };
        let request = Request::new(posted, Body::empty());
        assert_eq!((request.path(), request.query(), request.host()), ("/events/in", "x=1", "sink.test"));
        // Sent over gRPC (CloudEvents/Send): no HTTP request.
        let sent = Request::new(Envelope { kind: event, ..Default::default() }, Body::empty());
        assert_eq!((sent.path(), sent.query()), ("", ""));
    }

    #[tokio::test]
    async fn a_handler_can_be_unit_tested_without_a_watchdog() {
        use crate::proto::watchdog::v1::{Header, HttpRequest};
        let envelope = Envelope {
            request_id: "r".into(),
            headers: vec![Header { name: "Content-Type".into(), value: Bytes::from_static(b"text/plain") }],
            content_length: 2,
            kind: Some(envelope::Kind::Http(HttpRequest {
                method: "POST".into(),
                path: Bytes::from_static(b"/caf\xc3\xa9"),
                query: "a=1".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let req = Request::new(envelope, Body::from("hi"));
        assert_eq!(req.kind(), Kind::Http);
        assert_eq!(req.path(), "/café");
        assert_eq!(req.query(), "a=1");
        assert_eq!(req.headers()["content-type"], "text/plain");
        assert_eq!(req.content_length(), Some(2));
        assert!(req.event().is_none() && req.grpc_method().is_none() && req.deadline().is_none());
        assert_eq!(req.bytes().await.unwrap(), Bytes::from_static(b"hi"));

        let bad = Envelope {
            kind: Some(envelope::Kind::Http(HttpRequest { path: Bytes::from_static(b"/\xff"), ..Default::default() })),
            ..Default::default()
        };
        let req = Request::new(bad, Body::empty());
        assert_eq!(req.path(), "/\u{fffd}", "lossy");
        assert_eq!(req.path_bytes(), b"/\xff");
    }

    #[tokio::test]
    async fn in_memory_bodies() {
        assert_eq!(Body::empty().bytes().await.unwrap(), Bytes::new());
        assert_eq!(Body::from("abc").bytes().await.unwrap(), Bytes::from_static(b"abc"));
        let mut b = Body::from(vec![1, 2]);
        assert_eq!(b.chunk().await.unwrap(), Some(Bytes::from_static(&[1, 2])));
        assert_eq!(b.chunk().await.unwrap(), None);
    }
}
