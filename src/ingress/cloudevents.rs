//! CloudEvents over HTTP (SPEC §6): a detected event becomes an envelope whose kind is the event, its data the
//! body; the function's answer becomes a reply event in binary mode (200), no reply (202), or a status from
//! Knative's retry table. Parsing and encoding are in [`crate::cloudevent`]; this module applies them.

use std::sync::Arc;

use ::http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::Ingress;
use crate::backend::{Backend, Invocation, ReplyEvent};
use crate::body::{self, BoxError, RequestBody, ResponseBody};
use crate::cloudevent::{self, BindingError, CloudEvent, Mode, Parsed};
use crate::config::Config;
use crate::envelope::{self, Envelope, Kind};
use crate::error::{plain_response, InvokeError};

/// The cap on a structured or batched body when `max_body_bytes` is 0: it must be parsed whole.
pub const DEFAULT_EVENT_BODY_LIMIT: u64 = 32 << 20;

/// Why a CloudEvent request got no reply event.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The request is not a valid event (400) or uses an unsupported format (415).
    #[error(transparent)]
    Binding(#[from] BindingError),
    /// The event could not be delivered or the function failed.
    #[error(transparent)]
    Invoke(#[from] InvokeError),
    /// The function answered with a non-2xx status of its own: passed on as it is.
    #[error("the function answered {}", .0.status())]
    Declined(Box<Response<ResponseBody>>),
    /// The function's reply event is not a valid CloudEvent.
    #[error("the function's reply event is invalid: {0}")]
    BadReply(BindingError),
}

impl DeliveryError {
    /// The response for this failure.
    pub fn into_response(self) -> Response<ResponseBody> {
        match self {
            DeliveryError::Binding(error) => plain_response(error.status(), format!("{error}\n")),
            DeliveryError::Invoke(error) => error.into_cloudevent_response(),
            DeliveryError::Declined(response) => *response,
            bad @ DeliveryError::BadReply(_) => plain_response(StatusCode::INTERNAL_SERVER_ERROR, format!("{bad}\n")),
        }
    }

    /// The gRPC status for this failure (the `watchdog.v1.CloudEvents` service): an invalid event is
    /// INVALID_ARGUMENT, a failed delivery the status of its cause, a function's own non-2xx answer maps by
    /// gRPC's HTTP-to-gRPC table.
    pub fn grpc_status(self) -> tonic::Status {
        match self {
            DeliveryError::Binding(error) => tonic::Status::invalid_argument(error.to_string()),
            DeliveryError::Invoke(error) => error.grpc_status(),
            DeliveryError::Declined(response) => {
                let code = crate::error::grpc_code_for_http(response.status().as_u16());
                tonic::Status::new(code, format!("the function answered HTTP {}", response.status()))
            }
            bad @ DeliveryError::BadReply(_) => tonic::Status::internal(bad.to_string()),
        }
    }
}

/// A reply event and its data, still streaming.
pub struct Reply {
    /// The event, defaults filled in.
    pub event: CloudEvent,
    /// Response headers of the function to keep (e.g. `X-Duration-Seconds`), without its Content-Type and
    /// `ce-` headers: the event's attributes replace them.
    pub headers: HeaderMap,
    /// The data.
    pub data: ResponseBody,
}

/// Answers a request that [`cloudevent::detect`] recognised as `mode`.
///
/// A binary-mode event is read and handed to the function here, before the returned future: a future keeps
/// every value it borrowed for its whole life, and the request's head and envelope kept that way made each
/// event's future kilobytes, copied whole into its box.
pub fn invoke(
    ingress: &Arc<Ingress>,
    req: Request<Incoming>,
    mode: Mode,
) -> BoxFuture<'static, Response<ResponseBody>> {
    let ingress = Arc::clone(ingress);
    match mode {
        Mode::Binary => match binary(&ingress, req) {
            Ok(answer) => answer,
            Err(error) => Box::pin(std::future::ready(error.into_response())),
        },
        Mode::Structured => {
            Box::pin(async move { structured(&ingress, req).await.unwrap_or_else(DeliveryError::into_response) })
        }
        Mode::Batch => Box::pin(async move { batch(&ingress, req).await.unwrap_or_else(DeliveryError::into_response) }),
    }
}

