//! The envelope (SPEC §7): the one typed description of a request that every ingress produces and every backend
//! consumes. The types are generated from `proto/` by `build.rs`; this module adds how an HTTP request becomes one.

use std::time::{Duration, SystemTime};

use http::request::Parts;
use http::HeaderMap;

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
pub fn from_http_keeping(
    parts: &Parts,
    content_length: i64,
    timeout: Option<Duration>,
    keep: impl Fn(&http::HeaderName) -> bool,
) -> Result<Envelope, PathError> {
    let uri = &parts.uri;
    let path = percent_decode_path(uri.path())?;
    let named = NamedHeaders::find(&parts.headers);
    let host = uri.authority().map(|a| a.as_str().to_string()).or_else(|| text(named.host)).unwrap_or_default();
    let transfer_encoding = text(named.transfer_encoding).unwrap_or_default();
    let chunked = !transfer_encoding.is_empty();
    let kept = |name: &http::HeaderName| {
        *name != http::header::HOST
            && *name != http::header::TRANSFER_ENCODING
            && !(chunked && *name == http::header::CONTENT_LENGTH)
            && keep(name)
    };
    // Every value is a slice of one buffer: one allocation for them all, and encoding a frame clones the
    // slices without copying (a `Bytes` made from its own `Vec` would allocate again on its first clone).
    let mut values = bytes::BytesMut::with_capacity(parts.headers.iter().map(|(_, v)| v.len()).sum());
    let mut spans = Vec::with_capacity(parts.headers.len());
    for (name, value) in parts.headers.iter().filter(|(name, _)| kept(name)) {
        values.extend_from_slice(value.as_bytes());
        spans.push((name, value.len()));
    }
    let mut values = values.freeze();
    let headers = spans
        .into_iter()
        .map(|(name, len)| Header { name: name.as_str().to_string(), value: values.split_to(len) })
        .collect();
    Ok(Envelope {
        request_id: text(named.call_id).unwrap_or_else(new_id),
        deadline: timeout.map(|t| prost_types::Timestamp::from(SystemTime::now() + t)),
        trace: Some(TraceContext {
            traceparent: text(named.traceparent).unwrap_or_default(),
            tracestate: text(named.tracestate).unwrap_or_default(),
        }),
        headers,
        content_length,
        transport: None,
        kind: Some(Kind::Http(HttpRequest {
            method: parts.method.as_str().to_string(),
            path: path.into(),
            query: uri.query().unwrap_or_default().to_string(),
            host,
            version: version_name(parts.version).to_string(),
            transfer_encoding: transfer_encoding.split(',').next().unwrap_or_default().trim().to_string(),
        })),
    })
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
    let mut buf = uuid::Uuid::encode_buffer();
    uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf).to_owned()
}

// Looked up by `HeaderName`, not `&str`: a string name is parsed and validated again on every lookup.
pub(crate) const X_CALL_ID: http::HeaderName = http::HeaderName::from_static("x-call-id");
const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// A header value as an owned string, if it is visible ASCII (as `HeaderValue::to_str` requires).
fn text(value: Option<&http::HeaderValue>) -> Option<String> {
    value.and_then(|v| v.to_str().ok()).map(str::to_string)
}

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

/// Decodes `%XX` escapes in a path as Go's `URL.Path` does (`+` stays `+`). The result may not be UTF-8.
pub fn percent_decode_path(path: &str) -> Result<Vec<u8>, PathError> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit));
            let Some(hex) = hex else {
                let end = (i + 3).min(bytes.len());
                return Err(PathError(String::from_utf8_lossy(&bytes[i..end]).into_owned()));
            };
            let text = std::str::from_utf8(hex).expect("hex digits are ASCII");
            out.push(u8::from_str_radix(text, 16).expect("two hex digits"));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
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

    #[test]
    fn decodes_path_like_go() {
        assert_eq!(percent_decode_path("/a%20b+c").unwrap(), b"/a b+c");
        assert_eq!(percent_decode_path("/%e2%82%ac").unwrap(), "/€".as_bytes());
        assert_eq!(percent_decode_path("/%ff").unwrap(), vec![b'/', 0xff]);
        assert!(percent_decode_path("/%zz").is_err());
        assert!(percent_decode_path("/%4").is_err());
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

    #[test]
    fn generated_request_ids_are_unique() {
        let a = from_http(&parts(http::Request::new(())), 0, None).unwrap().request_id;
        let b = from_http(&parts(http::Request::new(())), 0, None).unwrap().request_id;
        assert_ne!(a, b);
    }
}
