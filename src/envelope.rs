//! The envelope (SPEC §7): the one typed description of a request that every ingress produces and every backend
//! consumes. The types are generated from `proto/` by `build.rs`; this module adds how an HTTP request becomes one.

use std::time::{Duration, SystemTime};

use http::request::Parts;
use http::HeaderMap;

use pb::io::cloudevents::v1::CloudEvent;

/// Generated protobuf types, laid out by package so the generated cross-package paths resolve.
pub mod pb {
    /// `io.cloudevents.*`
    pub mod io {
        /// `io.cloudevents.*`
        pub mod cloudevents {
            /// `io.cloudevents.v1`: the CloudEvents spec's protobuf format.
            #[allow(missing_docs)]
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/io.cloudevents.v1.rs"));
            }
        }
    }
    /// The encoded FileDescriptorSet of `proto/watchdog/v1` and its imports, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/watchdog_descriptor.bin"));

    /// `watchdog.*`
    pub mod watchdog {
        /// `watchdog.v1`: the envelope and response head.
        #[allow(missing_docs)]
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/watchdog.v1.rs"));
        }
    }
}

pub use pb::watchdog::v1::{envelope::Kind, Envelope, Header, HttpRequest, TraceContext};

/// Builds the envelope of a plain HTTP request from its head.
///
/// `Host` and `Transfer-Encoding` are carried in [`HttpRequest`] rather than in the header list, as Go's
/// `net/http` moves them out of `Request.Header`; the classic watchdog's `Http_*` variables depend on that.
pub fn from_http(parts: &Parts, content_length: i64, timeout: Option<Duration>) -> Result<Envelope, PathError> {
    from_http_keeping(parts, content_length, timeout, |_| true)
}

/// [`from_http`] with only the headers `keep` accepts in the header list, so headers the function receives in
/// another form (a CloudEvent's `ce-*` attributes) are never copied.
///
/// The envelope is one [`recycle`]d by an earlier request on this thread when there is one: its strings and
/// header list are overwritten in place, so building it allocates one buffer instead of a dozen small blocks.
pub fn from_http_keeping(
    parts: &Parts,
    content_length: i64,
    timeout: Option<Duration>,
    keep: impl Fn(&http::HeaderName) -> bool,
) -> Result<Envelope, PathError> {
    let uri = &parts.uri;
    let named = NamedHeaders::find(&parts.headers);
    let transfer_encoding = named.transfer_encoding.and_then(|v| v.to_str().ok()).unwrap_or_default();
    let chunked = !transfer_encoding.is_empty();
    let kept = |name: &http::HeaderName| {
        *name != http::header::HOST
            && *name != http::header::TRANSFER_ENCODING
            && !(chunked && *name == http::header::CONTENT_LENGTH)
            && keep(name)
    };
    // The decoded path and every header value are slices of one buffer: one allocation for them all, and
    // encoding a frame clones the slices without copying (a `Bytes` made from its own `Vec` would allocate
    // again on its first clone).
    let values_len: usize = parts.headers.iter().map(|(_, v)| v.len()).sum();
    let mut buffer = bytes::BytesMut::with_capacity(uri.path().len() + values_len);
    decode_path_into(uri.path(), &mut buffer)?;
    let path_len = buffer.len();
    for (_, value) in parts.headers.iter().filter(|(name, _)| kept(name)) {
        buffer.extend_from_slice(value.as_bytes());
    }
    let mut buffer = buffer.freeze();
    let path = buffer.split_to(path_len);

    let mut envelope = spare_envelope();
    // Every field of a recycled envelope is overwritten below; naming them all here makes a field added to the
    // protocol a compile error until it is too.
    let Envelope { request_id: _, deadline: _, trace: _, headers: _, content_length: _, transport: _, kind: _ } =
        &envelope;
    let mut count = 0;
    for (name, value) in parts.headers.iter().filter(|(name, _)| kept(name)) {
        let value = buffer.split_to(value.len());
        match envelope.headers.get_mut(count) {
            Some(header) => {
                overwrite(&mut header.name, name.as_str());
                header.value = value;
            }
            None => envelope.headers.push(Header { name: name.as_str().to_string(), value }),
        }
        count += 1;
    }
    envelope.headers.truncate(count);
    match named.call_id.and_then(|v| v.to_str().ok()) {
        Some(id) => overwrite(&mut envelope.request_id, id),
        None => write_new_id(&mut envelope.request_id),
    }
    envelope.deadline = timeout.map(|t| prost_types::Timestamp::from(SystemTime::now() + t));
    let trace = envelope.trace.get_or_insert_with(TraceContext::default);
    let TraceContext { traceparent: _, tracestate: _ } = trace;
    overwrite(&mut trace.traceparent, named.traceparent.and_then(|v| v.to_str().ok()).unwrap_or_default());
    overwrite(&mut trace.tracestate, named.tracestate.and_then(|v| v.to_str().ok()).unwrap_or_default());
    envelope.content_length = content_length;
    // A recycled event's envelope keeps its HTTP request as the transport: it is reused as the request here.
    let mut http = match (envelope.kind.take(), envelope.transport.take()) {
        (Some(Kind::Http(http)), _) | (_, Some(http)) => http,
        _ => HttpRequest::default(),
    };
    let HttpRequest { method: _, path: _, query: _, host: _, version: _, transfer_encoding: _ } = &http;
    overwrite(&mut http.method, parts.method.as_str());
    http.path = path;
    overwrite(&mut http.query, uri.query().unwrap_or_default());
    let host = match uri.authority() {
        Some(authority) => authority.as_str(),
        None => named.host.and_then(|v| v.to_str().ok()).unwrap_or_default(),
    };
    overwrite(&mut http.host, host);
    overwrite(&mut http.version, version_name(parts.version));
    overwrite(&mut http.transfer_encoding, transfer_encoding.split(',').next().unwrap_or_default().trim());
    envelope.kind = Some(Kind::Http(http));
    Ok(envelope)
}

