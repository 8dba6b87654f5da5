//! Server reflection, v1 and v1alpha: the watchdog's services, gRPC health, and the user's descriptor set.
//!
//! Our own service over tonic-reflection's generated traits, because tonic-reflection ends the whole stream
//! with a status when a lookup fails. The protocol (and grpc-go's and grpc-python's servers) answer such a
//! request with an `error_response` and keep the stream open, which clients rely on: grpcio-reflection's
//! descriptor database turns NOT_FOUND into the `KeyError` a `DescriptorPool` expects. A file goes out with
//! its transitive imports that this stream has not carried yet, as grpc-go sends them.

mod index;

use std::collections::HashSet;
use std::sync::Arc;

use futures_util::stream::{BoxStream, StreamExt};
use prost::Message;
use prost_types::FileDescriptorSet;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_reflection::pb::{v1, v1alpha};
use v1::server_reflection_request::MessageRequest;
use v1::server_reflection_response::MessageResponse;

use self::index::Index;
use super::{boxed, Handler, ACCEPTED_COMPRESSION};

/// v1's service name, which only v1 lists.
const V1_SERVICE: &str = "grpc.reflection.v1.ServerReflection";
/// v1alpha's service name, which only v1alpha lists.
const V1ALPHA_SERVICE: &str = "grpc.reflection.v1alpha.ServerReflection";

/// The v1 and v1alpha reflection services. A user descriptor set reflection cannot index is logged and left out.
pub(super) fn services(user: Option<FileDescriptorSet>) -> (Handler, Handler) {
    let reflection = Reflection { index: Arc::new(build(user.as_ref())) };
    let v1 = v1::server_reflection_server::ServerReflectionServer::new(reflection.clone());
    let v1alpha = v1alpha::server_reflection_server::ServerReflectionServer::new(reflection);
    (
        boxed(ACCEPTED_COMPRESSION.into_iter().fold(v1, |s, e| s.accept_compressed(e))),
        boxed(ACCEPTED_COMPRESSION.into_iter().fold(v1alpha, |s, e| s.accept_compressed(e))),
    )
}

/// Indexes the compiled-in sets, then the user's. Both versions share one index, holding both reflection
/// protos: a user set can be large, and each version only leaves the other's service out of its list.
fn build(user: Option<&FileDescriptorSet>) -> Index {
    let mut index = Index::default();
    let compiled_in = [
        ("watchdog", crate::envelope::pb::FILE_DESCRIPTOR_SET),
        ("health", tonic_health::pb::FILE_DESCRIPTOR_SET),
        ("reflection v1", v1::FILE_DESCRIPTOR_SET),
        ("reflection v1alpha", v1alpha::FILE_DESCRIPTOR_SET),
    ];
    for (what, set) in compiled_in {
        if let Err(e) = index.add_encoded(set) {
            tracing::error!("{what} descriptors left out of reflection: {e}");
        }
    }
    if let Some(set) = user {
        if let Err(e) = index.add_set(set) {
            tracing::error!("grpc_descriptor_set left out of reflection: {e}");
        }
    }
    index
}

/// Both versions' service: their messages match on the wire, so v1alpha is v1 transcoded.
#[derive(Debug, Clone)]
struct Reflection {
    /// What every stream answers from.
    index: Arc<Index>,
}

#[tonic::async_trait]
impl v1::server_reflection_server::ServerReflection for Reflection {
    type ServerReflectionInfoStream = BoxStream<'static, Result<v1::ServerReflectionResponse, Status>>;

    async fn server_reflection_info(
        &self,
        request: Request<Streaming<v1::ServerReflectionRequest>>,
    ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
        let session = Session::new(&self.index, V1ALPHA_SERVICE);
        Ok(Response::new(session.serve(request.into_inner(), Ok, Ok)))
    }
}

#[tonic::async_trait]
impl v1alpha::server_reflection_server::ServerReflection for Reflection {
    type ServerReflectionInfoStream = BoxStream<'static, Result<v1alpha::ServerReflectionResponse, Status>>;

    async fn server_reflection_info(
        &self,
        request: Request<Streaming<v1alpha::ServerReflectionRequest>>,
    ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
        let session = Session::new(&self.index, V1_SERVICE);
        Ok(Response::new(session.serve(request.into_inner(), transcode, transcode)))
    }
}

