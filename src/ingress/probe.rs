//! The watchdog's own probes: `/_/health` (the lock file) and `/_/ready` (able to take a request now).

use ::http::{header, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::Ingress;
use crate::backend::{BodyLimits, Invocation};
use crate::body::{self, ResponseBody};
use crate::envelope;
use crate::supervisor::Lifecycle;

fn status_only(status: StatusCode) -> Response<ResponseBody> {
    let mut builder = Response::builder().status(status);
    if matches!(status, StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS) {
        builder = builder.header(header::RETRY_AFTER, "1");
    }
    builder.body(body::empty()).expect("valid response")
}

/// `GET /_/health`: 200 `OK` while accepting with the lock file present, else 503; other methods 405.
pub fn health(lifecycle: &Lifecycle, method: &Method) -> Response<ResponseBody> {
    if method != Method::GET {
        return status_only(StatusCode::METHOD_NOT_ALLOWED);
    }
    if !lifecycle.healthy() {
        return status_only(StatusCode::SERVICE_UNAVAILABLE);
    }
    // Go's net/http sniffs "OK" as text/plain; keep the header the originals send.
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(body::full("OK"))
        .expect("valid response")
}

/// Whether `/_/ready` would not answer 503: the backend can serve (else `Err(Some(why))`) and the watchdog is
/// accepting with its lock file (else `Err(None)`). gRPC health's SERVING is exactly this.
pub fn serving(ingress: &Ingress) -> Result<(), Option<String>> {
    ingress.backend.readiness().map_err(Some)?;
    if !ingress.lifecycle.healthy() {
        return Err(None);
    }
    Ok(())
}

/// `GET /_/ready`: 503 when not accepting or the lock file is missing, 429 at `max_inflight`, the function's
/// own answer to `GET <ready_path>` when configured, else 200.
pub async fn ready(ingress: &Ingress, req: Request<Incoming>) -> Response<ResponseBody> {
    if req.method() != Method::GET {
        return status_only(StatusCode::METHOD_NOT_ALLOWED);
    }
    match serving(ingress) {
        Ok(()) => {}
        // Before the lock file exists in http mode, say why no worker is ready.
        Err(Some(reason)) => {
            return Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .header(header::RETRY_AFTER, "1")
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(body::full(format!("{reason}\n")))
                .expect("valid response");
        }
        Err(None) => return status_only(StatusCode::SERVICE_UNAVAILABLE),
    }
    if ingress.limiter.is_full() {
        return status_only(StatusCode::TOO_MANY_REQUESTS);
    }
    let Some(ready_path) = &ingress.config.ready_path else {
        return status_only(StatusCode::OK);
    };
    // Ask the function itself, as of-watchdog does: a GET of ready_path with the probe's headers.
    let (mut parts, _) = req.into_parts();
    parts.uri = match ready_path.parse() {
        Ok(uri) => uri,
        Err(_) => return status_only(StatusCode::INTERNAL_SERVER_ERROR),
    };
    let envelope = match envelope::from_http(&parts, 0, ingress.backend.timeout()) {
        Ok(envelope) => envelope,
        Err(_) => return status_only(StatusCode::INTERNAL_SERVER_ERROR),
    };
    let limits = BodyLimits { max_bytes: 0, read_deadline: None, read_timeout: Default::default() };
    let body = http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync();
    let invocation = Invocation { envelope, body, limits, head: parts, timeout: None, stop_when_abandoned: false };
    match ingress.backend.invoke(invocation).await {
        Ok(response) => response,
        Err(error) => error.into_http_response(),
    }
}
