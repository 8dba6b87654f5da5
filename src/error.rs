//! Why a request failed, and the one place where each failure becomes a status code and body.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderValue, Response, StatusCode};

use crate::backend::sniff::detect_content_type;
use crate::backend::spill::Output;
use crate::body::{self, ResponseBody};
use crate::config::format_go_duration;

/// How a failed function's 500 reads: each original watchdog words it its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureStyle {
    /// classic-watchdog: `exit status 1\n` followed by the function's output.
    Classic,
    /// of-watchdog fork modes: `exit status 1` alone, with `X-Duration-Seconds` and the configured Content-Type.
    OfWatchdog,
}

/// A request that did not get the function's own answer.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The method is not one the classic watchdog forwards.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// `max_inflight` is reached.
    #[error("Concurrent request limit exceeded. Max concurrent requests: {max}")]
    Overloaded {
        /// The configured limit.
        max: usize,
    },
    /// The body is larger than `max_body_bytes`.
    #[error("request body is larger than max_body_bytes ({limit} bytes)")]
    BodyTooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// The client did not send the whole body within `read_timeout`.
    #[error("request body was not received within read_timeout ({})", format_go_duration(*.0))]
    ReadTimeout(Duration),
    /// The client's body stream failed.
    #[error("error reading the request body: {0}")]
    BodyRead(String),
    /// A gRPC request stream failed with a status of its own (a message over `grpc_max_message_bytes`, say):
    /// the call ends with that status.
    #[error("{}", .0.message())]
    RequestStream(tonic::Status),
    /// The request target cannot be decoded.
    #[error(transparent)]
    BadPath(#[from] crate::envelope::PathError),
    /// The function ran past `exec_timeout` and was killed (classic mode).
    #[error("Killed process.")]
    ExecTimeout,
    /// The function ran past `write_timeout` and was killed.
    #[error("function did not finish within write_timeout ({})", format_go_duration(*.0))]
    WriteTimeout(Duration),
    /// The function could not start, exited non-zero, or was killed.
    #[error("{reason}")]
    FunctionFailed {
        /// Go's wording: `exit status 1`, `signal: killed`, `exec: "x": executable file not found in $PATH`.
        reason: String,
        /// Output collected before the failure (classic mode shows it).
        output: Option<Box<Output>>,
        /// Which original's wording to use.
        style: FailureStyle,
        /// Seconds the run took, for `X-Duration-Seconds` (of-watchdog style).
        duration: Option<f64>,
        /// Content-Type to set (of-watchdog style sets the configured one before running).
        content_type: Option<String>,
        /// The last KiB of the function's stderr, kept for gRPC calls whose status message quotes it.
        stderr_tail: Option<Box<str>>,
    },
    /// The watchdog itself failed (e.g. the temporary directory is not writable).
    #[error("watchdog error: {0}")]
    Internal(String),
    /// The worker serving the request exited or broke the protocol (http mode).
    #[error("the function's worker failed: {0}")]
    WorkerFailed(String),
    /// Too many requests are already waiting for a worker (http mode).
    #[error("too many requests are waiting for a worker ({0} already)")]
    QueueFull(usize),
    /// No worker could take the request in time (http mode).
    #[error("no worker available: {0}")]
    Unavailable(String),
    /// The function reported a permanent failure: do not retry.
    #[error("{0}")]
    Permanent(String),
    /// The function reported a failure that a retry may not have.
    #[error("{0}")]
    Retryable(String),
    /// The function raised an unexpected error.
    #[error("{0}")]
    FunctionInternal(String),
    /// The function did not answer before the request's deadline (http mode).
    #[error("the function did not answer within {}", format_go_duration(*.0))]
    DeadlineExceeded(Duration),
}