/// Starts delivering a binary-mode event; the future answers it.
fn binary(
    ingress: &Ingress,
    req: Request<Incoming>,
) -> Result<BoxFuture<'static, Response<ResponseBody>>, DeliveryError> {
    let event = cloudevent::from_binary_reusing(req.headers(), envelope::spare_event())?;
    let (parts, body) = req.into_parts();
    let content_length = super::http::declared_length(&parts, &body);
    let max = ingress.config.max_body_bytes;
    if max > 0 && content_length > max as i64 {
        return Err(InvokeError::BodyTooLarge { limit: max }.into());
    }
    // Filtered here so the `ce-` headers a worker will not get are never copied.
    let keep = |name: &HeaderName| keeps_header(&ingress.backend, name.as_str());
    let envelope = envelope::from_http_keeping(&parts, content_length, ingress.backend.timeout(), keep)
        .map_err(InvokeError::from)?;
    let body = body.map_err(|e| Box::new(e) as BoxError).boxed_unsync();
    if let Backend::Proxy(_) = ingress.backend {
        let answer = proxy_unchanged(ingress, envelope, body, parts);
        return Ok(Box::pin(async move { answer.await.unwrap_or_else(|e| DeliveryError::from(e).into_response()) }));
    }
    let delivery = deliver(ingress, envelope, event, body, parts, Transport::Http);
    Ok(Box::pin(delivery.answer_in_binary_mode()))
}

async fn structured(ingress: &Ingress, req: Request<Incoming>) -> Result<Response<ResponseBody>, DeliveryError> {
    let (parts, whole) = read_whole(ingress, req).await?;
    let Parsed { event, data } = cloudevent::from_structured(&whole)?;
    if let Backend::Proxy(_) = ingress.backend {
        return proxy_whole(ingress, parts, whole).await;
    }
    let envelope = event_envelope(&parts, &event, data.len(), ingress.backend.timeout())?;
    Ok(deliver(ingress, envelope, event, body::request_from(data), parts, Transport::Http)
        .answer_in_binary_mode()
        .await)
}

async fn batch(ingress: &Ingress, req: Request<Incoming>) -> Result<Response<ResponseBody>, DeliveryError> {
    let (parts, whole) = read_whole(ingress, req).await?;
    let events = cloudevent::from_batch(&whole)?;
    if let Backend::Proxy(_) = ingress.backend {
        return proxy_whole(ingress, parts, whole).await;
    }
    let mut replies = Vec::new();
    for Parsed { event, data } in events {
        let envelope = event_envelope(&parts, &event, data.len(), ingress.backend.timeout())?;
        let delivery = deliver(ingress, envelope, event, body::request_from(data), parts.clone(), Transport::Http);
        let reply = delivery.finish().await?;
        if let Some(reply) = reply {
            let data = collect_reply_data(reply.data).await?;
            replies.push((reply.event, data));
        }
    }
    if replies.is_empty() {
        return Ok(accepted());
    }
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/cloudevents-batch+json")
        .body(body::full(cloudevent::to_batch_json(&replies)))
        .expect("valid response"))
}

/// With `upstream_url` the function's own server speaks CloudEvents: a valid event goes to it unchanged and its
/// answer comes back unchanged.
fn proxy_unchanged(
    ingress: &Ingress,
    envelope: Envelope,
    body: RequestBody,
    head: ::http::request::Parts,
) -> BoxFuture<'static, Result<Response<ResponseBody>, InvokeError>> {
    let invocation =
        Invocation { envelope, body, limits: ingress.body_limits(), head, timeout: None, stop_when_abandoned: false };
    ingress.backend.invoke(invocation)
}

