//! CloudEvents (SPEC §6): the HTTP binding (binary, structured and batched modes) and the JSON event format,
//! turning requests into [`CloudEvent`]s for the envelope and reply events back into HTTP. No I/O here.

mod binding;
mod json;

pub use binding::{
    content_type_value, detect, encoded_value, from_binary, from_binary_reusing, validate, write_binary_headers,
    BindingError, Mode, USUAL_BINARY_HEADER_COUNT,
};
pub use json::{from_batch, from_structured, to_batch_json, to_structured_json, Parsed};

pub(crate) use crate::envelope::pb::io::cloudevents::v1::cloud_event::cloud_event_attribute_value::Attr;
pub use crate::envelope::pb::io::cloudevents::v1::cloud_event::CloudEventAttributeValue;
pub use crate::envelope::pb::io::cloudevents::v1::CloudEvent;

/// An attribute value in the CloudEvents canonical string form. Incoming events carry every attribute as a
/// string exactly as sent, so this is mostly the identity; typed values (from SDK replies or gRPC clients) are
/// formatted as the spec's type system says.
pub fn attribute_text(value: &CloudEventAttributeValue) -> String {
    use base64::Engine;
    match &value.attr {
        Some(Attr::CeBoolean(b)) => b.to_string(),
        Some(Attr::CeInteger(i)) => i.to_string(),
        Some(Attr::CeString(s) | Attr::CeUri(s) | Attr::CeUriRef(s)) => s.clone(),
        Some(Attr::CeBytes(b)) => base64::engine::general_purpose::STANDARD.encode(b),
        Some(Attr::CeTimestamp(t)) => {
            // RFC 3339 in UTC with only as many fraction digits as needed.
            let ts = prost_types::Timestamp { seconds: t.seconds, nanos: t.nanos };
            ts.to_string()
        }
        None => String::new(),
    }
}

/// Every attribute of `event` as (name, canonical string), required ones first: `specversion`, `id`,
/// `source`, `type`, then the optional ones and extensions in name order. Empty required attributes are skipped.
pub fn attributes(event: &CloudEvent) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(4 + event.attributes.len());
    for (name, value) in
        [("specversion", &event.spec_version), ("id", &event.id), ("source", &event.source), ("type", &event.r#type)]
    {
        if !value.is_empty() {
            out.push((name.to_string(), value.clone()));
        }
    }
    out.extend(event.attributes.iter().map(|(k, v)| (k.clone(), attribute_text(v))));
    out
}

/// An attribute value holding `text` as a string.
pub fn string_value(text: impl Into<String>) -> CloudEventAttributeValue {
    CloudEventAttributeValue { attr: Some(Attr::CeString(text.into())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_values_in_canonical_form() {
        let v = |attr| CloudEventAttributeValue { attr: Some(attr) };
        assert_eq!(attribute_text(&v(Attr::CeBoolean(true))), "true");
        assert_eq!(attribute_text(&v(Attr::CeInteger(-3))), "-3");
        assert_eq!(attribute_text(&v(Attr::CeBytes(vec![1, 2, 3].into()))), "AQID");
        let ts = prost_types::Timestamp { seconds: 0, nanos: 500_000_000 };
        assert_eq!(attribute_text(&v(Attr::CeTimestamp(ts))), "1970-01-01T00:00:00.500Z");
        assert_eq!(attribute_text(&string_value("2020-01-01T00:00:00+01:00")), "2020-01-01T00:00:00+01:00");
    }

    #[test]
    fn attributes_put_required_first() {
        let mut event = CloudEvent {
            id: "1".into(),
            source: "/s".into(),
            spec_version: "1.0".into(),
            r#type: "t".into(),
            ..Default::default()
        };
        event.attributes.insert("zeta".into(), string_value("z"));
        event.attributes.insert("alpha".into(), string_value("a"));
        let names: Vec<_> = attributes(&event).into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["specversion", "id", "source", "type", "alpha", "zeta"]);
    }
}
