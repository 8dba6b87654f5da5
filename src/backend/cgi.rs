//! How an envelope becomes a forked function's environment and stdin prefix: the `Http_*` variables and the
//! `marshal_request` JSON, byte for byte as the Go watchdogs build them.

use std::collections::BTreeMap;

use super::process::EnvVar;
use crate::envelope::Envelope;

/// Which original's variable set to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvFlavour {
    /// classic-watchdog: adds `Http_ContentLength`, `Http_Content_Length` and `Http_Host`.
    Classic,
    /// of-watchdog's fork modes: headers, method, query, path and transfer encoding only.
    OfWatchdog,
}

/// Go's `textproto.CanonicalMIMEHeaderKey`: `content-type` → `Content-Type`. Keys with bytes outside the
/// token set are returned unchanged, as Go does.
pub fn canonical_header_key(name: &str) -> String {
    let valid = name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid {
        return name.to_string();
    }
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() };
            upper = c == '-';
            out
        })
        .collect()
}

/// The variables a forked function gets on top of the inherited environment, in the order Go appends them.
pub fn function_env(envelope: &Envelope, flavour: EnvFlavour) -> Vec<EnvVar> {
    let mut env = Vec::with_capacity(envelope.headers.len() + 8);
    // A handful of headers: a linear scan costs less than hashing them.
    let mut seen: Vec<String> = Vec::with_capacity(envelope.headers.len());
    for header in &envelope.headers {
        let key = canonical_header_key(&header.name);
        // Go's Header map keeps only the first value per canonical name in Http_* (v[0]).
        if seen.contains(&key) {
            continue;
        }
        let name = key.bytes().map(|b| if b == b'-' { b'_' } else { b });
        env.push(EnvVar::from_name_parts(b"Http_", name, &header.value));
        seen.push(key);
    }
    let Some(http) = envelope.carrier() else {
        return env;
    };
    env.push(EnvVar::new("Http_Method", &http.method));
    if flavour == EnvFlavour::Classic {
        let length = envelope.content_length.to_string();
        env.push(EnvVar::new("Http_ContentLength", &length));
        env.push(EnvVar::new("Http_Content_Length", &length));
        if !http.transfer_encoding.is_empty() {
            env.push(EnvVar::new("Http_Transfer_Encoding", &http.transfer_encoding));
        }
    }
    if !http.query.is_empty() {
        env.push(EnvVar::new("Http_Query", &http.query));
    }
    if !http.path.is_empty() {
        env.push(EnvVar::new("Http_Path", &http.path));
    }
    match flavour {
        EnvFlavour::Classic if !http.host.is_empty() => env.push(EnvVar::new("Http_Host", &http.host)),
        EnvFlavour::OfWatchdog if !http.transfer_encoding.is_empty() => {
            env.push(EnvVar::new("Http_Transfer_Encoding", &http.transfer_encoding))
        }
        _ => {}
    }
    env
}

/// The variables that describe a CloudEvent or gRPC call, set whatever `cgi_headers` says: `CE_<ATTRIBUTE>` for
/// every attribute and extension (`CE_ID`, `CE_SOURCE`, ..., upper case), and `Grpc_Method`.
pub fn kind_env(envelope: &Envelope) -> Vec<EnvVar> {
    if let Some(event) = envelope.cloudevent() {
        return crate::cloudevent::attributes(event)
            .into_iter()
            .map(|(name, value)| {
                EnvVar::from_name_parts(b"CE_", name.bytes().map(|b| b.to_ascii_uppercase()), value.as_bytes())
            })
            .collect();
    }
    if let Some(call) = envelope.grpc() {
        return vec![EnvVar::new("Grpc_Method", &call.method)];
    }
    Vec::new()
}

/// The part of the classic `marshal_request` JSON before the base64 body: `{"header":{"Name":["v"]},"body":{"raw":"`,
/// Go's `json.Marshal` of the watchdog's `MarshalReq{Header http.Header; Body{Raw []byte}}`: keys sorted and
/// HTML-escaped as it does.
pub fn marshal_prefix(envelope: &Envelope) -> Vec<u8> {
    let mut headers: BTreeMap<String, Vec<&[u8]>> = BTreeMap::new();
    for header in &envelope.headers {
        headers.entry(canonical_header_key(&header.name)).or_default().push(&header.value);
    }
    let mut out = Vec::with_capacity(64 + envelope.headers.len() * 32);
    out.extend_from_slice(b"{\"header\":{");
    for (i, (key, values)) in headers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        go_json_string(&mut out, key.as_bytes());
        out.extend_from_slice(b":[");
        for (j, value) in values.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            go_json_string(&mut out, value);
        }
        out.push(b']');
    }
    out.extend_from_slice(b"},\"body\":{\"raw\":\"");
    out
}

/// What follows the base64 body in the `marshal_request` JSON.
pub const MARSHAL_SUFFIX: &[u8] = b"\"}}";

