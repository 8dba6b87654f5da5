//! The CloudEvents JSON event format (structured and batched modes). Values are read as raw JSON text so that
//! attribute strings and JSON data reach the function exactly as sent.

use std::collections::BTreeMap;

use base64::Engine;
use bytes::Bytes;
use serde_json::value::RawValue;

use super::binding::{is_json_media_type, set_attribute, validate, BindingError};
use super::{attribute_text, attributes, CloudEvent};

/// One event with its data; the data is kept apart and `CloudEvent.data` stays unset.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The event's attributes.
    pub event: CloudEvent,
    /// The event's data, decoded (`data_base64`) or as its source text (JSON `data`); empty when there is none.
    pub data: Bytes,
}

/// A structured-mode JSON event (the request body).
///
/// A member name that appears twice keeps its last value, as most JSON parsers do.
pub fn from_structured(body: &[u8]) -> Result<Parsed, BindingError> {
    let object: RawObject = serde_json::from_slice(body).map_err(|e| bad_json(&e, "one JSON object"))?;
    parse_object(object)
}

/// A batch: a JSON array of structured events (an empty array is no events).
pub fn from_batch(body: &[u8]) -> Result<Vec<Parsed>, BindingError> {
    let batch: Vec<RawObject> = serde_json::from_slice(body).map_err(|e| bad_json(&e, "a JSON array of objects"))?;
    let mut out = Vec::with_capacity(batch.len());
    for (index, object) in batch.into_iter().enumerate() {
        let parsed = parse_object(object).map_err(|e| match e {
            BindingError::Invalid { attribute, reason } => {
                BindingError::Invalid { attribute, reason: format!("{reason} (batch event {index})") }
            }
            other => other,
        })?;
        out.push(parsed);
    }
    Ok(out)
}

/// Says whether the body is not JSON at all or JSON of the wrong shape; serde_json's text gives the position.
fn bad_json(error: &serde_json::Error, expected: &str) -> BindingError {
    match error.classify() {
        serde_json::error::Category::Data => BindingError::BadJson(format!("the body is not {expected}: {error}")),
        _ => BindingError::BadJson(format!("the body is not valid JSON: {error}")),
    }
}

/// A JSON object's members, values unparsed. serde_json keeps the last of duplicate names; the map is ordered so
/// that the first bad member named in an error does not depend on hashing.
type RawObject<'a> = BTreeMap<String, &'a RawValue>;

/// Attributes the spec defines for each version, which must be JSON strings; extensions may also be numbers or
/// booleans.
fn is_context_attribute(version: &str, name: &str) -> bool {
    const BOTH: [&str; 7] = ["id", "source", "specversion", "type", "datacontenttype", "subject", "time"];
    BOTH.contains(&name)
        || match version {
            "1.0" => name == "dataschema",
            "0.3" => name == "schemaurl" || name == "datacontentencoding",
            // Validation rejects the version anyway; being strict about every known name is the safe side.
            _ => matches!(name, "dataschema" | "schemaurl" | "datacontentencoding"),
        }
}

