//! The reverse proxy of `mode=http` with `upstream_url` (of-watchdog's http mode): the function is an HTTP server
//! started from `fprocess`. Unlike of-watchdog, the watchdog waits until the upstream accepts connections
//! before reporting ready, and restarts the server (with backoff) when it exits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderValue, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::sync::Notify;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

use super::process::{wait_to_restart, Backoff, RestartPolicy, ServiceProcess};
use super::Invocation;
use crate::body::{RequestBody, ResponseBody};
use crate::config::{parse_duration, Config};
use crate::error::InvokeError;
use crate::metrics::Metrics;
use crate::reaper::ChildRegistry;

/// Hop-by-hop headers, never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Forwards requests to the function's own HTTP server.
pub struct ProxyBackend {
    client: Client<HttpConnector, RequestBody>,
    /// HTTP/2 with prior knowledge (h2c), for gRPC.
    h2c: Client<HttpConnector, RequestBody>,
    upstream: Uri,
    exec_timeout: Option<Duration>,
    buffer_body: bool,
    state: Arc<UpstreamState>,
    stop: CancellationToken,
    supervisor: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct UpstreamState {
    ready: AtomicBool,
    became_ready: Notify,
    last_error: Mutex<Option<String>>,
}

impl ProxyBackend {
    /// Starts `fprocess` and waits (in the background) for `upstream_url` to accept connections.
    pub fn start(config: &Config, children: Arc<ChildRegistry>, metrics: Arc<Metrics>) -> Result<ProxyBackend, String> {
        let url = config.upstream_url.as_deref().unwrap_or_default();
        let upstream: Uri = url.parse().map_err(|e| format!("upstream_url {url:?} is not a URL: {e}"))?;
        let authority = upstream.authority().ok_or_else(|| format!("upstream_url {url:?} has no host"))?.clone();
        if upstream.scheme_str() != Some("http") {
            return Err(format!("upstream_url {url:?} must be an http:// URL"));
        }
        let state = Arc::new(UpstreamState {
            ready: AtomicBool::new(false),
            became_ready: Notify::new(),
            last_error: Mutex::new(None),
        });
        let stop = CancellationToken::new();
        let port = authority.port_u16().unwrap_or(80);
        let address = format!("{}:{port}", authority.host().trim_start_matches('[').trim_end_matches(']'));
        let supervisor = tokio::spawn(supervise(
            config.fprocess.clone(),
            address,
            config.log_buffer_size,
            Arc::clone(&state),
            children,
            metrics,
            stop.clone(),
        ));
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector.clone());
        let h2c = Client::builder(TokioExecutor::new()).http2_only(true).build(connector);
        Ok(ProxyBackend {
            client,
            h2c,
            upstream,
            exec_timeout: Config::limit(config.exec_timeout),
            buffer_body: config.buffer_http,
            state,
            stop,
            supervisor: Mutex::new(Some(supervisor)),
        })
    }

    /// The deadline a request gets.
    pub fn timeout(&self) -> Option<Duration> {
        self.exec_timeout
    }

