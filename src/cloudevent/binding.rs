//! The CloudEvents HTTP protocol binding (SPEC §6): content-mode detection, binary-mode headers in both
//! directions, and the checks every incoming event passes. Attribute values are kept exactly as sent.

use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use bytes::Bytes;

use super::{attribute_text, string_value, CloudEvent, CloudEventAttributeValue};

/// How a request carries an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Attributes in `ce-*` headers, data in the body.
    Binary,
    /// One JSON event in the body (`application/cloudevents+json`).
    Structured,
    /// A JSON array of events in the body (`application/cloudevents-batch+json`).
    Batch,
}

/// Why a request is not an acceptable CloudEvent.
#[derive(Debug, thiserror::Error)]
pub enum BindingError {
    /// 400: an attribute is missing, malformed or not allowed; `attribute` names it.
    #[error("invalid CloudEvent: attribute \"{attribute}\" {reason}")]
    Invalid {
        /// The attribute's name as sent.
        attribute: String,
        /// What is wrong with it, worded to follow the quoted name.
        reason: String,
    },
    /// 415: a structured or batched media type whose `+format` is not `json`; holds the format, empty when the
    /// media type has none.
    #[error("{}", unsupported_message(.0))]
    UnsupportedFormat(String),
    /// 400: the body is not valid JSON, or not the object or array expected.
    #[error("invalid CloudEvent JSON: {0}")]
    BadJson(String),
}

fn unsupported_message(format: &str) -> String {
    if format.is_empty() {
        "unsupported CloudEvents media type: it has no +format suffix (only +json is supported)".to_string()
    } else {
        format!("unsupported CloudEvents format {format:?} (only json is supported)")
    }
}