/// What a raw JSON value is, from its first byte (serde_json has already checked it is valid JSON).
#[derive(PartialEq)]
enum Kind {
    Null,
    String,
    Scalar,
    Composite(&'static str),
}

fn kind(raw: &RawValue) -> Kind {
    match raw.get().trim_start().as_bytes().first() {
        Some(b'n') => Kind::Null,
        Some(b'"') => Kind::String,
        Some(b'{') => Kind::Composite("an object"),
        Some(b'[') => Kind::Composite("an array"),
        _ => Kind::Scalar,
    }
}

/// The unescaped text of a JSON string.
fn json_string(raw: &RawValue) -> Option<String> {
    serde_json::from_str(raw.get()).ok()
}

fn parse_object(object: RawObject<'_>) -> Result<Parsed, BindingError> {
    // The spec version decides which names are context attributes, so it is read first.
    let version = object.get("specversion").and_then(|raw| json_string(raw)).unwrap_or_default();

    let mut event = CloudEvent::default();
    let (mut data, mut data_base64) = (None, None);
    for (name, raw) in object {
        match (name.as_str(), kind(raw)) {
            // JSON null means absent, for the data as for attributes.
            (_, Kind::Null) => {}
            ("data", _) => data = Some(raw),
            ("data_base64", _) => data_base64 = Some(raw),
            (_, Kind::Composite(what)) => {
                return Err(BindingError::invalid(name, format!("is {what}; attributes must be strings")))
            }
            (_, Kind::String) => {
                let text =
                    json_string(raw).ok_or_else(|| BindingError::invalid(&name, "is not a valid JSON string"))?;
                set_attribute(&mut event, &name, text);
            }
            (_, Kind::Scalar) if is_context_attribute(&version, &name) => {
                return Err(BindingError::invalid(name, "must be a JSON string"))
            }
            // Numbers and booleans keep their JSON source text (`1.5`, `true`), as the binary mode would carry them.
            (_, Kind::Scalar) => set_attribute(&mut event, &name, raw.get().trim().to_string()),
        }
    }
    validate(&event)?;
    let data = match (data, data_base64) {
        (Some(_), Some(_)) => return Err(BindingError::invalid("data_base64", "cannot be sent together with data")),
        (None, Some(raw)) => decode_base64("data_base64", raw)?,
        (Some(raw), None) => event_data(&event, raw)?,
        (None, None) => Vec::new(),
    };
    if event.spec_version == "0.3" {
        // The data is decoded now: an encoding left on the event would tell the function to decode it again.
        event.attributes.remove("datacontentencoding");
    }
    Ok(Parsed { event, data: Bytes::from(data) })
}

/// The bytes of a `data` member: JSON data as its exact source text, other data as the string it holds.
fn event_data(event: &CloudEvent, raw: &RawValue) -> Result<Vec<u8>, BindingError> {
    let text_of = |name: &str| event.attributes.get(name).map(attribute_text);
    if event.spec_version == "0.3" {
        if let Some(encoding) = text_of("datacontentencoding") {
            if !encoding.eq_ignore_ascii_case("base64") {
                return Err(BindingError::invalid(
                    "datacontentencoding",
                    format!("is {encoding:?}; only \"base64\" is supported"),
                ));
            }
            return decode_base64("data", raw);
        }
    }
    let is_json = text_of("datacontenttype").is_none_or(|ct| is_json_media_type(&ct));
    if !is_json && kind(raw) == Kind::String {
        let text = json_string(raw).ok_or_else(|| BindingError::invalid("data", "is not a valid JSON string"))?;
        return Ok(text.into_bytes());
    }
    Ok(raw.get().as_bytes().to_vec())
}

fn decode_base64(name: &str, raw: &RawValue) -> Result<Vec<u8>, BindingError> {
    let text = json_string(raw).ok_or_else(|| BindingError::invalid(name, "must be a base64 JSON string"))?;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| BindingError::invalid(name, format!("is not valid base64 ({e})")))
}

