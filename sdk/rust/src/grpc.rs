//! gRPC: the call's details ([`GrpcCall`]), status codes ([`Code`], [`GrpcStatus`]) and gRPC's 5-byte message
//! framing ([`grpc_frame`], [`split_grpc_messages`], [`GrpcMessages`]).
//!
//! How a call's body is encoded depends on the method (the watchdog does the same on its side):
//! - `/watchdog.v1.Function/Invoke`: the body is `InvokeRequest.body`, the response body becomes
//!   `InvokeResponse.body`;
//! - `/watchdog.v1.Function/InvokeStream`: request and response are plain byte chunks;
//! - any other method (passthrough): the body is one raw protobuf message, or, for a client-streaming method, a
//!   sequence of gRPC length-prefixed messages; the response is one raw message, or, for a server-streaming
//!   method, length-prefixed messages (the SDK frames them: a handler returns plain messages).

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::Stream;
use http::HeaderMap;

use crate::proto::watchdog::v1 as pb;
use crate::request::Body;
use crate::Error;

/// The method of the watchdog's own unary service; its body is not framed either way.
pub const INVOKE_METHOD: &str = "/watchdog.v1.Function/Invoke";
/// The method of the watchdog's own streaming service; its body and response are plain byte chunks.
pub const INVOKE_STREAM_METHOD: &str = "/watchdog.v1.Function/InvokeStream";

// The gRPC message prefix: 1 byte compressed-flag, 4 bytes big-endian length.
const PREFIX: usize = 5;

/// A gRPC call's details: [`crate::Request::grpc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcCall<'a> {
    call: &'a pb::GrpcCall,
}

impl<'a> GrpcCall<'a> {
    pub(crate) fn new(call: &'a pb::GrpcCall) -> Self {
        GrpcCall { call }
    }

    /// The full method name, `/package.Service/Method`.
    pub fn method(&self) -> &'a str {
        &self.call.method
    }

    /// The client sends a stream of messages.
    pub fn client_streaming(&self) -> bool {
        self.call.client_streaming
    }

    /// The server answers with a stream of messages.
    pub fn server_streaming(&self) -> bool {
        self.call.server_streaming
    }

    /// A method of the function's own service, passed through as raw protobuf messages (not
    /// `watchdog.v1.Function/Invoke` or `InvokeStream`).
    pub fn is_passthrough(&self) -> bool {
        is_passthrough(&self.call.method)
    }

    /// The request body is a sequence of gRPC length-prefixed messages (a client-streaming passthrough call).
    pub fn request_framed(&self) -> bool {
        self.call.client_streaming && self.is_passthrough()
    }

    /// The SDK frames each response message (a server-streaming passthrough call).
    pub fn response_framed(&self) -> bool {
        self.call.server_streaming && self.is_passthrough()
    }
}

fn is_passthrough(method: &str) -> bool {
    method != INVOKE_METHOD && method != INVOKE_STREAM_METHOD
}

/// A gRPC status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(i32)]
pub enum Code {
    /// Not an error.
    Ok = 0,
    /// The operation was cancelled, typically by the caller.
    Cancelled = 1,
    /// Unknown error.
    Unknown = 2,
    /// The client specified an invalid argument.
    InvalidArgument = 3,
    /// The deadline expired before the operation could complete.
    DeadlineExceeded = 4,
    /// Some requested entity was not found.
    NotFound = 5,
    /// The entity the client tried to create already exists.
    AlreadyExists = 6,
    /// The caller may not execute the operation.
    PermissionDenied = 7,
    /// Some resource has been exhausted.
    ResourceExhausted = 8,
    /// The system is not in a state required for the operation.
    FailedPrecondition = 9,
    /// The operation was aborted (a concurrency conflict, typically).
    Aborted = 10,
    /// The operation was attempted past the valid range.
    OutOfRange = 11,
    /// The operation is not implemented or supported.
    Unimplemented = 12,
    /// Internal error.
    Internal = 13,
    /// The service is currently unavailable; retrying may help.
    Unavailable = 14,
    /// Unrecoverable data loss or corruption.
    DataLoss = 15,
    /// The request lacks valid authentication credentials.
    Unauthenticated = 16,
}

