//! `watchdog.v1.CloudEvents`: `Send` and `SendBatch` deliver events in the spec's protobuf format with the same
//! reply and error rules as CloudEvents over HTTP ([`crate::ingress::cloudevents::deliver`]).

use std::sync::Arc;
use std::time::Duration;

use ::http::Request;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tonic::codegen::Service;
use tonic::Status;

use super::{grpc_timeout, nearer, too_large};
use crate::cloudevent::{self, Attr, CloudEvent};
use crate::envelope::pb::io::cloudevents::v1::cloud_event::Data;
use crate::envelope::pb::io::cloudevents::v1::CloudEventBatch;
use crate::envelope::pb::watchdog::v1::cloud_events_server::{CloudEvents, CloudEventsServer};
use crate::envelope::pb::watchdog::v1::{SendBatchResponse, SendResponse};
use crate::ingress::cloudevents::{deliver, event_envelope, DeliveryError, Transport};
use crate::ingress::Ingress;

/// Answers one call to the CloudEvents service.
pub(super) fn serve(ingress: Arc<Ingress>, req: Request<Incoming>) -> super::Call {
    let max = ingress.config.grpc_max_message_bytes;
    let timeout = grpc_timeout(req.headers());
    let (head, body) = req.into_parts();
    let service = CloudEventsService { ingress, head: head.clone(), timeout };
    let server = CloudEventsServer::new(service).max_decoding_message_size(max).max_encoding_message_size(max);
    let mut server = super::ACCEPTED_COMPRESSION.into_iter().fold(server, |s, e| s.accept_compressed(e));
    server.call(Request::from_parts(head, body))
}

/// The CloudEvents service for one request (the envelope needs that request's head).
struct CloudEventsService {
    ingress: Arc<Ingress>,
    head: ::http::request::Parts,
    timeout: Option<Duration>,
}

impl CloudEventsService {
    /// Delivers one event; its reply event, with the data inside, if the function made one.
    async fn deliver_one(&self, mut event: CloudEvent) -> Result<Option<CloudEvent>, Status> {
        let data = take_data(&mut event);
        canonical_attributes(&mut event);
        cloudevent::validate(&event).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let deadline = nearer(self.ingress.backend.timeout(), self.timeout);
        let mut envelope = event_envelope(&self.head, &event, data.len(), deadline).map_err(|e| e.grpc_status())?;
        // The call's metadata reaches the function, but not the gRPC framing's own headers.
        envelope.headers.retain(|h| !matches!(h.name.as_str(), "te" | "grpc-timeout" | "grpc-accept-encoding"));
        let body = crate::body::request_from(data);
        let reply = deliver(&self.ingress, envelope, event, body, self.head.clone(), Transport::Grpc(self.timeout))
            .finish()
            .await
            .map_err(DeliveryError::grpc_status)?;
        let Some(reply) = reply else { return Ok(None) };
        let max = self.ingress.config.grpc_max_message_bytes;
        let data = match Limited::new(reply.data, max).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large("reply", max)),
            Err(e) => return Err(Status::internal(format!("reading the function's reply: {e}"))),
        };
        let mut event = reply.event;
        event.data = Some(reply_data(&event, data));
        typed_attributes(&mut event);
        Ok(Some(event))
    }
}

#[tonic::async_trait]
impl CloudEvents for CloudEventsService {
    async fn send(&self, request: tonic::Request<CloudEvent>) -> Result<tonic::Response<SendResponse>, Status> {
        let reply = self.deliver_one(request.into_inner()).await?;
        Ok(tonic::Response::new(SendResponse { reply }))
    }

    async fn send_batch(
        &self,
        request: tonic::Request<CloudEventBatch>,
    ) -> Result<tonic::Response<SendBatchResponse>, Status> {
        let mut replies = Vec::new();
        // In order; the first failure is the call's status, as in an HTTP batch.
        for event in request.into_inner().events {
            if let Some(reply) = self.deliver_one(event).await? {
                replies.push(reply);
            }
        }
        Ok(tonic::Response::new(SendBatchResponse { replies }))
    }
}

/// The event's data as bytes (it travels as the body, never inside the envelope's event). A `proto_data` Any
/// gives its value, and its type URL as `dataschema` when the event names none.
fn take_data(event: &mut CloudEvent) -> Bytes {
    match event.data.take() {
        Some(Data::BinaryData(bytes)) => bytes,
        Some(Data::TextData(text)) => Bytes::from(text),
        Some(Data::ProtoData(any)) => {
            if !any.type_url.is_empty() && !event.attributes.contains_key("dataschema") {
                event.attributes.insert("dataschema".into(), cloudevent::string_value(any.type_url));
            }
            if !event.attributes.contains_key("datacontenttype") {
                event.attributes.insert("datacontenttype".into(), cloudevent::string_value("application/protobuf"));
            }
            Bytes::from(any.value)
        }
        None => Bytes::new(),
    }
}