/// Re-reads a message as its twin of the other version. Cannot fail for the wire-identical reflection
/// messages; should it, the stream ends INTERNAL rather than answer wrongly.
fn transcode<A: Message, B: Message + Default>(message: A) -> Result<B, Status> {
    B::decode(message.encode_to_vec().as_slice()).map_err(|e| Status::internal(format!("reflection: {e}")))
}

/// One reflection stream.
struct Session {
    /// What it answers from.
    index: Arc<Index>,
    /// The other version's service, left out of `list_services` as tonic-reflection left it out.
    unlisted: &'static str,
    /// Files this stream has carried, which later answers need not repeat (only the requested file is).
    sent: HashSet<Arc<str>>,
}

impl Session {
    /// A fresh stream, which has sent no file yet.
    fn new(index: &Arc<Index>, unlisted: &'static str) -> Session {
        Session { index: Arc::clone(index), unlisted, sent: HashSet::new() }
    }

    /// Answers each request in turn; only a broken request stream (or a failed transcoding) ends the answers
    /// with a status.
    fn serve<Req, Resp>(
        mut self,
        requests: Streaming<Req>,
        to_v1: fn(Req) -> Result<v1::ServerReflectionRequest, Status>,
        from_v1: fn(v1::ServerReflectionResponse) -> Result<Resp, Status>,
    ) -> BoxStream<'static, Result<Resp, Status>>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
    {
        requests.map(move |request| from_v1(self.answer(to_v1(request?)?))).boxed()
    }

    /// The response to one request; a failed lookup is an `error_response`, never the stream's end.
    fn answer(&mut self, request: v1::ServerReflectionRequest) -> v1::ServerReflectionResponse {
        let Session { index, unlisted, sent } = self;
        let answer = match &request.message_request {
            None => Err((Code::InvalidArgument, "no message_request".to_string())),
            Some(MessageRequest::FileByFilename(name)) => {
                file(index, sent, name).ok_or_else(|| not_found("file", name))
            }
            Some(MessageRequest::FileContainingSymbol(symbol)) => (index.file_defining(symbol))
                .and_then(|name| file(index, sent, name))
                .ok_or_else(|| not_found("symbol", symbol)),
            Some(MessageRequest::FileContainingExtension(extension)) => Err((
                Code::NotFound,
                format!("extension {} of '{}' not found", extension.extension_number, extension.containing_type),
            )),
            // Empty rather than an error: some clients (grpcurl) give up when this fails.
            Some(MessageRequest::AllExtensionNumbersOfType(name)) => {
                Ok(MessageResponse::AllExtensionNumbersResponse(v1::ExtensionNumberResponse {
                    base_type_name: name.clone(),
                    extension_number: Vec::new(),
                }))
            }
            Some(MessageRequest::ListServices(_)) => {
                Ok(MessageResponse::ListServicesResponse(v1::ListServiceResponse {
                    service: (index.services().iter())
                        .filter(|name| name.as_str() != *unlisted)
                        .map(|name| v1::ServiceResponse { name: name.clone() })
                        .collect(),
                }))
            }
        };
        let message_response = answer.unwrap_or_else(|(code, message)| {
            MessageResponse::ErrorResponse(v1::ErrorResponse { error_code: code as i32, error_message: message })
        });
        v1::ServerReflectionResponse {
            valid_host: request.host.clone(),
            original_request: Some(request),
            message_response: Some(message_response),
        }
    }
}

/// A file descriptor response for the file `name` and its imports not yet `sent`.
fn file(index: &Index, sent: &mut HashSet<Arc<str>>, name: &str) -> Option<MessageResponse> {
    let files = index.file_with_imports(name, sent)?;
    Some(MessageResponse::FileDescriptorResponse(v1::FileDescriptorResponse { file_descriptor_proto: files }))
}

/// NOT_FOUND for an unknown file or symbol.
fn not_found(what: &str, name: &str) -> (Code, String) {
    (Code::NotFound, format!("{what} '{name}' not found"))
}

#[cfg(test)]
mod tests {
    use prost_types::{
        DescriptorProto, EnumDescriptorProto, EnumValueDescriptorProto, FieldDescriptorProto, FileDescriptorProto,
        MethodDescriptorProto, OneofDescriptorProto, ServiceDescriptorProto,
    };

    use super::*;

    fn request(message: MessageRequest) -> v1::ServerReflectionRequest {
        v1::ServerReflectionRequest { host: "example:8080".into(), message_request: Some(message) }
    }

    fn session(user: Option<&FileDescriptorSet>, unlisted: &'static str) -> Session {
        Session::new(&Arc::new(build(user)), unlisted)
    }

