"""In-process checks of the connection code, with a transport that records writes."""

import asyncio
import struct

import pytest

from fakewatchdog import Frame, encode, frame_pb2, http_envelope
from watchdog_sdk import CloudEvent, Response
from watchdog_sdk._server import Connection, Limits, build_request, response_parts
from watchdog_sdk._types import Headers


class RecordingTransport(asyncio.Transport):
    def __init__(self):
        super().__init__()
        self.writes = []

    def write(self, data):
        self.writes.append(bytes(data))

    def is_closing(self):
        return False

    def close(self):
        pass

    def abort(self):
        pass


def decode_all(data):
    frames, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack_from(">I", data, pos)
        frames.append(Frame.FromString(data[pos + 4 : pos + 4 + n]))
        pos += 4 + n
    return frames


def make_connection(handler=lambda r: b"ok", is_async=False):
    conn = Connection(handler, is_async, 4, Limits(frame_pb2.HelloAck()))
    conn.loop = asyncio.get_running_loop()
    conn._can_write = asyncio.Event()
    conn._can_write.set()
    conn._exit = conn.loop.create_future()
    transport = RecordingTransport()
    conn.connection_made(transport)
    return conn, transport


def test_frames_ready_together_leave_in_one_write():
    async def main():
        conn, transport = make_connection()
        # Three pings in one read, split awkwardly across two reads.
        data = b"".join(encode(Frame(stream_id=0, ping=frame_pb2.Ping(nonce=i))) for i in (1, 2, 3))
        conn.data_received(data[:7])
        conn.data_received(data[7:])
        await asyncio.sleep(0)
        assert len(transport.writes) == 1
        assert [f.pong.nonce for f in decode_all(transport.writes[0])] == [1, 2, 3]

    asyncio.run(main())


def test_a_whole_response_is_batched():
    async def main():
        async def handler(request):
            return Response(200, {"a": "b"}, b"x" * 150_000)

        conn, transport = make_connection(handler, is_async=True)
        head = encode(Frame(stream_id=1, request_head=frame_pb2.RequestHead(envelope=http_envelope())))
        end = encode(Frame(stream_id=1, end=frame_pb2.End()))
        conn.data_received(head + end)
        for _ in range(5):
            await asyncio.sleep(0)
        frames = [f for w in transport.writes for f in decode_all(w)]
        kinds = [f.WhichOneof("kind") for f in frames]
        assert kinds == ["response_head", "data", "data", "data", "end"]
        assert len(transport.writes) == 1  # head, three Data frames and End: one write

    asyncio.run(main())


def test_headers_mapping():
    h = Headers([("Content-Type", b"text/plain"), ("X-A", "1"), ("x-a", "2")])
    assert h["content-type"] == "text/plain"
    assert h["X-a"] == "1"
    assert h.get("missing") is None
    assert h.get_all("X-A") == ["1", "2"]
    assert "CONTENT-TYPE" in h and "nope" not in h
    assert list(h) == ["Content-Type", "X-A"]
    assert len(h) == 2
    assert h.raw == [("Content-Type", b"text/plain"), ("X-A", b"1"), ("x-a", b"2")]
    with pytest.raises(KeyError):
        h["missing"]


def test_response_parts():
    req = build_request(1, http_envelope(), b"")
    head, body, trailers = response_parts(req, None)
    assert (head.status, body) == (202, b"")
    head, body, _ = response_parts(req, bytearray(b"ab"))
    assert (head.status, body) == (200, b"ab")
    head, body, trailers = response_parts(
        req, Response(body="é", headers=[("x", "1"), ("x", "2")], trailers={"grpc-status": "0"})
    )
    assert [(h.name, h.value) for h in head.headers] == [("x", b"1"), ("x", b"2")]
    assert body == "é".encode() and trailers == [("grpc-status", b"0")]
    head, body, _ = response_parts(req, CloudEvent({"type": "t", "source": "s", "flag": True}, None))
    assert head.reply.attributes["flag"].ce_string == "true"
    assert head.reply.spec_version == "1.0" and body == b""
    with pytest.raises(TypeError):
        response_parts(req, {"not": "supported"})


