//! What a handler returns: a [`Reply`] or a [`HandlerError`].

use std::fmt;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::HeaderMap;

use crate::grpc::{Code, GrpcStatus};
use crate::request::Body;

/// A handler's failure. Each variant becomes an Error frame of the same kind, carrying only the message:
/// `Permanent` → 400 (gRPC INVALID_ARGUMENT, no Knative retry), `Retryable` → 503 (UNAVAILABLE), `Internal` → 500
/// (INTERNAL).
///
/// Any [`std::error::Error`] converts into `Internal` with `?` (which is why `HandlerError` itself does not
/// implement `std::error::Error`, like `anyhow::Error`).
///
/// `Status` is not an Error frame: it answers a gRPC call with that status (see [`GrpcStatus`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerError {
    /// The request cannot succeed as sent: do not retry.
    Permanent(String),
    /// A later attempt may succeed.
    Retryable(String),
    /// The function failed.
    Internal(String),
    /// A gRPC status: sent as `grpc-status`/`grpc-message` trailers (also after some messages, when it ends a
    /// response body stream), or as its HTTP status for a request that is not a gRPC call.
    /// Boxed: a `Result<_, HandlerError>` stays small.
    Status(Box<GrpcStatus>),
}

impl HandlerError {
    /// A [`HandlerError::Permanent`].
    pub fn permanent(message: impl Into<String>) -> Self {
        HandlerError::Permanent(message.into())
    }

    /// A [`HandlerError::Retryable`].
    pub fn retryable(message: impl Into<String>) -> Self {
        HandlerError::Retryable(message.into())
    }

    /// A [`HandlerError::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        HandlerError::Internal(message.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        match self {
            HandlerError::Permanent(m) | HandlerError::Retryable(m) | HandlerError::Internal(m) => m,
            HandlerError::Status(s) => &s.message,
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            HandlerError::Permanent(_) => "permanent",
            HandlerError::Retryable(_) => "retryable",
            HandlerError::Internal(_) => "internal",
            HandlerError::Status(s) => return s.fmt(f),
        };
        write!(f, "{kind} error: {}", self.message())
    }
}

impl<E: std::error::Error> From<E> for HandlerError {
    fn from(e: E) -> Self {
        HandlerError::Internal(e.to_string())
    }
}

// `GrpcStatus` does not implement `std::error::Error`, so this does not overlap the blanket conversion above.
impl From<GrpcStatus> for HandlerError {
    fn from(status: GrpcStatus) -> Self {
        HandlerError::Status(Box::new(status))
    }
}

/// A stream of response chunks.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Bytes, HandlerError>> + Send + 'static>>;

/// A response body: all in memory, or a stream of chunks sent as they are produced (with flow control).
pub enum ResponseBody {
    /// The whole body.
    Full(Bytes),
    /// Chunks, sent as the stream yields them; an `Err` item aborts the response with an Error frame (or, for
    /// [`HandlerError::Status`] on a gRPC call, ends it with that status). For a server-streaming passthrough gRPC
    /// call each item is one response message, which the SDK frames.
    Stream(ChunkStream),
}

impl ResponseBody {
    /// No body.
    pub fn empty() -> Self {
        ResponseBody::Full(Bytes::new())
    }

    /// A streaming body from any stream of chunks.
    pub fn stream<S, B, E>(stream: S) -> Self
    where
        S: Stream<Item = Result<B, E>> + Send + 'static,
        B: Into<Bytes>,
        E: Into<HandlerError>,
    {
        ResponseBody::Stream(Box::pin(stream.map(|r| r.map(Into::into).map_err(Into::into))))
    }
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResponseBody::Full(b) => f.debug_tuple("Full").field(&b.len()).finish(),
            ResponseBody::Stream(_) => f.write_str("Stream(..)"),
        }
    }
}

impl From<Bytes> for ResponseBody {
    fn from(b: Bytes) -> Self {
        ResponseBody::Full(b)
    }
}

impl From<Vec<u8>> for ResponseBody {
    fn from(v: Vec<u8>) -> Self {
        ResponseBody::Full(v.into())
    }
}

impl From<String> for ResponseBody {
    fn from(s: String) -> Self {
        ResponseBody::Full(s.into())
    }
}

impl From<&'static str> for ResponseBody {
    fn from(s: &'static str) -> Self {
        ResponseBody::Full(Bytes::from_static(s.as_bytes()))
    }
}

impl From<&'static [u8]> for ResponseBody {
    fn from(s: &'static [u8]) -> Self {
        ResponseBody::Full(Bytes::from_static(s))
    }
}

/// A request body sent straight back as a streaming response (a streaming echo).
impl From<Body> for ResponseBody {
    fn from(body: Body) -> Self {
        ResponseBody::stream(body)
    }
}

