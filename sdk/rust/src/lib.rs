//! # watchdog-sdk
//!
//! Write an ng-watchdog `mode=http` function in Rust: an async handler, nothing else.
//!
//! ```no_run
//! use watchdog_sdk::http::{header::CONTENT_TYPE, HeaderMap};
//! use watchdog_sdk::{Reply, Request};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), watchdog_sdk::Error> {
//!     watchdog_sdk::serve(|req: Request| async move {
//!         let mut headers = HeaderMap::new();
//!         if let Some(ct) = req.headers().get(CONTENT_TYPE) {
//!             headers.insert(CONTENT_TYPE, ct.clone());
//!         }
//!         Ok(Reply::response(200, headers, req.into_body())) // streams the body back
//!     })
//!     .await
//! }
//! ```
//!
//! The watchdog starts the program (its `fprocess`) with `WATCHDOG_SOCKET` set; [`serve`] connects to it, speaks
//! the `watchdog.v1` protocol (`proto/README.md`) and calls the handler once per request, concurrently, each call on
//! its own tokio task. Request and response bodies are streams of chunks with per-stream flow control, so neither
//! side holds a large body in memory unless the handler asks for it ([`Request::bytes`]).
//!
//! Outcomes: [`Reply::bytes`] → 200, [`Reply::Accepted`] → 202 with no body, [`Reply::response`] → that status,
//! headers and body, [`Reply::cloud_event`] → a reply event; [`HandlerError::Permanent`] → 400 (gRPC
//! INVALID_ARGUMENT), [`HandlerError::Retryable`] → 503 (UNAVAILABLE), [`HandlerError::Internal`] (or any error
//! propagated with `?`, or a panic) → 500 (INTERNAL), with the message only.
//!
//! gRPC calls: [`Request::grpc`] (method and streaming flags), [`Request::metadata`], [`Request::grpc_messages`]
//! / [`Request::grpc_message_stream`] (request messages, split from gRPC's framing for a client-streaming call),
//! [`Reply::stream`] (response messages as produced, framed by the SDK for a server-streaming call) and
//! [`GrpcStatus`] (a status with [`Code`] and message, sent as `grpc-status`/`grpc-message` trailers): see
//! [`grpc`].
//!
//! Handlers are async and must not block their thread: run CPU-heavy or blocking work with
//! `tokio::task::spawn_blocking`, so the connection keeps answering the watchdog's pings. A current-thread tokio
//! runtime per worker process, scaled with the watchdog's `workers`, is the cheapest set-up.
//!
//! To unit-test a handler without a watchdog, build a [`Request`] with [`Request::new`] from a
//! [`proto::watchdog::v1::Envelope`] and a [`Body`] (`Body::from("...")`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::future::Future;
use std::path::Path;

pub mod codec;
mod conn;
pub mod grpc;
mod reply;
mod request;

pub use bytes::{self, Bytes};
pub use http;

pub use conn::{Worker, PROTOCOL, SDK_NAME, SDK_VERSION};
pub use grpc::{grpc_frame, split_grpc_messages, Code, FramingError, GrpcCall, GrpcMessages, GrpcStatus};
pub use reply::{ChunkStream, HandlerError, Reply, ReplyEvent, Response, ResponseBody};
pub use request::{Body, CloudEvent, Kind, Request};

/// The protocol's messages, generated from `proto/` at build time.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    /// `package watchdog.v1`: frames and the envelope.
    pub mod watchdog {
        /// Version 1.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/watchdog.v1.rs"));
        }
    }
    /// `package io.cloudevents.v1`: the CloudEvents protobuf format.
    pub mod io {
        /// CloudEvents.
        pub mod cloudevents {
            /// Version 1.
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/io.cloudevents.v1.rs"));
            }
        }
    }
}

/// Why [`serve`] (or a [`Body`] read) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `WATCHDOG_SOCKET` is not set: the program was not started by ng-watchdog in `mode=http`.
    #[error("WATCHDOG_SOCKET is not set: run this program as the fprocess of ng-watchdog with mode=http")]
    NoSocket,
    /// The socket failed.
    #[error("watchdog socket: {0}")]
    Io(#[from] std::io::Error),
    /// The watchdog broke the protocol (or speaks another version).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The watchdog closed the connection without a Shutdown.
    #[error("the watchdog closed the connection")]
    Disconnected,
    /// The request body ended without its End frame (the request was cancelled or the connection lost).
    #[error("the request body was cut short")]
    BodyIncomplete,
    /// The request body is not in gRPC's length-prefixed framing ([`Request::grpc_messages`]).
    #[error("{0}")]
    Framing(#[from] FramingError),
}

impl From<codec::CodecError> for Error {
    fn from(e: codec::CodecError) -> Self {
        match e {
            codec::CodecError::Io(e) => Error::Io(e),
            other => Error::Protocol(other.to_string()),
        }
    }
}

/// Settings of the worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Requests handled at once (sent in Hello as `max_concurrency`; the watchdog never exceeds it). 0 = no
    /// limit.
    pub concurrency: u32,
}

/// A request handler: any `Fn(Request) -> impl Future<Output = Result<Reply, HandlerError>>` that can be shared
/// between tasks, e.g. an `async` closure or an `async fn`.
pub trait Handler: Send + Sync + 'static {
    /// The future of one call.
    type Future: Future<Output = Result<Reply, HandlerError>> + Send + 'static;
    /// Handles one request.
    fn call(&self, request: Request) -> Self::Future;
}

impl<F, Fut> Handler for F
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Reply, HandlerError>> + Send + 'static,
{
    type Future = Fut;

    fn call(&self, request: Request) -> Fut {
        self(request)
    }
}

/// Connects to the watchdog (`$WATCHDOG_SOCKET`) and serves requests with `handler` until the watchdog shuts the
/// worker down (`Ok`) or the connection fails. Concurrency is unlimited.
pub async fn serve<H: Handler>(handler: H) -> Result<(), Error> {
    serve_with(Options::default(), handler).await
}

/// [`serve`] with options.
pub async fn serve_with<H: Handler>(options: Options, handler: H) -> Result<(), Error> {
    Worker::connect(options).await?.serve(handler).await
}

/// [`serve_with`] on an explicit socket path instead of `$WATCHDOG_SOCKET` (tests, custom launchers).
pub async fn serve_at<H: Handler>(path: impl AsRef<Path>, options: Options, handler: H) -> Result<(), Error> {
    Worker::connect_at(path, options).await?.serve(handler).await
}
