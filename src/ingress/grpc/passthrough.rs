//! Any other method `/pkg.Service/Method`: the function gets the method name, the metadata and the raw request
//! message bytes, and returns raw response bytes or a status. Unary unless `grpc_descriptor_set` says the method
//! streams. In the fork modes a streaming call (either side) uses gRPC's own 5-byte framing on the function's input
//! and output (SPEC §5); a worker sees it only on the side that streams, as its envelope says.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ::http::Request;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use prost::Message;
use prost_types::FileDescriptorSet;
use tonic::server::{StreamingService, UnaryService};
use tonic::{Status, Streaming};

use super::codec::{self, Deframer, RawCodec};
use super::{
    call_envelope, call_function, grpc_timeout, streamed_answer, unary_answer, with_metadata, TrailingMetadata,
};
use crate::backend::Backend;
use crate::body::BoxError;
use crate::envelope::pb::watchdog::v1::GrpcCall;
use crate::envelope::Envelope;
use crate::ingress::Ingress;

/// Which sides of a method stream, as its descriptor says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MethodShape {
    /// The client sends a stream of messages.
    pub client_streaming: bool,
    /// The server answers with a stream of messages.
    pub server_streaming: bool,
}

impl MethodShape {
    /// Whether either side streams (then both use gRPC's 5-byte framing).
    pub fn streams(&self) -> bool {
        self.client_streaming || self.server_streaming
    }
}

/// Reads and decodes a FileDescriptorSet file.
pub fn load_descriptor_set(path: &Path) -> Result<FileDescriptorSet, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    FileDescriptorSet::decode(bytes.as_slice())
        .map_err(|e| format!("{} is not an encoded FileDescriptorSet: {e}", path.display()))
}

/// Every method of every service in `set`, by full name (`/pkg.Service/Method`).
pub fn method_shapes(set: &FileDescriptorSet) -> HashMap<String, MethodShape> {
    let mut shapes = HashMap::new();
    for file in &set.file {
        let package = file.package();
        for service in &file.service {
            let service_name =
                if package.is_empty() { service.name().to_string() } else { format!("{package}.{}", service.name()) };
            for method in &service.method {
                let shape = MethodShape {
                    client_streaming: method.client_streaming(),
                    server_streaming: method.server_streaming(),
                };
                shapes.insert(format!("/{service_name}/{}", method.name()), shape);
            }
        }
    }
    shapes
}

/// Answers one passthrough call.
pub(super) fn serve(ingress: Arc<Ingress>, req: Request<Incoming>, trailing: TrailingMetadata) -> super::Call {
    let method = req.uri().path().to_string();
    let shape = ingress.grpc.methods.get(&method).copied().unwrap_or_default();
    let max = ingress.config.grpc_max_message_bytes;
    let timeout = grpc_timeout(req.headers());
    let (head, body) = req.into_parts();
    let call = Call { ingress, head: head.clone(), method, shape, timeout, max, trailing };
    let req = Request::from_parts(head, body);
    Box::pin(async move {
        // tonic's own limits stay as a memory guard; its OUT_OF_RANGE is rewritten on the way out.
        let mut grpc = tonic::server::Grpc::new(RawCodec::new(max))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max)
            .apply_compression_config(super::accepted_compression(), Default::default());
        let response = if shape.streams() { grpc.streaming(call, req).await } else { grpc.unary(call, req).await };
        Ok(response)
    })
}

/// One passthrough call.
#[derive(Clone)]
struct Call {
    ingress: Arc<Ingress>,
    head: ::http::request::Parts,
    method: String,
    shape: MethodShape,
    timeout: Option<Duration>,
    max: usize,
    /// Where the function's trailing metadata is left for the response's trailers.
    trailing: TrailingMetadata,
}

impl Call {
    fn envelope(&self, content_length: i64) -> Result<Envelope, Status> {
        let call = GrpcCall {
            method: self.method.clone(),
            client_streaming: self.shape.client_streaming,
            server_streaming: self.shape.server_streaming,
        };
        call_envelope(&self.ingress, &self.head, call, content_length, self.timeout)
    }
}

impl UnaryService<Bytes> for Call {
    type Response = Bytes;
    type Future = BoxFuture<'static, Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let call = self.clone();
        Box::pin(async move {
            let message = request.into_inner();
            let envelope = call.envelope(message.len() as i64)?;
            let body = crate::body::request_from(message);
            let response = call_function(&call.ingress, envelope, call.head, body, call.timeout).await?;
            let answer = unary_answer(response, call.max).await?;
            call.trailing.set(&answer.trailers);
            Ok(with_metadata(&answer.head.headers, answer.message))
        })
    }
}

