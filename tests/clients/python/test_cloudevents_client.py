"""ng-watchdog as a CloudEvents sink (SPEC section 6), driven by the PyPI `cloudevents` SDK 2.x.

Events are built and serialised by the SDK (`to_binary`, `to_structured`, `JSONFormat.write`), and every reply
event is parsed back by it (`from_http`, `JSONFormat.read`), so a reply this SDK cannot read fails here even
if it looks right to our own Rust tests. The SDK percent-encodes binary-mode header values, so non-ASCII and
spaces travel as `%XX` both ways.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_http, to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v03.event import CloudEvent as CloudEventV03
from cloudevents.core.v1.event import CloudEvent

JSON = JSONFormat()
SUBJECT = "café au lait"


def send(wd, message: HTTPMessage, **extra_headers: str):
    headers = dict(message.headers)
    headers.update({k.replace("_", "-"): v for k, v in extra_headers.items()})
    return wd.post(headers, message.body)


def parse(reply) -> CloudEvent:
    """The reply as the SDK reads it (binary or structured, by its own detection)."""
    return from_http(HTTPMessage(headers=reply.headers, body=reply.body), JSON)


def text_event(data: str = "hello", **attrs) -> CloudEvent:
    base = {"type": "com.example.created", "source": "/clients/python", "datacontenttype": "text/plain"}
    base.update(attrs)
    return CloudEvent(base, data)


def assert_ascii_headers(reply) -> None:
    for name, value in reply.headers.items():
        assert value.isascii(), f"reply header {name}: {value!r} is not percent-encoded"


def data_bytes(event) -> bytes:
    data = event.get_data()
    return data if isinstance(data, bytes) else (data or "").encode()


# --- binary and structured, 1.0 and 0.3 ---------------------------------------------------------------------


def test_binary_event_gets_a_reply_the_sdk_parses(watchdog):
    wd = watchdog("cat")
    sent = text_event("hello")
    reply = send(wd, to_binary(sent, JSON))
    assert reply.status == 200, reply
    got = parse(reply)
    assert got.get_specversion() == "1.0"
    assert got.get_id() and got.get_id() != sent.get_id()
    assert got.get_source() == "/fwatchdog"
    assert got.get_type() == "com.example.created.reply"
    assert got.get_datacontenttype() == "text/plain"
    assert got.get_data() == "hello"


def test_reply_ids_are_fresh_for_each_event(watchdog):
    wd = watchdog("cat")
    ids = {parse(send(wd, to_binary(text_event(str(i)), JSON))).get_id() for i in range(5)}
    assert len(ids) == 5


def test_structured_event_with_json_data(watchdog):
    wd = watchdog("cat")
    data = {"order": 42, "items": [1, 2.5], "note": "crème brûlée"}
    sent = CloudEvent(
        {"type": "com.example.ordered", "source": "/clients/python", "datacontenttype": "application/json"}, data
    )
    message = to_structured(sent, JSON)
    assert message.headers["content-type"] == "application/cloudevents+json"
    reply = send(wd, message)
    assert reply.status == 200, reply
    got = parse(reply)
    assert got.get_type() == "com.example.ordered.reply"
    assert got.get_source() == "/fwatchdog"
    assert got.get_id() != sent.get_id()
    assert got.get_datacontenttype() == "application/json"
    assert got.get_data() == data


def test_structured_event_with_binary_data(watchdog):
    wd = watchdog("cat")
    payload = bytes([0, 1, 2, 255, 254])
    sent = CloudEvent(
        {"type": "com.example.blob", "source": "/clients/python", "datacontenttype": "application/octet-stream"},
        payload,
    )
    message = to_structured(sent, JSON)
    assert b'"data_base64"' in message.body
    reply = send(wd, message)
    assert reply.status == 200, reply
    got = parse(reply)
    assert got.get_datacontenttype() == "application/octet-stream"
    assert data_bytes(got) == payload


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_spec_0_3_events_get_0_3_replies(watchdog, mode):
    wd = watchdog("cat")
    sent = CloudEventV03(
        {"type": "com.example.legacy", "source": "/clients/python", "datacontenttype": "text/plain"}, "old"
    )
    assert sent.get_specversion() == "0.3"
    convert = to_binary if mode == "binary" else to_structured
    reply = send(wd, convert(sent, JSON))
    assert reply.status == 200, reply
    got = parse(reply)
    assert isinstance(got, CloudEventV03)
    assert got.get_specversion() == "0.3"
    assert got.get_type() == "com.example.legacy.reply"
    assert got.get_source() == "/fwatchdog"
    assert got.get_id() != sent.get_id()
    assert got.get_data() == "old"


# --- attribute values: percent-encoding both ways ---------------------------------------------------------


def test_the_function_sees_attributes_as_the_sdk_sent_them(watchdog, script):
    f = script("env | grep '^CE_' | sort")
    wd = watchdog(f)
    sent = text_event(
        "",
        subject=SUBJECT,
        time=datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=timezone(timedelta(hours=2))),
        dataschema="https://example.com/schemas/order?v=1",
        myext="50% off & more",
    )
    message = to_binary(sent, JSON)
    # The SDK's wire form: percent-encoded; `time` in its own ISO form, with the offset kept.
    assert message.headers["ce-subject"] == "caf%C3%A9%20au%20lait"
    assert message.headers["ce-myext"] == "50%25%20off%20&%20more"
    sent_time = message.headers["ce-time"]
    assert sent_time == "2024-05-01T12:00:00.500000+02:00"
    reply = send(wd, message)
    assert reply.status == 200, reply
    env = dict(line.split("=", 1) for line in parse(reply).get_data().splitlines())
    assert env["CE_ID"] == sent.get_id()
    assert env["CE_SOURCE"] == "/clients/python"
    assert env["CE_TYPE"] == "com.example.created"
    assert env["CE_SPECVERSION"] == "1.0"
    assert env["CE_DATACONTENTTYPE"] == "text/plain"
    assert env["CE_SUBJECT"] == SUBJECT
    assert env["CE_MYEXT"] == "50% off & more"
    assert env["CE_DATASCHEMA"] == "https://example.com/schemas/order?v=1"
    assert env["CE_TIME"] == sent_time, "time must reach the function exactly as sent, not normalised"


def test_structured_attributes_reach_the_function_decoded(watchdog, script):
    f = script('printf "%s|%s" "$CE_SUBJECT" "$CE_MYEXT"')
    wd = watchdog(f)
    reply = send(wd, to_structured(text_event("x", subject=SUBJECT, myext="a%20b"), JSON))
    assert reply.status == 200, reply
    # Structured values are JSON strings: no percent-decoding applies.
    assert parse(reply).get_data() == f"{SUBJECT}|a%20b"


def test_reply_attributes_with_spaces_and_non_ascii_survive(watchdog, script):
    f = script('printf "%s" "$CE_SUBJECT"')
    wd = watchdog(f, ce_reply_source='/a b/café "100%"', ce_reply_type="com.example.réponse prête")
    reply = send(wd, to_binary(text_event("ignored", subject=SUBJECT), JSON))
    assert reply.status == 200, reply
    assert_ascii_headers(reply)
    got = parse(reply)
    assert got.get_source() == '/a b/café "100%"'
    assert got.get_type() == "com.example.réponse prête"
    assert got.get_data() == SUBJECT


# --- batches ------------------------------------------------------------------------------------------------


def batch(*events) -> bytes:
    # The SDK has no batch writer: a batch is a JSON array of the format's own documents.
    return b"[" + b",".join(JSON.write(e) for e in events) + b"]"


BATCH = {"content-type": "application/cloudevents-batch+json"}


def test_batch_replies_with_a_batch_the_sdk_reads(watchdog, script, tmp_path):
    order = tmp_path / "order.log"
    f = script(f'echo "$CE_ID" >> {order}; [ "$CE_ID" = quiet ] && exit 0; printf "r-%s" "$CE_ID"')
    wd = watchdog(f)
    a = text_event("1", id="a")
    quiet = text_event("2", id="quiet")
    b = CloudEventV03({"id": "b", "type": "com.example.old", "source": "/s", "datacontenttype": "text/plain"}, "3")
    reply = wd.post(BATCH, batch(a, quiet, b))
    assert reply.status == 200, reply
    assert reply.headers["content-type"].startswith("application/cloudevents-batch+json")
    replies = [JSON.read(None, json.dumps(doc)) for doc in json.loads(reply.body)]
    assert [r.get_type() for r in replies] == ["com.example.created.reply", "com.example.old.reply"]
    assert [r.get_specversion() for r in replies] == ["1.0", "0.3"]
    assert [data_bytes(r) for r in replies] == [b"r-a", b"r-b"]
    assert all(r.get_source() == "/fwatchdog" for r in replies)
    assert len({r.get_id() for r in replies} | {"a", "b"}) == 4
    assert order.read_text() == "a\nquiet\nb\n"


def test_batch_without_output_is_202(watchdog):
    wd = watchdog("true")
    reply = wd.post(BATCH, batch(text_event("1"), text_event("2")))
    assert (reply.status, reply.body) == (202, b"")


def test_batch_stops_at_the_first_failure(watchdog, script, tmp_path):
    order = tmp_path / "order.log"
    f = script(f'echo "$CE_ID" >> {order}; [ "$CE_ID" != bad ]')
    wd = watchdog(f)
    reply = wd.post(BATCH, batch(text_event(id="ok"), text_event(id="bad"), text_event(id="never")))
    assert reply.status == 500, reply
    assert order.read_text() == "ok\nbad\n"


# --- invalid events never reach the function --------------------------------------------------------------


@pytest.fixture
def recording(watchdog, script, tmp_path):
    ran = tmp_path / "ran"
    wd = watchdog(script(f"touch {ran}; cat"))
    yield wd
    assert not ran.exists(), "an invalid event reached the function"


def tampered(**changes) -> dict[str, str]:
    """A valid binary event's headers from the SDK, then changed (None removes) like a broken producer."""
    headers = dict(to_binary(text_event("x"), JSON).headers)
    for name, value in changes.items():
        name = "ce-" + name
        if value is None:
            headers.pop(name)
        else:
            headers[name] = value
    return headers


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"source": None}, "source"),
        ({"id": ""}, "id"),
        ({"type": None}, "type"),
        ({"time": "yesterday"}, "time"),
        ({"specversion": "2.0"}, "specversion"),
    ],
    ids=["missing-source", "empty-id", "missing-type", "bad-time", "bad-specversion"],
)
def test_invalid_binary_event_is_400_naming_the_attribute(recording, changes, named):
    reply = recording.post(tampered(**changes), b"x")
    assert reply.status == 400, reply
    assert named in reply.text(), reply.text()
    assert "ce-id" not in reply.headers


