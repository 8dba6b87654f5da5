//! ng-watchdog: one server in front of a function that accepts plain HTTP, gRPC and CloudEvents on one port and
//! hands each request to the function, as a drop-in replacement for OpenFaaS's classic watchdog and of-watchdog.
//!
//! # Layout
//!
//! ```text
//!  config      environment → Config (classic/of-watchdog variables and ours)
//!    │
//!  ingress     hyper HTTP/1.1 + h2c on one port; /_/health, /_/ready, max_inflight;
//!    │         ingress::http turns a request into an Envelope; ingress::cloudevents does so for an event
//!    │         (binary, structured, batched; parsing in `cloudevent`, no I/O) and turns the answer into a
//!    │         reply event; ingress::grpc (content-type application/grpc*) serves watchdog.v1.Function,
//!    │         watchdog.v1.CloudEvents, passthrough of any other method, health and reflection
//!  envelope    the typed request of proto/watchdog/v1 (SPEC §7), shared by every ingress and backend
//!    │
//!  backend     backend::fork runs one process per request (classic, streaming, serializing):
//!    │         cgi (Http_* environment, marshal_request), process (posix_spawn, pidfd reaping, process groups,
//!    │         restart backoff, Go's exit wording),
//!    │         spill (output held until exit, on disk past a threshold), sniff (Go's content sniffing);
//!    │         backend::framed runs long-lived workers (mode=http): codec (watchdog.v1 frames), connection
//!    │         (one worker's socket and streams), pool (start, supervise, restart, lease);
//!    │         backend::proxy forwards to upstream_url; backend::static_files serves mode=static
//!  error       every failure → status code and body, in one place
//!  supervisor  lock file, health, the SIGTERM sequence;  reaper: orphan reaping when PID 1
//!  metrics     Prometheus metrics on metrics_port;  logging: Go-style or JSON lines, non-blocking
//! ```
//!
//! [`run`] takes its listener and a shutdown future, so tests bind port 0 and stop it.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
pub mod body;
pub mod cloudevent;
pub mod config;
pub mod envelope;
pub mod error;
pub mod ingress;
pub mod logging;
pub mod metrics;
pub mod reaper;
pub mod supervisor;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::backend::{Backend, ForkBackend, FramedBackend, ProxyBackend, StaticBackend};
use crate::config::{format_go_duration, Config, Mode};
use crate::ingress::conn::CappedReads;
use crate::ingress::Ingress;
use crate::metrics::Metrics;
use crate::reaper::ChildRegistry;
use crate::supervisor::Lifecycle;

/// Largest request head accepted: the originals' 1 MiB of header bytes, plus room for the request line.
const MAX_HEADER_BYTES: usize = (1 << 20) + 64 * 1024;
/// Most request header fields accepted on HTTP/1.1.
const MAX_HEADERS: usize = 256;

/// Errors that stop the watchdog.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The metrics listener could not be bound.
    #[error("cannot listen on metrics_port {port}: {source}")]
    MetricsListener {
        /// The configured port.
        port: u16,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// `upstream_url` cannot be used.
    #[error("{0}")]
    Upstream(String),
    /// The worker sockets' directory could not be made.
    #[error("cannot create the worker socket directory: {0}")]
    SocketDir(std::io::Error),
    /// The lock file could not be written.
    #[error("cannot write {path}. To disable lock-file set env suppress_lock=true: {source}")]
    LockFile {
        /// The lock file's path.
        path: String,
        /// Why writing failed.
        source: std::io::Error,
    },
}

/// Binds a dual-stack listener on `port` (`[::]`, IPv4 too), falling back to IPv4 where IPv6 is unavailable.
pub async fn bind(port: u16) -> std::io::Result<TcpListener> {
    match TcpListener::bind(("::", port)).await {
        Ok(listener) => Ok(listener),
        Err(_) => TcpListener::bind(("0.0.0.0", port)).await,
    }
}

/// How to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// SIGTERM: unhealthy at once, serve on for `healthcheck_interval`, drain for up to `write_timeout`.
    Graceful,
    /// SIGINT (Ctrl-C): no wait; running functions get SIGTERM at once.
    Immediate,
}

