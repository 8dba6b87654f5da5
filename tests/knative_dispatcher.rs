//! The watchdog as a Knative Eventing subscriber, seen from a small dispatcher that behaves like Knative's
//! (SPEC §6): events in binary mode with `Prefer: reply` and tracing headers, retries with exponential backoff
//! on the codes Knative's `SelectiveRetry` retries (connection errors, 404, 408, 409, 429, 5xx) and on nothing
//! else, and reply events routed back into a broker whose trigger filters on the original type.
//!
//! Everything is counted, not timed: functions log each run to a file, and the assertions are about how many
//! attempts, runs and replies there were.

mod common;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{script, Binary, Server};
use reqwest::header::HeaderMap;

/// An event as the broker holds it: attributes (decoded) and data.
#[derive(Clone, Debug)]
struct Event {
    attrs: Vec<(String, String)>,
    data: Vec<u8>,
}

impl Event {
    fn new(id: &str, ty: &str, data: &str) -> Event {
        Event {
            attrs: vec![
                ("specversion".into(), "1.0".into()),
                ("id".into(), id.into()),
                ("source".into(), "/knative/test-producer".into()),
                ("type".into(), ty.into()),
                ("datacontenttype".into(), "text/plain".into()),
                // What Knative's broker ingress adds to every event.
                ("knativearrivaltime".into(), "2024-05-01T12:00:00.123456789Z".into()),
            ],
            data: data.as_bytes().to_vec(),
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn attr(&self, name: &str) -> &str {
        self.get(name).unwrap_or_else(|| panic!("event without {name}: {self:?}"))
    }

    fn without(mut self, name: &str) -> Event {
        self.attrs.retain(|(n, _)| n != name);
        self
    }
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Percent-encodes a header value the way Knative's Go SDK does for the HTTP binding (space, `"`, `%` and
/// everything outside printable ASCII).
fn encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
        {
            out.push(u8::from_str_radix(&value[i + 1..i + 3], 16).unwrap());
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).expect("reply header is UTF-8 once decoded")
}

/// What came back from one attempt.
#[derive(Debug)]
struct Attempt {
    /// Status code, or 0 for a connection error.
    status: u16,
}

/// The outcome of delivering one event.
#[derive(Debug)]
struct Delivery {
    attempts: Vec<Attempt>,
    /// The reply event of a successful attempt, if it carried one.
    reply: Option<Event>,
    delivered: bool,
}

impl Delivery {
    fn codes(&self) -> Vec<u16> {
        self.attempts.iter().map(|a| a.status).collect()
    }
}

/// Knative's `SelectiveRetry`: retry on connection errors, 404, 408, 409, 429 and 5xx.
fn retryable(status: u16) -> bool {
    matches!(status, 0 | 404 | 408 | 409 | 429) || (500..600).contains(&status)
}

/// A dispatcher configured like a Trigger's `delivery`: `retry` extra attempts, `backoffPolicy: exponential`.
#[derive(Clone)]
struct Dispatcher {
    client: reqwest::Client,
    subscriber: String,
    retry: u32,
    backoff_delay: Duration,
    /// Every attempt's status, in order, across all deliveries (for tests that watch progress).
    log: Arc<Mutex<Vec<(String, u16)>>>,
}

impl Dispatcher {
    fn new(subscriber: String, retry: u32) -> Dispatcher {
        Dispatcher {
            client: reqwest::Client::new(),
            subscriber,
            retry,
            backoff_delay: Duration::from_millis(5),
            log: Arc::default(),
        }
    }

    async fn deliver(&self, event: &Event) -> Delivery {
        let mut attempts = Vec::new();
        for attempt in 0..=self.retry {
            let mut req = self
                .client
                .post(&self.subscriber)
                .header("prefer", "reply")
                .header("traceparent", TRACEPARENT)
                .header("kn-namespace", "default")
                .body(event.data.clone());
            for (name, value) in &event.attrs {
                req = match name.as_str() {
                    "datacontenttype" => req.header("content-type", value.as_str()),
                    _ => req.header(format!("ce-{name}"), encode(value)),
                };
            }
            let (status, headers, body) = match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let headers = resp.headers().clone();
                    // A body that cannot be read completely is a failed attempt, like a connection error.
                    match resp.bytes().await {
                        Ok(body) => (status, headers, body.to_vec()),
                        Err(_) => (0, HeaderMap::new(), Vec::new()),
                    }
                }
                Err(_) => (0, HeaderMap::new(), Vec::new()),
            };
            attempts.push(Attempt { status });
            self.log.lock().unwrap().push((event.attr("id").to_string(), status));
            if (200..300).contains(&status) {
                let reply = parse_reply(&headers, body);
                return Delivery { attempts, reply, delivered: true };
            }
            if !retryable(status) || attempt == self.retry {
                break;
            }
            let mut delay = self.backoff_delay * 2u32.pow(attempt);
            // Knative honours Retry-After on 429 and 503, up to `retryAfterMax`.
            if let Some(secs) = headers.get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u64>().ok()) {
                delay = delay.max(Duration::from_secs(secs).min(Duration::from_millis(50)));
            }
            tokio::time::sleep(delay).await;
        }
        Delivery { attempts, reply: None, delivered: false }
    }
}