def test_invalid_structured_event_is_400(recording):
    doc = json.loads(JSON.write(text_event("x")))
    del doc["source"]
    reply = recording.post({"content-type": "application/cloudevents+json"}, json.dumps(doc))
    assert reply.status == 400, reply
    assert "source" in reply.text()
    reply = recording.post({"content-type": "application/cloudevents+json"}, b'{"specversion": "1.0", ')
    assert reply.status == 400, reply


def test_unsupported_structured_format_is_415(recording):
    reply = recording.post({"content-type": "application/cloudevents+xml"}, b"<event/>")
    assert reply.status == 415, reply


# --- outcomes of a classic function -------------------------------------------------------------------------


def test_no_output_is_202_with_an_empty_body(watchdog):
    wd = watchdog("true")
    reply = send(wd, to_binary(text_event("ignored"), JSON))
    assert reply.status == 202, reply
    assert reply.body == b""
    assert not any(name.startswith("ce-") for name in reply.headers)


def test_non_zero_exit_is_500_without_a_reply_event(watchdog, script):
    wd = watchdog(script("echo partial; exit 3"))
    reply = send(wd, to_binary(text_event(), JSON))
    assert reply.status == 500, reply
    assert "ce-id" not in reply.headers
    assert b"partial" not in reply.body