    /// `Ok` once the upstream accepts connections.
    pub fn readiness(&self) -> Result<(), String> {
        if self.state.ready.load(Ordering::SeqCst) {
            return Ok(());
        }
        Err(match &*self.state.last_error.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(error) => format!("the upstream is not ready: {error}"),
            None => "the upstream is not accepting connections yet".into(),
        })
    }

    /// Resolves when the upstream first accepts connections.
    pub async fn first_ready(&self) {
        loop {
            let notified = self.state.became_ready.notified();
            if self.state.ready.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// Stops the upstream process.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let supervisor = self.supervisor.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(supervisor) = supervisor {
            let _ = timeout(Duration::from_secs(6), supervisor).await;
        }
    }

    /// Forwards a gRPC call unchanged to the upstream over h2c; its status and trailers come back as they are.
    /// `timeout` (grpc-timeout) and `exec_timeout`, the nearer, bound the wait for the response head.
    pub async fn forward_grpc(
        &self,
        request: Request<RequestBody>,
        grpc_timeout: Option<Duration>,
    ) -> Result<Response<ResponseBody>, InvokeError> {
        let limit = match (grpc_timeout, self.exec_timeout) {
            (Some(asked), Some(cap)) => Some(asked.min(cap)),
            (asked, cap) => asked.or(cap),
        };
        let (mut parts, body) = request.into_parts();
        let target = format!(
            "{}{}",
            self.upstream.to_string().trim_end_matches('/'),
            parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
        );
        parts.uri = target.parse().map_err(|e| InvokeError::Internal(format!("upstream URI {target:?}: {e}")))?;
        parts.version = http::Version::HTTP_2;
        // gRPC needs `te: trailers`; the other hop-by-hop headers never apply to HTTP/2.
        for name in HOP_BY_HOP.iter().filter(|name| **name != "te") {
            parts.headers.remove(*name);
        }
        parts.headers.remove(http::header::HOST);
        let sent = self.h2c.request(Request::from_parts(parts, body));
        let response = match limit {
            Some(limit) => match timeout(limit, sent).await {
                Ok(result) => result,
                Err(_) => return Err(InvokeError::DeadlineExceeded(limit)),
            },
            None => sent.await,
        };
        let response = response.map_err(|e| InvokeError::WorkerFailed(format!("upstream gRPC request failed: {e}")))?;
        Ok(response.map(|body| body.map_err(std::io::Error::other).boxed_unsync()))
    }

    /// Forwards one request. `X-Timeout` may shorten the deadline, never lengthen it past `exec_timeout`.
    pub async fn invoke(self: Arc<Self>, invocation: Invocation) -> Result<Response<ResponseBody>, InvokeError> {
        let start = Instant::now();
        let parts = &invocation.head;
        let requested = parts.headers.get("x-timeout").and_then(|v| v.to_str().ok()).and_then(parse_duration);
        let limit = match (requested, self.exec_timeout) {
            (Some(asked), Some(cap)) => Some(asked.min(cap)),
            (asked, cap) => asked.or(cap),
        };
        let target = format!(
            "{}{}",
            self.upstream.to_string().trim_end_matches('/'),
            parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
        );
        let mut request = Request::builder().method(parts.method.clone()).uri(target);
        for (name, value) in &parts.headers {
            if !HOP_BY_HOP.contains(&name.as_str()) {
                request = request.header(name, value);
            }
        }
        let body = if self.buffer_body {
            let collected = invocation.body.collect().await.map_err(InvokeError::from_body_error)?;
            Full::new(collected.to_bytes()).map_err(|never| match never {}).boxed_unsync()
        } else {
            invocation.body
        };
        let request =
            request.body(body).map_err(|e| InvokeError::Internal(format!("building the upstream request: {e}")))?;
        let sent = self.client.request(request);
        let response = match limit {
            Some(limit) => match timeout(limit, sent).await {
                Ok(result) => result,
                Err(_) => return Err(InvokeError::DeadlineExceeded(limit)),
            },
            None => sent.await,
        };
        let response = response.map_err(|e| {
            tracing::info!("Upstream HTTP request error: {e}");
            InvokeError::WorkerFailed(format!("upstream request failed: {e}"))
        })?;
        let (mut head, body) = response.into_parts();
        for name in HOP_BY_HOP {
            head.headers.remove(name);
        }
        let seconds = start.elapsed().as_secs_f64();
        if let Ok(value) = HeaderValue::from_str(&format!("{seconds:.6}")) {
            head.headers.insert("x-duration-seconds", value);
        }
        let body = body.map_err(std::io::Error::other).boxed_unsync();
        Ok(Response::from_parts(head, body))
    }
}

/// Keeps the upstream server running: starts it, waits for it to accept connections, restarts it with backoff.
async fn supervise(
    argv: Vec<String>,
    address: String,
    log_buffer_size: usize,
    state: Arc<UpstreamState>,
    children: Arc<ChildRegistry>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(RestartPolicy::default());
    loop {
        let ready_at = run_upstream(&argv, &address, log_buffer_size, &state, &children, &metrics, &stop).await;
        if stop.is_cancelled() {
            return;
        }
        let delay = backoff.next_delay(ready_at.map_or(Duration::ZERO, |at| at.elapsed()));
        let error = state.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default();
        tracing::warn!("upstream: {error}; restarting in {delay:?}");
        metrics.worker_restarts.inc();
        if !wait_to_restart(delay, &stop).await {
            return;
        }
    }
}

/// Runs the upstream once; returns when it became ready, if it did.
async fn run_upstream(
    argv: &[String],
    address: &str,
    log_buffer_size: usize,
    state: &UpstreamState,
    children: &Arc<ChildRegistry>,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> Option<Instant> {
    let set_error = |e: String| *state.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    let mut process = match ServiceProcess::spawn(argv, &[], log_buffer_size, children) {
        Ok(process) => process,
        Err(e) => {
            set_error(e);
            return None;
        }
    };
    let mut ready_at = None;
    let outcome = loop {
        if ready_at.is_none() && tokio::net::TcpStream::connect(address).await.is_ok() {
            ready_at = Some(Instant::now());
            state.ready.store(true, Ordering::SeqCst);
            metrics.workers_ready.inc();
            state.became_ready.notify_waiters();
            tracing::info!("upstream {address} is accepting connections");
        }
        let wait = if ready_at.is_some() { Duration::from_secs(3600) } else { Duration::from_millis(50) };
        tokio::select! {
            status = process.wait() => break format!("the upstream process exited ({status})"),
            _ = sleep(wait) => {}
            _ = stop.cancelled() => {
                process.terminate(Duration::from_secs(2)).await;
                break "stopped".to_string();
            }
        }
    };
    if ready_at.is_some() {
        state.ready.store(false, Ordering::SeqCst);
        metrics.workers_ready.dec();
    }
    set_error(outcome);
    ready_at
}