impl BindingError {
    /// The HTTP status this error answers with: 415 for an unsupported format, else 400.
    pub fn status(&self) -> StatusCode {
        match self {
            BindingError::UnsupportedFormat(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            BindingError::Invalid { .. } | BindingError::BadJson(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// An [`BindingError::Invalid`] for `attribute`.
    pub(crate) fn invalid(attribute: impl Into<String>, reason: impl Into<String>) -> Self {
        BindingError::Invalid { attribute: attribute.into(), reason: reason.into() }
    }
}

const BATCH_MEDIA_TYPE: &str = "application/cloudevents-batch";
const STRUCTURED_MEDIA_TYPE: &str = "application/cloudevents";
// A `HeaderName`, not a `&str`: every POST is checked for it, and a string name is parsed again on each lookup.
const SPEC_VERSION_HEADER: HeaderName = HeaderName::from_static("ce-specversion");

/// SPEC §6 detection: which mode a request uses, or `None` for plain HTTP. Only POST is inspected.
pub fn detect(method: &Method, headers: &HeaderMap) -> Result<Option<Mode>, BindingError> {
    if method != Method::POST {
        return Ok(None);
    }
    if let Some(content_type) = headers.get(CONTENT_TYPE) {
        // Most POSTs are not events: look at the raw bytes before building the normalised media type.
        let raw = content_type.as_bytes();
        let start = raw.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(raw.len());
        let maybe_event = raw[start..]
            .get(..STRUCTURED_MEDIA_TYPE.len())
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(STRUCTURED_MEDIA_TYPE.as_bytes()));
        if maybe_event {
            let media = media_type(raw);
            // The batch prefix extends the structured one, so it must be tried first.
            if let Some(rest) = media.strip_prefix(BATCH_MEDIA_TYPE) {
                return check_format(rest).map(|()| Some(Mode::Batch));
            }
            if let Some(rest) = media.strip_prefix(STRUCTURED_MEDIA_TYPE) {
                return check_format(rest).map(|()| Some(Mode::Structured));
            }
        }
    }
    Ok(headers.contains_key(SPEC_VERSION_HEADER).then_some(Mode::Binary))
}

/// The media type of a Content-Type value: before any `;`, trimmed, ASCII lower case. Header values may hold
/// non-UTF-8 bytes; those can never match a CloudEvents type, so a lossy view is enough.
pub(crate) fn media_type(content_type: &[u8]) -> String {
    let end = content_type.iter().position(|&b| b == b';').unwrap_or(content_type.len());
    String::from_utf8_lossy(&content_type[..end]).trim().to_ascii_lowercase()
}

/// Whether a JSON-ish media type: `application/json`, `*/json` or `*+json`.
pub(crate) fn is_json_media_type(content_type: &str) -> bool {
    let media = media_type(content_type.as_bytes());
    media.ends_with("/json") || media.ends_with("+json")
}

/// `rest` is what follows `application/cloudevents[-batch]`; the format is the media type's `+suffix` (SPEC §6),
/// and only `json` is supported.
fn check_format(rest: &str) -> Result<(), BindingError> {
    match rest.rsplit_once('+') {
        Some((_, "json")) => Ok(()),
        Some((_, format)) if !format.is_empty() => Err(BindingError::UnsupportedFormat(format.to_string())),
        _ => Err(BindingError::UnsupportedFormat(String::new())),
    }
}

/// A binary-mode event from its headers; its data is the request body, which is not looked at here.
///
/// A `ce-*` header sent more than once is a 400: which copy is meant cannot be known.
pub fn from_binary(headers: &HeaderMap) -> Result<CloudEvent, BindingError> {
    from_binary_reusing(headers, CloudEvent::default())
}

/// [`from_binary`] built in `spare`, an event done with: every field is overwritten, and the required
/// attributes are decoded into its strings' buffers instead of new ones.
pub fn from_binary_reusing(headers: &HeaderMap, mut event: CloudEvent) -> Result<CloudEvent, BindingError> {
    // Naming every field makes one added to the protocol a compile error until it is reset here too.
    let CloudEvent { id, source, spec_version, r#type, attributes, data } = &mut event;
    for text in [id, source, spec_version, r#type] {
        text.clear();
    }
    attributes.clear();
    *data = None;
    // One pass over the headers, no lookup by name: a name's values come in a row, so a second one shows as the
    // next pair having the same name.
    let mut pairs = headers.iter().peekable();
    while let Some((name, value)) = pairs.next() {
        // Header names are already lower case in `http`, so attribute names come out lower case.
        let Some(attribute) = name.as_str().strip_prefix("ce-") else { continue };
        if attribute == "datacontenttype" {
            return Err(BindingError::invalid(
                attribute,
                "must be sent as the Content-Type header, not ce-datacontenttype",
            ));
        }
        if pairs.peek().is_some_and(|(next, _)| *next == name) {
            return Err(BindingError::invalid(attribute, "is sent in more than one header"));
        }
        let not_utf8 = |_| BindingError::invalid(attribute, "is not UTF-8 once percent-decoded");
        let required = match attribute {
            "specversion" => &mut event.spec_version,
            "id" => &mut event.id,
            "source" => &mut event.source,
            "type" => &mut event.r#type,
            _ => {
                let text = percent_decode(value.as_bytes()).map_err(not_utf8)?;
                event.attributes.insert(attribute.to_string(), string_value(text));
                continue;
            }
        };
        percent_decode_into(value.as_bytes(), required).map_err(not_utf8)?;
    }
    // An empty Content-Type says no more than none at all.
    if let Some(value) = headers.get(CONTENT_TYPE).filter(|v| !v.as_bytes().trim_ascii().is_empty()) {
        // Content-Type is an ordinary HTTP header: it is not percent-encoded, but must still be text.
        let text = std::str::from_utf8(value.as_bytes())
            .map_err(|_| BindingError::invalid("datacontenttype", "(the Content-Type header) is not UTF-8"))?;
        event.attributes.insert("datacontenttype".to_string(), string_value(text));
    }
    validate(&event)?;
    Ok(event)
}

/// Stores one attribute: the required ones in their own fields, every other one as a string, as sent.
pub(crate) fn set_attribute(event: &mut CloudEvent, name: &str, text: String) {
    match name {
        "specversion" => event.spec_version = text,
        "id" => event.id = text,
        "source" => event.source = text,
        "type" => event.r#type = text,
        _ => {
            event.attributes.insert(name.to_string(), string_value(text));
        }
    }
}

/// Decodes each valid `%XX` once and keeps every other byte as it is, since clients send raw UTF-8 and bare `%`.
fn percent_decode(value: &[u8]) -> Result<String, std::str::Utf8Error> {
    // Made with room: growing an empty string on its first push takes a slower path than allocating.
    let mut out = String::with_capacity(value.len());
    percent_decode_into(value, &mut out).map(|()| out)
}

/// [`percent_decode`] into `out`, an empty string whose buffer is reused.
fn percent_decode_into(value: &[u8], out: &mut String) -> Result<(), std::str::Utf8Error> {
    if !value.contains(&b'%') {
        out.push_str(std::str::from_utf8(value)?);
        return Ok(());
    }
    let mut bytes = std::mem::take(out).into_bytes();
    decode_escapes(value, &mut bytes);
    *out = String::from_utf8(bytes).map_err(|e| e.utf8_error())?;
    Ok(())
}

/// Appends `value` to `out` with each valid `%XX` decoded.
fn decode_escapes(value: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < value.len() {
        let escaped = match value.get(i..i + 3) {
            Some([b'%', hi, lo]) => hex_digit(*hi).zip(hex_digit(*lo)).map(|(hi, lo)| hi << 4 | lo),
            _ => None,
        };
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(value[i]);
                i += 1;
            }
        }
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Percent-encodes a value as the HTTP binding requires: space, `"`, `%` and every byte outside U+0021..U+007E.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if !needs_escape(b) {
            out.push(char::from(b));
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

/// Whether the HTTP binding escapes byte `b` in a header value.
fn needs_escape(b: u8) -> bool {
    !(0x21..=0x7e).contains(&b) | (b == b'"') | (b == b'%')
}

/// Spec checks on an event: a known spec version, non-empty required attributes, well-formed attribute names and
/// an RFC 3339 `time`.
pub fn validate(event: &CloudEvent) -> Result<(), BindingError> {
    match event.spec_version.as_str() {
        "1.0" | "0.3" => {}
        "" => return Err(BindingError::invalid("specversion", "is missing or empty")),
        other => {
            return Err(BindingError::invalid(
                "specversion",
                format!("is {other:?}; only \"1.0\" and \"0.3\" are supported"),
            ))
        }
    }
    for (name, value) in [("id", &event.id), ("source", &event.source), ("type", &event.r#type)] {
        if value.is_empty() {
            return Err(BindingError::invalid(name, "is missing or empty"));
        }
    }
    // One pass in name order (the map's order). The first bad name wins; then a bad `time`; then the first bad
    // text attribute (TEXT_ATTRIBUTES is in name order too).
    let mut bad_time = None;
    let mut bad_text = None;
    for (name, value) in &event.attributes {
        if let Some(why) = name_problem(name) {
            return Err(BindingError::invalid(name, why));
        }
        if name == "time" {
            let valid = match &value.attr {
                Some(super::Attr::CeString(text)) => is_rfc3339(text),
                _ => is_rfc3339(&attribute_text(value)),
            };
            if !valid {
                let text = attribute_text(value);
                bad_time = Some(BindingError::invalid("time", format!("is {text:?}, not an RFC 3339 timestamp")));
            }
        } else if bad_text.is_none() && TEXT_ATTRIBUTES.contains(&name.as_str()) {
            bad_text = text_problem(value).map(|why| BindingError::invalid(name, why));
        }
    }
    match bad_time.or(bad_text) {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// What is wrong with the value of an attribute the spec types as text, if anything.
fn text_problem(value: &CloudEventAttributeValue) -> Option<&'static str> {
    use super::Attr;
    match &value.attr {
        Some(Attr::CeString(text) | Attr::CeUri(text) | Attr::CeUriRef(text)) if !text.is_empty() => None,
        Some(Attr::CeString(_) | Attr::CeUri(_) | Attr::CeUriRef(_)) | None => {
            Some("is empty; when present it must not be")
        }
        Some(_) => Some("must be a string"),
    }
}

/// Optional attributes the spec types as text (a media type, a URI, a string) that must not be empty when
/// present (`schemaurl` is 0.3's `dataschema`), in name order.
const TEXT_ATTRIBUTES: [&str; 4] = ["datacontenttype", "dataschema", "schemaurl", "subject"];

/// What is wrong with an attribute name in the attributes map, if anything.
fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return Some("is not a valid attribute name (only a-z and 0-9 are allowed)");
    }
    // These have their own fields, or (data) are the payload in the JSON format; a copy here would clash.
    matches!(name, "specversion" | "id" | "source" | "type" | "data")
        .then_some("is a reserved name and cannot be an extension")
}

/// Whether `s` is an RFC 3339 `date-time` (section 5.6), with real calendar dates and leap seconds allowed.
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        let digits = b.get(range)?;
        digits.iter().try_fold(0u32, |n, &d| d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0')))
    };
    let sep = |i: usize, c: &[u8]| b.get(i).is_some_and(|x| c.contains(x));
    let (Some(year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) =
        (num(0..4), num(5..7), num(8..10), num(11..13), num(14..16), num(17..19))
    else {
        return false;
    };
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt") && sep(13, b":") && sep(16, b":")) {
        return false;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    if day == 0 || day > days || hour > 23 || minute > 59 || second > 60 {
        return false;
    }
    let mut i = 19;
    if sep(i, b".") {
        let digits = b[i + 1..].iter().take_while(|d| d.is_ascii_digit()).count();
        if digits == 0 {
            return false;
        }
        i += 1 + digits;
    }
    match b.get(i..) {
        Some(b"Z" | b"z") => true,
        Some([b'+' | b'-', ..]) => {
            b.len() == i + 6
                && sep(i + 3, b":")
                && num(i + 1..i + 3).is_some_and(|h| h <= 23)
                && num(i + 4..i + 6).is_some_and(|m| m <= 59)
        }
        _ => false,
    }
}

/// How many headers [`write_binary_headers`] usually adds: the four required attributes, a Content-Type, `time`
/// and one extension. Maps that will receive them are made with this much room, as a map that grows is
/// allocated and filled again.
pub const USUAL_BINARY_HEADER_COUNT: usize = 7;

/// Binary-mode headers for a reply event, handed to `out` as they are made (straight into a response's map):
/// `ce-<name>` per attribute, percent-encoded, with `datacontenttype` as an unencoded `content-type`. The
/// event's strings become the header values without a copy. Fails for a name that is not a lower-case header
/// name or a Content-Type that cannot be a header value.
pub fn write_binary_headers(
    event: CloudEvent,
    mut out: impl FnMut(HeaderName, HeaderValue),
) -> Result<(), BindingError> {
    let required = [
        ("specversion", "ce-specversion", event.spec_version),
        ("id", "ce-id", event.id),
        ("source", "ce-source", event.source),
        ("type", "ce-type", event.r#type),
    ];
    for (name, header, value) in required {
        if !value.is_empty() {
            out(HeaderName::from_static(header), encoded_value(name, value)?);
        }
    }
    // The map is sorted: the same event always gives the same headers, in name order.
    for (name, value) in event.attributes {
        let value = owned_text(value);
        if name == "datacontenttype" {
            out(CONTENT_TYPE, content_type_value(value)?);
            continue;
        }
        let header = format!("ce-{name}");
        // `http` lower-cases names; a name that changes would come back as a different attribute, and a bare
        // `ce-` as none.
        let header_name = HeaderName::from_bytes(header.as_bytes())
            .ok()
            .filter(|h| !name.is_empty() && h.as_str() == header)
            .ok_or_else(|| BindingError::invalid(&name, "cannot be sent as an HTTP header name"))?;
        out(header_name, encoded_value(&name, value)?);
    }
    Ok(())
}

/// An attribute's canonical text, moved out of the value when it is already a string.
fn owned_text(value: CloudEventAttributeValue) -> String {
    use super::Attr;
    match value.attr {
        Some(Attr::CeString(s) | Attr::CeUri(s) | Attr::CeUriRef(s)) => s,
        _ => attribute_text(&value),
    }
}

/// The Content-Type header of a `datacontenttype`; it is not percent-encoded, so it may not fit.
pub fn content_type_value(text: String) -> Result<HeaderValue, BindingError> {
    HeaderValue::from_maybe_shared(Bytes::from(text))
        .map_err(|_| BindingError::invalid("datacontenttype", "cannot be sent as a Content-Type header"))
}

/// A header value for attribute `name`: the text itself when nothing in it needs an escape, which is the
/// common case, else its percent-encoding.
pub fn encoded_value(name: &str, text: String) -> Result<HeaderValue, BindingError> {
    // A fold, not `all`: without the early exit the compiler checks many bytes at a time.
    let plain = !text.bytes().fold(false, |escape, b| escape | needs_escape(b));
    let text = if plain { text } else { percent_encode(&text) };
    HeaderValue::from_maybe_shared(Bytes::from(text))
        .map_err(|_| BindingError::invalid(name, "cannot be sent as an HTTP header value"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The headers [`write_binary_headers`] makes, in order.
    fn binary_headers(event: CloudEvent) -> Result<Vec<(HeaderName, HeaderValue)>, BindingError> {
        let mut out = Vec::new();
        write_binary_headers(event, |name, value| out.push((name, value)))?;
        Ok(out)
    }

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_bytes(value).unwrap());
        }
        map
    }

    fn required(version: &str) -> Vec<(&'static str, &'static [u8])> {
        let version: &'static [u8] = if version == "1.0" { b"1.0" } else { b"0.3" };
        vec![("ce-specversion", version), ("ce-id", b"1"), ("ce-source", b"/s"), ("ce-type", b"t")]
    }

    fn with(version: &str, extra: &[(&'static str, &'static [u8])]) -> HeaderMap {
        let mut pairs = required(version);
        pairs.extend_from_slice(extra);
        headers(&pairs)
    }

    fn text(event: &CloudEvent, name: &str) -> Option<String> {
        event.attributes.get(name).map(attribute_text)
    }

    fn invalid_attribute(err: BindingError) -> String {
        assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{err}");
        match err {
            BindingError::Invalid { attribute, .. } => attribute,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn event(version: &str) -> CloudEvent {
        CloudEvent {
            id: "1".into(),
            source: "/s".into(),
            spec_version: version.into(),
            r#type: "t".into(),
            ..Default::default()
        }
    }

    #[test]
    fn detect_modes() {
        let post = Method::POST;
        let ct = |v: &'static str| headers(&[("content-type", v.as_bytes())]);
        assert_eq!(detect(&post, &ct("application/cloudevents+json")).unwrap(), Some(Mode::Structured));
        assert_eq!(detect(&post, &ct("Application/CloudEvents+JSON; charset=utf-8")).unwrap(), Some(Mode::Structured));
        assert_eq!(detect(&post, &ct("application/cloudevents-batch+json")).unwrap(), Some(Mode::Batch));
        assert_eq!(detect(&post, &ct("APPLICATION/CLOUDEVENTS-BATCH+Json ;x=y")).unwrap(), Some(Mode::Batch));
        assert_eq!(detect(&post, &ct("application/json")).unwrap(), None);
        assert_eq!(detect(&post, &HeaderMap::new()).unwrap(), None);
        assert_eq!(detect(&post, &with("1.0", &[])).unwrap(), Some(Mode::Binary));
        assert_eq!(detect(&post, &with("1.0", &[("content-type", b"application/json")])).unwrap(), Some(Mode::Binary));
        // Structured wins over ce-* headers: the body is the event.
        let both = with("1.0", &[("content-type", b"application/cloudevents+json")]);
        assert_eq!(detect(&post, &both).unwrap(), Some(Mode::Structured));
        // The format is the +suffix, whatever comes between.
        let suffixed = headers(&[("content-type", b"application/cloudevents-v2+json; charset=utf-8")]);
        assert_eq!(detect(&post, &suffixed).unwrap(), Some(Mode::Structured));
    }

    #[test]
    fn detect_inspects_only_post() {
        let structured = headers(&[("content-type", b"application/cloudevents+xml"), ("ce-specversion", b"1.0")]);
        for method in [Method::GET, Method::PUT, Method::DELETE, Method::HEAD] {
            assert_eq!(detect(&method, &structured).unwrap(), None, "{method}");
        }
    }

    #[test]
    fn detect_unsupported_formats_are_415() {
        let post = Method::POST;
        for (ct, format) in [
            ("application/cloudevents+xml", "xml"),
            ("application/cloudevents+avro; charset=utf-8", "avro"),
            ("application/cloudevents-batch+protobuf", "protobuf"),
            ("application/cloudevents", ""),
            ("application/cloudevents-batch", ""),
            ("application/cloudevents+", ""),
            ("application/cloudeventsjson", ""),
            ("application/cloudevents-x+xml", "xml"),
        ] {
            let err = detect(&post, &headers(&[("content-type", ct.as_bytes())])).unwrap_err();
            assert_eq!(err.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct}");
            assert!(matches!(&err, BindingError::UnsupportedFormat(f) if f == format), "{ct}: {err:?}");
        }
        let err = detect(&post, &headers(&[("content-type", b"application/cloudevents+xml")])).unwrap_err();
        assert_eq!(err.to_string(), "unsupported CloudEvents format \"xml\" (only json is supported)");
        let err = detect(&post, &headers(&[("content-type", b"application/cloudevents")])).unwrap_err();
        assert!(err.to_string().contains("no +format"), "{err}");
    }

    #[test]
    fn an_event_decoded_into_a_spare_one_is_what_a_fresh_decode_gives() {
        let spare = || {
            let mut event = CloudEvent {
                id: "an old id that is longer".into(),
                source: "/old%source".into(),
                spec_version: "0.3".into(),
                r#type: "old.type".into(),
                data: Some(crate::envelope::pb::io::cloudevents::v1::cloud_event::Data::TextData("x".into())),
                ..Default::default()
            };
            event.attributes.insert("oldext".into(), string_value("stale"));
            event
        };
        let cases: [&[(&str, &[u8])]; 5] = [
            &[("ce-specversion", b"1.0"), ("ce-id", b"1"), ("ce-source", b"/s"), ("ce-type", b"t")],
            // Escapes decoded into the reused buffers, and raw UTF-8 kept.
            &[("ce-specversion", b"1.0"), ("ce-id", b"a%20b"), ("ce-source", "/€%2F".as_bytes()), ("ce-type", b"t")],
            // Missing attributes are missing, not left over from the spare event.
            &[("ce-specversion", b"1.0"), ("ce-source", b"/s"), ("ce-type", b"t")],
            &[("ce-specversion", b"1.0"), ("ce-id", b"%FF"), ("ce-source", b"/s"), ("ce-type", b"t")],
            &[("ce-specversion", b"1.0"), ("ce-id", b"\xff"), ("ce-source", b"/s"), ("ce-type", b"t"), ("ce-x", b"1")],
        ];
        for case in cases {
            let map = headers(case);
            let fresh = from_binary(&map).map_err(|e| e.to_string());
            assert_eq!(from_binary_reusing(&map, spare()).map_err(|e| e.to_string()), fresh, "{case:?}");
        }
        let event = from_binary_reusing(&headers(cases[1]), spare()).unwrap();
        assert_eq!((event.id.as_str(), event.source.as_str()), ("a b", "/€/"));
    }

    #[test]
    fn binary_required_and_optional_attributes_both_versions() {
        for version in ["1.0", "0.3"] {
            let map = with(
                version,
                &[
                    ("ce-time", b"2020-01-01T10:00:00+01:00"),
                    ("ce-subject", b"sub"),
                    ("ce-myext", b"42"),
                    ("content-type", b"text/plain; charset=utf-8"),
                    ("traceparent", b"00-abc"),
                ],
            );
            let event = from_binary(&map).unwrap();
            assert_eq!(
                (event.spec_version.as_str(), event.id.as_str(), event.source.as_str(), event.r#type.as_str()),
                (version, "1", "/s", "t")
            );
            // Time exactly as sent, not normalised to UTC.
            assert_eq!(text(&event, "time").as_deref(), Some("2020-01-01T10:00:00+01:00"));
            assert_eq!(text(&event, "subject").as_deref(), Some("sub"));
            assert_eq!(text(&event, "myext").as_deref(), Some("42"));
            assert_eq!(text(&event, "datacontenttype").as_deref(), Some("text/plain; charset=utf-8"));
            assert_eq!(event.attributes.len(), 4, "non-ce headers are not attributes");
            assert!(event.data.is_none());
        }
    }

    #[test]
    fn binary_without_content_type_is_valid() {
        let event = from_binary(&with("1.0", &[])).unwrap();
        assert!(event.attributes.is_empty());
    }

    #[test]
    fn binary_missing_or_empty_required_is_400_naming_it() {
        for name in ["ce-id", "ce-source", "ce-type", "ce-specversion"] {
            let attribute = &name[3..];
            let missing: Vec<_> = required("1.0").into_iter().filter(|(n, _)| *n != name).collect();
            assert_eq!(invalid_attribute(from_binary(&headers(&missing)).unwrap_err()), attribute);
            let mut empty = required("1.0");
            empty.retain(|(n, _)| *n != name);
            empty.push((name, b""));
            let err = from_binary(&headers(&empty)).unwrap_err();
            assert_eq!(err.to_string(), format!("invalid CloudEvent: attribute \"{attribute}\" is missing or empty"));
        }
    }

    #[test]
    fn binary_rejects_unknown_specversion_and_ce_datacontenttype() {
        let mut pairs = required("1.0");
        pairs[0] = ("ce-specversion", b"2.0");
        let err = from_binary(&headers(&pairs)).unwrap_err();
        assert!(err.to_string().contains("\"2.0\""), "{err}");
        assert_eq!(invalid_attribute(err), "specversion");
        let err = from_binary(&with("1.0", &[("ce-datacontenttype", b"text/plain")])).unwrap_err();
        assert_eq!(invalid_attribute(err), "datacontenttype");
    }

    #[test]
    fn binary_bad_time_and_bad_names_are_400() {
        let err = from_binary(&with("1.0", &[("ce-time", b"yesterday")])).unwrap_err();
        assert_eq!(invalid_attribute(err), "time");
        let err = from_binary(&with("0.3", &[("ce-my_ext", b"x")])).unwrap_err();
        assert_eq!(invalid_attribute(err), "my_ext");
        let err = from_binary(&with("1.0", &[("ce-", b"x")])).unwrap_err();
        assert_eq!(invalid_attribute(err), "");
        let err = from_binary(&with("1.0", &[("ce-data", b"x")])).unwrap_err();
        assert_eq!(invalid_attribute(err), "data");
    }

    #[test]
    fn binary_repeated_header_is_400() {
        let err = from_binary(&with("1.0", &[("ce-ext", b"a"), ("ce-ext", b"b")])).unwrap_err();
        assert!(err.to_string().contains("more than one header"), "{err}");
        assert_eq!(invalid_attribute(err), "ext");
        // Even when the first copy would not decode: which copy is meant cannot be known either way.
        let err = from_binary(&with("1.0", &[("ce-other", b"x"), ("ce-ext", b"%FF"), ("ce-ext", b"b")])).unwrap_err();
        assert!(err.to_string().contains("more than one header"), "{err}");
    }

    #[test]
    fn binary_percent_decoding() {
        let decode = |raw: &'static [u8]| text(&from_binary(&with("1.0", &[("ce-ext", raw)])).unwrap(), "ext").unwrap();
        assert_eq!(decode(b"caf%C3%A9"), "café");
        assert_eq!(decode(b"caf%c3%a9"), "café");
        assert_eq!(decode(b"100%"), "100%");
        assert_eq!(decode(b"%zz and %4"), "%zz and %4");
        assert_eq!(decode("café raw".as_bytes()), "café raw");
        assert_eq!(decode(b"%2541"), "%41", "decoded once only");
        assert_eq!(decode(b"a%20b%22c%25"), "a b\"c%");
        let err = from_binary(&with("1.0", &[("ce-ext", b"%FF")])).unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
        assert_eq!(invalid_attribute(err), "ext");
        let err = from_binary(&with("1.0", &[("ce-ext", b"\xff")])).unwrap_err();
        assert_eq!(invalid_attribute(err), "ext");
        // The required ones are decoded too.
        let event = from_binary(&headers(&[
            ("ce-specversion", b"1.0"),
            ("ce-id", b"a%20b"),
            ("ce-source", b"/s"),
            ("ce-type", b"t"),
        ]))
        .unwrap();
        assert_eq!(event.id, "a b");
    }

    #[test]
    fn content_type_is_not_percent_decoded() {
        let event = from_binary(&with("1.0", &[("content-type", b"text/x%20y")])).unwrap();
        assert_eq!(text(&event, "datacontenttype").as_deref(), Some("text/x%20y"));
        let err = from_binary(&with("1.0", &[("content-type", b"text/\xff")])).unwrap_err();
        assert_eq!(invalid_attribute(err), "datacontenttype");
    }

    #[test]
    fn validate_rules() {
        assert!(validate(&event("1.0")).is_ok());
        assert!(validate(&event("0.3")).is_ok());
        for version in ["", "1", "1.1", "0.2", "v1.0"] {
            assert_eq!(invalid_attribute(validate(&event(version)).unwrap_err()), "specversion", "{version}");
        }
        for (name, ok) in
            [("abc123", true), ("Abc", false), ("a-b", false), ("a_b", false), ("é", false), ("id", false)]
        {
            let mut e = event("1.0");
            e.attributes.insert(name.into(), string_value("x"));
            assert_eq!(validate(&e).is_ok(), ok, "{name}");
        }
        // Optional text attributes must not be empty when present, nor typed as something else; extensions may.
        for name in ["datacontenttype", "dataschema", "schemaurl", "subject"] {
            let mut e = event("1.0");
            e.attributes.insert(name.into(), string_value(""));
            assert_eq!(invalid_attribute(validate(&e).unwrap_err()), name);
            let integer = CloudEventAttributeValue { attr: Some(super::super::Attr::CeInteger(5)) };
            e.attributes.insert(name.into(), integer);
            assert_eq!(invalid_attribute(validate(&e).unwrap_err()), name);
        }
        let mut e = event("1.0");
        e.attributes.insert("myext".into(), string_value(""));
        assert!(validate(&e).is_ok());
        // With several problems, the error names the same one whatever else is wrong: a bad name first (the first
        // in name order), then a bad time, then the first bad text attribute in name order.
        let mut e = event("1.0");
        e.attributes.insert("subject".into(), string_value(""));
        e.attributes.insert("dataschema".into(), string_value(""));
        assert_eq!(invalid_attribute(validate(&e).unwrap_err()), "dataschema");
        e.attributes.insert("time".into(), string_value("yesterday"));
        assert_eq!(invalid_attribute(validate(&e).unwrap_err()), "time");
        e.attributes.insert("zz-bad".into(), string_value("x"));
        e.attributes.insert("Bad".into(), string_value("x"));
        assert_eq!(invalid_attribute(validate(&e).unwrap_err()), "Bad");
        // An empty Content-Type header is no datacontenttype at all.
        let binary = from_binary(&with("1.0", &[("content-type", b" ")])).unwrap();
        assert!(!binary.attributes.contains_key("datacontenttype"));
    }

    #[test]
    fn rfc3339_timestamps() {
        for good in [
            "2020-01-01T00:00:00Z",
            "2020-01-01t00:00:00z",
            "2020-02-29T23:59:60.123456789+14:00",
            "2000-02-29T00:00:00-00:00",
            "1999-12-31T23:59:59.5+05:30",
        ] {
            assert!(is_rfc3339(good), "{good}");
        }
        for bad in [
            "",
            "2020-01-01",
            "2020-01-01 00:00:00Z",
            "2020-01-01T00:00:00",
            "2020-01-01T00:00:00.Z",
            "2019-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2020-13-01T00:00:00Z",
            "2020-04-31T00:00:00Z",
            "2020-01-01T24:00:00Z",
            "2020-01-01T00:60:00Z",
            "2020-01-01T00:00:61Z",
            "2020-01-01T00:00:00+2400",
            "2020-01-01T00:00:00+24:00",
            "2020-01-01T00:00:00+01:00x",
            "2020-01-01T00:00:00ZZ",
            "+020-01-01T00:00:00Z",
            "２020-01-01T00:00:00Z",
        ] {
            assert!(!is_rfc3339(bad), "{bad}");
        }
    }

    #[test]
    fn reply_headers_are_percent_encoded() {
        let mut e = event("1.0");
        e.id = "a b\"c%d".into();
        e.attributes.insert("subject".into(), string_value("café\u{7f}\t~!"));
        e.attributes.insert("datacontenttype".into(), string_value("text/plain; charset=\"utf-8\""));
        let got: Vec<(String, String)> = binary_headers(e.clone())
            .unwrap()
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        let want = [
            ("ce-specversion", "1.0"),
            ("ce-id", "a%20b%22c%25d"),
            ("ce-source", "/s"),
            ("ce-type", "t"),
            ("content-type", "text/plain; charset=\"utf-8\""),
            ("ce-subject", "caf%C3%A9%7F%09~!"),
        ];
        let want: Vec<(String, String)> = want.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn reply_headers_reject_impossible_names_and_content_types() {
        for name in ["Upper", "a b", "é", ""] {
            let mut e = event("1.0");
            e.attributes.insert(name.into(), string_value("x"));
            assert_eq!(invalid_attribute(binary_headers(e.clone()).unwrap_err()), name);
        }
        let mut e = event("1.0");
        e.attributes.insert("datacontenttype".into(), string_value("text/plain\r\nx: y"));
        assert_eq!(invalid_attribute(binary_headers(e.clone()).unwrap_err()), "datacontenttype");
    }

    #[test]
    fn encode_then_decode_round_trips() {
        for value in ["plain", "a b", "100%", "%41", "caf\u{e9}", "\"quoted\"", "tab\there", "\u{1F600}", "\u{0}"] {
            assert_eq!(percent_decode(percent_encode(value).as_bytes()).unwrap(), value);
        }
    }

    fn header_value() -> impl Strategy<Value = Vec<u8>> {
        // What a client can put in a header value: visible ASCII, space, tab and obs-text bytes.
        proptest::collection::vec(prop_oneof![Just(b'\t'), 0x20u8..=0x7e, 0x80u8..=0xff, Just(b'%')], 0..24)
    }

    proptest! {
        #[test]
        fn arbitrary_headers_never_panic(
            pairs in proptest::collection::vec(
                (prop_oneof![
                    Just("ce-specversion".to_string()), Just("ce-id".to_string()), Just("ce-source".to_string()),
                    Just("ce-type".to_string()), Just("ce-time".to_string()), Just("content-type".to_string()),
                    Just("ce-datacontenttype".to_string()), "ce-[a-z0-9_]{0,6}",
                ], prop_oneof![header_value(), Just(b"1.0".to_vec()), Just(b"application/cloudevents+json".to_vec())]),
                0..10,
            )
        ) {
            let mut map = HeaderMap::new();
            for (name, value) in &pairs {
                map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_bytes(value).unwrap());
            }
            let status = |e: &BindingError| e.status();
            if let Err(e) = detect(&Method::POST, &map) {
                prop_assert!(status(&e) == StatusCode::UNSUPPORTED_MEDIA_TYPE, "{e}");
            }
            if let Err(e) = from_binary(&map) {
                prop_assert!(status(&e) == StatusCode::BAD_REQUEST, "{e}");
            }
        }

        #[test]
        fn reply_headers_round_trip(
            id in "\\PC+", source in any::<String>(), subject in "\\PC+", ext in any::<String>(),
            version in prop_oneof![Just("1.0"), Just("0.3")],
        ) {
            let mut e = event(version);
            e.id = id;
            e.source = format!("/{source}");
            e.attributes.insert("subject".into(), string_value(subject));
            e.attributes.insert("ext1".into(), string_value(ext));
            let mut map = HeaderMap::new();
            for (name, value) in binary_headers(e.clone()).unwrap() {
                map.append(name, value);
            }
            prop_assert_eq!(from_binary(&map).unwrap(), e);
        }
    }
}