def test_exec_timeout_is_504(watchdog):
    wd = watchdog("sleep 5", exec_timeout="300ms")
    reply = send(wd, to_binary(text_event(), JSON))
    assert reply.status == 504, reply


def test_cloudevents_off_passes_the_event_through_as_plain_http(watchdog):
    wd = watchdog("cat", cloudevents="off")
    reply = send(wd, to_binary(text_event("as is"), JSON))
    assert reply.status == 200, reply
    assert "ce-id" not in reply.headers
    assert reply.body == b"as is"


# --- http mode: the watchdog's Python SDK as the function ------------------------------------------------

HANDLER = r'''
import json
import os

import watchdog_sdk


def handle(request):
    if request.kind != "cloudevent":
        return watchdog_sdk.Response(200, {"content-type": "text/plain"}, "not an event")
    attrs = request.event.attributes
    action = attrs["type"].rsplit(".", 1)[-1]
    if action == "own":
        return watchdog_sdk.CloudEvent(
            {"type": "com.example.answered", "source": "/handler/ré ponse", "subject": attrs.get("subject", "-")},
            request.event.data.upper(),
        )
    if action == "attrs":
        return json.dumps(attrs, sort_keys=True)
    if action == "json":
        return watchdog_sdk.Response(200, {"content-type": "application/json"}, json.dumps({"echo": attrs["id"]}))
    if action == "none":
        return None
    if action == "permanent":
        raise watchdog_sdk.PermanentError("no such order")
    if action == "retryable":
        raise watchdog_sdk.RetryableError("try later")
    if action == "crash":
        os._exit(1)
    raise ValueError("unexpected action " + action)


watchdog_sdk.serve(handle)
'''