/// [`proxy_unchanged`] for a body already read whole (structured, batched) to validate it.
async fn proxy_whole(
    ingress: &Ingress,
    parts: ::http::request::Parts,
    whole: Bytes,
) -> Result<Response<ResponseBody>, DeliveryError> {
    let envelope =
        envelope::from_http(&parts, whole.len() as i64, ingress.backend.timeout()).map_err(InvokeError::from)?;
    Ok(proxy_unchanged(ingress, envelope, body::request_from(whole), parts).await?)
}

/// Reads a structured or batched body whole, within `max_body_bytes` (32 MiB when unlimited) and `read_timeout`.
async fn read_whole(ingress: &Ingress, req: Request<Incoming>) -> Result<(::http::request::Parts, Bytes), InvokeError> {
    let config = &ingress.config;
    let limit = if config.max_body_bytes > 0 { config.max_body_bytes } else { DEFAULT_EVENT_BODY_LIMIT };
    let (parts, body) = req.into_parts();
    if super::http::declared_length(&parts, &body) > limit as i64 {
        return Err(InvokeError::BodyTooLarge { limit });
    }
    let collect = Limited::new(body, limit as usize).collect();
    let collected = if config.read_timeout.is_zero() {
        collect.await
    } else {
        tokio::time::timeout(config.read_timeout, collect)
            .await
            .map_err(|_| InvokeError::ReadTimeout(config.read_timeout))?
    };
    match collected {
        Ok(collected) => Ok((parts, collected.to_bytes())),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(InvokeError::BodyTooLarge { limit }),
        Err(error) => Err(InvokeError::BodyRead(error.to_string())),
    }
}

/// The envelope of an event parsed from a body: the function sees the event's `datacontenttype` as its
/// Content-Type and the data's length, not the structured document's.
pub(crate) fn event_envelope(
    parts: &::http::request::Parts,
    event: &CloudEvent,
    data_len: usize,
    deadline: Option<std::time::Duration>,
) -> Result<Envelope, InvokeError> {
    let mut envelope = envelope::from_http(parts, data_len as i64, deadline)?;
    envelope
        .headers
        .retain(|h| !h.name.eq_ignore_ascii_case("content-type") && !h.name.eq_ignore_ascii_case("content-length"));
    if let Some(ct) = event.attributes.get("datacontenttype") {
        let value = cloudevent::attribute_text(ct);
        envelope.headers.push(envelope::Header { name: "content-type".into(), value: value.into_bytes().into() });
    }
    envelope
        .headers
        .push(envelope::Header { name: "content-length".into(), value: data_len.to_string().into_bytes().into() });
    envelope.content_length = data_len as i64;
    Ok(envelope)
}

/// The transport an event came by: it decides the event's deadline and what its client going away does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// HTTP: the delivery runs to its end even if the client leaves, as a plain request does.
    Http,
    /// A gRPC call, with the deadline it asked for (`grpc-timeout`): cancelling it stops the function.
    Grpc(Option<std::time::Duration>),
}

/// Starts the function for one event; [`Delivery::finish`] turns its answer into a reply event. Also used by
/// the gRPC `CloudEvents` service, so both transports share the rules.
pub fn deliver(
    ingress: &Ingress,
    envelope: Envelope,
    event: CloudEvent,
    body: RequestBody,
    head: ::http::request::Parts,
    transport: Transport,
) -> Delivery {
    let request = RequestFacts::of(ingress, &event);
    let mut envelope = envelope.into_kind(Kind::Cloudevent(event));
    // Envelopes made from a structured request or a gRPC call may still carry some.
    envelope.headers.retain(|h| keeps_header(&ingress.backend, &h.name));
    let limits = ingress.body_limits();
    let (timeout, stop_when_abandoned) = match transport {
        Transport::Http => (None, false),
        Transport::Grpc(timeout) => (timeout, true),
    };
    let invocation = Invocation { envelope, body, limits, head, timeout, stop_when_abandoned };
    Delivery { answer: ingress.backend.invoke(invocation), rules: Arc::clone(&ingress.reply_rules), request }
}