    fn listed(session: &mut Session) -> Vec<String> {
        match session.answer(request(MessageRequest::ListServices(String::new()))).message_response {
            Some(MessageResponse::ListServicesResponse(list)) => list.service.into_iter().map(|s| s.name).collect(),
            other => panic!("expected a service list: {other:?}"),
        }
    }

    /// The names of the files answering `message`, in the order sent.
    fn files(session: &mut Session, message: MessageRequest) -> Vec<String> {
        match session.answer(request(message)).message_response {
            Some(MessageResponse::FileDescriptorResponse(files)) => (files.file_descriptor_proto.iter())
                .map(|raw| FileDescriptorProto::decode(raw.as_slice()).unwrap().name().to_string())
                .collect(),
            other => panic!("expected files: {other:?}"),
        }
    }

    fn error(session: &mut Session, message: Option<MessageRequest>) -> (i32, v1::ServerReflectionResponse) {
        let request = v1::ServerReflectionRequest { host: "h".into(), message_request: message };
        let response = session.answer(request.clone());
        assert_eq!(response.valid_host, "h");
        assert_eq!(response.original_request.as_ref(), Some(&request));
        match &response.message_response {
            Some(MessageResponse::ErrorResponse(e)) => (e.error_code, response),
            other => panic!("expected an error response: {other:?}"),
        }
    }

    fn some(name: &str) -> Option<String> {
        Some(name.to_string())
    }

    /// `t.proto` (package `t`): a message with a nested message, an enum, a field and a oneof, and a service.
    fn user_file() -> FileDescriptorProto {
        let colour = EnumDescriptorProto {
            name: some("Colour"),
            value: vec![EnumValueDescriptorProto { name: some("RED"), ..Default::default() }],
            ..Default::default()
        };
        let outer = DescriptorProto {
            name: some("Outer"),
            nested_type: vec![DescriptorProto { name: some("Inner"), ..Default::default() }],
            enum_type: vec![colour],
            field: vec![FieldDescriptorProto { name: some("size"), ..Default::default() }],
            oneof_decl: vec![OneofDescriptorProto { name: some("choice"), ..Default::default() }],
            ..Default::default()
        };
        let service = ServiceDescriptorProto {
            name: some("Svc"),
            method: vec![MethodDescriptorProto { name: some("Call"), ..Default::default() }],
            ..Default::default()
        };
        FileDescriptorProto {
            name: some("t.proto"),
            package: some("t"),
            dependency: vec!["google/protobuf/any.proto".into(), "missing.proto".into()],
            message_type: vec![outer],
            service: vec![service],
            ..Default::default()
        }
    }

    #[test]
    fn each_version_lists_what_tonic_reflection_listed() {
        let builtin = ["watchdog.v1.Function", "watchdog.v1.CloudEvents", "grpc.health.v1.Health"];
        let set = FileDescriptorSet { file: vec![user_file()] };
        let v1 = listed(&mut session(Some(&set), V1ALPHA_SERVICE));
        assert_eq!(v1, [&builtin[..], &[V1_SERVICE, "t.Svc"]].concat());
        let v1alpha = listed(&mut session(Some(&set), V1_SERVICE));
        assert_eq!(v1alpha, [&builtin[..], &[V1ALPHA_SERVICE, "t.Svc"]].concat());
    }

    #[test]
    fn failed_lookups_are_error_responses_and_the_session_goes_on() {
        let mut session = session(None, V1ALPHA_SERVICE);
        let not_found = Code::NotFound as i32;
        let (code, response) = error(&mut session, Some(MessageRequest::FileContainingSymbol("no.Such".into())));
        assert_eq!(code, not_found, "{response:?}");
        assert_eq!(error(&mut session, Some(MessageRequest::FileByFilename("no/such.proto".into()))).0, not_found);
        let extension =
            v1::ExtensionRequest { containing_type: "watchdog.v1.InvokeRequest".into(), extension_number: 9 };
        assert_eq!(error(&mut session, Some(MessageRequest::FileContainingExtension(extension))).0, not_found);
        assert_eq!(error(&mut session, None).0, Code::InvalidArgument as i32);
        assert!(listed(&mut session).contains(&"watchdog.v1.Function".to_string()));

        let numbers = session.answer(request(MessageRequest::AllExtensionNumbersOfType("watchdog.v1.Chunk".into())));
        let Some(MessageResponse::AllExtensionNumbersResponse(numbers)) = numbers.message_response else {
            panic!("{numbers:?}");
        };
        assert_eq!((numbers.base_type_name.as_str(), numbers.extension_number.len()), ("watchdog.v1.Chunk", 0));
    }