/// How `http::Version` prints itself (`HTTP/1.1`), without the formatting machinery.
fn version_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// A fresh random UUID in its hyphenated lower-case form, written without the formatting machinery.
pub fn new_id() -> String {
    let mut id = String::new();
    write_new_id(&mut id);
    id
}

/// A fresh [`new_id`] as a header value.
pub fn new_id_header() -> ::http::HeaderValue {
    with_new_id(|id| ::http::HeaderValue::from_str(id).expect("a UUID is a valid header value"))
}

/// Replaces `id` with a fresh [`new_id`], in the string's own buffer.
fn write_new_id(id: &mut String) {
    with_new_id(|new| overwrite(id, new));
}

/// Hands a fresh random UUID, formatted on the stack, to `use_id`.
fn with_new_id<R>(use_id: impl FnOnce(&str) -> R) -> R {
    let mut buf = uuid::Uuid::encode_buffer();
    use_id(uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf))
}

/// Sets a string, reusing its buffer.
fn overwrite(field: &mut String, value: &str) {
    field.clear();
    field.push_str(value);
}

/// Envelopes, and events, kept per thread for reuse; more would only hold memory.
const SPARE_LIMIT: usize = 64;
/// Envelopes with more headers than this are not kept, so one request's huge headers are not held for long.
const SPARE_MAX_HEADERS: usize = 32;
/// Nor are envelopes whose encoding was longer than this.
const SPARE_MAX_ENCODED: usize = 4096;

thread_local! {
    static SPARE: std::cell::RefCell<Vec<Envelope>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The events of recycled envelopes, for the next binary-mode event to be decoded into.
    static SPARE_EVENTS: std::cell::RefCell<Vec<CloudEvent>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn spare_envelope() -> Envelope {
    SPARE.with(|spare| spare.borrow_mut().pop()).unwrap_or_default()
}

/// An event from a recycled envelope (else a new one), for [`crate::cloudevent::from_binary_reusing`].
pub fn spare_event() -> CloudEvent {
    SPARE_EVENTS.with(|spare| spare.borrow_mut().pop()).unwrap_or_default()
}

/// Gives an envelope that is done with (encoded for a worker) back for the next request on this thread to
/// build its own in. `encoded_len` is what it encoded to: a large one is dropped instead, so the buffers kept
/// stay small.
pub fn recycle(mut envelope: Envelope, encoded_len: usize) {
    if envelope.headers.len() > SPARE_MAX_HEADERS || encoded_len > SPARE_MAX_ENCODED {
        return;
    }
    match envelope.kind.take() {
        Some(Kind::Cloudevent(event)) => keep(&SPARE_EVENTS, event),
        // A plain request's HttpRequest is reused by the next envelope built.
        other => envelope.kind = other,
    }
    keep(&SPARE, envelope);
}

/// Adds `item` to a pool of spares unless it is full.
fn keep<T>(pool: &'static std::thread::LocalKey<std::cell::RefCell<Vec<T>>>, item: T) {
    pool.with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < SPARE_LIMIT {
            spare.push(item);
        }
    });
}

