//! Ingress: where requests arrive. Routes the watchdog's own paths (`/_/health`, `/_/ready`), applies the
//! concurrency limit, and hands everything else to a protocol module that turns it into an envelope for the
//! backend: plain HTTP today; gRPC and CloudEvents plug in here as sibling modules.

pub mod cloudevents;
pub mod conn;
pub mod grpc;
mod http;
mod probe;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ::http::{Request, Response};
use futures_util::future::BoxFuture;
use hyper::body::Incoming;

use crate::backend::{Backend, BodyLimits};
use crate::body::{ResponseBody, TrackedBody};
use crate::config::{CloudEventsMode, Config};
use crate::error::InvokeError;
use crate::metrics::Metrics;
use crate::supervisor::Lifecycle;

/// The request handler behind the main port.
pub struct Ingress {
    config: Arc<Config>,
    lifecycle: Arc<Lifecycle>,
    backend: Backend,
    metrics: Arc<Metrics>,
    limiter: ConcurrencyLimiter,
    grpc: grpc::GrpcState,
    /// What replies to CloudEvents are made of.
    reply_rules: Arc<cloudevents::ReplyRules>,
}

impl Ingress {
    /// An ingress serving `backend`.
    pub fn new(config: Arc<Config>, lifecycle: Arc<Lifecycle>, backend: Backend, metrics: Arc<Metrics>) -> Ingress {
        let limiter = ConcurrencyLimiter::new(config.max_inflight);
        let grpc = grpc::GrpcState::new(&config);
        let reply_rules = Arc::new(cloudevents::ReplyRules::new(Arc::clone(&config), &backend));
        Ingress { config, lifecycle, backend, metrics, limiter, grpc, reply_rules }
    }

    /// The limits on reading a request body, starting now.
    pub fn body_limits(&self) -> BodyLimits {
        let config = &self.config;
        BodyLimits {
            max_bytes: config.max_body_bytes,
            read_deadline: (!config.read_timeout.is_zero()).then(|| tokio::time::Instant::now() + config.read_timeout),
            read_timeout: config.read_timeout,
        }
    }

    /// Answers one request; never fails (every failure is a response).
    ///
    /// Each route's state machine is kilobytes, and the one future hyper holds per request would be as large as
    /// the largest of them, copied whole each time it moves; boxed per route, it is a pointer, and a request
    /// pays for its own route's state alone.
    pub fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> BoxFuture<'static, Result<Response<ResponseBody>, Infallible>> {
        let path = req.uri().path();
        if path == "/_/health" {
            return Box::pin(std::future::ready(Ok(probe::health(&self.lifecycle, req.method()))));
        }
        if path == "/_/ready" {
            return Box::pin(async move { Ok(probe::ready(&self, req).await) });
        }
        if grpc::is_grpc(req.headers()) {
            return grpc::handle(self, req);
        }
        if let Some(redirect) = http::unclean_path_redirect(req.method(), req.uri()) {
            return Box::pin(std::future::ready(Ok(redirect)));
        }
        self.invoke(req)
    }

    /// A plain HTTP request or a CloudEvent: to the function, with the access line and metrics.
    ///
    /// The request is read and handed to the backend here, before the returned future: a future keeps every
    /// value it borrowed for its whole life, and the request's head and envelope kept that way made each
    /// request's future kilobytes, past the allocator's small-block cache and copied whole into its box.
    fn invoke(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> BoxFuture<'static, Result<Response<ResponseBody>, Infallible>> {
        let start = Instant::now();
        let method = req.method().clone();
        let target = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
        let quiet =
            req.headers().get(::http::header::USER_AGENT).is_some_and(|ua| ua.as_bytes().starts_with(b"kube-probe"));
        let request_id = caller_request_id(req.headers());
        // Held until the response body ends, or dropped with this future if the client goes away first.
        let in_flight = InFlight::enter(&self.metrics);
        // Static files are not a function: there is nobody to deliver an event to.
        let event_mode = match (self.config.cloudevents, &self.backend) {
            (CloudEventsMode::Auto, backend) if !matches!(backend, Backend::Static(_)) => {
                crate::cloudevent::detect(req.method(), req.headers())
            }
            _ => Ok(None),
        };
        let protocol = if matches!(event_mode, Ok(None)) { "http" } else { "cloudevent" };
        let slot = self.limiter.acquire();
        let answer = match (slot.is_some(), event_mode) {
            (false, Ok(None)) => {
                Answer::Ready(InvokeError::Overloaded { max: self.config.max_inflight }.into_http_response())
            }
            (false, _) => {
                Answer::Ready(InvokeError::Overloaded { max: self.config.max_inflight }.into_cloudevent_response())
            }
            (true, Err(error)) => Answer::Ready(cloudevents::DeliveryError::from(error).into_response()),
            (true, Ok(Some(mode))) => Answer::Event(cloudevents::invoke(&self, req, mode)),
            (true, Ok(None)) => match http::invocation(&self, req) {
                Ok(invocation) => Answer::Function(self.backend.invoke(invocation)),
                Err(error) => Answer::Ready(http::response(&self.config, Err(error))),
            },
        };
        Box::pin(async move {
            let response = match answer {
                Answer::Ready(response) => response,
                Answer::Function(answer) => http::response(&self.config, answer.await),
                Answer::Event(answer) => answer.await,
            };
            let status = response.status();
            let metrics = Arc::clone(&self.metrics);
            let (parts, body) = response.into_parts();
            let on_end = move |sent: u64| {
                drop(slot);
                drop(in_flight);
                let elapsed = start.elapsed();
                metrics.observe(protocol, &method, status.as_u16(), elapsed.as_secs_f64());
                if !quiet {
                    tracing::info!(
                        target: "access",
                        request_id = request_id.as_deref(),
                        "{method} {target} - {} - ContentLength: {} ({}s)",
                        status.as_str(),
                        crate::logging::HumanSize(sent),
                        crate::logging::Seconds(elapsed)
                    );
                }
            };
            let body = http_body_util::BodyExt::boxed_unsync(TrackedBody::new(body, on_end));
            Ok(Response::from_parts(parts, body))
        })
    }
}