impl Code {
    /// Every code, in numeric order.
    pub const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The code's number, as sent in `grpc-status`.
    pub fn as_i32(self) -> i32 {
        self as i32
    }

    /// The code with this number; gRPC reads an unknown number as `Unknown`.
    pub fn from_i32(n: i32) -> Code {
        usize::try_from(n).ok().and_then(|i| Code::ALL.get(i).copied()).unwrap_or(Code::Unknown)
    }

    /// The canonical name, e.g. `"NOT_FOUND"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// The HTTP status a status with this code becomes when the request was not a gRPC call (the mapping of
    /// Google's API design guide and grpc-gateway).
    pub fn http_status(self) -> u16 {
        match self {
            Code::Ok => 200,
            Code::Cancelled => 499,
            Code::Unknown | Code::Internal | Code::DataLoss => 500,
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
            Code::DeadlineExceeded => 504,
            Code::NotFound => 404,
            Code::AlreadyExists | Code::Aborted => 409,
            Code::PermissionDenied => 403,
            Code::ResourceExhausted => 429,
            Code::Unimplemented => 501,
            Code::Unavailable => 503,
            Code::Unauthenticated => 401,
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A gRPC status chosen by the handler: sent as the trailers `grpc-status` (the code's number) and `grpc-message`
/// (the message; the watchdog percent-encodes it), after any trailing metadata in `trailers`.
///
/// Return it as a reply (`Ok(status.into())`, [`crate::Reply::GrpcStatus`]) or as an error (`Err(status.into())`,
/// [`crate::HandlerError::Status`]); in a response body stream, an `Err(HandlerError::Status(..))` item ends a
/// server-streaming call with that status after the messages already sent. For a request that is not a gRPC call
/// it becomes the HTTP status of [`Code::http_status`] with the message as a `text/plain` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcStatus {
    /// The code.
    pub code: Code,
    /// A message for the client (plain UTF-8).
    pub message: String,
    /// Trailing metadata sent with the status.
    pub trailers: HeaderMap,
}

impl GrpcStatus {
    /// A status with a code and a message, and no trailing metadata.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        GrpcStatus { code, message: message.into(), trailers: HeaderMap::new() }
    }

    /// Adds trailing metadata.
    pub fn with_trailers(mut self, trailers: HeaderMap) -> Self {
        self.trailers = trailers;
        self
    }

    /// `OK`.
    pub fn ok() -> Self {
        GrpcStatus::new(Code::Ok, "")
    }

    /// `INVALID_ARGUMENT`.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        GrpcStatus::new(Code::InvalidArgument, message)
    }

    /// `NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        GrpcStatus::new(Code::NotFound, message)
    }

    /// `ALREADY_EXISTS`.
    pub fn already_exists(message: impl Into<String>) -> Self {
        GrpcStatus::new(Code::AlreadyExists, message)
    }

    /// `PERMISSION_DENIED`.
    pub fn permission_denied(message: impl Into<String>) -> Self {
        GrpcStatus::new(Code::PermissionDenied, message)
    }

    /// `FAILED_PRECONDITION`.
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        GrpcStatus::new(Code::FailedPrecondition, message)
    }

    /// `UNIMPLEMENTED`.
    pub fn unimplemented(message: impl Into<String>) -> Self {
        GrpcStatus::new(Code::Unimplemented, message)
    }

    /// `UNAVAILABLE`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        GrpcStatus::new(Code::Unavailable, message)
    }

    /// `UNAUTHENTICATED`.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        GrpcStatus::new(Code::Unauthenticated, message)
    }

    /// `INTERNAL`.
    pub fn internal(message: impl Into<String>) -> Self {
        GrpcStatus::new(Code::Internal, message)
    }
}