/// One event on its way through the function.
pub struct Delivery {
    /// The function's answer, to come.
    answer: BoxFuture<'static, Result<Response<ResponseBody>, InvokeError>>,
    rules: Arc<ReplyRules>,
    request: RequestFacts,
}

impl Delivery {
    /// The reply event of the function's answer, or `None` when it accepted the event without output.
    pub async fn finish(self) -> Result<Option<Reply>, DeliveryError> {
        let response = self.answer.await?;
        self.rules.reply_from(self.request, response)
    }

    /// The HTTP answer: the reply event in binary mode (200), 202 without one, or the failure's status.
    pub async fn answer_in_binary_mode(self) -> Response<ResponseBody> {
        let answer = match self.answer.await {
            Ok(response) => self.rules.binary_answer(self.request, response),
            Err(error) => Err(error.into()),
        };
        answer.unwrap_or_else(DeliveryError::into_response)
    }
}

/// The reply rules of SPEC §6 and the settings they use, worked out once per watchdog.
pub struct ReplyRules {
    /// `ce_reply_source`, `ce_reply_type` and `content_type` are the reply defaults.
    config: Arc<Config>,
    /// Whether the function is forked per request (its output is its whole answer).
    fork: bool,
    /// The configured defaults as header values, when each can be sent as it is; `None` sends every reply
    /// through the general path, which reports what is wrong with them.
    default_headers: Option<DefaultHeaders>,
}

/// Header values of the configured reply defaults, ready for a reply that is made of defaults only.
struct DefaultHeaders {
    /// `ce-source`: `ce_reply_source`, percent-encoded.
    source: HeaderValue,
    /// `ce-type` when `ce_reply_type` is set.
    r#type: Option<HeaderValue>,
    /// A forked function's Content-Type, when `content_type` is set.
    content_type: Option<HeaderValue>,
}

impl DefaultHeaders {
    /// `None` when a configured default is empty or cannot be a header value: such a reply is invalid, and the
    /// general path says why.
    fn of(config: &Config) -> Option<DefaultHeaders> {
        let attribute = |name, text: &str| {
            (!text.is_empty()).then(|| cloudevent::encoded_value(name, text.to_string()).ok()).flatten()
        };
        let content_type = match &config.content_type {
            Some(text) => Some(cloudevent::content_type_value(text.clone()).ok().filter(|v| !v.is_empty())?),
            None => None,
        };
        let r#type = match &config.ce_reply_type {
            Some(text) => Some(attribute("type", text)?),
            None => None,
        };
        Some(DefaultHeaders { source: attribute("source", &config.ce_reply_source)?, r#type, content_type })
    }
}

/// Whether an event's envelope keeps the header `name`: a worker has the attributes in the event; only a forked
/// function needs the `ce-` headers again, as `Http_Ce_*` variables.
fn keeps_header(backend: &Backend, name: &str) -> bool {
    matches!(backend, Backend::Fork(_)) || !name.starts_with("ce-")
}

/// Where a reply's `datacontenttype` comes from ([`ReplyRules::reply_content_type`]).
enum ReplyContentType {
    /// The http-mode function's own Content-Type.
    Function(HeaderValue),
    /// `content_type`, for a forked function.
    Configured,
    /// The request's `datacontenttype`.
    Request(String),
    /// Nowhere: the reply has none.
    None,
}

/// What the reply defaults need from the request event, so the event itself can move into the envelope.
struct RequestFacts {
    /// The reply's default `type`: `ce_reply_type`, else the request's type + `.reply`.
    reply_type: String,
    /// Its `specversion` (validated, so one of the two supported).
    spec_version: &'static str,
    /// Its `datacontenttype`, if any.
    datacontenttype: Option<String>,
}

impl RequestFacts {
    fn of(ingress: &Ingress, event: &CloudEvent) -> RequestFacts {
        let reply_type = match &ingress.config.ce_reply_type {
            Some(configured) => configured.clone(),
            None => [event.r#type.as_str(), ".reply"].concat(),
        };
        RequestFacts {
            reply_type,
            spec_version: if event.spec_version == "0.3" { "0.3" } else { "1.0" },
            datacontenttype: event.attributes.get("datacontenttype").map(cloudevent::attribute_text),
        }
    }
}

impl ReplyRules {
    /// The rules for `backend` under `config`.
    pub fn new(config: Arc<Config>, backend: &Backend) -> ReplyRules {
        ReplyRules::for_function(config, matches!(backend, Backend::Fork(_)))
    }