/// Where a request's response comes from.
enum Answer {
    /// Known already (a refusal or a bad event).
    Ready(Response<ResponseBody>),
    /// A plain request's function, still running.
    Function(BoxFuture<'static, Result<Response<ResponseBody>, InvokeError>>),
    /// An event's delivery, still running.
    Event(BoxFuture<'static, Response<ResponseBody>>),
}

/// The caller's `X-Call-Id`, which access lines carry as `request_id` (SPEC §2); `None` when it sent none.
fn caller_request_id(headers: &::http::HeaderMap) -> Option<String> {
    headers.get(crate::envelope::X_CALL_ID).map(|id| String::from_utf8_lossy(id.as_bytes()).into_owned())
}

/// One request counted in `http_requests_in_flight` until dropped.
struct InFlight(Arc<Metrics>);

impl InFlight {
    fn enter(metrics: &Arc<Metrics>) -> InFlight {
        metrics.in_flight.inc();
        InFlight(Arc::clone(metrics))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

/// `max_inflight`: requests beyond the limit are refused at once (faas-middleware's concurrency limiter).
struct ConcurrencyLimiter {
    max: usize,
    current: Arc<AtomicUsize>,
}

/// A held place under the concurrency limit, released on drop.
struct Slot(Option<Arc<AtomicUsize>>);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(current) = &self.0 {
            current.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl ConcurrencyLimiter {
    fn new(max: usize) -> ConcurrencyLimiter {
        ConcurrencyLimiter { max, current: Arc::new(AtomicUsize::new(0)) }
    }

    /// A slot, or `None` when the limit is reached.
    fn acquire(&self) -> Option<Slot> {
        if self.max == 0 {
            return Some(Slot(None));
        }
        if self.current.fetch_add(1, Ordering::SeqCst) >= self.max {
            self.current.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Slot(Some(Arc::clone(&self.current))))
    }

    /// Whether a new request would be refused.
    fn is_full(&self) -> bool {
        self.max > 0 && self.current.load(Ordering::SeqCst) >= self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_refuses_beyond_max_and_frees_on_drop() {
        let limiter = ConcurrencyLimiter::new(2);
        let a = limiter.acquire().unwrap();
        let _b = limiter.acquire().unwrap();
        assert!(limiter.is_full());
        assert!(limiter.acquire().is_none());
        drop(a);
        assert!(limiter.acquire().is_some());
    }

    #[test]
    fn zero_means_no_limit() {
        let limiter = ConcurrencyLimiter::new(0);
        let slots: Vec<_> = (0..1000).map(|_| limiter.acquire().unwrap()).collect();
        assert!(!limiter.is_full());
        drop(slots);
    }
}