impl fmt::Display for GrpcStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gRPC status {}: {}", self.code, self.message)
    }
}

/// Why a body could not be split into gRPC messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FramingError {
    /// The body ended inside a message's 5-byte prefix.
    #[error("truncated gRPC message: the body ends {got} bytes into a 5-byte message prefix")]
    TruncatedPrefix {
        /// Prefix bytes present.
        got: usize,
    },
    /// The body ended before a message's last byte.
    #[error("truncated gRPC message: {got} of its {len} bytes present")]
    TruncatedMessage {
        /// The length the prefix announced.
        len: usize,
        /// Bytes present.
        got: usize,
    },
    /// A compressed message (flag 1): this SDK does not decompress.
    #[error("compressed gRPC message: compression is not supported")]
    Compressed,
    /// A compressed-flag other than 0 or 1.
    #[error("invalid gRPC message flag {0}")]
    InvalidFlag(u8),
}

/// One message in gRPC's length-prefixed framing: flag 0 (not compressed), 4-byte big-endian length, the message.
pub fn grpc_frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(PREFIX + message.len());
    put_prefix(&mut out, message.len());
    out.extend_from_slice(message);
    out.freeze()
}

pub(crate) fn put_prefix(out: &mut BytesMut, len: usize) {
    out.put_u8(0);
    // A gRPC message cannot exceed 4 GiB; the watchdog's limits are far lower.
    out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
}

/// Splits a body in gRPC's length-prefixed framing into its messages (zero-copy slices of `body`).
pub fn split_grpc_messages(mut body: Bytes) -> Result<Vec<Bytes>, FramingError> {
    let mut messages = Vec::new();
    while !body.is_empty() {
        match next_message(&body)? {
            Some(len) => {
                body.advance(PREFIX);
                messages.push(body.split_to(len));
            }
            None => return Err(truncated(&body)),
        }
    }
    Ok(messages)
}

// The length of the first message when it is complete in `buf`.
fn next_message(buf: &[u8]) -> Result<Option<usize>, FramingError> {
    if buf.len() < PREFIX {
        return Ok(None);
    }
    match buf[0] {
        0 => {}
        1 => return Err(FramingError::Compressed),
        flag => return Err(FramingError::InvalidFlag(flag)),
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    Ok((buf.len() - PREFIX >= len).then_some(len))
}

// The error for an incomplete message left at the end of a body.
fn truncated(rest: &[u8]) -> FramingError {
    if rest.len() < PREFIX {
        FramingError::TruncatedPrefix { got: rest.len() }
    } else {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        FramingError::TruncatedMessage { len, got: rest.len() - PREFIX }
    }
}

/// The request messages of a gRPC call, as a [`Stream`] that yields each one as soon as it has arrived in full:
/// [`crate::Request::grpc_message_stream`].
///
/// For a client-streaming passthrough call the body is split in gRPC's framing; otherwise (unary calls, `Invoke`,
/// `InvokeStream`, other requests) the whole body is one message. A body that ends inside a message yields
/// [`Error::Framing`].
pub struct GrpcMessages {
    body: Body,
    framed: bool,
    buf: BytesMut,
    // Unframed: the body's chunks, joined at the end (one chunk needs no copy).
    chunks: Vec<Bytes>,
    done: bool,
}

impl fmt::Debug for GrpcMessages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcMessages").field("framed", &self.framed).field("buffered", &self.buf.len()).finish()
    }
}

impl GrpcMessages {
    /// The messages of `body`: split in gRPC's framing when `framed`, else the whole body as one message.
    pub fn new(body: Body, framed: bool) -> Self {
        GrpcMessages { body, framed, buf: BytesMut::new(), chunks: Vec::new(), done: false }
    }