/// A reply in binary mode, as the broker ingress would accept it; a 2xx with an empty body has no reply.
fn parse_reply(headers: &HeaderMap, body: Vec<u8>) -> Option<Event> {
    let mut attrs = Vec::new();
    for (name, value) in headers {
        let name = name.as_str();
        let value = value.to_str().unwrap_or_else(|_| panic!("reply header {name} is not ASCII: {value:?}"));
        if let Some(attr) = name.strip_prefix("ce-") {
            attrs.push((attr.to_string(), decode(value)));
        } else if name == "content-type" {
            attrs.push(("datacontenttype".to_string(), value.to_string()));
        }
    }
    if !attrs.iter().any(|(n, _)| n.as_str() == "id") {
        assert!(
            body.is_empty(),
            "a 2xx without a reply event must have no body, got {:?}",
            String::from_utf8_lossy(&body)
        );
        return None;
    }
    let event = Event { attrs, data: body };
    for required in ["specversion", "id", "source", "type"] {
        assert!(event.get(required).is_some_and(|v| !v.is_empty()), "reply without {required}: {event:?}");
    }
    Some(event)
}

/// A broker with one trigger (`filter: type = trigger_type`) whose subscriber is the watchdog: every event and
/// every reply goes through the broker; replies the trigger does not match end up in `unmatched`.
struct Broker {
    dispatcher: Dispatcher,
    trigger_type: String,
}

struct BrokerRun {
    deliveries: HashMap<String, Delivery>,
    unmatched: Vec<Event>,
}

impl Broker {
    async fn run(&self, events: Vec<Event>) -> BrokerRun {
        let mut queue: VecDeque<Event> = events.into();
        let mut deliveries = HashMap::new();
        let mut unmatched = Vec::new();
        let mut hops = 0;
        while let Some(event) = queue.pop_front() {
            hops += 1;
            assert!(hops < 1000, "events loop through the broker");
            if event.attr("type") != self.trigger_type {
                unmatched.push(event);
                continue;
            }
            let delivery = self.dispatcher.deliver(&event).await;
            if let Some(reply) = &delivery.reply {
                queue.push_back(reply.clone());
            }
            let previous = deliveries.insert(event.attr("id").to_string(), delivery);
            assert!(previous.is_none(), "the broker saw id {} twice", event.attr("id"));
        }
        BrokerRun { deliveries, unmatched }
    }
}

/// Lines of a log file the functions append to.
fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect()
}

fn count(lines: &[String], line: &str) -> usize {
    lines.iter().filter(|l| *l == line).count()
}

/// A classic function that fails its first attempt for each event id (state file keyed by `CE_ID`), then
/// succeeds, echoing the id. `runs.log` gets `fail <id>` or `ok <id>` per run; `seen.log` what a successful
/// run saw of Knative's extension and tracing header.
fn flaky_first_attempt(dir: &Path) -> (PathBuf, PathBuf) {
    let log = dir.join("runs.log");
    let seen = dir.join("seen.log");
    let state = dir.join("state");
    std::fs::create_dir(&state).unwrap();
    let f = script(
        dir,
        "flaky.sh",
        &format!(
            r#"seen="{state}/$CE_ID"
if [ ! -e "$seen" ]; then
  : > "$seen"
  echo "fail $CE_ID" >> {log}
  echo "first attempt for $CE_ID fails" >&2
  exit 1
fi
echo "ok $CE_ID" >> {log}
echo "$CE_ID $CE_KNATIVEARRIVALTIME $Http_Traceparent" >> {seen}
printf 'shipped %s' "$CE_ID""#,
            state = state.display(),
            log = log.display(),
            seen = seen.display()
        ),
    );
    (f, log)
}