/// Serves `config`'s function on `listener` until `shutdown` resolves, then runs the SIGTERM sequence
/// (SPEC §3/§4) and returns.
pub async fn run(listener: TcpListener, config: Config, shutdown: impl Future<Output = Shutdown>) -> Result<(), Error> {
    let config = Arc::new(config);
    let lifecycle = Arc::new(Lifecycle::new(&config));
    let metrics = Arc::new(Metrics::new());
    let children = Arc::new(ChildRegistry::new(std::process::id() == 1));
    let reaper = children.is_active().then(|| tokio::spawn(reaper::reap_orphans(Arc::clone(&children))));
    let _stop_reaper = reaper.map(AbortOnDropHandle::new);
    let backend = match config.mode {
        Mode::Classic | Mode::Streaming | Mode::Serializing => {
            Backend::Fork(Arc::new(ForkBackend::new(&config, lifecycle.terminate.clone(), Arc::clone(&children))))
        }
        Mode::Http if config.upstream_url.is_none() => Backend::Framed(Arc::new(
            FramedBackend::start(&config, Arc::clone(&children), Arc::clone(&metrics)).map_err(Error::SocketDir)?,
        )),
        Mode::Http => Backend::Proxy(Arc::new(
            ProxyBackend::start(&config, Arc::clone(&children), Arc::clone(&metrics)).map_err(Error::Upstream)?,
        )),
        Mode::Static => Backend::Static(Arc::new(StaticBackend::new(config.static_path.clone()))),
    };
    let ingress =
        Arc::new(Ingress::new(Arc::clone(&config), Arc::clone(&lifecycle), backend.clone(), Arc::clone(&metrics)));

    tracing::info!("Watchdog mode: {}\tfprocess: {:?}", config.mode.as_str(), config.fprocess.join(" "));
    tracing::info!(
        "Timeouts: read: {} write: {} hard: {} health: {}.",
        format_go_duration(config.read_timeout),
        format_go_duration(config.write_timeout),
        format_go_duration(config.exec_timeout),
        format_go_duration(config.healthcheck_interval),
    );

    let stop_metrics = CancellationToken::new();
    if let Some(port) = config.metrics_port {
        let metrics_listener = bind(port).await.map_err(|source| Error::MetricsListener { port, source })?;
        tracing::info!("Metrics listening on port: {port}");
        tokio::spawn(metrics::serve(metrics_listener, Arc::clone(&metrics), stop_metrics.clone()));
    }
    let _stop_metrics = stop_metrics.drop_guard();

    let port = listener.local_addr().map(|a| a.port()).unwrap_or(config.port);
    tracing::info!("Listening on port: {port}");
    let stop_accepting = CancellationToken::new();
    let server = connection_builder(&config);
    let read_cap = if config.mode.is_fork() { ingress::conn::FORK_READ_CAP } else { ingress::conn::READ_CAP };
    let accept_loop = tokio::spawn(accept(listener, server, Arc::clone(&ingress), read_cap, stop_accepting.clone()));

    // The lock file says "ready": written at once for fork modes, once the first worker is ready in http mode.
    let lock_error = |source| Error::LockFile { path: config.lock_path().display().to_string(), source };
    let _lock_writer = match &backend {
        Backend::Fork(_) | Backend::Static(_) => {
            if let Err(source) = lifecycle.start() {
                stop_accepting.cancel();
                return Err(lock_error(source));
            }
            None
        }
        Backend::Framed(_) | Backend::Proxy(_) => {
            let (backend, lifecycle, path) = (backend.clone(), Arc::clone(&lifecycle), config.lock_path());
            Some(AbortOnDropHandle::new(tokio::spawn(async move {
                backend.first_ready().await;
                if let Err(e) = lifecycle.start() {
                    tracing::error!("cannot write {}: {e}", path.display());
                }
            })))
        }
    };

    let how = shutdown.await;
    let (wait, drain_limit) = match how {
        Shutdown::Graceful => (config.healthcheck_interval, config.write_timeout),
        Shutdown::Immediate => (Duration::ZERO, Duration::from_nanos(1)),
    };
    let signal = if how == Shutdown::Graceful { "SIGTERM" } else { "SIGINT" };
    tracing::info!("{signal}: no new connections in {}", format_go_duration(wait));
    lifecycle.mark_unhealthy();
    // Kubernetes removes the endpoint late: keep serving (the accept loop runs on) meanwhile.
    tokio::time::sleep(wait).await;
    stop_accepting.cancel();
    let graceful = match accept_loop.await {
        Ok(graceful) => graceful,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    tracing::info!("No new connections allowed, draining: {} requests", metrics.in_flight.get());

    let drain = graceful.shutdown();
    let mut drain = std::pin::pin!(drain);
    let drained = if drain_limit.is_zero() {
        drain.as_mut().await;
        true
    } else {
        tokio::time::timeout(drain_limit, drain.as_mut()).await.is_ok()
    };
    if !drained {
        tracing::info!("Drain deadline passed: stopping {} running requests", metrics.in_flight.get());
        lifecycle.terminate.cancel();
        let grace = backend::fork::TERMINATE_GRACE + Duration::from_secs(1);
        let _ = tokio::time::timeout(grace, drain).await;
    }
    backend.shutdown().await;
    tracing::info!("Exiting. Active connections: {}", metrics.in_flight.get());
    Ok(())
}

fn connection_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS)
        // Header names go out as Go's net/http spells them (`X-Duration-Seconds`), for clients that match bytes.
        .title_case_headers(true)
        .header_read_timeout((!config.read_timeout.is_zero()).then_some(config.read_timeout));
    builder.http2().timer(TokioTimer::new()).max_header_list_size(MAX_HEADER_BYTES as u32);
    builder
}

async fn accept(
    listener: TcpListener,
    server: auto::Builder<TokioExecutor>,
    ingress: Arc<Ingress>,
    read_cap: usize,
    stop: CancellationToken,
) -> GracefulShutdown {
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return graceful,
        };
        let _ = stream.set_nodelay(true);
        let ingress = Arc::clone(&ingress);
        let service = hyper::service::service_fn(move |req| Arc::clone(&ingress).handle(req));
        let connection =
            server.serve_connection_with_upgrades(TokioIo::new(CappedReads { stream, cap: read_cap }), service);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}
