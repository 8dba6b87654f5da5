//! cloudevents-sdk 0.9 as an oracle: each test shows one place where the SDK's event model or HTTP binding
//! rewrites or refuses what SPEC §6 says must reach the function as sent, and checks that our binding differs in
//! the way the spec asks. If the SDK is upgraded and a gap closes, the SDK half of the test says so.

use bytes::Bytes;
use cloudevents::binding::http::to_event;
use cloudevents::{AttributesReader, Data, Event, EventBuilder, EventBuilderV10};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use ng_watchdog::cloudevent::{
    attribute_text, detect, from_binary, from_structured, write_binary_headers, BindingError, CloudEvent, Mode,
};

fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_bytes(value).unwrap());
    }
    map
}

fn binary_headers(extra: &[(&str, &[u8])]) -> HeaderMap {
    let mut pairs: Vec<(&str, &[u8])> =
        vec![("ce-specversion", b"1.0"), ("ce-id", b"1"), ("ce-source", b"/s"), ("ce-type", b"t")];
    pairs.extend_from_slice(extra);
    headers(&pairs)
}

fn ours(event: &CloudEvent, name: &str) -> Option<String> {
    event.attributes.get(name).map(attribute_text)
}

#[test]
fn time_is_kept_as_sent_not_normalised_to_utc() {
    let sent = "2020-01-01T10:00:00.500+01:00";
    let body = format!(r#"{{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"{sent}"}}"#);

    let sdk: Event = serde_json::from_str(&body).unwrap();
    let sdk_time = serde_json::to_value(&sdk).unwrap()["time"].as_str().unwrap().to_string();
    assert_ne!(sdk_time, sent, "the SDK rewrites time");
    assert_eq!(sdk.time().unwrap().to_rfc3339(), "2020-01-01T09:00:00.500+00:00", "the SDK moves time to UTC");

    let parsed = from_structured(body.as_bytes()).unwrap();
    assert_eq!(ours(&parsed.event, "time").as_deref(), Some(sent));
    let event = from_binary(&binary_headers(&[("ce-time", sent.as_bytes())])).unwrap();
    assert_eq!(ours(&event, "time").as_deref(), Some(sent));
}

#[test]
fn float_extensions_are_accepted_as_their_source_text() {
    let body = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","ratio":1.50}"#;
    assert!(serde_json::from_str::<Event>(body).is_err(), "the SDK rejects float extensions");

    let parsed = from_structured(body.as_bytes()).unwrap();
    assert_eq!(ours(&parsed.event, "ratio").as_deref(), Some("1.50"));
}

#[test]
fn structured_detection_is_case_insensitive() {
    let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#.to_vec();
    let content_type = b"Application/CloudEvents+JSON; charset=utf-8";
    let map = headers(&[("content-type", content_type)]);

    assert!(to_event(&map, body.clone()).is_err(), "the SDK matches the media type case-sensitively");
    let lower = headers(&[("content-type", b"application/cloudevents+json; charset=utf-8")]);
    assert!(to_event(&lower, body.clone()).is_ok(), "the SDK reads the same event in lower case");

    assert_eq!(detect(&Method::POST, &map).unwrap(), Some(Mode::Structured));
    assert_eq!(from_structured(&body).unwrap().event.id, "1");
}

#[test]
fn unsupported_structured_format_is_415() {
    // The SDK does not recognise +xml as structured at all: with ce-* headers it reads the body as binary data.
    let map = binary_headers(&[("content-type", b"application/cloudevents+xml")]);
    let sdk = to_event(&map, b"<event/>".to_vec()).unwrap();
    assert_eq!(sdk.datacontenttype(), Some("application/cloudevents+xml"));

    let err = detect(&Method::POST, &map).unwrap_err();
    assert!(matches!(err, BindingError::UnsupportedFormat(ref f) if f == "xml"), "{err:?}");
    assert_eq!(err.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[test]
fn binary_header_values_are_percent_decoded() {
    let map = binary_headers(&[("ce-subject", b"caf%C3%A9 100%")]);

    let sdk = to_event(&map, Vec::new()).unwrap();
    assert_eq!(sdk.subject(), Some("caf%C3%A9 100%"), "the SDK does not percent-decode");

    assert_eq!(ours(&from_binary(&map).unwrap(), "subject").as_deref(), Some("café 100%"));
}

#[test]
fn raw_utf8_header_values_are_kept() {
    let map = binary_headers(&[("ce-subject", "café".as_bytes())]);

    assert!(to_event(&map, Vec::new()).is_err(), "the SDK refuses non-ASCII header values");

    assert_eq!(ours(&from_binary(&map).unwrap(), "subject").as_deref(), Some("café"));
}

#[test]
fn ce_datacontenttype_header_is_400() {
    let map = binary_headers(&[("ce-datacontenttype", b"text/plain")]);

    let sdk = to_event(&map, b"x".to_vec()).unwrap();
    assert_eq!(sdk.datacontenttype(), Some("text/plain"), "the SDK takes it as the content type");

    let err = from_binary(&map).unwrap_err();
    assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    assert!(matches!(err, BindingError::Invalid { ref attribute, .. } if attribute == "datacontenttype"));
}

#[test]
fn json_data_keeps_its_exact_source_text() {
    let data = r#"{"b": 1.0,  "a": [ ]}"#;
    let body = format!(r#"{{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{data}}}"#);

    let sdk: Event = serde_json::from_str(&body).unwrap();
    let Some(Data::Json(value)) = sdk.data() else { panic!("the SDK holds JSON data as a value") };
    assert_ne!(value.to_string(), data, "the SDK re-serialises JSON data");

    assert_eq!(from_structured(body.as_bytes()).unwrap().data, Bytes::from(data));
}

#[test]
fn reply_headers_are_percent_encoded() {
    // The SDK writes attribute values into headers as they are: a space and non-ASCII go out raw.
    let sdk_event =
        |subject: &str| EventBuilderV10::new().id("1").source("/s").ty("t").subject(subject).build().unwrap();
    let request = Request::<Option<Vec<u8>>>::try_from(sdk_event("a b")).unwrap();
    assert_eq!(request.headers()["ce-subject"], "a b");
    let request = Request::<Option<Vec<u8>>>::try_from(sdk_event("café")).unwrap();
    assert_eq!(request.headers()["ce-subject"].as_bytes(), "café".as_bytes());

    let mut event = CloudEvent {
        id: "1".into(),
        source: "/s".into(),
        spec_version: "1.0".into(),
        r#type: "t".into(),
        ..Default::default()
    };
    event.attributes.insert("subject".into(), ng_watchdog::cloudevent::string_value("a b café"));
    let mut map = HeaderMap::new();
    write_binary_headers(event.clone(), |name, value| {
        map.append(name, value);
    })
    .unwrap();
    assert_eq!(map["ce-subject"], "a%20b%20caf%C3%A9");
    // Our own reading of it gets the value back; the SDK, not decoding, would not.
    assert_eq!(ours(&from_binary(&map).unwrap(), "subject").as_deref(), Some("a b café"));
    assert_eq!(to_event(&map, Vec::new()).unwrap().subject(), Some("a%20b%20caf%C3%A9"));
}