#[tokio::test]
async fn each_event_is_delivered_once_despite_a_failed_first_attempt_and_its_reply_is_routed() {
    let tmp = tempfile::tempdir().unwrap();
    let (f, log) = flaky_first_attempt(tmp.path());
    let server = Server::start_in(tmp, &[("fprocess", f.to_str().unwrap())]).await;
    let broker = Broker { dispatcher: Dispatcher::new(server.url("/"), 3), trigger_type: "com.example.order".into() };
    let ids: Vec<String> = (0..8).map(|i| format!("order-{i}")).collect();
    let events = ids.iter().map(|id| Event::new(id, "com.example.order", id)).collect();

    let run = broker.run(events).await;

    let runs = lines(&log);
    for id in &ids {
        let delivery = &run.deliveries[id];
        assert!(delivery.delivered, "{id}: {delivery:?}");
        assert_eq!(delivery.codes(), [500, 200], "{id}: the failed first attempt is 500 (retried), then 200");
        assert_eq!(count(&runs, &format!("fail {id}")), 1, "{runs:?}");
        assert_eq!(count(&runs, &format!("ok {id}")), 1, "{id} must succeed exactly once: {runs:?}");
    }
    assert_eq!(runs.len(), 2 * ids.len(), "{runs:?}");
    let seen = lines(&log.with_file_name("seen.log"));
    for id in &ids {
        assert_eq!(count(&seen, &format!("{id} 2024-05-01T12:00:00.123456789Z {TRACEPARENT}")), 1, "{seen:?}");
    }

    // Every reply went back through the broker; the trigger on the request type does not catch it.
    assert_eq!(run.unmatched.len(), ids.len());
    let mut reply_ids = std::collections::HashSet::new();
    for reply in &run.unmatched {
        assert_eq!(reply.attr("type"), "com.example.order.reply");
        assert_eq!(reply.attr("source"), "/fwatchdog");
        assert_eq!(reply.attr("specversion"), "1.0");
        let data = String::from_utf8(reply.data.clone()).unwrap();
        let id = data.strip_prefix("shipped ").unwrap_or_else(|| panic!("reply data {data:?}"));
        assert!(ids.contains(&id.to_string()));
        assert_ne!(reply.attr("id"), id, "a reply needs a fresh id");
        assert!(reply_ids.insert(reply.attr("id").to_string()), "reply ids must be unique");
    }
    server.stop().await;
}