def test_generated_code_keeps_the_proto_package_names():
    # The protos are compiled inside watchdog_sdk._pb, but the wire names must stay those of proto/.
    from watchdog_sdk._pb.io.cloudevents.v1 import cloudevents_pb2
    from watchdog_sdk._pb.watchdog.v1 import envelope_pb2

    assert Frame.DESCRIPTOR.full_name == "watchdog.v1.Frame"
    assert envelope_pb2.Envelope.DESCRIPTOR.full_name == "watchdog.v1.Envelope"
    assert cloudevents_pb2.CloudEvent.DESCRIPTOR.full_name == "io.cloudevents.v1.CloudEvent"
    assert Frame.DESCRIPTOR.fields_by_name["window_update"].number == 17
    import io  # the standard library's, not shadowed

    assert hasattr(io, "BytesIO")


# ---- gRPC ---------------------------------------------------------------------------------------------------------

import gzip  # noqa: E402

from fakewatchdog import grpc_envelope  # noqa: E402
from watchdog_sdk import GrpcFramingError, GrpcStatus, PermanentError, StatusCode, grpc_frame  # noqa: E402
from watchdog_sdk._server import _is_async, _Streamed  # noqa: E402


def test_regenerated_fields_are_visible():
    from watchdog_sdk._pb.watchdog.v1 import envelope_pb2

    fields = envelope_pb2.Envelope.DESCRIPTOR.fields_by_name
    assert fields["transport"].number == 6
    assert fields["transport"].message_type.full_name == "watchdog.v1.HttpRequest"
    grpc_fields = envelope_pb2.GrpcCall.DESCRIPTOR.fields_by_name
    assert (grpc_fields["client_streaming"].number, grpc_fields["server_streaming"].number) == (2, 3)
    env = grpc_envelope("/a.B/C", client_streaming=True, server_streaming=True, host="h")
    req = build_request(1, envelope_pb2.Envelope.FromString(env.SerializeToString()), b"")
    assert req.grpc_client_streaming and req.grpc_server_streaming and req.host == "h"
    assert req.http_version == "HTTP/2.0"


def test_status_codes_and_grpc_status():
    assert StatusCode.OK == 0 and StatusCode.NOT_FOUND == 5 and StatusCode.UNAUTHENTICATED == 16
    status = GrpcStatus(StatusCode.NOT_FOUND, "gone", {"x": "1"})
    assert isinstance(status, Exception)
    assert (status.code, status.message, status.http_status) == (StatusCode.NOT_FOUND, "gone", 404)
    assert str(status) == "NOT_FOUND: gone"
    assert status._trailer_pairs() == [("x", b"1"), ("grpc-status", b"5"), ("grpc-message", b"gone")]
    assert GrpcStatus(14).code is StatusCode.UNAVAILABLE  # a plain int becomes the enum
    assert GrpcStatus(42).code == 42 and GrpcStatus(42).http_status == 500  # beyond 16: allowed, as in gRPC
    with pytest.raises(TypeError):
        GrpcStatus("NOT_FOUND")
    with pytest.raises(ValueError):
        GrpcStatus(-1)
    long = GrpcStatus(StatusCode.INTERNAL, "x" * 100_000)._trailer_pairs()[-1][1]
    assert len(long) < 17_000


def test_grpc_frame_and_messages():
    assert grpc_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"
    assert grpc_frame("é") == b"\x00\x00\x00\x00\x02" + "é".encode()
    body = grpc_frame(b"a") + grpc_frame(b"") + grpc_frame(b"c" * 70_000)
    req = build_request(1, grpc_envelope("/a.B/C", client_streaming=True), body)
    assert req.grpc_messages() == [b"a", b"", b"c" * 70_000]
    # Unary, and the watchdog's own Invoke: the whole body is the one message.
    assert build_request(1, grpc_envelope("/a.B/C"), body).grpc_messages() == [body]
    invoke = grpc_envelope("/watchdog.v1.Function/InvokeStream", client_streaming=True)
    assert build_request(1, invoke, b"raw").grpc_messages() == [b"raw"]
    with pytest.raises(ValueError):
        build_request(1, http_envelope(), b"").grpc_messages()


