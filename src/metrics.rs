//! Prometheus metrics on `metrics_port`: of-watchdog's names and labels, plus the watchdog's own.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, PoisonError, RwLock};

use hyper::body::Incoming;
use hyper::{Request, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::body::{self, ResponseBody};

/// Go's default histogram buckets, as of-watchdog uses.
const BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Labels of of-watchdog's HTTP metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// Status code, e.g. 200.
    pub code: u16,
    /// Lower-case method, e.g. "post" (promhttp's convention), "unknown" for others.
    pub method: &'static str,
}

/// Labels of the per-protocol invocation counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InvocationLabels {
    /// http | grpc | cloudevent.
    pub protocol: &'static str,
    /// Status code.
    pub code: u16,
}

/// Label of the per-protocol duration histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabel {
    /// http | grpc | cloudevent.
    pub protocol: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The series one finished request updates: handles on the families' own series, which they share values with.
struct RequestSeries {
    /// In `http_requests_total`.
    requests: Counter,
    /// In `http_request_duration_seconds`.
    duration: Histogram,
    /// In `watchdog_invocations_total`.
    invocations: Counter,
    /// In `watchdog_invocation_duration_seconds`.
    invocation_duration: Histogram,
}

impl RequestSeries {
    fn record(&self, seconds: f64) {
        self.requests.inc();
        self.duration.observe(seconds);
        self.invocations.inc();
        self.invocation_duration.observe(seconds);
    }
}

/// Protocol, method label and status code: what picks a request's series.
type SeriesKey = (&'static str, &'static str, u16);

/// Every metric the watchdog exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<HttpLabels, Counter>,
    duration: HistogramFamily<HttpLabels>,
    /// Requests being served (`http_requests_in_flight`).
    pub in_flight: Gauge,
    invocations: Family<InvocationLabels, Counter>,
    invocation_duration: HistogramFamily<ProtocolLabel>,
    /// Function worker restarts (http mode).
    pub worker_restarts: Counter,
    /// Function workers ready (http mode).
    pub workers_ready: Gauge,
    /// Each label combination's series, found in the families once: a family looks a series up by its labels
    /// with a keyed hash, which four times per request cost more than the updates themselves.
    series: RwLock<HashMap<SeriesKey, RequestSeries, foldhash::fast::FixedState>>,
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<HttpLabels, Counter>::default();
        let duration: HistogramFamily<HttpLabels> = Family::new_with_constructor(histogram);
        let in_flight = Gauge::default();
        let invocations = Family::<InvocationLabels, Counter>::default();
        let invocation_duration: HistogramFamily<ProtocolLabel> = Family::new_with_constructor(histogram);
        let worker_restarts = Counter::default();
        let workers_ready = Gauge::default();
        registry.register("http_requests", "total HTTP requests processed", requests.clone());
        registry.register("http_request_duration_seconds", "Seconds spent serving HTTP requests", duration.clone());
        registry.register("http_requests_in_flight", "total HTTP requests in-flight", in_flight.clone());
        registry.register(
            "watchdog_invocations",
            "Function invocations by protocol and status code",
            invocations.clone(),
        );
        registry.register(
            "watchdog_invocation_duration_seconds",
            "Seconds spent on function invocations by protocol",
            invocation_duration.clone(),
        );
        registry.register("watchdog_worker_restarts", "Function worker restarts", worker_restarts.clone());
        registry.register("watchdog_workers_ready", "Function workers ready to take requests", workers_ready.clone());
        Metrics {
            registry,
            requests,
            duration,
            in_flight,
            invocations,
            invocation_duration,
            worker_restarts,
            workers_ready,
            series: RwLock::default(),
        }
    }

    /// Records one finished request.
    pub fn observe(&self, protocol: &'static str, method: &http::Method, code: u16, seconds: f64) {
        let method = method_label(method);
        let key = (protocol, method, code);
        if let Some(series) = self.series.read().unwrap_or_else(PoisonError::into_inner).get(&key) {
            return series.record(seconds);
        }
        let labels = HttpLabels { code, method };
        let series = RequestSeries {
            requests: self.requests.get_or_create(&labels).clone(),
            duration: self.duration.get_or_create(&labels).clone(),
            invocations: self.invocations.get_or_create(&InvocationLabels { protocol, code }).clone(),
            invocation_duration: self.invocation_duration.get_or_create(&ProtocolLabel { protocol }).clone(),
        };
        series.record(seconds);
        self.series.write().unwrap_or_else(PoisonError::into_inner).insert(key, series);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// The Prometheus text format (0.0.4), which promhttp serves unless OpenMetrics is asked for: counters'
    /// HELP and TYPE lines name the `_total` series, and there is no `# EOF`.
    pub fn encode_prometheus(&self) -> String {
        let openmetrics = self.encode();
        let mut counters = std::collections::HashSet::new();
        for line in openmetrics.lines() {
            if let Some(name) = line.strip_prefix("# TYPE ").and_then(|rest| rest.strip_suffix(" counter")) {
                counters.insert(name.to_string());
            }
        }
        let mut out = String::with_capacity(openmetrics.len());
        for line in openmetrics.lines() {
            if line == "# EOF" {
                continue;
            }
            let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
                let rest = line.strip_prefix(prefix)?;
                let (name, tail) = rest.split_once(' ')?;
                counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
            });
            let rewritten = renamed.or_else(|| go_bucket_line(line));
            out.push_str(rewritten.as_deref().unwrap_or(line));
            out.push('\n');
        }
        out
    }
}