#[tokio::test]
async fn concurrent_deliveries_with_retries_still_run_each_event_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (f, log) = flaky_first_attempt(tmp.path());
    let server = Server::start_in(tmp, &[("fprocess", f.to_str().unwrap())]).await;
    let dispatcher = Dispatcher::new(server.url("/"), 5);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let dispatcher = dispatcher.clone();
        tasks.spawn(async move { dispatcher.deliver(&Event::new(&format!("c-{i}"), "com.example.order", "x")).await });
    }
    while let Some(delivery) = tasks.join_next().await {
        let delivery = delivery.unwrap();
        assert!(delivery.delivered, "{delivery:?}");
        assert_eq!(delivery.codes(), [500, 200]);
        let reply = delivery.reply.expect("a reply event");
        assert_eq!(reply.attr("type"), "com.example.order.reply");
    }
    let runs = lines(&log);
    for i in 0..16 {
        assert_eq!(count(&runs, &format!("ok c-{i}")), 1, "{runs:?}");
        assert_eq!(count(&runs, &format!("fail c-{i}")), 1, "{runs:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_function_that_always_fails_is_retried_until_the_budget_is_spent() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("runs.log");
    let f = script(tmp.path(), "fail.sh", &format!("echo \"run $CE_ID\" >> {}; exit 2", log.display()));
    let server = Server::start_in(tmp, &[("fprocess", f.to_str().unwrap())]).await;
    let dispatcher = Dispatcher::new(server.url("/"), 3);
    let delivery = dispatcher.deliver(&Event::new("doomed", "com.example.order", "x")).await;
    assert!(!delivery.delivered);
    assert_eq!(delivery.codes(), [500, 500, 500, 500]);
    assert_eq!(lines(&log), vec!["run doomed"; 4]);
    server.stop().await;
}

#[tokio::test]
async fn a_timed_out_first_attempt_is_504_and_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("runs.log");
    let marker = tmp.path().join("slow-once");
    let f = script(
        tmp.path(),
        "slow.sh",
        &format!(
            "if [ ! -e {m} ]; then : > {m}; echo slow >> {l}; exec sleep 30; fi; echo fast >> {l}; printf done",
            m = marker.display(),
            l = log.display()
        ),
    );
    let server = Server::start_in(tmp, &[("fprocess", f.to_str().unwrap()), ("exec_timeout", "300ms")]).await;
    let delivery = Dispatcher::new(server.url("/"), 2).deliver(&Event::new("t-1", "com.example.order", "x")).await;
    assert_eq!(delivery.codes(), [504, 200]);
    assert_eq!(delivery.reply.expect("reply").data, b"done");
    assert_eq!(lines(&log), ["slow", "fast"]);
    server.stop().await;
}

#[tokio::test]
async fn invalid_events_are_400_or_415_and_never_retried_nor_run() {
    let tmp = tempfile::tempdir().unwrap();
    let ran = tmp.path().join("ran");
    let f = script(tmp.path(), "f.sh", &format!(": > {}; cat", ran.display()));
    let server = Server::start_in(tmp, &[("fprocess", f.to_str().unwrap())]).await;
    let dispatcher = Dispatcher::new(server.url("/"), 5);

    for (broken, name) in [
        (Event::new("no-source", "com.example.order", "x").without("source"), "missing source"),
        (Event::new("", "com.example.order", "x"), "empty id"),
        (
            {
                let mut e = Event::new("bad-time", "com.example.order", "x");
                e.attrs.push(("time".into(), "next tuesday".into()));
                e
            },
            "bad time",
        ),
    ] {
        let delivery = dispatcher.deliver(&broken).await;
        assert_eq!(delivery.codes(), [400], "{name}: a permanent error is not retried");
        assert!(!delivery.delivered);
    }

    // A structured event in a format the watchdog does not read: 415, not retried either.
    let mut attempts = Vec::new();
    for _ in 0..=dispatcher.retry {
        let resp = dispatcher
            .client
            .post(server.url("/"))
            .header("content-type", "application/cloudevents+xml")
            .header("prefer", "reply")
            .body("<event/>")
            .send()
            .await
            .unwrap();
        attempts.push(resp.status().as_u16());
        if !retryable(resp.status().as_u16()) {
            break;
        }
    }
    assert_eq!(attempts, [415]);
    assert!(!ran.exists(), "an invalid event reached the function");
    server.stop().await;
}

#[tokio::test]
async fn overload_is_429_which_is_retried_after_the_slot_frees() {
    let tmp = tempfile::tempdir().unwrap();
    let release = tmp.path().join("release");
    let log = tmp.path().join("runs.log");
    let f = script(
        tmp.path(),
        "hold.sh",
        &format!(
            r#"echo "start $CE_ID" >> {l}
if [ "$CE_ID" = hold ]; then while [ ! -e {r} ]; do sleep 0.02; done; fi
printf '%s' "$CE_ID""#,
            l = log.display(),
            r = release.display()
        ),
    );
    let server = Server::start_in(tmp, &[("fprocess", f.to_str().unwrap()), ("max_inflight", "1")]).await;
    let dispatcher = Dispatcher::new(server.url("/"), 1000);

    let holder = {
        let d = dispatcher.clone();
        tokio::spawn(async move { d.deliver(&Event::new("hold", "com.example.order", "x")).await })
    };
    // Wait until the holder runs, so the next event finds the only slot taken.
    while !lines(&log).contains(&"start hold".to_string()) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let waiter = {
        let d = dispatcher.clone();
        tokio::spawn(async move { d.deliver(&Event::new("wait", "com.example.order", "x")).await })
    };
    // Release the holder only once the second event has been turned away at least once.
    while !dispatcher.log.lock().unwrap().iter().any(|(id, code)| id == "wait" && *code == 429) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    std::fs::write(&release, "").unwrap();

    let held = holder.await.unwrap();
    assert_eq!(held.codes(), [200]);
    let waited = waiter.await.unwrap();
    assert!(waited.delivered, "{waited:?}");
    let codes = waited.codes();
    assert_eq!(codes.last(), Some(&200));
    assert!(codes[..codes.len() - 1].iter().all(|c| *c == 429), "{codes:?}");
    assert_eq!(waited.reply.expect("reply").data, b"wait");
    assert_eq!(count(&lines(&log), "start wait"), 1, "a turned-away event never ran");
    server.stop().await;
}