// Looked up by `HeaderName`, not `&str`: a string name is parsed and validated again on every lookup.
pub(crate) const X_CALL_ID: http::HeaderName = http::HeaderName::from_static("x-call-id");
const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// The first value of each header the envelope carries in a field of its own, found in one pass over the
/// request's few headers instead of a hashed lookup per name.
#[derive(Default)]
struct NamedHeaders<'a> {
    host: Option<&'a http::HeaderValue>,
    transfer_encoding: Option<&'a http::HeaderValue>,
    call_id: Option<&'a http::HeaderValue>,
    traceparent: Option<&'a http::HeaderValue>,
    tracestate: Option<&'a http::HeaderValue>,
}

impl<'a> NamedHeaders<'a> {
    fn find(headers: &'a HeaderMap) -> NamedHeaders<'a> {
        let mut found = NamedHeaders::default();
        for (name, value) in headers {
            let slot = if *name == http::header::HOST {
                &mut found.host
            } else if *name == http::header::TRANSFER_ENCODING {
                &mut found.transfer_encoding
            } else if *name == X_CALL_ID {
                &mut found.call_id
            } else if *name == TRACEPARENT {
                &mut found.traceparent
            } else if *name == TRACESTATE {
                &mut found.tracestate
            } else {
                continue;
            };
            slot.get_or_insert(value);
        }
        found
    }
}

/// A request path with an invalid percent-escape (Go's `net/http` answers 400 to these too).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid URL escape {0:?} in the request path")]
pub struct PathError(pub String);

/// Appends `path` to `out` with its `%XX` escapes decoded, as Go's `URL.Path` decodes them (`+` stays `+`). The
/// result may not be UTF-8.
fn decode_path_into(path: &str, out: &mut bytes::BytesMut) -> Result<(), PathError> {
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit));
            let Some(hex) = hex else {
                let end = (i + 3).min(bytes.len());
                return Err(PathError(String::from_utf8_lossy(&bytes[i..end]).into_owned()));
            };
            let text = std::str::from_utf8(hex).expect("hex digits are ASCII");
            out.extend_from_slice(&[u8::from_str_radix(text, 16).expect("two hex digits")]);
            i += 3;
        } else {
            // The run up to the next escape in one copy.
            let run = bytes[i..].iter().position(|&b| b == b'%').unwrap_or(bytes.len() - i);
            out.extend_from_slice(&bytes[i..i + run]);
            i += run;
        }
    }
    Ok(())
}

impl Envelope {
    /// The HTTP request inside, if this envelope describes one.
    pub fn http(&self) -> Option<&HttpRequest> {
        match &self.kind {
            Some(Kind::Http(http)) => Some(http),
            _ => None,
        }
    }

    /// The HTTP request that carried this one: the request itself for plain HTTP, else the transport.
    pub fn carrier(&self) -> Option<&HttpRequest> {
        self.http().or(self.transport.as_ref())
    }

    /// The CloudEvent inside, if this envelope describes one.
    pub fn cloudevent(&self) -> Option<&pb::io::cloudevents::v1::CloudEvent> {
        match &self.kind {
            Some(Kind::Cloudevent(event)) => Some(event),
            _ => None,
        }
    }

    /// The gRPC call inside, if this envelope describes one.
    pub fn grpc(&self) -> Option<&pb::watchdog::v1::GrpcCall> {
        match &self.kind {
            Some(Kind::Grpc(call)) => Some(call),
            _ => None,
        }
    }

    /// Turns a plain HTTP envelope into one carrying `kind` instead, keeping the HTTP request as its transport.
    pub fn into_kind(mut self, kind: Kind) -> Envelope {
        if let Some(Kind::Http(http)) = self.kind.take() {
            self.transport = Some(http);
        }
        self.kind = Some(kind);
        self
    }

    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(req: http::Request<()>) -> Parts {
        req.into_parts().0
    }

    fn decode_path(path: &str) -> Result<Vec<u8>, PathError> {
        let mut out = bytes::BytesMut::new();
        decode_path_into(path, &mut out).map(|()| out.to_vec())
    }

    #[test]
    fn decodes_path_like_go() {
        assert_eq!(decode_path("/a%20b+c").unwrap(), b"/a b+c");
        assert_eq!(decode_path("/%e2%82%ac").unwrap(), "/€".as_bytes());
        assert_eq!(decode_path("/%ff").unwrap(), vec![b'/', 0xff]);
        assert_eq!(decode_path("/plain/path").unwrap(), b"/plain/path");
        assert!(decode_path("/%zz").is_err());
        assert!(decode_path("/%4").is_err());
        assert!(decode_path("/a%").is_err());
    }