impl StreamingService<Bytes> for Call {
    type Response = Bytes;
    type ResponseStream = BoxStream<'static, Result<Bytes, Status>>;
    type Future = BoxFuture<'static, Result<tonic::Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: tonic::Request<Streaming<Bytes>>) -> Self::Future {
        let call = self.clone();
        Box::pin(async move {
            let envelope = call.envelope(-1)?;
            // A worker sees the framing only on a side that streams (its envelope says which); a forked function
            // gets it on both sides once either streams (SPEC §5), as it has no envelope to tell it.
            let worker = matches!(call.ingress.backend, Backend::Framed(_));
            let request_framed = !worker || call.shape.client_streaming;
            let response_framed = !worker || call.shape.server_streaming;
            let messages = request.into_inner();
            let frames = messages.map(move |m| {
                m.map(|m| Frame::data(if request_framed { codec::frame(&m) } else { m }))
                    .map_err(|s| Box::new(s) as BoxError)
            });
            let body = StreamBody::new(frames).boxed_unsync();
            let response = call_function(&call.ingress, envelope, call.head, body, call.timeout).await?;
            let one = |message: Bytes| futures_util::stream::once(async move { Ok(message) }).boxed();
            if !response_framed {
                let answer = unary_answer(response, call.max).await?;
                call.trailing.set(&answer.trailers);
                return Ok(with_metadata(&answer.head.headers, one(answer.message)));
            }
            if call.shape.server_streaming {
                let headers = response.headers().clone();
                let pieces = streamed_answer(response, call.max, call.trailing).await?;
                return Ok(with_metadata(&headers, codec::messages(pieces, call.max)));
            }
            // Client streaming only: the function's whole output is one framed message.
            let answer = unary_answer(response, call.max.saturating_add(5)).await?;
            let mut deframer = Deframer::new(call.max);
            deframer.push(&answer.message);
            let message = deframer
                .next_message()?
                .ok_or_else(|| Status::internal("the function wrote no complete response message"))?;
            deframer.finish().map_err(|_| Status::internal("the function wrote more than one response message"))?;
            call.trailing.set(&answer.trailers);
            Ok(with_metadata(&answer.head.headers, one(message)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::{FileDescriptorProto, MethodDescriptorProto, ServiceDescriptorProto};

    fn method(name: &str, client: bool, server: bool) -> MethodDescriptorProto {
        MethodDescriptorProto {
            name: Some(name.into()),
            input_type: Some(".helloworld.HelloRequest".into()),
            output_type: Some(".helloworld.HelloReply".into()),
            client_streaming: Some(client),
            server_streaming: Some(server),
            ..Default::default()
        }
    }

    #[test]
    fn descriptor_lookup() {
        let set = FileDescriptorSet {
            file: vec![
                FileDescriptorProto {
                    name: Some("greeter.proto".into()),
                    package: Some("helloworld".into()),
                    service: vec![ServiceDescriptorProto {
                        name: Some("Greeter".into()),
                        method: vec![method("SayHello", false, false), method("SayHelloStream", false, true)],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                FileDescriptorProto {
                    name: Some("bare.proto".into()),
                    service: vec![ServiceDescriptorProto {
                        name: Some("Bare".into()),
                        method: vec![method("Upload", true, false)],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
        };
        let shapes = method_shapes(&set);
        assert_eq!(shapes["/helloworld.Greeter/SayHello"], MethodShape::default());
        assert!(!shapes["/helloworld.Greeter/SayHello"].streams());
        assert_eq!(
            shapes["/helloworld.Greeter/SayHelloStream"],
            MethodShape { client_streaming: false, server_streaming: true }
        );
        assert!(shapes["/Bare/Upload"].client_streaming);
        assert!(!shapes.contains_key("/helloworld.Greeter/Other"));
    }

    #[test]
    fn unreadable_descriptor_sets_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_descriptor_set(&dir.path().join("missing.binpb")).unwrap_err().contains("cannot read"));
        let junk = dir.path().join("junk.binpb");
        std::fs::write(&junk, b"\xff\xff\xff").unwrap();
        assert!(load_descriptor_set(&junk).unwrap_err().contains("not an encoded FileDescriptorSet"));
    }
}