/// http mode, the watchdog's Python SDK as the function: RetryableError (503) on each id's first attempt,
/// PermanentError (400) for `com.example.order.invalid`, else a reply event of the handler's own.
const PYTHON_HANDLER: &str = r#"
import os
import watchdog_sdk

LOG = os.environ["RUNS_LOG"]
seen = set()

def handle(request):
    attrs = request.event.attributes
    with open(LOG, "a") as log:
        log.write(f"{attrs['type']} {attrs['id']}\n")
    if attrs["type"].endswith(".invalid"):
        raise watchdog_sdk.PermanentError("no such order")
    if attrs["id"] not in seen:
        seen.add(attrs["id"])
        raise watchdog_sdk.RetryableError("database warming up")
    return watchdog_sdk.CloudEvent({"type": "com.example.shipped", "source": "/shipping/eu west"}, request.event.data)

watchdog_sdk.serve(handle)
"#;

#[tokio::test]
async fn http_mode_retryable_errors_are_retried_and_permanent_ones_are_not() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = repo.join("sdk/python/.venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/test.sh, which creates it", python.display());
    let tmp = tempfile::tempdir().unwrap();
    let handler = tmp.path().join("handler.py");
    std::fs::write(&handler, PYTHON_HANDLER).unwrap();
    let log = tmp.path().join("runs.log");
    let fprocess = format!("{} {}", python.display(), handler.display());
    let binary = Binary::start_in(
        tmp,
        &[
            ("mode", "http"),
            ("fprocess", &fprocess),
            ("healthcheck_interval", "0"),
            ("PYTHONPATH", repo.join("sdk/python").to_str().unwrap()),
            ("RUNS_LOG", log.to_str().unwrap()),
        ],
    )
    .await;
    let broker = Broker { dispatcher: Dispatcher::new(binary.url("/"), 3), trigger_type: "com.example.order".into() };
    let run = broker
        .run(vec![
            Event::new("p-1", "com.example.order", "parcel 1"),
            Event::new("p-2", "com.example.order", "parcel 2"),
        ])
        .await;
    for id in ["p-1", "p-2"] {
        assert_eq!(run.deliveries[id].codes(), [503, 200], "{id}");
    }
    let mut replies: Vec<(String, String, Vec<u8>)> = run
        .unmatched
        .iter()
        .map(|r| (r.attr("type").to_string(), r.attr("source").to_string(), r.data.clone()))
        .collect();
    replies.sort();
    assert_eq!(
        replies,
        [
            ("com.example.shipped".to_string(), "/shipping/eu west".to_string(), b"parcel 1".to_vec()),
            ("com.example.shipped".to_string(), "/shipping/eu west".to_string(), b"parcel 2".to_vec()),
        ]
    );

    let dispatcher = Dispatcher::new(binary.url("/"), 3);
    let delivery = dispatcher.deliver(&Event::new("bad-1", "com.example.order.invalid", "x")).await;
    assert_eq!(delivery.codes(), [400], "a permanent error is not retried");

    let runs = lines(&log);
    assert_eq!(count(&runs, "com.example.order p-1"), 2, "{runs:?}");
    assert_eq!(count(&runs, "com.example.order p-2"), 2, "{runs:?}");
    assert_eq!(count(&runs, "com.example.order.invalid bad-1"), 1, "{runs:?}");
}