    #[test]
    fn http_envelope_moves_host_and_transfer_encoding_out_of_headers() {
        let req = http::Request::post("/my/path?q=x")
            .header("Host", "example.com:8080")
            .header("Transfer-Encoding", "chunked")
            .header("X-Call-Id", "abc")
            .header("traceparent", "00-1-2-01")
            .header("custom-header", "v1")
            .header("custom-header", "v2")
            .body(())
            .unwrap();
        let env = from_http(&parts(req), -1, None).unwrap();
        let http = env.http().unwrap();
        assert_eq!(http.method, "POST");
        assert_eq!(&http.path[..], b"/my/path");
        assert_eq!(http.query, "q=x");
        assert_eq!(http.host, "example.com:8080");
        assert_eq!(http.transfer_encoding, "chunked");
        assert_eq!(env.request_id, "abc");
        assert_eq!(env.trace.as_ref().unwrap().traceparent, "00-1-2-01");
        assert_eq!(env.content_length, -1);
        assert!(env.header("host").is_none());
        assert!(env.header("transfer-encoding").is_none());
        let values: Vec<_> =
            env.headers.iter().filter(|h| h.name == "custom-header").map(|h| h.value.clone()).collect();
        assert_eq!(values, vec![&b"v1"[..], &b"v2"[..]]);
    }

    /// The fields taken from headers hold each header's first value, as `HeaderMap::get` gives it, and a value
    /// that is not visible ASCII counts as absent.
    #[test]
    fn named_headers_take_their_first_value() {
        let req = http::Request::get("/")
            .header("x-call-id", "first")
            .header("x-call-id", "second")
            .header("tracestate", "a=1")
            .header("tracestate", "b=2")
            .header("traceparent", http::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap())
            .header("traceparent", "00-1-2-01")
            .header("host", "h1")
            .body(())
            .unwrap();
        let env = from_http(&parts(req), 0, None).unwrap();
        assert_eq!(env.request_id, "first");
        let trace = env.trace.as_ref().unwrap();
        assert_eq!(trace.tracestate, "a=1");
        assert_eq!(trace.traceparent, "");
        assert_eq!(env.http().unwrap().host, "h1");
    }

    /// An envelope built in a recycled one is the envelope a fresh build gives: nothing of the earlier request
    /// (its headers, trace, deadline, transport, event) is left in it.
    #[test]
    fn a_recycled_envelope_keeps_nothing_of_its_request() {
        let minimal = || parts(http::Request::get("/b").header("x-call-id", "b").body(()).unwrap());
        let fresh = from_http(&minimal(), 0, None).unwrap();
        let earlier = http::Request::post("http://example.com/a%20b?q=1")
            .header("x-call-id", "a")
            .header("traceparent", "00-1-2-01")
            .header("tracestate", "k=v")
            .header("transfer-encoding", "chunked")
            .header("x-one", "1")
            .header("x-two", "2")
            .header("x-three", "3")
            .body(())
            .unwrap();
        let earlier = from_http(&parts(earlier), -1, Some(Duration::from_secs(5))).unwrap();
        let event = CloudEvent { id: "e".into(), ..Default::default() };
        recycle(earlier.into_kind(Kind::Cloudevent(event.clone())), 100);
        let spares = || SPARE.with(|spare| spare.borrow().len());
        assert_eq!(spares(), 1);
        let rebuilt = from_http(&minimal(), 0, None).unwrap();
        assert_eq!(spares(), 0, "the recycled envelope was not used");
        assert_eq!(rebuilt, fresh);
        // Its event is kept apart, for the next binary-mode event to be decoded into.
        assert_eq!(spare_event(), event);
        assert_eq!(spare_event(), CloudEvent::default(), "one event was recycled");
    }

    #[test]
    fn a_recycled_envelope_lends_its_buffers() {
        let request = || parts(http::Request::get("http://example.com/a?q=1").body(()).unwrap());
        let envelope = from_http(&request(), 0, None).unwrap();
        let host = envelope.http().unwrap().host.as_ptr();
        recycle(envelope, 100);
        let rebuilt = from_http(&request(), 0, None).unwrap();
        assert_eq!(rebuilt.http().unwrap().host.as_ptr(), host, "the HTTP request's strings were not reused");
    }

    #[test]
    fn large_envelopes_are_not_kept() {
        let spares = || SPARE.with(|spare| spare.borrow().len());
        recycle(Envelope::default(), SPARE_MAX_ENCODED + 1);
        let many = Envelope { headers: vec![Header::default(); SPARE_MAX_HEADERS + 1], ..Default::default() };
        recycle(many, 100);
        assert_eq!(spares(), 0);
    }

    #[test]
    fn generated_request_ids_are_unique() {
        let a = from_http(&parts(http::Request::new(())), 0, None).unwrap().request_id;
        let b = from_http(&parts(http::Request::new(())), 0, None).unwrap().request_id;
        assert_ne!(a, b);
    }
}
