"""gRPC calls end to end against the fake watchdog: metadata, messages, statuses, streaming both ways."""

import json
import sys
import time

import pytest

from fakewatchdog import (
    APPS_DIR,
    KiB,
    Frame,
    frame_pb2,
    grpc_deframe,
    grpc_envelope,
    grpc_frame,
    http_envelope,
)

G = "/test.Greeter/"


def trailers(res):
    assert res.end is not None, f"no End: {res.frames}"
    return {h.name: h.value.decode() for h in res.end.trailers}


def kinds(frames):
    return [f.WhichOneof("kind") for f in frames]


def test_request_exposes_grpc_details(worker):
    env = grpc_envelope(
        "/pkg.Svc/Do", [("x-md", "v"), ("content-type", "application/grpc")], host="fn.example:8080"
    )
    res = worker.call(env, b"\x0a\x03abc")
    got = json.loads(res.body)
    assert got["grpc_client_streaming"] is False
    assert got["grpc_server_streaming"] is False
    assert got["metadata_is_headers"] is True
    assert got["headers"]["content-type"] == ["application/grpc"]
    assert got["grpc_messages"] == ["\x0a\x03abc"]  # unary: the whole body is the one message
    assert got["host"] == "fn.example:8080"  # from Envelope.transport


def test_unary_passthrough_metadata_and_trailers(worker):
    res = worker.call(grpc_envelope(G + "SayHello", [("x-user", "ana")]), b"world")
    assert res.error is None, res.error
    assert res.status == 200
    assert res.body == b"Hello world"  # unary: one raw message, not framed
    assert res.header_values("x-initial") == ["1"]
    assert res.header_values("x-echo") == ["ana"]
    assert trailers(res) == {"x-trailer": "t"}


def test_returned_grpc_status_becomes_trailers(worker):
    res = worker.call(grpc_envelope(G + "Status"), b"")
    assert res.error is None, res.error
    assert res.status == 200 and res.body == b""
    assert [(h.name, h.value) for h in res.end.trailers] == [
        ("x-why", b"because"),
        ("grpc-status", b"5"),
        ("grpc-message", "no such greeting: \u00e9".encode()),  # plain UTF-8; the watchdog percent-encodes
    ]


def test_raised_grpc_status_becomes_trailers(worker):
    res = worker.call(grpc_envelope(G + "Raise"), b"")
    assert res.error is None, res.error
    assert res.header_values("x-initial") == ["denied"]
    assert trailers(res) == {"grpc-status": "7", "grpc-message": "not for you"}


def test_grpc_status_on_http_maps_to_an_http_status(worker):
    res = worker.call(http_envelope(path="/grpc-status"))
    assert res.status == 404
    assert res.body == b"nothing here"
    assert res.header_values("content-type") == ["text/plain; charset=utf-8"]


def test_server_streaming_items_are_framed_and_sent_as_produced(worker):
    env = grpc_envelope(G + "SayHelloStream", [("x-pause", "0.8")], server_streaming=True)
    sid = worker.start(env, b"bob")
    head = worker.next_frame(sid)
    assert head.WhichOneof("kind") == "response_head"
    assert [h.value for h in head.response_head.headers if h.name == "x-initial"] == [b"stream"]
    first = worker.next_frame(sid, timeout=5)
    assert first.WhichOneof("kind") == "data"
    assert grpc_deframe(first.data.data) == [b"Hello bob #0"]
    # The generator now pauses: nothing else (and certainly not End) arrives meanwhile.
    assert worker.frames_within(sid, 0.25) == []
    res = worker.result(sid, head=head.response_head)
    assert grpc_deframe(res.body) == [b"Hello bob #1", b"Hello bob #2"]
    assert kinds(res.frames) == ["data", "data", "end"]
    assert trailers(res) == {"x-trailer": "end"}


def test_unary_call_with_a_generator_body_is_not_framed(worker):
    res = worker.call(grpc_envelope(G + "SayHelloStream"), b"x")
    assert res.body == b"Hello x #0Hello x #1Hello x #2"  # one raw message made of the pieces


def test_server_streaming_list_body_and_empty_message(worker):
    res = worker.call(grpc_envelope(G + "List", server_streaming=True), b"")
    assert grpc_deframe(res.body) == [b"one", b"two", b""]
    assert trailers(res) == {"x-count": "3"}


def test_server_streaming_plain_bytes_is_one_message(worker):
    res = worker.call(grpc_envelope(G + "One", server_streaming=True), b"")
    assert res.body == grpc_frame(b"single")


def test_status_raised_mid_stream_ends_with_trailers(worker):
    res = worker.call(grpc_envelope(G + "StreamThenFail", server_streaming=True), b"")
    assert res.error is None, res.error
    assert grpc_deframe(res.body) == [b"first", b"second"]
    assert trailers(res) == {"grpc-status": "10", "grpc-message": "stopped halfway"}


