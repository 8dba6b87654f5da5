import json
import time

from fakewatchdog import grpc_envelope, http_envelope


def info(result):
    assert result.error is None, result.error
    return json.loads(result.body)


def test_http_request_fields(worker):
    env = http_envelope(
        method="PUT",
        path="/info/caf\u00e9 x".encode(),
        query="a=1&b=%20two&a=3",
        headers=[
            ("Content-Type", "text/plain"),
            ("X-Multi", "first"),
            ("x-multi", "second"),
            ("X-Latin", b"caf\xe9"),
        ],
        request_id="call-42",
        deadline=1_900_000_000.25,
        content_length=11,
    )
    sid = worker.open_stream(env)
    # The body arrives in several chunks; the handler sees it whole, as bytes.
    for part in (b"hello", b" ", b"world"):
        worker.send_body(sid, part, end=False)
    worker.send_body(sid, b"", end=True)
    got = info(worker.result(sid))
    assert got["kind"] == "http"
    assert got["method"] == "PUT"
    assert got["path"] == "/info/caf\u00e9 x"
    assert got["query"] == "a=1&b=%20two&a=3"
    assert got["body"] == "hello world"
    assert got["body_type"] == "bytes"
    assert got["content_type"] == "text/plain"  # case-insensitive lookup
    assert got["has_content_type"] is True
    assert got["headers"]["X-Multi"] == ["first", "second"]
    assert got["first_multi"] == "first"  # a repeated name gives its first value
    assert got["headers"]["X-Latin"] == ["caf\u00e9"]
    assert got["grpc_method"] is None
    assert got["event"] is None
    assert got["request_id"] == "call-42"
    assert got["deadline"] == "2030-03-17T17:46:40.250000+00:00"
    assert got["host"] == "example.test"
    assert got["headers"]["host"] == ["example.test"]  # kept apart in the envelope, as Go keeps it
    assert got["content_length"] == 11


def test_no_deadline_is_none(worker):
    got = info(worker.call(http_envelope(path="/info")))
    assert got["deadline"] is None
    assert got["content_length"] is None
    assert got["body"] == ""


def test_grpc_request(worker):
    res = worker.call(grpc_envelope("/pkg.Svc/Do", [("x-md", "v")]), b"\x0a\x03abc")
    got = info(res)
    assert got["kind"] == "grpc"
    assert got["grpc_method"] == "/pkg.Svc/Do"
    assert got["body"] == "\x0a\x03abc"
    assert got["headers"]["x-md"] == ["v"]
    assert res.header_values("grpc-meta") == ["/pkg.Svc/Do"]


def test_bytes_give_200(worker):
    res = worker.call(http_envelope(path="/bytes"))
    assert res.status == 200
    assert res.body == b"hello bytes"
    assert res.end is not None and res.error is None


def test_str_gives_200_utf8(worker):
    res = worker.call(http_envelope(path="/str"))
    assert res.status == 200
    assert res.body == "h\u00e9llo str".encode()


def test_none_gives_202_without_body(worker):
    res = worker.call(http_envelope(path="/none"))
    assert res.head.status == 202
    assert res.body == b""
    assert [f.WhichOneof("kind") for f in res.frames] == ["response_head", "end"]


def test_response_with_headers_keyword(worker):
    res = worker.call(http_envelope(path="/response"))
    assert res.status == 201
    assert res.header_values("x-one") == ["1"]
    assert res.header_values("x-multi") == ["a", "b"]
    assert res.header_values("content-type") == ["text/plain"]
    assert res.body == b"created"
    assert res.head.error == 0 and res.head.message == ""


def test_response_positional(worker):
    res = worker.call(http_envelope(path="/positional"))
    assert res.status == 418
    assert res.header_values("x-tea") == ["pot"]
    assert res.body == b"short and stout"


def test_permanent_error(worker):
    res = worker.call(http_envelope(path="/permanent"))
    assert res.head is None
    assert res.error_kind == "ERROR_KIND_PERMANENT"
    assert res.error.message == "bad input: field x"


def test_retryable_error(worker):
    res = worker.call(http_envelope(path="/retryable"))
    assert res.error_kind == "ERROR_KIND_RETRYABLE"
    assert res.error.message == "try again later"


def test_other_exception_is_internal_without_traceback(worker):
    res = worker.call(http_envelope(path="/boom"))
    assert res.error_kind == "ERROR_KIND_INTERNAL"
    assert res.error.message == "boom happened"
    assert "Traceback" not in res.error.message
    # The traceback goes to stderr, for the watchdog's log.
    deadline = time.monotonic() + 5
    while "ValueError: boom happened" not in worker.stderr and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "Traceback (most recent call last)" in worker.stderr
    assert "ValueError: boom happened" in worker.stderr


def test_unsupported_return_type_is_internal(worker):
    res = worker.call(http_envelope(path="/badtype"))
    assert res.error_kind == "ERROR_KIND_INTERNAL"
    assert "int" in res.error.message


def test_worker_keeps_serving_after_errors(worker):
    for path in ("/boom", "/permanent", "/badtype"):
        assert worker.call(http_envelope(path=path)).error is not None
    assert worker.call(http_envelope(path="/bytes")).body == b"hello bytes"