    /// The rules for a forked function (`fork`) or a worker's.
    fn for_function(config: Arc<Config>, fork: bool) -> ReplyRules {
        let default_headers = DefaultHeaders::of(&config);
        ReplyRules { config, fork, default_headers }
    }

    /// [`Self::reply_from`] answered in binary mode. A reply that is made of defaults only (the function sent
    /// no event of its own, the usual case) goes straight to headers, without the event in between: its
    /// values are valid by construction, so there is nothing to validate.
    fn binary_answer(
        &self,
        request: RequestFacts,
        response: Response<ResponseBody>,
    ) -> Result<Response<ResponseBody>, DeliveryError> {
        let defaults_only = response.status().is_success() && response.extensions().get::<ReplyEvent>().is_none();
        let (Some(defaults), true) = (&self.default_headers, defaults_only) else {
            return Ok(self.reply_from(request, response)?.map(binary_response).unwrap_or_else(accepted));
        };
        let (mut parts, data) = response.into_parts();
        if self.accepted_without_reply(parts.status, &data) {
            return Ok(accepted());
        }
        let own = parts.headers.remove(header::CONTENT_TYPE);
        let content_type = match self.reply_content_type(own, request.datacontenttype) {
            ReplyContentType::Function(own) => Some(own),
            ReplyContentType::Configured => defaults.content_type.clone(),
            ReplyContentType::Request(text) => {
                Some(cloudevent::content_type_value(text).map_err(DeliveryError::BadReply)?)
            }
            ReplyContentType::None => None,
        };
        let r#type = match &defaults.r#type {
            Some(configured) => configured.clone(),
            None => cloudevent::encoded_value("type", request.reply_type).map_err(DeliveryError::BadReply)?,
        };
        drop_ce_headers(&mut parts.headers);
        let mut response = Response::new(data);
        let headers = response.headers_mut();
        *headers = parts.headers;
        headers.reserve(cloudevent::USUAL_BINARY_HEADER_COUNT);
        // The order write_binary_headers gives: required attributes, then datacontenttype as Content-Type.
        headers.append(SPEC_VERSION, HeaderValue::from_static(request.spec_version));
        headers.append(ID, envelope::new_id_header());
        headers.append(SOURCE, defaults.source.clone());
        headers.append(TYPE, r#type);
        if let Some(content_type) = content_type {
            headers.append(header::CONTENT_TYPE, content_type);
        }
        Ok(response)
    }

    /// The reply rules of SPEC §6 applied to the function's answer.
    fn reply_from(
        &self,
        request: RequestFacts,
        response: Response<ResponseBody>,
    ) -> Result<Option<Reply>, DeliveryError> {
        if !response.status().is_success() {
            return Err(DeliveryError::Declined(Box::new(response)));
        }
        let (mut parts, data) = response.into_parts();
        let own = parts.extensions.remove::<ReplyEvent>().map(|ReplyEvent(event)| event);
        if own.is_none() && self.accepted_without_reply(parts.status, &data) {
            return Ok(None);
        }
        let content_type = parts.headers.remove(header::CONTENT_TYPE);
        let mut event = own.unwrap_or_default();
        self.fill_defaults(request, content_type, &mut event);
        cloudevent::validate(&event).map_err(DeliveryError::BadReply)?;
        drop_ce_headers(&mut parts.headers);
        Ok(Some(Reply { event, headers: parts.headers, data }))
    }