/// Typed attribute values (booleans, integers, timestamps…) as canonical strings, so a function sees an event
/// the same way whichever transport carried it.
fn canonical_attributes(event: &mut CloudEvent) {
    for value in event.attributes.values_mut() {
        *value = cloudevent::string_value(cloudevent::attribute_text(value));
    }
}

/// A reply's attributes in the protobuf format's own types where the spec fixes them (`time` a Timestamp,
/// `dataschema` and 0.3's `schemaurl` a URI), which strict consumers (sdk-go) insist on; extensions stay
/// strings, as their types are unknown.
fn typed_attributes(event: &mut CloudEvent) {
    for (name, value) in &mut event.attributes {
        let Some(Attr::CeString(text)) = &value.attr else { continue };
        let typed = match name.as_str() {
            // Validated as RFC 3339 already; a leap second, which a Timestamp cannot hold, stays a string.
            "time" => text.parse::<prost_types::Timestamp>().ok().map(Attr::CeTimestamp),
            "dataschema" | "schemaurl" => Some(Attr::CeUri(text.clone())),
            _ => None,
        };
        if typed.is_some() {
            value.attr = typed;
        }
    }
}

/// A reply's data in the protobuf format: text for textual media types that hold UTF-8, else bytes.
fn reply_data(event: &CloudEvent, data: Bytes) -> Data {
    let content_type = event.attributes.get("datacontenttype").map(cloudevent::attribute_text).unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let textual = essence.starts_with("text/")
        || essence.ends_with("/json")
        || essence.ends_with("+json")
        || essence.ends_with("/xml")
        || essence.ends_with("+xml");
    match (textual, String::from_utf8(data.to_vec())) {
        (true, Ok(text)) => Data::TextData(text),
        _ => Data::BinaryData(data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_of_every_kind_becomes_the_body() {
        let mut event = CloudEvent { data: Some(Data::TextData("hi".into())), ..Default::default() };
        assert_eq!(take_data(&mut event), "hi");
        assert!(event.data.is_none());
        let any = prost_types::Any { type_url: "type.googleapis.com/pkg.Msg".into(), value: vec![1, 2] };
        let mut event = CloudEvent { data: Some(Data::ProtoData(any)), ..Default::default() };
        assert_eq!(take_data(&mut event), &[1u8, 2][..]);
        assert_eq!(cloudevent::attribute_text(&event.attributes["dataschema"]), "type.googleapis.com/pkg.Msg");
        assert_eq!(cloudevent::attribute_text(&event.attributes["datacontenttype"]), "application/protobuf");
    }

    #[test]
    fn reply_attributes_get_their_protobuf_types() {
        let mut event = CloudEvent::default();
        for (name, text) in [
            ("time", "2021-01-01T00:00:00.5+02:00"),
            ("dataschema", "http://example.com/schema"),
            ("subject", "s"),
            ("myext", "2021-01-01T00:00:00Z"),
        ] {
            event.attributes.insert(name.into(), cloudevent::string_value(text));
        }
        typed_attributes(&mut event);
        let attr = |name: &str| event.attributes[name].attr.clone().unwrap();
        let time = prost_types::Timestamp { seconds: 1_609_452_000, nanos: 500_000_000 };
        assert_eq!(attr("time"), Attr::CeTimestamp(time));
        assert_eq!(attr("dataschema"), Attr::CeUri("http://example.com/schema".into()));
        assert_eq!(attr("subject"), Attr::CeString("s".into()));
        assert_eq!(attr("myext"), Attr::CeString("2021-01-01T00:00:00Z".into()));
    }

    #[test]
    fn replies_are_text_only_for_textual_utf8() {
        let mut event = CloudEvent::default();
        event.attributes.insert("datacontenttype".into(), cloudevent::string_value("application/json"));
        assert_eq!(reply_data(&event, Bytes::from_static(b"{}")), Data::TextData("{}".into()));
        assert_eq!(reply_data(&event, Bytes::from_static(b"\xff")), Data::BinaryData(Bytes::from_static(b"\xff")));
        let plain = CloudEvent::default();
        assert_eq!(reply_data(&plain, Bytes::from_static(b"x")), Data::BinaryData(Bytes::from_static(b"x")));
    }
}
