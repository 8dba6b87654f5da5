//! Plain HTTP: a request becomes an envelope and a streamed body for the backend.

use ::http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};

use super::Ingress;
use crate::backend::Invocation;
use crate::body::ResponseBody;
use crate::config::Mode;
use crate::envelope;
use crate::error::InvokeError;

/// Runs the function for a plain HTTP request.
pub async fn invoke(ingress: &Ingress, req: Request<Incoming>) -> Result<Response<ResponseBody>, InvokeError> {
    let config = &ingress.config;
    if config.mode == Mode::Classic
        && !matches!(*req.method(), Method::GET | Method::POST | Method::PUT | Method::PATCH | Method::DELETE)
    {
        return Err(InvokeError::MethodNotAllowed);
    }
    let (parts, body) = req.into_parts();
    let content_length = declared_length(&parts, &body);
    if config.max_body_bytes > 0 && content_length > config.max_body_bytes as i64 {
        return Err(InvokeError::BodyTooLarge { limit: config.max_body_bytes });
    }
    let envelope = envelope::from_http(&parts, content_length, ingress.backend.timeout())?;
    if config.debug_headers {
        for h in &envelope.headers {
            tracing::info!(
                "[in] {}=[{}]",
                crate::backend::cgi::canonical_header_key(&h.name),
                String::from_utf8_lossy(&h.value)
            );
        }
    }
    let limits = ingress.body_limits();
    let body = body.map_err(|e| Box::new(e) as crate::body::BoxError).boxed_unsync();
    let invocation = Invocation { envelope, body, limits, head: parts, timeout: None, stop_when_abandoned: false };
    ingress.backend.invoke(invocation).await
}

/// The body length as Go's `Request.ContentLength` gives it: the declared length, 0 for an empty body, -1 when
/// unknown (chunked, or HTTP/2 without content-length).
pub(super) fn declared_length(parts: &::http::request::Parts, body: &Incoming) -> i64 {
    if parts.headers.contains_key(::http::header::TRANSFER_ENCODING) {
        return -1;
    }
    let hint = body.size_hint();
    match hint.exact() {
        Some(n) => n as i64,
        None if body.is_end_stream() => 0,
        None => -1,
    }
}