impl InvokeError {
    /// The HTTP status this failure is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            InvokeError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            InvokeError::Overloaded { .. } | InvokeError::QueueFull(_) => StatusCode::TOO_MANY_REQUESTS,
            InvokeError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            InvokeError::ReadTimeout(_) | InvokeError::ExecTimeout => StatusCode::REQUEST_TIMEOUT,
            InvokeError::BodyRead(_) | InvokeError::BadPath(_) => StatusCode::BAD_REQUEST,
            InvokeError::WriteTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            InvokeError::FunctionFailed { .. } | InvokeError::Internal(_) | InvokeError::FunctionInternal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            InvokeError::WorkerFailed(_) => StatusCode::BAD_GATEWAY,
            InvokeError::Unavailable(_) | InvokeError::Retryable(_) => StatusCode::SERVICE_UNAVAILABLE,
            InvokeError::Permanent(_) => StatusCode::BAD_REQUEST,
            InvokeError::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            InvokeError::RequestStream(status) => {
                StatusCode::from_u16(http_status_for_grpc(status.code())).unwrap_or(StatusCode::BAD_REQUEST)
            }
        }
    }

    /// The failure of a request body: a gRPC request stream's own status stays that status, anything else is
    /// [`InvokeError::BodyRead`].
    pub fn from_body_error(error: crate::body::BoxError) -> InvokeError {
        match error.downcast::<tonic::Status>() {
            Ok(status) => InvokeError::RequestStream(*status),
            Err(other) => InvokeError::BodyRead(other.to_string()),
        }
    }

    /// The status a CloudEvent delivery answers with, following Knative's retry table (SPEC §6): a crash is a
    /// 500 (retried) rather than a 502, and every timeout a 504.
    pub fn cloudevent_status(&self) -> StatusCode {
        match self {
            InvokeError::WorkerFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            InvokeError::ExecTimeout | InvokeError::WriteTimeout(_) | InvokeError::DeadlineExceeded(_) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            other => other.status(),
        }
    }

    /// The response to a CloudEvent whose delivery failed: the status alone decides what Knative does, so the
    /// body is one plain line naming the cause, never the function's output.
    pub fn into_cloudevent_response(self) -> Response<ResponseBody> {
        let status = self.cloudevent_status();
        let text = match &self {
            InvokeError::ExecTimeout => "the function did not finish within exec_timeout\n".to_string(),
            other => format!("{other}\n"),
        };
        plain_response(status, text)
    }

    /// The gRPC status this failure is answered with (SPEC §5): the one place gRPC codes are chosen.
    pub fn grpc_status(&self) -> tonic::Status {
        use tonic::{Code, Status};
        let code = match self {
            InvokeError::RequestStream(status) => return status.clone(),
            InvokeError::MethodNotAllowed => Code::Unimplemented,
            InvokeError::Overloaded { .. } | InvokeError::QueueFull(_) | InvokeError::BodyTooLarge { .. } => {
                Code::ResourceExhausted
            }
            InvokeError::ReadTimeout(_)
            | InvokeError::ExecTimeout
            | InvokeError::WriteTimeout(_)
            | InvokeError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            // The client's own stream broke: it is gone or reset the call.
            InvokeError::BodyRead(_) => Code::Cancelled,
            InvokeError::BadPath(_) | InvokeError::Permanent(_) => Code::InvalidArgument,
            InvokeError::FunctionFailed { .. } | InvokeError::Internal(_) | InvokeError::FunctionInternal(_) => {
                Code::Internal
            }
            InvokeError::WorkerFailed(_) | InvokeError::Unavailable(_) | InvokeError::Retryable(_) => Code::Unavailable,
        };
        let message = match self {
            // `exit status N`, then what the function said on stderr last (its stdout is the message channel).
            InvokeError::FunctionFailed { reason, stderr_tail: Some(tail), .. } if !tail.is_empty() => {
                format!("{reason}\n{tail}")
            }
            InvokeError::ExecTimeout => "Killed process: the function ran past exec_timeout".to_string(),
            other => other.to_string(),
        };
        Status::new(code, message)
    }

    /// The HTTP response for this failure, worded as the original watchdogs word it.
    pub fn into_http_response(self) -> Response<ResponseBody> {
        let status = self.status();
        let mut builder = Response::builder().status(status);
        let body = match self {
            InvokeError::MethodNotAllowed => return builder.body(body::empty()).expect("valid response"),
            InvokeError::Overloaded { .. } => {
                builder = builder
                    .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                    .header("X-Content-Type-Options", "nosniff")
                    .header("X-OpenFaaS-Internal", "faas-middleware")
                    .header(header::RETRY_AFTER, "1");
                body::full(format!("{self}\n"))
            }
            InvokeError::FunctionFailed { reason, output, style: FailureStyle::Classic, .. } => {
                let mut prefix = BytesMut::with_capacity(reason.len() + 1);
                prefix.put_slice(reason.as_bytes());
                prefix.put_u8(b'\n');
                let prefix = prefix.freeze();
                let sniffed = match &output {
                    Some(o) if prefix.len() < 512 => {
                        let mut head = prefix.to_vec();
                        head.extend_from_slice(o.head());
                        detect_content_type(&head)
                    }
                    _ => detect_content_type(&prefix),
                };
                builder = builder.header(header::CONTENT_TYPE, sniffed);
                if let Some(Output::File { len, .. }) = output.as_deref() {
                    builder = builder.header(header::CONTENT_LENGTH, prefix.len() as u64 + len);
                }
                match output {
                    Some(output) => body::from_output(Some(prefix), *output),
                    None => body::full(prefix),
                }
            }
            InvokeError::FunctionFailed { reason, style: FailureStyle::OfWatchdog, duration, content_type, .. } => {
                if let Some(ct) = content_type.and_then(|ct| HeaderValue::from_str(&ct).ok()) {
                    builder = builder.header(header::CONTENT_TYPE, ct);
                }
                if let Some(seconds) = duration {
                    builder = builder.header("X-Duration-Seconds", format!("{seconds:.6}"));
                }
                body::full(Bytes::from(reason))
            }
            other => {
                if matches!(status, StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS) {
                    builder = builder.header(header::RETRY_AFTER, "1");
                }
                let text = format!("{other}\n");
                builder = builder.header(header::CONTENT_TYPE, detect_content_type(text.as_bytes()));
                body::full(text)
            }
        };
        builder.body(body).expect("valid response")
    }
}