    /// The next message, or `None` after the last.
    pub async fn message(&mut self) -> Result<Option<Bytes>, Error> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await.transpose()
    }

    /// Every remaining message.
    pub async fn collect(mut self) -> Result<Vec<Bytes>, Error> {
        let mut all = Vec::new();
        while let Some(m) = self.message().await? {
            all.push(m);
        }
        Ok(all)
    }

    fn take_framed(&mut self) -> Result<Option<Bytes>, FramingError> {
        Ok(next_message(&self.buf)?.map(|len| {
            self.buf.advance(PREFIX);
            self.buf.split_to(len).freeze()
        }))
    }
}

impl Stream for GrpcMessages {
    type Item = Result<Bytes, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if this.framed {
                match this.take_framed() {
                    Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                    Ok(None) => {}
                    Err(e) => {
                        this.done = true;
                        return Poll::Ready(Some(Err(Error::Framing(e))));
                    }
                }
            }
            match Pin::new(&mut this.body).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) if this.framed => this.buf.extend_from_slice(&chunk),
                Poll::Ready(Some(Ok(chunk))) => this.chunks.push(chunk),
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    if this.framed {
                        return Poll::Ready((!this.buf.is_empty()).then(|| Err(Error::Framing(truncated(&this.buf)))));
                    }
                    // Unframed: exactly one message, even an empty one (a message with every field at its default).
                    let message = match this.chunks.len() {
                        0 => Bytes::new(),
                        1 => this.chunks.pop().unwrap_or_default(),
                        _ => this.chunks.concat().into(),
                    };
                    this.chunks = Vec::new();
                    return Poll::Ready(Some(Ok(message)));
                }
            }
        }
    }
}

/// How the responder encodes one stream's answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ResponseMode {
    /// The request is a gRPC call: statuses go out as trailers.
    pub(crate) grpc: bool,
    /// Each body item is one message, sent in gRPC's framing.
    pub(crate) framed: bool,
}

impl ResponseMode {
    pub(crate) fn of(envelope: &pb::Envelope) -> Self {
        match &envelope.kind {
            Some(pb::envelope::Kind::Grpc(call)) => {
                ResponseMode { grpc: true, framed: GrpcCall::new(call).response_framed() }
            }
            _ => ResponseMode::default(),
        }
    }
}

