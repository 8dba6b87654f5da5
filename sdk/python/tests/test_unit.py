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
