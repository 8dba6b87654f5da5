import json
import uuid

from fakewatchdog import ce_envelope


def test_cloudevent_request_attributes(worker):
    env = ce_envelope(
        "ev-1",
        "/my/source",
        "com.example.describe",
        spec_version="1.0",
        myext=("ce_string", "ext value"),
        flag=("ce_boolean", True),
        off=("ce_boolean", False),
        num=("ce_integer", -42),
        blob=("ce_bytes", b"\x00\xffhi"),
        time=("ce_timestamp", "2024-05-06T07:08:09.123Z"),
        dataschema=("ce_uri", "https://example.test/schema"),
        ref=("ce_uri_ref", "/relative#x"),
        datacontenttype=("ce_string", "application/json"),
    )
    res = worker.call(env, b'{"hello": "event"}')
    assert res.error is None, res.error
    got = json.loads(res.body)
    assert got["kind"] == "cloudevent"
    assert got["event"]["data"] == '{"hello": "event"}'
    assert got["body"] == '{"hello": "event"}'
    assert got["event"]["attributes"] == {
        "specversion": "1.0",
        "id": "ev-1",
        "source": "/my/source",
        "type": "com.example.describe",
        "myext": "ext value",
        "flag": "true",
        "off": "false",
        "num": "-42",
        "blob": "AP9oaQ==",
        "time": "2024-05-06T07:08:09.123Z",
        "dataschema": "https://example.test/schema",
        "ref": "/relative#x",
        "datacontenttype": "application/json",
    }


def test_cloudevent_request_has_the_path_and_query_it_was_posted_to(worker):
    env = ce_envelope("ev-2", "/s", "com.example.describe")
    env.transport.method, env.transport.path, env.transport.query = "POST", b"/events/in", "x=1"
    env.transport.host = "sink.test"
    got = json.loads(worker.call(env, b"d").body)
    assert (got["path"], got["query"], got["host"]) == ("/events/in", "x=1", "sink.test")
    assert got["headers"]["host"] == ["sink.test"]
    # Over gRPC (CloudEvents/Send) there is no HTTP request: the root path.
    got = json.loads(worker.call(ce_envelope("ev-3", "/s", "com.example.describe"), b"d").body)
    assert (got["path"], got["query"]) == ("/", "")


def test_cloudevent_reply(worker):
    res = worker.call(ce_envelope("ev-2", "/src", "com.example.reply", spec_version="1.0"), b"in")
    assert res.error is None, res.error
    assert res.status == 200
    assert res.head.HasField("reply")
    reply = res.head.reply
    assert reply.type == "com.example.reply.out"
    assert reply.source == "/tests/app"
    assert reply.spec_version == "1.0"
    uuid.UUID(reply.id)  # a fresh id was filled in
    assert reply.attributes["myext"].ce_string == "ext-value"
    assert reply.attributes["count"].ce_string == "3"
    assert reply.WhichOneof("data") is None  # the data is the body
    assert res.body == b'{"reply":true}'


def test_cloudevent_reply_keeps_given_id(worker):
    res = worker.call(ce_envelope("ev-3", "/src", "com.example.reply-with-id"))
    assert res.head.reply.id == "fixed-id"
    assert res.head.reply.type == "t"
    assert "specversion" not in res.head.reply.attributes
    assert "id" not in res.head.reply.attributes
    assert res.body == b"text data"


def test_cloudevent_bytes_leave_the_reply_to_the_watchdog(worker):
    res = worker.call(ce_envelope("ev-4", "/src", "com.example.bytes"), b"data")
    assert res.status == 200
    assert not res.head.HasField("reply")
    assert res.body == b"DATA"


def test_cloudevent_none_is_202(worker):
    res = worker.call(ce_envelope("ev-5", "/src", "com.example.none"), b"data")
    assert res.head.status == 202
    assert res.body == b""


def test_cloudevent_permanent_error(worker):
    res = worker.call(ce_envelope("ev-6", "/src", "com.example.unknown"))
    assert res.error_kind == "ERROR_KIND_PERMANENT"
    assert "com.example.unknown" in res.error.message