def test_bad_stream_item_is_internal_and_the_worker_goes_on(worker):
    res = worker.call(grpc_envelope(G + "BadItem", server_streaming=True), b"")
    assert res.head is not None and res.body == grpc_frame(b"fine")
    assert res.error_kind == "ERROR_KIND_INTERNAL"
    assert "int" in res.error.message and "Traceback" not in res.error.message
    assert worker.call(grpc_envelope(G + "SayHello"), b"again").body == b"Hello again"


def test_http_streamed_response(worker):
    sid = worker.start(http_envelope(path="/stream", query="n=3&pause=0.6"))
    assert worker.next_frame(sid).WhichOneof("kind") == "response_head"
    first = worker.next_frame(sid, timeout=5)
    assert first.data.data == b"part 0\n"
    assert worker.frames_within(sid, 0.2) == []
    res = worker.result(sid, head=first)  # any non-None head: we already saw it
    assert [f.data.data for f in res.frames[:-1]] == [b"part 1\n", b"part 2\n"]
    assert res.end is not None and list(res.end.trailers) == []


def test_streamed_response_respects_the_window(watchdog, mode):
    wd = watchdog("app.py", mode, auto_credit=False, initial_window_bytes=64 * KiB, max_chunk_bytes=16 * KiB)
    sid = wd.start(http_envelope(path="/stream-big", query="n=10&size=20000"))
    head = wd.next_frame(sid)
    got = b"".join(f.data.data for f in wd.frames_within(sid, 1.0))
    assert len(got) == 64 * KiB, "the producer must be held at the window"
    wd.grant(sid, 200_000)
    rest = wd.result(sid, head=head.response_head)
    body = got + rest.body
    assert body == b"".join(bytes([65 + i]) * 20000 for i in range(10))
    assert wd.violations == []


def test_client_streaming_messages_arrive_split_anyhow(worker):
    env = grpc_envelope(G + "Collect", client_streaming=True)
    sid = worker.open_stream(env)
    body = grpc_frame(b"alpha") + grpc_frame(b"") + grpc_frame(b"gamma" * 1000)
    # Cut across prefixes and messages.
    for part in (body[:3], body[3:9], body[9:12], body[12:]):
        worker.send_body(sid, part, end=False)
    worker.send_body(sid, b"", end=True)
    res = worker.result(sid)
    assert res.body == b"alpha,," + b"gamma" * 1000


def test_grpc_messages_splits_a_client_streaming_body(watchdog, mode):
    wd = watchdog("app.py", mode)
    route = "Messages" if mode == "sync" else "Read"  # async handlers await the body first
    body = grpc_frame(b"a") + grpc_frame(b"bb") + grpc_frame(b"ccc")
    res = wd.call(grpc_envelope(G + route, client_streaming=True), body, chunk=4)
    assert res.body == b"a|bb|ccc"


@pytest.mark.parametrize("cut", [3, 8])  # inside a prefix, inside a message
def test_truncated_client_stream_is_a_permanent_error(worker, cut):
    body = grpc_frame(b"ok") + grpc_frame(b"truncated")
    res = worker.call(grpc_envelope(G + "Collect", client_streaming=True), body[: len(grpc_frame(b"ok")) + cut])
    assert res.error_kind == "ERROR_KIND_PERMANENT"
    assert res.error.message.startswith("truncated gRPC message")


def test_bidirectional_stream_answers_before_the_request_ends(worker):
    env = grpc_envelope(G + "Chat", client_streaming=True, server_streaming=True)
    sid = worker.open_stream(env)
    worker.send_body(sid, grpc_frame(b"one"), end=False)
    head = worker.next_frame(sid, timeout=5)
    assert head.WhichOneof("kind") == "response_head"
    assert grpc_deframe(worker.next_frame(sid, timeout=5).data.data) == [b"echo one"]
    worker.send_body(sid, grpc_frame(b"two"), end=False)
    assert grpc_deframe(worker.next_frame(sid, timeout=5).data.data) == [b"echo two"]
    worker.send_body(sid, b"", end=True)
    res = worker.result(sid, head=head.response_head)
    assert kinds(res.frames) == ["end"]


def test_client_streaming_credit_follows_consumption(watchdog, mode):
    wd = watchdog("app.py", mode, initial_window_bytes=32 * KiB, max_chunk_bytes=8 * KiB)
    messages = [bytes([97 + i % 26]) * 3000 for i in range(300)]  # ~900 KB through a 32 KiB window
    res = wd.call(grpc_envelope(G + "Collect", client_streaming=True), b"".join(map(grpc_frame, messages)))
    assert res.body == b",".join(messages)
    assert max(wd.window_updates_from_worker[res.stream_id]) <= 32 * KiB
    assert wd.violations == []


def test_sync_handler_may_wait_for_the_whole_client_stream(watchdog):
    wd = watchdog("app.py", "sync")
    res = wd.call(grpc_envelope(G + "Body", client_streaming=True), b"x" * 300_000)
    assert res.body == b"x" * 300_000


