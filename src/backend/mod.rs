//! Backends: what runs the function once a request is an [`Envelope`](crate::envelope::Envelope).
//! The fork backend (classic, streaming, serializing), the framed http-mode backend, the reverse proxy
//! (`upstream_url`) and static files.

pub mod cgi;
pub mod fork;
pub mod framed;
pub(crate) mod logs;
pub mod process;
pub mod proxy;
pub mod sniff;
pub mod spill;
pub mod static_files;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::Response;
use tokio::time::Instant;

use crate::body::{RequestBody, ResponseBody};
use crate::envelope::Envelope;
use crate::error::InvokeError;
pub use fork::ForkBackend;
pub use framed::FramedBackend;
pub use proxy::ProxyBackend;
pub use static_files::StaticBackend;

/// Limits on reading a request body.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Most bytes accepted (`max_body_bytes`; 0: unlimited).
    pub max_bytes: u64,
    /// When the whole body must have arrived (`read_timeout` after the request began), if ever.
    pub read_deadline: Option<Instant>,
    /// The configured `read_timeout`, for the error message.
    pub read_timeout: Duration,
}

/// One request handed to a backend.
pub struct Invocation {
    /// What the request is.
    pub envelope: Envelope,
    /// Its body or data.
    pub body: RequestBody,
    /// Limits on reading the body.
    pub limits: BodyLimits,
    /// The request head as received (the reverse proxy forwards it unchanged).
    pub head: http::request::Parts,
    /// A deadline the caller asked for (gRPC's `grpc-timeout`); the backend uses the nearer of it and its own.
    pub timeout: Option<Duration>,
    /// Whether the function is stopped when the caller stops waiting: a cancelled gRPC call is; a plain HTTP
    /// request (or event) whose client went away runs to its end, as with the original watchdogs.
    pub stop_when_abandoned: bool,
}

/// The reply event a function returned (http mode), carried in the response's extensions; its data is the
/// response body.
#[derive(Debug, Clone)]
pub struct ReplyEvent(pub crate::cloudevent::CloudEvent);

/// The backend selected by the configuration.
#[derive(Clone)]
pub enum Backend {
    /// One process per request.
    Fork(Arc<ForkBackend>),
    /// Long-lived workers speaking watchdog.v1 frames.
    Framed(Arc<FramedBackend>),
    /// The function's own HTTP server behind a reverse proxy (`upstream_url`).
    Proxy(Arc<ProxyBackend>),
    /// Files from `static_path` (`mode=static`).
    Static(Arc<StaticBackend>),
}

impl Backend {
    /// Runs one request and returns the function's answer or why there is none.
    ///
    /// The future owns what it needs, so an ingress can start it while it still holds the request and keep only
    /// the box across its own awaits.
    pub fn invoke(&self, invocation: Invocation) -> BoxFuture<'static, Result<Response<ResponseBody>, InvokeError>> {
        // Each backend's state machine (with the invocation inside) is kilobytes; boxed, the request's future,
        // which hyper moves into a task per HTTP/2 stream, stays small instead of being copied whole.
        match self {
            Backend::Fork(fork) => Box::pin(Arc::clone(fork).invoke(invocation)),
            Backend::Framed(framed) => framed.invoke(invocation),
            Backend::Proxy(proxy) => Box::pin(Arc::clone(proxy).invoke(invocation)),
            Backend::Static(files) => Box::pin(Arc::clone(files).invoke(invocation)),
        }
    }

    /// `Ok` when requests can be served now, else why not (for `/_/ready`).
    pub fn readiness(&self) -> Result<(), String> {
        match self {
            Backend::Fork(_) | Backend::Static(_) => Ok(()),
            Backend::Framed(framed) => framed.readiness(),
            Backend::Proxy(proxy) => proxy.readiness(),
        }
    }

    /// Resolves once the backend can serve its first request.
    pub async fn first_ready(&self) {
        match self {
            Backend::Fork(_) | Backend::Static(_) => {}
            Backend::Framed(framed) => framed.first_ready().await,
            Backend::Proxy(proxy) => proxy.first_ready().await,
        }
    }

    /// Stops long-lived processes, after the drain.
    pub async fn shutdown(&self) {
        match self {
            Backend::Fork(_) | Backend::Static(_) => {}
            Backend::Framed(framed) => framed.shutdown().await,
            Backend::Proxy(proxy) => proxy.shutdown().await,
        }
    }

    /// How long a request may take before the watchdog gives up, if limited.
    pub fn timeout(&self) -> Option<Duration> {
        match self {
            Backend::Fork(fork) => fork.timeout(),
            Backend::Framed(framed) => framed.timeout(),
            Backend::Proxy(proxy) => proxy.timeout(),
            Backend::Static(files) => files.timeout(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_invocation_future_is_a_pointer_not_a_state_machine() {
        let config = crate::config::Config::from_pairs([("fprocess", "cat")]).unwrap();
        let children = Arc::new(crate::reaper::ChildRegistry::new(false));
        let backend = Backend::Fork(Arc::new(ForkBackend::new(&config, Default::default(), children)));
        let (head, _) = http::Request::new(()).into_parts();
        let invocation = Invocation {
            envelope: Default::default(),
            body: crate::body::request_from(""),
            limits: BodyLimits { max_bytes: 0, read_deadline: None, read_timeout: Duration::ZERO },
            head,
            timeout: None,
            stop_when_abandoned: false,
        };
        let future = backend.invoke(invocation);
        assert!(std::mem::size_of_val(&future) <= 16, "{} bytes", std::mem::size_of_val(&future));
    }
}
