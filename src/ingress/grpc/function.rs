//! `watchdog.v1.Function`: `Invoke` (one body in, one out) and `InvokeStream` (chunks both ways, as they come).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ::http::{header, Request, Response};
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use tonic::codegen::Service;
use tonic::{Status, Streaming};

use super::{
    call_envelope, call_function, grpc_timeout, is_metadata, streamed_answer, unary_answer, with_metadata,
    TrailingMetadata,
};
use crate::body::{BoxError, ResponseBody};
use crate::envelope::pb::watchdog::v1::function_server::{Function, FunctionServer};
use crate::envelope::pb::watchdog::v1::{Chunk, GrpcCall, InvokeRequest, InvokeResponse};
use crate::envelope::{Envelope, Header};
use crate::ingress::Ingress;

/// Answers one call to the Function service.
pub(super) fn serve(ingress: Arc<Ingress>, req: Request<Incoming>, trailing: TrailingMetadata) -> super::Call {
    let max = ingress.config.grpc_max_message_bytes;
    let timeout = grpc_timeout(req.headers());
    let (head, body) = req.into_parts();
    let service = FunctionService { ingress, head: head.clone(), timeout, trailing };
    let server = FunctionServer::new(service).max_decoding_message_size(max).max_encoding_message_size(max);
    let mut server = super::ACCEPTED_COMPRESSION.into_iter().fold(server, |s, e| s.accept_compressed(e));
    server.call(Request::from_parts(head, body))
}

/// The Function service for one request (it needs that request's head for the envelope).
struct FunctionService {
    ingress: Arc<Ingress>,
    head: ::http::request::Parts,
    timeout: Option<Duration>,
    /// Where InvokeStream leaves the function's trailing metadata for the response's trailers.
    trailing: TrailingMetadata,
}

impl FunctionService {
    /// Starts the function for an Invoke call; apart from `invoke`, so that its future holds no envelope.
    fn unary_call(
        &self,
        request: InvokeRequest,
    ) -> Result<impl Future<Output = Result<Response<ResponseBody>, Status>> + Send + 'static, Status> {
        let mut envelope = self.envelope(false, request.body.len() as i64)?;
        if !request.content_type.is_empty() {
            envelope
                .headers
                .push(Header { name: "content-type".into(), value: request.content_type.into_bytes().into() });
        }
        let mut metadata: Vec<_> = request.metadata.into_iter().collect();
        // A map has no order; sorted, the function sees the same headers in the same order every time.
        metadata.sort();
        for (name, value) in metadata {
            envelope.headers.push(Header { name: name.to_ascii_lowercase(), value: value.into_bytes().into() });
        }
        let body = crate::body::request_from(request.body);
        Ok(call_function(&self.ingress, envelope, self.head.clone(), body, self.timeout))
    }

    fn envelope(&self, streaming: bool, content_length: i64) -> Result<Envelope, Status> {
        let call = GrpcCall {
            method: self.head.uri.path().to_string(),
            client_streaming: streaming,
            server_streaming: streaming,
        };
        let mut envelope = call_envelope(&self.ingress, &self.head, call, content_length, self.timeout)?;
        // `application/grpc` describes the call's framing, not the body the function gets.
        envelope.headers.retain(|h| !h.name.eq_ignore_ascii_case("content-type"));
        Ok(envelope)
    }
}

#[tonic::async_trait]
impl Function for FunctionService {
    async fn invoke(&self, request: tonic::Request<InvokeRequest>) -> Result<tonic::Response<InvokeResponse>, Status> {
        let response = self.unary_call(request.into_inner())?.await?;
        let answer = unary_answer(response, self.ingress.config.grpc_max_message_bytes).await?;
        Ok(tonic::Response::new(invoke_response(answer.head, answer.message)))
    }

    type InvokeStreamStream = BoxStream<'static, Result<Chunk, Status>>;

    async fn invoke_stream(
        &self,
        request: tonic::Request<Streaming<Chunk>>,
    ) -> Result<tonic::Response<Self::InvokeStreamStream>, Status> {
        let envelope = self.envelope(true, -1)?;
        let chunks = request.into_inner();
        // The request chunks reach the function as they arrive.
        let frames = chunks.map(|chunk| chunk.map(|c| Frame::data(c.data)).map_err(|s| Box::new(s) as BoxError));
        let body = StreamBody::new(frames).boxed_unsync();
        let response = call_function(&self.ingress, envelope, self.head.clone(), body, self.timeout).await?;
        let headers = response.headers().clone();
        let pieces =
            streamed_answer(response, self.ingress.config.grpc_max_message_bytes, self.trailing.clone()).await?;
        let max = self.ingress.config.grpc_max_message_bytes;
        // A piece is at most 64 KiB from either backend; one past the message limit is split, not refused.
        let chunks = pieces.flat_map(move |piece| {
            let parts: Vec<Result<Chunk, Status>> = match piece {
                Ok(data) => split(data, max).into_iter().map(|data| Ok(Chunk { data })).collect(),
                Err(status) => vec![Err(status)],
            };
            futures_util::stream::iter(parts)
        });
        Ok(with_metadata(&headers, chunks.boxed()))
    }
}

/// The InvokeResponse of a function's whole answer: its body, Content-Type and metadata.
fn invoke_response(head: ::http::response::Parts, body: Bytes) -> InvokeResponse {
    let text = |v: &::http::HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
    let content_type = head.headers.get(header::CONTENT_TYPE).map(text).unwrap_or_default();
    let mut metadata: HashMap<String, String> = HashMap::new();
    for (name, value) in &head.headers {
        if !is_metadata(name) {
            continue;
        }
        metadata
            .entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&text(value));
            })
            .or_insert_with(|| text(value));
    }
    InvokeResponse { body, content_type, metadata }
}

/// `data` in pieces that fit in a message of `max` bytes (a Chunk adds a few bytes of its own).
fn split(mut data: Bytes, max: usize) -> Vec<Bytes> {
    let room = max.saturating_sub(16).max(1);
    let mut out = Vec::with_capacity(data.len() / room + 1);
    while data.len() > room {
        out.push(data.split_to(room));
    }
    out.push(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_fit_in_a_message() {
        assert_eq!(split(Bytes::from_static(b"abc"), 1024), vec![Bytes::from_static(b"abc")]);
        let parts = split(Bytes::from(vec![7u8; 100]), 40);
        assert_eq!(parts.iter().map(Bytes::len).collect::<Vec<_>>(), vec![24, 24, 24, 24, 4]);
    }
}