/// A structured JSON object for a reply event and its data: attributes as JSON strings; JSON data as JSON, other
/// UTF-8 data as a string, anything else base64 (`data_base64`, or `datacontentencoding` in spec 0.3).
pub fn to_structured_json(event: &CloudEvent, data: &[u8]) -> Vec<u8> {
    let mut members: Vec<(String, String)> = attributes(event)
        .into_iter()
        // The data members are written below; an attribute of that name would make the object ambiguous.
        .filter(|(name, _)| name != "data" && name != "data_base64")
        .map(|(name, value)| (name, json_quote(&value)))
        .collect();
    if !data.is_empty() {
        let base64 = |bytes| base64::engine::general_purpose::STANDARD.encode(bytes);
        let content_type = event.attributes.get("datacontenttype").map(attribute_text);
        let is_json = content_type.is_none_or(|ct| is_json_media_type(&ct));
        let encoding = event.attributes.get("datacontentencoding").map(attribute_text);
        let v03 = event.spec_version == "0.3";
        if v03 && encoding.is_some_and(|e| e.eq_ignore_ascii_case("base64")) {
            members.push(("data".into(), json_quote(&base64(data))));
        } else if let Some(raw) = is_json.then(|| serde_json::from_slice::<&RawValue>(data).ok()).flatten() {
            members.push(("data".into(), raw.get().to_string()));
        } else if let Ok(text) = std::str::from_utf8(data) {
            members.push(("data".into(), json_quote(text)));
        } else if v03 {
            // 0.3 has no data_base64: the encoding is an attribute and the data a base64 string.
            members.retain(|(name, _)| name != "datacontentencoding");
            members.push(("datacontentencoding".into(), json_quote("base64")));
            members.push(("data".into(), json_quote(&base64(data))));
        } else {
            members.push(("data_base64".into(), json_quote(&base64(data))));
        }
    }
    let mut out = Vec::with_capacity(64 + data.len());
    out.push(b'{');
    for (i, (name, value)) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(json_quote(name).as_bytes());
        out.push(b':');
        out.extend_from_slice(value.as_bytes());
    }
    out.push(b'}');
    out
}

/// A batch body (`[event, event]`) for reply events.
pub fn to_batch_json(events: &[(CloudEvent, Bytes)]) -> Vec<u8> {
    let mut out = vec![b'['];
    for (i, (event, data)) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&to_structured_json(event, data));
    }
    out.push(b']');
    out
}