    #[test]
    fn a_file_comes_with_the_imports_not_yet_sent() {
        let mut session = session(None, V1ALPHA_SERVICE);
        let function = files(&mut session, MessageRequest::FileContainingSymbol("watchdog.v1.Function".into()));
        assert_eq!(function[0], "watchdog/v1/function.proto");
        let mut imports = function[1..].to_vec();
        imports.sort();
        let expected =
            ["google/protobuf/any.proto", "google/protobuf/timestamp.proto", "io/cloudevents/v1/cloudevents.proto"];
        assert_eq!(imports, expected);
        // The requested file always comes, even when sent before; imports the stream already carried do not.
        let again = files(&mut session, MessageRequest::FileContainingSymbol("watchdog.v1.InvokeRequest".into()));
        assert_eq!(again, ["watchdog/v1/function.proto"]);
        let frame = files(&mut session, MessageRequest::FileByFilename("watchdog/v1/frame.proto".into()));
        assert_eq!(frame, ["watchdog/v1/frame.proto", "watchdog/v1/envelope.proto"]);
    }

    #[test]
    fn every_symbol_of_a_user_file_is_indexed() {
        let set = FileDescriptorSet { file: vec![user_file()] };
        let index = build(Some(&set));
        for symbol in [
            "t.Outer",
            "t.Outer.Inner",
            "t.Outer.Colour",
            "t.Outer.Colour.RED",
            "t.Outer.RED",
            "t.Outer.size",
            "t.Outer.choice",
            "t.Svc",
            "t.Svc.Call",
        ] {
            assert_eq!(index.file_defining(symbol), Some("t.proto"), "{symbol}");
        }
        assert_eq!(index.file_defining("t.Inner"), None);
        // An import the set lacks is left out; one the index has goes along.
        let mut session = Session::new(&Arc::new(index), V1ALPHA_SERVICE);
        let sent = files(&mut session, MessageRequest::FileContainingSymbol("t.Svc.Call".into()));
        assert_eq!(sent, ["t.proto", "google/protobuf/any.proto"]);
    }

    #[test]
    fn a_user_set_that_cannot_be_indexed_is_left_out_whole() {
        let mut broken = user_file();
        broken.message_type[0].nested_type.push(DescriptorProto::default());
        let good = FileDescriptorProto { name: Some("good.proto".into()), ..user_file() };
        let set = FileDescriptorSet { file: vec![good, broken] };
        let mut session = session(Some(&set), V1ALPHA_SERVICE);
        assert!(!listed(&mut session).contains(&"t.Svc".to_string()));
        assert!(session.index.file_defining("t.Outer").is_none());
        assert!(session.index.file_defining("watchdog.v1.Function").is_some());
    }

    #[test]
    fn a_user_set_cannot_shadow_the_watchdogs_descriptors() {
        let mut file = user_file();
        file.name = Some("watchdog/v1/function.proto".into());
        let other = FileDescriptorProto {
            name: Some("other.proto".into()),
            package: Some("watchdog.v1".into()),
            service: vec![ServiceDescriptorProto { name: some("Function"), ..Default::default() }],
            ..Default::default()
        };
        let set = FileDescriptorSet { file: vec![file, other] };
        let mut session = session(Some(&set), V1ALPHA_SERVICE);
        let names = listed(&mut session);
        assert_eq!(names.iter().filter(|n| *n == "watchdog.v1.Function").count(), 1, "{names:?}");
        assert!(session.index.file_defining("t.Outer").is_none());
        assert_eq!(session.index.file_defining("watchdog.v1.Function"), Some("watchdog/v1/function.proto"));
    }

    #[test]
    fn v1alpha_is_v1_transcoded() {
        let request = v1alpha::ServerReflectionRequest {
            host: "h".into(),
            message_request: Some(v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "no.Such".into(),
            )),
        };
        let mut session = session(None, V1_SERVICE);
        let response: v1alpha::ServerReflectionResponse =
            transcode(session.answer(transcode(request.clone()).unwrap())).unwrap();
        assert_eq!(response.original_request, Some(request));
        let Some(v1alpha::server_reflection_response::MessageResponse::ErrorResponse(error)) =
            response.message_response
        else {
            panic!("{response:?}");
        };
        assert_eq!(error.error_code, Code::NotFound as i32);
    }
}