/// `grpc-status` and `grpc-message` (after `status.trailers`), as frame headers.
pub(crate) fn status_trailers(status: &GrpcStatus, max_message: usize) -> Vec<pb::Header> {
    let mut out: Vec<pb::Header> = status
        .trailers
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "grpc-status" | "grpc-message"))
        .map(|(name, value)| pb::Header {
            name: name.as_str().to_owned(),
            value: Bytes::copy_from_slice(value.as_bytes()),
        })
        .collect();
    out.push(pb::Header { name: "grpc-status".into(), value: Bytes::from(status.code.as_i32().to_string()) });
    if !status.message.is_empty() {
        // Header values may not hold CR, LF or NUL; the watchdog percent-encodes everything else.
        let mut message: String =
            status.message.chars().map(|c| if matches!(c, '\r' | '\n' | '\0') { ' ' } else { c }).collect();
        crate::conn::truncate(&mut message, max_message);
        out.push(pb::Header { name: "grpc-message".into(), value: Bytes::from(message) });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_then_split_roundtrips() {
        let mut body = BytesMut::new();
        for m in [&b"one"[..], b"", b"three\0\x01"] {
            body.extend_from_slice(&grpc_frame(m));
        }
        assert_eq!(&grpc_frame(b"hi")[..], b"\0\0\0\0\x02hi");
        let got = split_grpc_messages(body.freeze()).unwrap();
        assert_eq!(got, [&b"one"[..], b"", b"three\0\x01"]);
        assert_eq!(split_grpc_messages(Bytes::new()).unwrap(), Vec::<Bytes>::new());
    }

    #[test]
    fn split_reports_truncation_and_flags() {
        let mut body = grpc_frame(b"ok").to_vec();
        body.extend_from_slice(b"\0\0\0");
        assert_eq!(split_grpc_messages(body.into()), Err(FramingError::TruncatedPrefix { got: 3 }));
        let mut body = grpc_frame(b"hello").to_vec();
        body.truncate(8);
        assert_eq!(split_grpc_messages(body.into()), Err(FramingError::TruncatedMessage { len: 5, got: 3 }));
        assert_eq!(split_grpc_messages(Bytes::from_static(b"\x01\0\0\0\0")), Err(FramingError::Compressed));
        assert_eq!(split_grpc_messages(Bytes::from_static(b"\x07\0\0\0\0")), Err(FramingError::InvalidFlag(7)));
        assert_eq!(
            FramingError::TruncatedMessage { len: 5, got: 3 }.to_string(),
            "truncated gRPC message: 3 of its 5 bytes present"
        );
    }

    #[test]
    fn codes_numbers_names_and_http() {
        for (i, code) in Code::ALL.into_iter().enumerate() {
            assert_eq!(code.as_i32(), i as i32);
            assert_eq!(Code::from_i32(i as i32), code);
        }
        assert_eq!(Code::from_i32(17), Code::Unknown);
        assert_eq!(Code::from_i32(-1), Code::Unknown);
        assert_eq!(Code::NotFound.to_string(), "NOT_FOUND");
        assert_eq!(Code::Unauthenticated.as_i32(), 16);
        assert_eq!(Code::NotFound.http_status(), 404);
        assert_eq!(Code::Unavailable.http_status(), 503);
    }

    #[test]
    fn call_modes() {
        let call =
            |method: &str, cs, ss| pb::GrpcCall { method: method.into(), client_streaming: cs, server_streaming: ss };
        let c = call("/pkg.Svc/Chat", true, true);
        let v = GrpcCall::new(&c);
        assert!(v.is_passthrough() && v.request_framed() && v.response_framed());
        let c = call(INVOKE_STREAM_METHOD, true, true);
        let v = GrpcCall::new(&c);
        assert!(!v.is_passthrough() && !v.request_framed() && !v.response_framed());
        assert!(v.client_streaming() && v.server_streaming());
        let c = call("/pkg.Svc/Get", false, false);
        let v = GrpcCall::new(&c);
        assert!(!v.request_framed() && !v.response_framed());
    }

    #[test]
    fn status_trailers_sanitise_the_message() {
        let mut md = HeaderMap::new();
        md.insert("x-detail", "d".parse().unwrap());
        md.insert("grpc-status", "0".parse().unwrap()); // the status itself wins
        let s = GrpcStatus::new(Code::NotFound, "no\r\nsuch é").with_trailers(md);
        let t = status_trailers(&s, 1024);
        let pairs: Vec<(&str, &[u8])> = t.iter().map(|h| (h.name.as_str(), &h.value[..])).collect();
        assert_eq!(pairs, [("x-detail", &b"d"[..]), ("grpc-status", b"5"), ("grpc-message", "no  such é".as_bytes())]);
        let t = status_trailers(&GrpcStatus::ok(), 1024);
        assert_eq!(t.len(), 1, "no grpc-message for an empty message");
    }

    #[tokio::test]
    async fn message_stream_over_in_memory_bodies() {
        let mut body = grpc_frame(b"a").to_vec();
        body.extend_from_slice(&grpc_frame(b"bc"));
        let got = GrpcMessages::new(Body::from(body), true).collect().await.unwrap();
        assert_eq!(got, [&b"a"[..], b"bc"]);
        let got = GrpcMessages::new(Body::from("raw"), false).collect().await.unwrap();
        assert_eq!(got, [&b"raw"[..]]);
        let got = GrpcMessages::new(Body::empty(), false).collect().await.unwrap();
        assert_eq!(got, [Bytes::new()], "a unary call always has its one message");
        let err =
            GrpcMessages::new(Body::from(Bytes::from_static(b"\0\0\0\0\x09abc")), true).collect().await.unwrap_err();
        assert!(matches!(err, Error::Framing(FramingError::TruncatedMessage { len: 9, got: 3 })), "{err:?}");
    }
}