    /// Completes a reply event: a fresh id, `ce_reply_source`, `ce_reply_type` (else the request's type +
    /// `.reply`), the request's spec version, and a `datacontenttype`.
    fn fill_defaults(&self, request: RequestFacts, content_type: Option<HeaderValue>, event: &mut CloudEvent) {
        let config = &self.config;
        if event.id.is_empty() {
            event.id = envelope::new_id();
        }
        if event.source.is_empty() {
            event.source = config.ce_reply_source.clone();
        }
        if event.r#type.is_empty() {
            event.r#type = request.reply_type;
        }
        if event.spec_version.is_empty() {
            event.spec_version = request.spec_version.to_string();
        }
        if event.attributes.contains_key("datacontenttype") {
            return;
        }
        let chosen = match self.reply_content_type(content_type, request.datacontenttype) {
            ReplyContentType::Function(own) => own.to_str().ok().map(String::from),
            ReplyContentType::Configured => config.content_type.clone(),
            ReplyContentType::Request(text) => Some(text),
            ReplyContentType::None => None,
        };
        if let Some(ct) = chosen {
            event.attributes.insert("datacontenttype".into(), cloudevent::string_value(ct));
        }
    }

    /// Where a reply's `datacontenttype` comes from, given the function's Content-Type and the request's
    /// `datacontenttype`. A fork function's Content-Type is the watchdog's guess (`content_type` overrides it);
    /// an http-mode function's is its own choice. Either way the request's datacontenttype is the fallback.
    fn reply_content_type(&self, own: Option<HeaderValue>, request: Option<String>) -> ReplyContentType {
        if self.fork && self.config.content_type.is_some() {
            return ReplyContentType::Configured;
        }
        match own {
            Some(own) if !self.fork && own.to_str().is_ok_and(|t| !t.is_empty()) => ReplyContentType::Function(own),
            _ => request.map_or(ReplyContentType::None, ReplyContentType::Request),
        }
    }

    /// Whether the function accepted the event without a reply. A forked function's output is complete by now,
    /// so its size is known: no output, no reply. A worker says so itself with 202 (or 204), which the SDKs send
    /// for a handler that returns nothing; deciding from the head keeps its reply streaming instead of waiting
    /// for a first byte.
    fn accepted_without_reply(&self, status: StatusCode, data: &ResponseBody) -> bool {
        if self.fork {
            http_body::Body::size_hint(data).exact() == Some(0)
        } else {
            matches!(status, StatusCode::ACCEPTED | StatusCode::NO_CONTENT)
        }
    }
}

/// A reply's whole data, for a batch.
async fn collect_reply_data(data: ResponseBody) -> Result<Bytes, InvokeError> {
    Limited::new(data, DEFAULT_EVENT_BODY_LIMIT as usize)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| InvokeError::Internal(format!("reading the function's reply: {e}")))
}

/// 200 with the reply event in binary mode.
pub fn binary_response(reply: Reply) -> Response<ResponseBody> {
    let mut response = Response::new(reply.data);
    *response.headers_mut() = reply.headers;
    let headers = response.headers_mut();
    // Already there for a worker's answer (the framed backend makes room for an event's reply).
    headers.reserve(cloudevent::USUAL_BINARY_HEADER_COUNT);
    // `append`: the function's own `ce-` headers and Content-Type are gone (`drop_ce_headers`), and each
    // attribute comes once, so there is nothing to replace.
    if let Err(error) = cloudevent::write_binary_headers(reply.event, |name, value| {
        headers.append(name, value);
    }) {
        return DeliveryError::BadReply(error).into_response();
    }
    response
}

const SPEC_VERSION: HeaderName = HeaderName::from_static("ce-specversion");
const ID: HeaderName = HeaderName::from_static("ce-id");
const SOURCE: HeaderName = HeaderName::from_static("ce-source");
const TYPE: HeaderName = HeaderName::from_static("ce-type");

/// 202: the event was accepted and there is no reply.
fn accepted() -> Response<ResponseBody> {
    Response::builder().status(StatusCode::ACCEPTED).body(body::empty()).expect("valid response")
}