/// A histogram bucket line as Go's client writes it: `le` after the other labels, and its bound in Go's shortest
/// form (`le="1"`, not `le="1.0"`), so the series are the ones of-watchdog's scrapes and queries name.
fn go_bucket_line(line: &str) -> Option<String> {
    let (name, rest) = line.split_once("_bucket{le=\"")?;
    let (bound, rest) = rest.split_once('"')?;
    let bound = bound.strip_suffix(".0").unwrap_or(bound);
    Some(match rest.strip_prefix(',') {
        Some(labels) => {
            let (labels, value) = labels.split_once('}')?;
            format!("{name}_bucket{{{labels},le=\"{bound}\"}}{value}")
        }
        None => format!("{name}_bucket{{le=\"{bound}\"{rest}"),
    })
}

/// promhttp's method label: lower case for the standard methods, "unknown" otherwise.
fn method_label(method: &http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "get",
        "PUT" => "put",
        "HEAD" => "head",
        "POST" => "post",
        "DELETE" => "delete",
        "CONNECT" => "connect",
        "OPTIONS" => "options",
        "NOTIFY" => "notify",
        "TRACE" => "trace",
        "PATCH" => "patch",
        _ => "unknown",
    }
}

/// Serves `GET /metrics` on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = stop.cancelled() => return,
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let metrics = Arc::clone(&metrics);
                async move { Ok::<_, Infallible>(metrics_response(&req, &metrics)) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}

fn metrics_response(req: &Request<Incoming>, metrics: &Metrics) -> Response<ResponseBody> {
    if req.uri().path() != "/metrics" {
        return Response::builder().status(404).body(body::full("404 page not found\n")).expect("valid response");
    }
    let openmetrics = req
        .headers()
        .get_all(http::header::ACCEPT)
        .iter()
        .any(|accept| accept.to_str().is_ok_and(|a| a.contains("application/openmetrics-text")));
    let (content_type, text) = if openmetrics {
        ("application/openmetrics-text; version=1.0.0; charset=utf-8", metrics.encode())
    } else {
        ("text/plain; version=0.0.4; charset=utf-8", metrics.encode_prometheus())
    };
    Response::builder().header(http::header::CONTENT_TYPE, content_type).body(body::full(text)).expect("valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_match_of_watchdog() {
        let m = Metrics::new();
        m.observe("http", &http::Method::POST, 200, 0.01);
        m.in_flight.inc();
        let text = m.encode();
        assert!(text.contains(r#"http_requests_total{code="200",method="post"} 1"#), "{text}");
        assert!(text.contains(r#"http_request_duration_seconds_count{code="200",method="post"} 1"#), "{text}");
        assert!(text.contains("http_requests_in_flight 1"), "{text}");
        assert!(text.contains(r#"watchdog_invocations_total{protocol="http",code="200"} 1"#), "{text}");
        assert!(text.contains(r#"watchdog_invocation_duration_seconds_count{protocol="http"} 1"#), "{text}");
        assert!(text.contains("watchdog_worker_restarts_total 0"), "{text}");
        assert!(text.contains("watchdog_workers_ready 0"), "{text}");
    }

    /// Later requests update the series through the cache; each label combination keeps its own.
    #[test]
    fn repeated_requests_add_up_in_their_own_series() {
        let m = Metrics::new();
        for _ in 0..3 {
            m.observe("http", &http::Method::POST, 200, 0.01);
        }
        m.observe("cloudevent", &http::Method::POST, 200, 0.01);
        m.observe("http", &http::Method::POST, 502, 0.01);
        let text = m.encode();
        assert!(text.contains(r#"http_requests_total{code="200",method="post"} 4"#), "{text}");
        assert!(text.contains(r#"http_requests_total{code="502",method="post"} 1"#), "{text}");
        assert!(text.contains(r#"watchdog_invocations_total{protocol="http",code="200"} 3"#), "{text}");
        assert!(text.contains(r#"watchdog_invocations_total{protocol="cloudevent",code="200"} 1"#), "{text}");
        assert!(text.contains(r#"watchdog_invocation_duration_seconds_count{protocol="http"} 4"#), "{text}");
    }

    #[test]
    fn prometheus_text_names_counters_with_total() {
        let m = Metrics::new();
        m.observe("http", &http::Method::GET, 200, 0.01);
        let text = m.encode_prometheus();
        assert!(text.contains("# TYPE http_requests_total counter\n"), "{text}");
        assert!(text.contains("# HELP http_requests_total total HTTP requests processed"), "{text}");
        assert!(text.contains("# TYPE http_request_duration_seconds histogram\n"), "{text}");
        assert!(text.contains(r#"http_requests_total{code="200",method="get"} 1"#), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        // Buckets as Go's client writes them.
        assert!(
            text.contains(r#"http_request_duration_seconds_bucket{code="200",method="get",le="0.025"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"http_request_duration_seconds_bucket{code="200",method="get",le="1"} 1"#), "{text}");
        assert!(
            text.contains(r#"http_request_duration_seconds_bucket{code="200",method="get",le="+Inf"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"watchdog_invocation_duration_seconds_bucket{protocol="http",le="10"} 1"#), "{text}");
        assert!(!text.contains(r#"le="1.0""#), "{text}");
    }
}