def test_async_handler_gets_the_whole_body_of_a_client_stream(watchdog):
    """SPEC §4 gives every handler `request.body`: an `async def` handler of a client-streaming call starts once
    the stream has ended, so reading it there works."""
    wd = watchdog("app.py", "async")
    body = grpc_frame(b"x") + grpc_frame(b"y" * 100_000)
    res = wd.call(grpc_envelope(G + "Body", client_streaming=True), body, chunk=4096)
    assert res.error is None, res
    assert res.body == body


def test_invoke_stream_uses_plain_chunks(worker):
    env = grpc_envelope("/watchdog.v1.Function/InvokeStream", client_streaming=True, server_streaming=True)
    sid = worker.open_stream(env)
    worker.send_body(sid, b"abc", end=False)
    assert worker.next_frame(sid, timeout=5).WhichOneof("kind") == "response_head"
    assert worker.next_frame(sid, timeout=5).data.data == b"ABC"  # not framed
    worker.send_body(sid, b"def", end=True)
    res = worker.result(sid, head=object())
    assert res.body == b"DEF" and res.end is not None


def test_cancel_stops_a_streaming_response(worker):
    env = grpc_envelope(G + "SayHelloStream", [("x-pause", "3")], server_streaming=True)
    sid = worker.start(env, b"c")
    assert worker.next_frame(sid).WhichOneof("kind") == "response_head"
    assert worker.next_frame(sid).WhichOneof("kind") == "data"
    worker.cancel(sid)
    # Frames that were in flight would be harmless, but none may follow the cancel for this slow stream.
    assert worker.frames_within(sid, 0.5) == []
    assert worker.call(grpc_envelope(G + "SayHello"), b"next").body == b"Hello next"


def test_cancel_while_reading_a_client_stream(worker):
    sid = worker.open_stream(grpc_envelope(G + "Collect", client_streaming=True))
    worker.send_body(sid, grpc_frame(b"partial"), end=False)
    time.sleep(0.1)
    worker.cancel(sid)
    assert worker.frames_within(sid, 0.3) == []
    assert worker.call(grpc_envelope(G + "SayHello"), b"after").body == b"Hello after"


@pytest.mark.parametrize("variant", ["sync", "async"])
def test_generator_handlers(watchdog, variant):
    wd = watchdog("gen_app.py", variant)
    res = wd.call(grpc_envelope("/pkg.S/M", server_streaming=True), b"hi")
    assert grpc_deframe(res.body) == [b"<hi>"]
    assert list(res.end.trailers) == []
    body = grpc_frame(b"a") + grpc_frame(b"b")
    env = grpc_envelope("/pkg.S/M", [("x-fail", "1")], client_streaming=True, server_streaming=True)
    res = wd.call(env, body)
    assert grpc_deframe(res.body) == [b"<a>", b"<b>"]
    assert trailers(res) == {"grpc-status": "8", "grpc-message": "too many"}
    # An async generator handler declares no concurrency limit, like an `async def`.
    expected = 0 if variant == "async" else 32
    assert wd.hello.hello.max_concurrency == expected
    assert wd.violations == []


def test_frames_for_a_finished_client_stream_are_ignored(worker):
    # The handler answers at once (unary route) although the call is client-streaming; the watchdog may still
    # have body frames in flight, which the worker must ignore.
    sid = worker.open_stream(grpc_envelope(G + "Status", client_streaming=True))
    res = worker.result(sid)
    assert trailers(res)["grpc-status"] == "5"
    worker.send(Frame(stream_id=sid, data=frame_pb2.Data(data=grpc_frame(b"late"))))
    worker.send(Frame(stream_id=sid, end=frame_pb2.End()))
    assert worker.frames_within(sid, 0.3) == []
    assert worker.violations == []


def test_readme_greeter_example(watchdog):
    sys.path.insert(0, str(APPS_DIR))
    import greeter_pb2

    wd = watchdog("readme_greeter.py")
    req = greeter_pb2.HelloRequest(name="Ada").SerializeToString()
    res = wd.call(grpc_envelope("/helloworld.Greeter/SayHello"), req)
    assert greeter_pb2.HelloReply.FromString(res.body).message == "Hello Ada"
    assert res.header_values("x-served-by") == ["python"]
    assert trailers(res) == {"x-lang": "en"}
    res = wd.call(grpc_envelope("/helloworld.Greeter/SayHelloStream", server_streaming=True), req)
    replies = [greeter_pb2.HelloReply.FromString(m).message for m in grpc_deframe(res.body)]
    assert replies == ["Hello Ada", "Hola Ada", "Bonjour Ada"]
    res = wd.call(grpc_envelope("/helloworld.Greeter/SayHello"), b"")
    assert trailers(res) == {"grpc-status": "3", "grpc-message": "name is required"}
    res = wd.call(grpc_envelope("/helloworld.Greeter/Nope"), b"")
    assert trailers(res)["grpc-status"] == "12"
    assert wd.violations == []