fn json_quote(text: &str) -> String {
    // Serializing a str cannot fail; the fallback keeps this panic-free regardless.
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloudevent::string_value;
    use http::StatusCode;
    use proptest::prelude::*;

    fn attr(parsed: &Parsed, name: &str) -> Option<String> {
        parsed.event.attributes.get(name).map(attribute_text)
    }

    fn invalid_attribute(err: BindingError) -> String {
        assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{err}");
        match err {
            BindingError::Invalid { attribute, .. } => attribute,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    const HEAD: &str = r#""specversion":"1.0","id":"1","source":"/s","type":"t""#;

    fn parse(members: &str) -> Result<Parsed, BindingError> {
        from_structured(format!("{{{HEAD}{members}}}").as_bytes())
    }

    #[test]
    fn structured_required_and_optional_both_versions() {
        for version in ["1.0", "0.3"] {
            let body = format!(
                r#"{{"specversion":"{version}","id":"abc","source":"/src","type":"com.example",
                   "time":"2020-01-01T10:00:00.5+01:00","subject":"s\u00e9","myext":"x"}}"#
            );
            let parsed = from_structured(body.as_bytes()).unwrap();
            let e = &parsed.event;
            assert_eq!(
                (e.spec_version.as_str(), e.id.as_str(), e.source.as_str(), e.r#type.as_str()),
                (version, "abc", "/src", "com.example")
            );
            assert_eq!(attr(&parsed, "time").as_deref(), Some("2020-01-01T10:00:00.5+01:00"));
            assert_eq!(attr(&parsed, "subject").as_deref(), Some("sé"));
            assert_eq!(attr(&parsed, "myext").as_deref(), Some("x"));
            assert!(parsed.data.is_empty());
            assert!(e.data.is_none());
        }
    }

    #[test]
    fn json_data_is_its_exact_source_text() {
        let parsed = parse(r#","data":{"a": 1 ,"b":[1.50, "\u00e9"]}"#).unwrap();
        assert_eq!(parsed.data, r#"{"a": 1 ,"b":[1.50, "\u00e9"]}"#);
        assert!(parsed.event.data.is_none(), "data never goes inside the event");
        let parsed = parse(r#","datacontenttype":"application/vnd.x+json; charset=utf-8","data":"text""#).unwrap();
        assert_eq!(parsed.data, r#""text""#, "a JSON string as JSON data keeps its quotes");
        assert_eq!(attr(&parsed, "datacontenttype").as_deref(), Some("application/vnd.x+json; charset=utf-8"));
        assert_eq!(parse(r#","datacontenttype":"text/json","data":12.0"#).unwrap().data, "12.0");
    }

    #[test]
    fn non_json_data_string_is_unescaped() {
        let parsed = parse(r#","datacontenttype":"text/plain","data":"line\nnext \u00e9""#).unwrap();
        assert_eq!(parsed.data, "line\nnext é");
        // Not a string: kept as source text.
        let parsed = parse(r#","datacontenttype":"text/plain","data":[1, 2]"#).unwrap();
        assert_eq!(parsed.data, "[1, 2]");
    }

    #[test]
    fn data_base64_is_decoded() {
        let parsed = parse(r#","datacontenttype":"application/octet-stream","data_base64":"AP8Q""#).unwrap();
        assert_eq!(parsed.data, &[0u8, 0xff, 0x10][..]);
        assert_eq!(invalid_attribute(parse(r#","data_base64":"@@@""#).unwrap_err()), "data_base64");
        assert_eq!(invalid_attribute(parse(r#","data_base64":12"#).unwrap_err()), "data_base64");
        let err = parse(r#","data":"x","data_base64":"AA==""#).unwrap_err();
        assert_eq!(invalid_attribute(err), "data_base64");
        assert!(parse(r#","data":null,"data_base64":null"#).unwrap().data.is_empty());
    }

    #[test]
    fn spec_03_datacontentencoding_base64() {
        let body = r#"{"specversion":"0.3","id":"1","source":"/s","type":"t","datacontentencoding":"base64",
                      "datacontenttype":"application/octet-stream","data":"AP8="}"#;
        let parsed = from_structured(body.as_bytes()).unwrap();
        assert_eq!(parsed.data, &[0u8, 0xff][..]);
        assert_eq!(attr(&parsed, "datacontentencoding"), None, "the data is decoded, so the encoding is gone");
        let bad = body.replace("AP8=", "%%");
        assert_eq!(invalid_attribute(from_structured(bad.as_bytes()).unwrap_err()), "data");
        let other = body.replace("\"base64\"", "\"gzip\"");
        assert_eq!(invalid_attribute(from_structured(other.as_bytes()).unwrap_err()), "datacontentencoding");
        // In 1.0 datacontentencoding is only an extension: data is not decoded.
        let v10 = body.replace("\"0.3\"", "\"1.0\"");
        assert_eq!(from_structured(v10.as_bytes()).unwrap().data, "AP8=");
    }

    #[test]
    fn extension_numbers_and_booleans_keep_source_text() {
        let parsed = parse(r#","ratio":1.50,"count":-3,"big":1e400,"flag":true,"off":false,"gone":null"#).unwrap();
        assert_eq!(attr(&parsed, "ratio").as_deref(), Some("1.50"));
        assert_eq!(attr(&parsed, "count").as_deref(), Some("-3"));
        assert_eq!(attr(&parsed, "big").as_deref(), Some("1e400"));
        assert_eq!(attr(&parsed, "flag").as_deref(), Some("true"));
        assert_eq!(attr(&parsed, "off").as_deref(), Some("false"));
        assert_eq!(attr(&parsed, "gone"), None, "null is absent");
    }

    #[test]
    fn context_attributes_must_be_strings() {
        for member in [r#","time":5"#, r#","subject":true"#, r#","datacontenttype":1"#, r#","dataschema":1"#] {
            let name = member[2..].split('"').next().unwrap().to_string();
            assert_eq!(invalid_attribute(parse(member).unwrap_err()), name, "{member}");
        }
        let body = r#"{"specversion":"1.0","id":7,"source":"/s","type":"t"}"#;
        assert_eq!(invalid_attribute(from_structured(body.as_bytes()).unwrap_err()), "id");
        let body = r#"{"specversion":1.0,"id":"1","source":"/s","type":"t"}"#;
        assert_eq!(invalid_attribute(from_structured(body.as_bytes()).unwrap_err()), "specversion");
        let body = r#"{"specversion":"0.3","id":"1","source":"/s","type":"t","schemaurl":1}"#;
        assert_eq!(invalid_attribute(from_structured(body.as_bytes()).unwrap_err()), "schemaurl");
        // schemaurl is only an extension in 1.0.
        assert!(parse(r#","schemaurl":1"#).is_ok());
    }

    #[test]
    fn objects_and_arrays_as_attributes_are_400() {
        assert_eq!(invalid_attribute(parse(r#","ext":{"a":1}"#).unwrap_err()), "ext");
        assert_eq!(invalid_attribute(parse(r#","ext":[]"#).unwrap_err()), "ext");
    }

    #[test]
    fn structured_validation_errors_name_the_attribute() {
        let body = r#"{"specversion":"1.0","id":"1","type":"t"}"#;
        let err = from_structured(body.as_bytes()).unwrap_err();
        assert_eq!(err.to_string(), "invalid CloudEvent: attribute \"source\" is missing or empty");
        let body = r#"{"specversion":"1.0","id":"1","source":null,"type":"t"}"#;
        assert_eq!(invalid_attribute(from_structured(body.as_bytes()).unwrap_err()), "source");
        let body = r#"{"specversion":"9.9","id":"1","source":"/s","type":"t"}"#;
        assert_eq!(invalid_attribute(from_structured(body.as_bytes()).unwrap_err()), "specversion");
        assert_eq!(invalid_attribute(parse(r#","time":"noon""#).unwrap_err()), "time");
        assert_eq!(invalid_attribute(parse(r#","Bad":"x""#).unwrap_err()), "Bad");
        // Duplicate members: the last one wins.
        assert_eq!(parse(r#","id":"2""#).unwrap().event.id, "2");
    }

    #[test]
    fn bad_json_is_400_with_position() {
        for body in ["", "{", "[]", "\"x\"", "{} x", "{\"id\":}", "\u{feff}{}"] {
            let err = from_structured(body.as_bytes()).unwrap_err();
            assert!(matches!(err, BindingError::BadJson(_)), "{body:?}: {err:?}");
            assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        }
        let err = from_structured(b"{\n  \"id\": oops}").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = from_structured(b"[]").unwrap_err().to_string();
        assert!(err.contains("not one JSON object") && err.contains("column"), "{err}");
        assert!(from_structured(b"{").unwrap_err().to_string().contains("not valid JSON"));
        assert!(matches!(from_structured(b"{\"id\":\"\xff\"}").unwrap_err(), BindingError::BadJson(_)));
    }

    #[test]
    fn batches() {
        assert!(from_batch(b"[]").unwrap().is_empty());
        assert!(from_batch(b" [ ] ").unwrap().is_empty());
        let body = format!(r#"[{{{HEAD},"data":{{"n":1}}}}, {{{HEAD},"datacontenttype":"text/plain","data":"two"}}]"#);
        let events = from_batch(body.as_bytes()).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].data, r#"{"n":1}"#);
        assert_eq!(events[1].data, "two");
        for bad in ["{}", "[1]", "[[]]", "[{}", "null"] {
            let err = from_batch(bad.as_bytes()).unwrap_err();
            assert!(matches!(err, BindingError::BadJson(_)), "{bad}: {err:?}");
        }
        assert!(from_batch(b"{}").unwrap_err().to_string().contains("not a JSON array"));
        let body = format!(r#"[{{{HEAD}}}, {{"specversion":"1.0","id":"2","type":"t"}}]"#);
        let err = from_batch(body.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("batch event 1"), "{err}");
        assert_eq!(invalid_attribute(err), "source");
    }

    fn reply(version: &str, content_type: Option<&str>) -> CloudEvent {
        let mut event = CloudEvent {
            id: "r1".into(),
            source: "/fwatchdog".into(),
            spec_version: version.into(),
            r#type: "t.reply".into(),
            ..Default::default()
        };
        if let Some(ct) = content_type {
            event.attributes.insert("datacontenttype".into(), string_value(ct));
        }
        event
    }

    fn as_value(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn structured_reply_data_forms() {
        let json = to_structured_json(&reply("1.0", None), br#"{"a": 1}"#);
        assert_eq!(
            String::from_utf8(json).unwrap(),
            r#"{"specversion":"1.0","id":"r1","source":"/fwatchdog","type":"t.reply","data":{"a": 1}}"#
        );
        let v = as_value(&to_structured_json(&reply("1.0", Some("application/json")), b"not json"));
        assert_eq!(v["data"], "not json");
        let v = as_value(&to_structured_json(&reply("1.0", Some("text/plain")), b"[1]"));
        assert_eq!(v["data"], "[1]", "non-JSON content type: a string even if it parses");
        assert_eq!(v["datacontenttype"], "text/plain");
        let v = as_value(&to_structured_json(&reply("1.0", Some("application/octet-stream")), &[0, 0xff]));
        assert_eq!(v["data_base64"], "AP8=");
        assert!(v.get("data").is_none());
        let v = as_value(&to_structured_json(&reply("1.0", None), b""));
        assert!(v.get("data").is_none() && v.get("data_base64").is_none());
        let v = as_value(&to_structured_json(&reply("0.3", None), &[0, 0xff]));
        assert_eq!((&v["datacontentencoding"], &v["data"]), (&"base64".into(), &"AP8=".into()));
    }

    #[test]
    fn structured_reply_parses_back() {
        for (version, ct, data) in [
            ("1.0", Some("application/json"), &br#"{"x": [1, 2]}"#[..]),
            ("1.0", Some("text/plain"), b"h\xc3\xa9 \"q\""),
            ("1.0", None, b"\x00\x01\xfe"),
            ("0.3", Some("application/octet-stream"), b"\x00\x01\xfe"),
            ("0.3", Some("text/plain"), b"plain"),
        ] {
            let mut event = reply(version, ct);
            event.attributes.insert("time".into(), string_value("2020-01-01T00:00:00+02:00"));
            let parsed = from_structured(&to_structured_json(&event, data)).unwrap();
            assert_eq!(parsed.data, data, "{version} {ct:?}");
            assert_eq!(parsed.event.id, "r1");
            assert_eq!(parsed.event.attributes["time"], string_value("2020-01-01T00:00:00+02:00"));
        }
    }

    #[test]
    fn batch_reply() {
        assert_eq!(to_batch_json(&[]), b"[]");
        let events = [
            (reply("1.0", None), Bytes::from_static(b"1")),
            (reply("1.0", Some("text/plain")), Bytes::from_static(b"x")),
        ];
        let body = to_batch_json(&events);
        let parsed = from_batch(&body).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!((&parsed[0].data[..], &parsed[1].data[..]), (&b"1"[..], &b"x"[..]));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            for result in [from_structured(&body).map(|_| ()), from_batch(&body).map(|_| ())] {
                if let Err(e) = result {
                    prop_assert!(matches!(e.status().as_u16(), 400 | 415), "{e}");
                }
            }
        }

        #[test]
        fn arbitrary_json_shaped_bodies_never_panic(
            members in proptest::collection::vec(
                (prop_oneof![
                    Just("specversion"), Just("id"), Just("source"), Just("type"), Just("time"), Just("data"),
                    Just("data_base64"), Just("datacontenttype"), Just("datacontentencoding"), Just("ext"),
                ], prop_oneof![
                    Just("\"1.0\"".to_string()), Just("\"0.3\"".to_string()), Just("\"base64\"".to_string()),
                    Just("\"text/plain\"".to_string()), Just("null".to_string()), Just("{}".to_string()),
                    any::<i64>().prop_map(|n| n.to_string()), any::<String>().prop_map(|s| json_quote(&s)),
                ]),
                0..8,
            )
        ) {
            let body: Vec<String> = members.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            let object = format!("{{{}}}", body.join(","));
            let batch = format!("[{object}]");
            for result in [from_structured(object.as_bytes()).map(|_| ()), from_batch(batch.as_bytes()).map(|_| ())] {
                if let Err(e) = result {
                    prop_assert!(e.status().as_u16() == 400, "{e}");
                }
            }
        }
    }
}