/// Removes the function's own `ce-` headers: the reply event's attributes are the only ones sent.
fn drop_ce_headers(headers: &mut HeaderMap) {
    if !headers.keys().any(|n| n.as_str().starts_with("ce-")) {
        return;
    }
    let names: Vec<HeaderName> = headers.keys().filter(|n| n.as_str().starts_with("ce-")).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(pairs: &[(&str, &str)], fork: bool) -> ReplyRules {
        let pairs = [("fprocess", "cat")].into_iter().chain(pairs.iter().copied());
        ReplyRules::for_function(Arc::new(Config::from_pairs(pairs).expect("valid config")), fork)
    }

    fn facts(rules: &ReplyRules, datacontenttype: Option<&str>, spec_version: &'static str) -> RequestFacts {
        let reply_type = rules.config.ce_reply_type.clone().unwrap_or_else(|| "com.example.order.reply".into());
        RequestFacts { reply_type, spec_version, datacontenttype: datacontenttype.map(String::from) }
    }

    fn answer(status: u16, content_type: Option<&[u8]>, body: &'static str) -> Response<ResponseBody> {
        let data = if body.is_empty() { body::empty() } else { body::full(body) };
        let mut response = Response::new(data);
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        let headers = response.headers_mut();
        headers.insert("x-duration-seconds", HeaderValue::from_static("0.001"));
        headers.insert("ce-stale", HeaderValue::from_static("from the function"));
        if let Some(content_type) = content_type {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_bytes(content_type).unwrap());
        }
        response
    }

    /// Status and headers in order, with the random `ce-id` checked and blanked.
    fn seen(response: &Response<ResponseBody>) -> (StatusCode, Vec<(String, Vec<u8>)>) {
        let headers = response.headers().iter().map(|(name, value)| {
            let value = if name == "ce-id" {
                assert!(uuid::Uuid::try_parse_ascii(value.as_bytes()).is_ok(), "ce-id {value:?}");
                b"<uuid>".to_vec()
            } else {
                value.as_bytes().to_vec()
            };
            (name.to_string(), value)
        });
        (response.status(), headers.collect())
    }

    #[test]
    fn replies_made_of_defaults_only_are_what_the_general_path_makes() {
        let configs: [&[(&str, &str)]; 4] = [
            &[],
            &[("ce_reply_type", "my.reply"), ("ce_reply_source", "/über source")],
            &[("content_type", "text/plain")],
            &[("content_type", "text/\u{1}plain")],
        ];
        for config in configs {
            for fork in [false, true] {
                let rules = rules(config, fork);
                for content_type in [None, Some(&b"application/json"[..]), Some(b""), Some(b"\xff")] {
                    for datacontenttype in [None, Some("text/x"), Some("bad\nvalue")] {
                        for (status, body) in [(200, "data"), (201, "data"), (202, ""), (200, ""), (500, "failed")] {
                            let case = format!(
                                "{config:?} fork {fork} Content-Type {content_type:?} request {datacontenttype:?} {status}"
                            );
                            let general = rules
                                .reply_from(facts(&rules, datacontenttype, "0.3"), answer(status, content_type, body))
                                .map(|reply| reply.map(binary_response).unwrap_or_else(accepted))
                                .unwrap_or_else(DeliveryError::into_response);
                            let direct = rules
                                .binary_answer(
                                    facts(&rules, datacontenttype, "0.3"),
                                    answer(status, content_type, body),
                                )
                                .unwrap_or_else(DeliveryError::into_response);
                            assert_eq!(seen(&direct), seen(&general), "{case}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn only_unusable_defaults_send_replies_through_the_general_path() {
        assert!(rules(&[], false).default_headers.is_some());
        assert!(rules(&[("ce_reply_type", "t"), ("content_type", "text/plain")], true).default_headers.is_some());
        // Empty settings are unset (the defaults apply); a control character cannot be sent.
        assert!(rules(&[("ce_reply_source", ""), ("ce_reply_type", "")], false).default_headers.is_some());
        assert!(rules(&[("content_type", "text/\u{1}plain")], true).default_headers.is_none());
    }
}