/// A `text/plain` response, with `Retry-After` when the status invites a retry.
pub fn plain_response(status: StatusCode, text: String) -> Response<ResponseBody> {
    let mut builder = Response::builder().status(status).header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
    if matches!(status, StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS) {
        builder = builder.header(header::RETRY_AFTER, "1");
    }
    builder.body(body::full(text)).expect("valid response")
}

/// The gRPC code for an HTTP status answered by a function, by gRPC's HTTP-to-gRPC table
/// (`doc/http-grpc-status-mapping.md`); 2xx is OK.
pub fn grpc_code_for_http(status: u16) -> tonic::Code {
    use tonic::Code;
    match status {
        200..=299 => Code::Ok,
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// The HTTP status a gRPC code stands for in metrics and the access log (grpc-gateway's table), so gRPC calls
/// share `code` labels with plain HTTP.
pub fn http_status_for_grpc(code: tonic::Code) -> u16 {
    use tonic::Code;
    match code {
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn text(resp: Response<ResponseBody>) -> String {
        String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn classic_failure_body() {
        let err = InvokeError::FunctionFailed {
            reason: "exit status 1".into(),
            output: Some(Box::new(Output::Memory(Bytes::from_static(b"stat: cannot stat 'x'\n")))),
            style: FailureStyle::Classic,
            duration: None,
            content_type: None,
            stderr_tail: None,
        };
        let resp = err.into_http_response();
        assert_eq!(resp.status(), 500);
        assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
        assert_eq!(text(resp).await, "exit status 1\nstat: cannot stat 'x'\n");
    }

    #[tokio::test]
    async fn overload_body_and_headers() {
        let resp = InvokeError::Overloaded { max: 2 }.into_http_response();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["x-openfaas-internal"], "faas-middleware");
        assert_eq!(resp.headers()["retry-after"], "1");
        assert_eq!(text(resp).await, "Concurrent request limit exceeded. Max concurrent requests: 2\n");
    }

    #[tokio::test]
    async fn cloudevent_statuses_follow_knative_retries() {
        assert_eq!(InvokeError::WorkerFailed("exit code 1".into()).cloudevent_status(), 500);
        assert_eq!(InvokeError::ExecTimeout.cloudevent_status(), 504);
        assert_eq!(InvokeError::Permanent("bad".into()).cloudevent_status(), 400);
        assert_eq!(InvokeError::Retryable("later".into()).cloudevent_status(), 503);
        assert_eq!(InvokeError::Overloaded { max: 1 }.cloudevent_status(), 429);
        let failed = InvokeError::FunctionFailed {
            reason: "exit status 3".into(),
            output: Some(Box::new(Output::Memory(Bytes::from_static(b"secret stdout")))),
            stderr_tail: Some("secret stderr".into()),
            style: FailureStyle::Classic,
            duration: None,
            content_type: None,
        };
        let resp = failed.into_cloudevent_response();
        assert_eq!(resp.status(), 500);
        assert_eq!(text(resp).await, "exit status 3\n");
        let resp = InvokeError::Retryable("try later".into()).into_cloudevent_response();
        assert_eq!(resp.headers()["retry-after"], "1");
    }

    #[tokio::test]
    async fn timeouts() {
        let resp = InvokeError::ExecTimeout.into_http_response();
        assert_eq!(resp.status(), 408);
        assert_eq!(text(resp).await, "Killed process.\n");
        let resp = InvokeError::WriteTimeout(Duration::from_secs(2)).into_http_response();
        assert_eq!(resp.status(), 504);
        assert!(text(resp).await.contains("write_timeout (2s)"));
    }

    #[test]
    fn grpc_status_mapping() {
        use tonic::Code;
        let cases: Vec<(InvokeError, Code)> = vec![
            (InvokeError::Permanent("bad".into()), Code::InvalidArgument),
            (InvokeError::Retryable("later".into()), Code::Unavailable),
            (InvokeError::WorkerFailed("exit status 7".into()), Code::Unavailable),
            (InvokeError::Overloaded { max: 1 }, Code::ResourceExhausted),
            (InvokeError::QueueFull(3), Code::ResourceExhausted),
            (InvokeError::BodyTooLarge { limit: 1 }, Code::ResourceExhausted),
            (InvokeError::DeadlineExceeded(Duration::from_secs(1)), Code::DeadlineExceeded),
            (InvokeError::ExecTimeout, Code::DeadlineExceeded),
            (InvokeError::WriteTimeout(Duration::from_secs(1)), Code::DeadlineExceeded),
            (InvokeError::Unavailable("none ready".into()), Code::Unavailable),
            (InvokeError::FunctionInternal("boom".into()), Code::Internal),
            (InvokeError::RequestStream(tonic::Status::resource_exhausted("big")), Code::ResourceExhausted),
        ];
        for (error, code) in cases {
            assert_eq!(error.grpc_status().code(), code, "{error}");
        }
        let crash = InvokeError::WorkerFailed("worker exited (exit status 7)".into()).grpc_status();
        assert!(crash.message().contains("exit status 7"));
        let failed = InvokeError::FunctionFailed {
            reason: "exit status 3".into(),
            output: None,
            style: FailureStyle::Classic,
            duration: None,
            content_type: None,
            stderr_tail: Some("oops".into()),
        }
        .grpc_status();
        assert_eq!(failed.code(), Code::Internal);
        assert_eq!(failed.message(), "exit status 3\noops");
    }

    #[test]
    fn http_to_grpc_table() {
        use tonic::Code;
        assert_eq!(grpc_code_for_http(200), Code::Ok);
        assert_eq!(grpc_code_for_http(400), Code::Internal);
        assert_eq!(grpc_code_for_http(401), Code::Unauthenticated);
        assert_eq!(grpc_code_for_http(403), Code::PermissionDenied);
        assert_eq!(grpc_code_for_http(404), Code::Unimplemented);
        for status in [429, 502, 503, 504] {
            assert_eq!(grpc_code_for_http(status), Code::Unavailable);
        }
        assert_eq!(grpc_code_for_http(500), Code::Unknown);
        assert_eq!(http_status_for_grpc(Code::ResourceExhausted), 429);
    }
}