@pytest.mark.parametrize(
    "body, words",
    [
        (b"\x00\x00\x00", "ends 3 bytes into a 5-byte message prefix"),
        (b"\x00\x00\x00\x00\x05ab", "announces 5 bytes but the body ends after 2"),
        (grpc_frame(b"ok") + b"\x00", "ends 1 bytes into"),
    ],
)
def test_truncated_messages_raise_a_clear_permanent_error(body, words):
    req = build_request(1, grpc_envelope("/a.B/C", client_streaming=True), body)
    with pytest.raises(GrpcFramingError) as info:
        req.grpc_messages()
    assert isinstance(info.value, PermanentError)
    assert words in str(info.value)


def test_compressed_messages():
    packed = gzip.compress(b"hello")
    body = b"\x01" + struct.pack(">I", len(packed)) + packed
    env = grpc_envelope("/a.B/C", [("grpc-encoding", "gzip")], client_streaming=True)
    assert build_request(1, env, body).grpc_messages() == [b"hello"]
    env = grpc_envelope("/a.B/C", client_streaming=True)  # no grpc-encoding: cannot be decoded
    with pytest.raises(GrpcFramingError, match="grpc-encoding"):
        build_request(1, env, body).grpc_messages()


def test_response_parts_for_grpc():
    call = build_request(1, grpc_envelope("/a.B/C", server_streaming=True), b"")
    head, body, trailers = response_parts(call, GrpcStatus(StatusCode.ABORTED, "no", headers={"h": "1"}))
    assert head.status == 200 and [(h.name, h.value) for h in head.headers] == [("h", b"1")]
    assert body == b"" and trailers == [("grpc-status", b"10"), ("grpc-message", b"no")]
    # A server-streaming passthrough's plain body is one message; a generator is a stream of them.
    assert response_parts(call, b"m")[1] == grpc_frame(b"m")
    assert response_parts(call, Response(200, {}, b""))[1] == b""

    def gen():
        yield b"x"

    _, streamed, _ = response_parts(call, gen())
    assert isinstance(streamed, _Streamed) and streamed.frame and not streamed.is_async
    http = build_request(1, http_envelope(), b"")
    head, body, _ = response_parts(http, GrpcStatus(StatusCode.UNAVAILABLE, "later"))
    assert (head.status, body) == (503, b"later")
    assert "stream" in repr(Response(200, {}, gen()))


def test_async_generator_handlers_are_async():
    async def agen(request):
        yield b""

    class Handler:
        async def __call__(self, request):
            yield b""

    assert _is_async(agen) and _is_async(Handler())
    assert not _is_async(lambda r: b"")


def test_a_list_body_is_batched_like_bytes():
    async def main():
        async def handler(request):
            return Response(200, {}, [b"a", "b", b"c"])

        conn, transport = make_connection(handler, is_async=True)
        env = grpc_envelope("/a.B/C", server_streaming=True)
        head = encode(Frame(stream_id=1, request_head=frame_pb2.RequestHead(envelope=env)))
        end = encode(Frame(stream_id=1, end=frame_pb2.End()))
        conn.data_received(head + end)
        for _ in range(5):
            await asyncio.sleep(0)
        frames = [f for w in transport.writes for f in decode_all(w)]
        assert [f.WhichOneof("kind") for f in frames] == ["response_head", "data", "data", "data", "end"]
        assert [f.data.data for f in frames[1:4]] == [grpc_frame(b"a"), grpc_frame(b"b"), grpc_frame(b"c")]
        assert len(transport.writes) == 1

    asyncio.run(main())


def test_a_client_streaming_handler_starts_at_the_request_head():
    async def main():
        seen = []

        async def handler(request):
            async for message in request.stream_grpc_messages():
                seen.append(message)
            return b"done"

        conn, transport = make_connection(handler, is_async=True)
        env = grpc_envelope("/a.B/C", client_streaming=True)
        conn.data_received(encode(Frame(stream_id=1, request_head=frame_pb2.RequestHead(envelope=env))))
        conn.data_received(encode(Frame(stream_id=1, data=frame_pb2.Data(data=grpc_frame(b"m1")))))
        for _ in range(5):
            await asyncio.sleep(0)
        assert seen == [b"m1"]  # handed over before End
        conn.data_received(encode(Frame(stream_id=1, end=frame_pb2.End())))
        for _ in range(5):
            await asyncio.sleep(0)
        frames = [f for w in transport.writes for f in decode_all(w)]
        assert [f.WhichOneof("kind") for f in frames] == ["response_head", "data", "end"]

    asyncio.run(main())