/// A response: status, headers, body and (for gRPC) trailers.
#[derive(Debug)]
pub struct Response {
    /// HTTP status (a gRPC call maps it to a gRPC code: use 200, or [`GrpcStatus`] for another outcome).
    pub status: u16,
    /// Response headers or gRPC initial metadata.
    pub headers: HeaderMap,
    /// The body.
    pub body: ResponseBody,
    /// gRPC trailing metadata, sent in the End frame.
    pub trailers: HeaderMap,
}

/// A reply event: attributes (`id`, `source`, `specversion`, `type` and any other) and data.
#[derive(Debug)]
pub struct ReplyEvent {
    /// Attribute name → value in canonical string form.
    pub attributes: Vec<(String, String)>,
    /// The event's data.
    pub data: ResponseBody,
}

/// A handler's answer.
#[derive(Debug)]
pub enum Reply {
    /// Accepted, nothing to return: 202 with no body (no reply event for a CloudEvent). For a gRPC call: OK with
    /// status 200 (gRPC would read 202 as UNKNOWN) and no body, i.e. one empty message, or none for a
    /// server-streaming call.
    Accepted,
    /// A response.
    Response(Response),
    /// A reply event (for a CloudEvent request).
    CloudEvent(ReplyEvent),
    /// A gRPC status with no response message: trailers `grpc-status`, `grpc-message` and the status's own
    /// trailing metadata (for a request that is not a gRPC call: the code's HTTP status, the message as body).
    GrpcStatus(GrpcStatus),
}

impl Reply {
    /// 200 with this body.
    pub fn bytes(body: impl Into<Bytes>) -> Self {
        Reply::Response(Response {
            status: 200,
            headers: HeaderMap::new(),
            body: ResponseBody::Full(body.into()),
            trailers: HeaderMap::new(),
        })
    }

    /// 202, no body: [`Reply::Accepted`].
    pub fn empty() -> Self {
        Reply::Accepted
    }

    /// A response with a status, headers and a body (bytes, a string, or a [`ResponseBody::stream`]).
    pub fn response(status: u16, headers: HeaderMap, body: impl Into<ResponseBody>) -> Self {
        Reply::Response(Response { status, headers, body: body.into(), trailers: HeaderMap::new() })
    }

    /// 200 with a body streamed as `stream` yields it: each item goes out as soon as it is produced (within the
    /// stream's flow-control credit). For a server-streaming passthrough gRPC call each item is one response
    /// message (the SDK frames it); for `InvokeStream` each item becomes a `Chunk`.
    pub fn stream<S, B>(stream: S) -> Self
    where
        S: Stream<Item = B> + Send + 'static,
        B: Into<Bytes> + 'static,
    {
        Reply::try_stream(stream.map(Ok::<B, HandlerError>))
    }

    /// [`Reply::stream`] of fallible items: an `Err` ends the response as [`ResponseBody::Stream`] describes.
    pub fn try_stream<S, B, E>(stream: S) -> Self
    where
        S: Stream<Item = Result<B, E>> + Send + 'static,
        B: Into<Bytes>,
        E: Into<HandlerError>,
    {
        Reply::response(200, HeaderMap::new(), ResponseBody::stream(stream))
    }

    /// A gRPC status: [`Reply::GrpcStatus`].
    pub fn grpc_status(code: Code, message: impl Into<String>) -> Self {
        Reply::GrpcStatus(GrpcStatus::new(code, message))
    }

    /// A reply event. `id` defaults to a fresh UUID; `specversion`, `source` and `type`, when missing, are left
    /// for the watchdog to default. The event's data is `data`.
    pub fn cloud_event<I, K, V>(attributes: I, data: impl Into<ResponseBody>) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Reply::CloudEvent(ReplyEvent {
            attributes: attributes.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            data: data.into(),
        })
    }
}

impl From<Bytes> for Reply {
    fn from(b: Bytes) -> Self {
        Reply::bytes(b)
    }
}

impl From<Vec<u8>> for Reply {
    fn from(v: Vec<u8>) -> Self {
        Reply::bytes(v)
    }
}

impl From<String> for Reply {
    fn from(s: String) -> Self {
        Reply::bytes(s)
    }
}

impl From<&'static str> for Reply {
    fn from(s: &'static str) -> Self {
        Reply::bytes(s)
    }
}

impl From<()> for Reply {
    fn from(_: ()) -> Self {
        Reply::Accepted
    }
}

impl From<GrpcStatus> for Reply {
    fn from(status: GrpcStatus) -> Self {
        Reply::GrpcStatus(status)
    }
}

impl From<Response> for Reply {
    fn from(r: Response) -> Self {
        Reply::Response(r)
    }
}