/// Writes `s` as a JSON string the way Go's `encoding/json` does: HTML-sensitive characters and U+2028/U+2029
/// escaped, invalid UTF-8 replaced by U+FFFD.
fn go_json_string(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for c in String::from_utf8_lossy(s).chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{2028}' => out.extend_from_slice(b"\\u2028"),
            '\u{2029}' => out.extend_from_slice(b"\\u2029"),
            c if (c as u32) < 0x20 || c == '<' || c == '>' || c == '&' => {
                let b = c as u32 as u8;
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// Base64-encodes a stream in pieces: whole 3-byte groups now, the remainder with the next piece or at the end.
#[derive(Default)]
pub struct Base64Stream {
    pending: Vec<u8>,
}

impl Base64Stream {
    /// Encodes as much of `chunk` (after any leftover) as forms whole groups.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        use base64::Engine;
        self.pending.extend_from_slice(chunk);
        let whole = self.pending.len() / 3 * 3;
        let encoded = base64::engine::general_purpose::STANDARD.encode(&self.pending[..whole]);
        self.pending.drain(..whole);
        encoded.into_bytes()
    }

    /// Encodes what is left, with padding.
    pub fn finish(self) -> Vec<u8> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&self.pending).into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Header, HttpRequest, Kind};

    fn envelope(headers: &[(&str, &str)], path: &str, query: &str, length: i64, te: &str) -> Envelope {
        Envelope {
            headers: headers
                .iter()
                .map(|(n, v)| Header { name: n.to_string(), value: v.as_bytes().to_vec().into() })
                .collect(),
            content_length: length,
            kind: Some(Kind::Http(HttpRequest {
                method: "POST".into(),
                path: path.as_bytes().to_vec().into(),
                query: query.into(),
                host: "localhost:8080".into(),
                version: "HTTP/1.1".into(),
                transfer_encoding: te.into(),
            })),
            ..Default::default()
        }
    }

    fn lookup(env: &[EnvVar], key: &str) -> Option<String> {
        env.iter().find(|v| v.name() == key.as_bytes()).map(|v| String::from_utf8_lossy(v.value()).into_owned())
    }

    #[test]
    fn canonical_keys() {
        assert_eq!(canonical_header_key("content-type"), "Content-Type");
        assert_eq!(canonical_header_key("x-CALL-id"), "X-Call-Id");
        assert_eq!(canonical_header_key("custom_header"), "Custom_header");
        assert_eq!(canonical_header_key("bad key"), "bad key");
    }

    #[test]
    fn classic_variables() {
        let e = envelope(&[("custom-header", "value"), ("custom-header", "second")], "/my/full/path", "q=x", 4, "");
        let env = function_env(&e, EnvFlavour::Classic);
        assert_eq!(lookup(&env, "Http_Custom_Header").as_deref(), Some("value"));
        assert_eq!(lookup(&env, "Http_Method").as_deref(), Some("POST"));
        assert_eq!(lookup(&env, "Http_ContentLength").as_deref(), Some("4"));
        assert_eq!(lookup(&env, "Http_Content_Length").as_deref(), Some("4"));
        assert_eq!(lookup(&env, "Http_Path").as_deref(), Some("/my/full/path"));
        assert_eq!(lookup(&env, "Http_Query").as_deref(), Some("q=x"));
        assert_eq!(lookup(&env, "Http_Host").as_deref(), Some("localhost:8080"));
        assert_eq!(lookup(&env, "Http_Transfer_Encoding"), None);
    }

    #[test]
    fn chunked_and_empty_query() {
        let e = envelope(&[], "/", "", -1, "chunked");
        let env = function_env(&e, EnvFlavour::Classic);
        assert_eq!(lookup(&env, "Http_ContentLength").as_deref(), Some("-1"));
        assert_eq!(lookup(&env, "Http_Transfer_Encoding").as_deref(), Some("chunked"));
        assert_eq!(lookup(&env, "Http_Query"), None);
    }

    #[test]
    fn of_watchdog_variables_have_no_length_or_host() {
        let e = envelope(&[("x-a", "1")], "/p", "a=b", 3, "chunked");
        let env = function_env(&e, EnvFlavour::OfWatchdog);
        assert_eq!(lookup(&env, "Http_X_A").as_deref(), Some("1"));
        assert_eq!(lookup(&env, "Http_ContentLength"), None);
        assert_eq!(lookup(&env, "Http_Host"), None);
        assert_eq!(lookup(&env, "Http_Transfer_Encoding").as_deref(), Some("chunked"));
        assert_eq!(lookup(&env, "Http_Path").as_deref(), Some("/p"));
    }

    #[test]
    fn marshal_matches_go_json() {
        let e = envelope(&[("x-b", "<&>"), ("content-type", "text/plain"), ("x-b", "2")], "/", "", 5, "");
        let mut json = marshal_prefix(&e);
        let mut b64 = Base64Stream::default();
        json.extend(b64.push(b"he"));
        json.extend(b64.push(b"llo"));
        json.extend(b64.finish());
        json.extend_from_slice(MARSHAL_SUFFIX);
        assert_eq!(
            String::from_utf8(json).unwrap(),
            r#"{"header":{"Content-Type":["text/plain"],"X-B":["\u003c\u0026\u003e","2"]},"body":{"raw":"aGVsbG8="}}"#
        );
    }

    #[test]
    fn base64_stream_matches_one_shot_encoding() {
        use base64::Engine;
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        for split in [0, 1, 2, 3, 4, 500, 999] {
            let mut s = Base64Stream::default();
            let mut out = s.push(&data[..split]);
            out.extend(s.push(&data[split..]));
            out.extend(s.finish());
            assert_eq!(out, base64::engine::general_purpose::STANDARD.encode(&data).into_bytes());
        }
    }
}