@pytest.fixture
def http_mode(watchdog, python_handler):
    fprocess, env = python_handler(HANDLER)
    return watchdog(fprocess, **env)


def action(name: str, data: str = "payload", cls=CloudEvent, **attrs):
    base = {"type": f"com.example.{name}", "source": "/clients/python", "datacontenttype": "text/plain"}
    base.update(attrs)
    return cls(base, data)


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_http_mode_handler_reply_event(http_mode, mode):
    convert = to_binary if mode == "binary" else to_structured
    sent = action("own", "shout", subject=f'{SUBJECT} "100%"')
    reply = send(http_mode, convert(sent, JSON))
    assert reply.status == 200, reply
    assert_ascii_headers(reply)
    got = parse(reply)
    assert got.get_type() == "com.example.answered"
    assert got.get_source() == "/handler/ré ponse"
    assert got.get_subject() == f'{SUBJECT} "100%"'
    assert got.get_specversion() == "1.0"
    assert got.get_id() and got.get_id() != sent.get_id()
    assert data_bytes(got) == b"SHOUT"


def test_http_mode_handler_reply_keeps_spec_0_3(http_mode):
    reply = send(http_mode, to_binary(action("own", "x", cls=CloudEventV03), JSON))
    assert reply.status == 200, reply
    got = parse(reply)
    assert got.get_specversion() == "0.3"
    assert got.get_type() == "com.example.answered"


def test_http_mode_handler_sees_attributes_and_bytes_become_a_default_reply(http_mode):
    sent = action(
        "attrs",
        subject=SUBJECT,
        time=datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone(timedelta(hours=-5))),
        myext="x y",
    )
    message = to_binary(sent, JSON)
    reply = send(http_mode, message)
    assert reply.status == 200, reply
    got = parse(reply)
    assert got.get_type() == "com.example.attrs.reply"
    assert got.get_source() == "/fwatchdog"
    seen = json.loads(data_bytes(got))
    assert seen["id"] == sent.get_id()
    assert seen["subject"] == SUBJECT
    assert seen["myext"] == "x y"
    assert seen["time"] == message.headers["ce-time"] == "2024-05-01T12:00:00-05:00"


def test_http_mode_handler_content_type_is_the_default_reply_datacontenttype(http_mode):
    # A Response (not a CloudEvent) becomes the data of a default reply; the handler chose its Content-Type,
    # as it does for plain HTTP, so the reply's datacontenttype is that, not the mode's octet-stream default.
    sent = action("json")
    reply = send(http_mode, to_binary(sent, JSON))
    assert reply.status == 200, reply
    got = parse(reply)
    assert got.get_type() == "com.example.json.reply"
    assert got.get_datacontenttype() == "application/json"
    assert got.get_data() == {"echo": sent.get_id()}


def test_http_mode_outcomes(http_mode):
    reply = send(http_mode, to_binary(action("none"), JSON))
    assert (reply.status, reply.body) == (202, b"")
    reply = send(http_mode, to_binary(action("permanent"), JSON))
    assert reply.status == 400, reply
    assert "ce-id" not in reply.headers
    reply = send(http_mode, to_binary(action("retryable"), JSON))
    assert reply.status == 503, reply
    assert "ce-id" not in reply.headers


def test_http_mode_crash_is_500_and_the_worker_comes_back(http_mode):
    reply = send(http_mode, to_binary(action("crash"), JSON))
    assert reply.status == 500, reply
    assert "ce-id" not in reply.headers
    # The watchdog restarts the worker; the next event waits for it.
    reply = send(http_mode, to_binary(action("own", "again"), JSON))
    assert reply.status == 200, reply
    assert data_bytes(parse(reply)) == b"AGAIN"
