"""The worker side of the `watchdog.v1` protocol (proto/README.md): handshake, framing, streams, flow control.

One asyncio loop owns the socket. It parses frames as they arrive, answers Ping at once, assembles request
bodies (returning credit as it goes), starts handlers (sync ones on a pool of daemon threads, async ones as
tasks on the loop) and sends their responses in Data frames that respect each stream's window. Frames made
ready in one loop iteration leave in one write.

Client-streaming gRPC calls are the exception to "start after End": their handler starts at RequestHead and
takes the body through a _RequestBody, which returns credit only as the handler consumes it. Streamed response
bodies (generators, async generators, iterables) are sent item by item: async ones from the loop, plain ones
from a pool thread that hands each item to the loop and waits until the window lets it out.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import datetime as _dt
import inspect
import os
import queue
import signal
import socket
import struct
import sys
import threading
import traceback
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from typing import Any, Callable, NoReturn, Optional, Union

from ._pb.io.cloudevents.v1 import cloudevents_pb2
from ._pb.watchdog.v1 import envelope_pb2, frame_pb2
from ._types import (
    BodyPending,
    CloudEvent,
    Event,
    GrpcStatus,
    Headers,
    PermanentError,
    Request,
    Response,
    RetryableError,
    StatusCode,
    _header_pairs,
    _is_stream_body,
    _RequestBody,
    _to_body,
    grpc_frame,
)
from ._version import __version__

PROTOCOL = "watchdog.v1"
SDK_NAME = "watchdog-sdk-python"
DEFAULT_SYNC_CONCURRENCY = 32

PRE_ACK_MAX_FRAME_BYTES = 64 * 1024
DEFAULT_MAX_FRAME_BYTES = 2 * 1024 * 1024
DEFAULT_MAX_CHUNK_BYTES = 64 * 1024
DEFAULT_INITIAL_WINDOW_BYTES = 256 * 1024
# Room for a Data frame's own fields (stream id, tags, lengths) inside max_frame_bytes.
_DATA_FRAME_OVERHEAD = 32
# Error messages are cut to this many characters so an Error frame always fits.
_MAX_MESSAGE_CHARS = 16 * 1024
# How long to wait for buffered frames to leave when closing.
_CLOSE_TIMEOUT_S = 5.0

_LEN = struct.Struct(">I")

PERMANENT = envelope_pb2.ERROR_KIND_PERMANENT
RETRYABLE = envelope_pb2.ERROR_KIND_RETRYABLE
INTERNAL = envelope_pb2.ERROR_KIND_INTERNAL


class ProtocolError(Exception):
    """The peer broke the framing or the protocol."""


def _log(message: str) -> None:
    try:
        print(f"watchdog-sdk: {message}", file=sys.stderr, flush=True)
    except Exception:  # pragma: no cover - stderr closed
        pass


# --------------------------------------------------------------------------------------------------------------
# Encoding helpers


def _frame_bytes(frame: frame_pb2.Frame) -> bytes:
    payload = frame.SerializeToString()
    return _LEN.pack(len(payload)) + payload


def _send_blocking(sock: socket.socket, frame: frame_pb2.Frame) -> None:
    sock.sendall(_frame_bytes(frame))


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            raise ProtocolError("the watchdog closed the connection")
        buf += part
    return bytes(buf)


def _recv_frame_blocking(sock: socket.socket, max_frame: int) -> frame_pb2.Frame:
    (n,) = _LEN.unpack(_recv_exact(sock, 4))
    if n > max_frame:
        raise ProtocolError(f"frame of {n} bytes exceeds the limit of {max_frame}")
    return _decode_frame(_recv_exact(sock, n))


def _decode_frame(payload: bytes) -> frame_pb2.Frame:
    try:
        frame = frame_pb2.Frame.FromString(payload)
    except Exception as exc:
        raise ProtocolError(f"bytes that do not decode as a Frame: {exc}") from None
    if frame.WhichOneof("kind") is None:
        raise ProtocolError("a Frame with no kind")
    return frame


async def _resolved(result: Any) -> Any:
    """A handler's result, awaited for as long as it is awaitable (a plain function may return a coroutine)."""
    while inspect.isawaitable(result):
        result = await result
    return result


def _exit_now(exc: SystemExit) -> NoReturn:
    """Ends the process as the interpreter would for an uncaught SystemExit, at once: waiting for the handler
    threads, as a normal exit does, could hang on a handler that never returns."""
    code = exc.code
    if code is not None and not isinstance(code, int):
        _log(str(code))
        code = 1
    _log(f"a handler called sys.exit({exc.code!r}): the worker exits")
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:  # pragma: no cover - stdio closed
        pass
    os._exit(code or 0)


def _error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if len(text) > _MAX_MESSAGE_CHARS:
        text = text[:_MAX_MESSAGE_CHARS] + "…"
    return text


# --------------------------------------------------------------------------------------------------------------
# Envelope → Request


def _ce_attribute_text(value: cloudevents_pb2.CloudEvent.CloudEventAttributeValue) -> str:
    which = value.WhichOneof("attr")
    if which == "ce_boolean":
        return "true" if value.ce_boolean else "false"
    if which == "ce_integer":
        return str(value.ce_integer)
    if which in ("ce_string", "ce_uri", "ce_uri_ref"):
        return getattr(value, which)
    if which == "ce_bytes":
        return base64.b64encode(value.ce_bytes).decode("ascii")
    if which == "ce_timestamp":
        return value.ce_timestamp.ToJsonString()
    return ""


def _event_attributes(ce: cloudevents_pb2.CloudEvent) -> dict[str, str]:
    attrs = {name: _ce_attribute_text(value) for name, value in ce.attributes.items()}
    for key, value in (("specversion", ce.spec_version), ("id", ce.id), ("source", ce.source), ("type", ce.type)):
        if value or key not in attrs:
            attrs[key] = value
    return attrs


def build_request(
    stream_id: int, env: envelope_pb2.Envelope, body: bytes, body_source: Optional[_RequestBody] = None
) -> Request:
    """The Request a handler sees for one RequestHead envelope and its assembled body (or, for a handler that
    starts before the body has ended, the source its chunks arrive through)."""
    headers = Headers((h.name, h.value) for h in env.headers)
    traceparent = env.trace.traceparent
    tracestate = env.trace.tracestate
    # The trace context normally also arrives among the headers; make sure a handler finds it there.
    if traceparent and "traceparent" not in headers:
        headers._add("traceparent", traceparent)
    if tracestate and "tracestate" not in headers:
        headers._add("tracestate", tracestate)
    # Go's server keeps Host apart from the other headers (the envelope follows it); a handler looks for it there.
    host = env.transport.host if env.HasField("transport") else env.http.host
    if host and "host" not in headers:
        headers._add("host", host)
    deadline = None
    if env.HasField("deadline"):
        deadline = env.deadline.ToDatetime(tzinfo=_dt.timezone.utc)
    content_length = env.content_length if env.content_length >= 0 else None
    common: dict[str, Any] = dict(
        headers=headers,
        body=body,
        request_id=env.request_id,
        deadline=deadline,
        content_length=content_length,
        traceparent=traceparent,
        tracestate=tracestate,
        stream_id=stream_id,
    )
    if env.HasField("transport"):
        # The HTTP request that carried a gRPC call or a CloudEvent.
        common["host"] = env.transport.host
        common["http_version"] = env.transport.version
    kind = env.WhichOneof("kind")
    if kind == "grpc":
        method = env.grpc.method
        return Request(
            kind="grpc",
            method="POST",
            path=method,
            raw_path=method.encode("utf-8"),
            grpc_method=method,
            grpc_client_streaming=env.grpc.client_streaming,
            grpc_server_streaming=env.grpc.server_streaming,
            body_source=body_source,
            **common,
        )
    if kind == "cloudevent":
        ce = env.cloudevent
        data = body
        if not data:
            # The data travels as the body (proto/README.md); accept it inside the message too.
            which = ce.WhichOneof("data")
            if which == "binary_data":
                data = ce.binary_data
            elif which == "text_data":
                data = ce.text_data.encode("utf-8")
            common["body"] = data
        # The HTTP request that carried the event, when there was one (not for CloudEvents/Send over gRPC).
        raw_path = env.transport.path or b"/" if env.HasField("transport") else b"/"
        return Request(
            kind="cloudevent",
            method="POST",
            path=raw_path.decode("utf-8", "surrogateescape"),
            raw_path=raw_path,
            query=env.transport.query if env.HasField("transport") else "",
            event=Event(_event_attributes(ce), data),
            **common,
        )
    http = env.http
    raw_path = http.path or b"/"
    return Request(
        kind="http",
        method=http.method,
        # The path is percent-decoded bytes and need not be UTF-8: decode losslessly (like os.fsdecode).
        path=raw_path.decode("utf-8", "surrogateescape"),
        raw_path=raw_path,
        query=http.query,
        host=http.host,
        http_version=http.version,
        **common,
    )


# --------------------------------------------------------------------------------------------------------------
# Handler result → frames


def _pb_headers(pairs: list[tuple[str, bytes]]) -> list[envelope_pb2.Header]:
    return [envelope_pb2.Header(name=name, value=value) for name, value in pairs]


def _reply_event(event: CloudEvent, default_specversion: str) -> cloudevents_pb2.CloudEvent:
    attrs = event._normalised(default_specversion)
    reply = cloudevents_pb2.CloudEvent(
        id=attrs.pop("id"),
        source=attrs.pop("source", ""),
        spec_version=attrs.pop("specversion"),
        type=attrs.pop("type", ""),
    )
    for name, value in attrs.items():
        if name in ("data", "data_base64"):
            continue
        reply.attributes[name].ce_string = value
    return reply


class _Streamed:
    """A response body produced piece by piece: a (sync or async) iterable of bytes/str items."""

    __slots__ = ("items", "is_async", "frame")

    def __init__(self, items: Any, frame: bool) -> None:
        # Prefer async iteration when both are offered: it never blocks the loop.
        self.is_async = isinstance(items, AsyncIterable)
        self.items = items
        self.frame = frame  # each item is one gRPC message to prefix (server-streaming passthrough)


Body = Union[bytes, _Streamed]

_STATUS_TRAILERS = ("grpc-status", "grpc-message")


def _body_of(request: Request, body: Any) -> Body:
    frame = request._frames_response()
    if _is_stream_body(body):
        return _Streamed(body, frame)
    data = _to_body(body)
    # A server-streaming passthrough call answers messages: a whole body is one message (none when empty).
    return grpc_frame(data) if frame and data else data


def _status_parts(
    request: Request, status: GrpcStatus
) -> tuple[envelope_pb2.ResponseHead, Body, list[tuple[str, bytes]]]:
    if request.kind == "grpc":
        head = envelope_pb2.ResponseHead(status=200, headers=_pb_headers(_header_pairs(status.headers)))
        return head, b"", status._trailer_pairs()
    # Not a gRPC call: the HTTP status gRPC's mapping gives the code, the message as the body.
    pairs = _header_pairs(status.headers)
    if status.message and not any(name.lower() == "content-type" for name, _ in pairs):
        pairs.append(("content-type", b"text/plain; charset=utf-8"))
    head = envelope_pb2.ResponseHead(status=status.http_status, headers=_pb_headers(pairs))
    return head, status.message.encode("utf-8"), _header_pairs(status.trailers)


def response_parts(request: Request, result: Any) -> tuple[envelope_pb2.ResponseHead, Body, list[tuple[str, bytes]]]:
    """(ResponseHead, body, trailers) for what a handler returned; TypeError for anything unsupported.

    The body is bytes, or a _Streamed for a generator, async generator or iterator (returned as such or as a
    Response's body)."""
    if result is None:
        return envelope_pb2.ResponseHead(status=202), b"", []
    if isinstance(result, (bytes, bytearray, memoryview, str)):
        return envelope_pb2.ResponseHead(status=200), _body_of(request, result), []
    if isinstance(result, Response):
        head = envelope_pb2.ResponseHead(status=result.status, headers=_pb_headers(_header_pairs(result.headers)))
        return head, _body_of(request, result.body), _header_pairs(result.trailers)
    if isinstance(result, GrpcStatus):
        return _status_parts(request, result)
    if isinstance(result, CloudEvent):
        default_specversion = request.event.specversion if request.event is not None else "1.0"
        head = envelope_pb2.ResponseHead(status=200)
        head.reply.CopyFrom(_reply_event(result, default_specversion))
        return head, _to_body(result.data), []
    if isinstance(result, (Iterator, AsyncIterator)):
        # A generator handler, or one that returned a generator or iterator: a 200 streamed as produced.
        return envelope_pb2.ResponseHead(status=200), _Streamed(result, request._frames_response()), []
    raise TypeError(
        f"the handler returned a {type(result).__name__}; expected watchdog_sdk.Response, watchdog_sdk.GrpcStatus, "
        "watchdog_sdk.CloudEvent, bytes, str, None or a generator of bytes"
    )


def _item_bytes(item: Any, frame: bool) -> bytes:
    if not isinstance(item, (bytes, bytearray, memoryview, str)):
        raise TypeError(f"the response stream produced a {type(item).__name__}; expected bytes or str")
    data = _to_body(item)
    return grpc_frame(data) if frame else data


def _error_kind_for_status(code: int) -> int:
    if code == StatusCode.INVALID_ARGUMENT:
        return PERMANENT
    if code == StatusCode.UNAVAILABLE:
        return RETRYABLE
    return INTERNAL


# --------------------------------------------------------------------------------------------------------------
# A pool of daemon threads for sync handlers: a stuck handler never keeps the process from exiting.


class _ThreadPool:
    def __init__(self, size: int) -> None:
        self._size = size
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._threads = 0

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((future, fn, arg))
        if self._idle.acquire(blocking=False):
            return future
        with self._lock:
            if self._threads < self._size:
                self._threads += 1
                threading.Thread(
                    target=self._work, name=f"watchdog-handler-{self._threads}", daemon=True
                ).start()
        return future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            self._run_one(*item)
            del item
            self._idle.release()

    @staticmethod
    def _run_one(future: concurrent.futures.Future, fn: Callable[[Any], Any], arg: Any) -> None:
        if not future.set_running_or_notify_cancel():
            return  # cancelled before it started
        try:
            result = fn(arg)
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, which decides
            future.set_exception(exc)
        else:
            future.set_result(result)


# --------------------------------------------------------------------------------------------------------------
# One request stream


class _Stream:
    __slots__ = (
        "id",
        "envelope",
        "chunks",
        "unacked",
        "body_done",
        "send_window",
        "window_waiter",
        "finished",
        "cancelled",
        "task",
        "request",
        "body_source",
    )

    def __init__(self, stream_id: int, envelope: envelope_pb2.Envelope, window: int) -> None:
        self.id = stream_id
        self.envelope = envelope
        self.chunks: list[bytes] = []
        self.unacked = 0
        self.body_done = False
        self.send_window = window
        self.window_waiter: Optional[asyncio.Future] = None
        self.finished = False
        self.cancelled = False
        self.task: Optional[asyncio.Task] = None
        self.request: Optional[Request] = None
        # Set when the handler started before the body ended (client-streaming gRPC): chunks go there.
        self.body_source: Optional[_RequestBody] = None

    def wake(self) -> None:
        waiter = self.window_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


# --------------------------------------------------------------------------------------------------------------
# The connection


class Limits:
    def __init__(self, ack: frame_pb2.HelloAck) -> None:
        self.max_frame_bytes = ack.max_frame_bytes or DEFAULT_MAX_FRAME_BYTES
        self.max_chunk_bytes = ack.max_chunk_bytes or DEFAULT_MAX_CHUNK_BYTES
        self.initial_window_bytes = ack.initial_window_bytes or DEFAULT_INITIAL_WINDOW_BYTES
        self.worker_id = ack.worker_id
        # A Data payload must fit both the chunk limit and, with its frame's own fields, the frame limit.
        self.chunk = max(1, min(self.max_chunk_bytes, self.max_frame_bytes - _DATA_FRAME_OVERHEAD))


class Connection(asyncio.Protocol):
    """Serves requests on one connected socket until Shutdown, the socket closing, or SIGTERM/SIGINT."""

    def __init__(self, handler: Callable[[Request], Any], is_async: bool, concurrency: int, limits: Limits) -> None:
        self.handler = handler
        self.is_async = is_async
        self.limits = limits
        self.pool = None if is_async else _ThreadPool(concurrency)
        self.streams: dict[int, _Stream] = {}
        self.last_stream_id = 0
        self.draining = False
        self.shutting_down = False
        self.transport: Optional[asyncio.Transport] = None
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.early_signals: list[int] = []
        self._inbuf = bytearray()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._closed = False
        self._can_write: Optional[asyncio.Event] = None
        self._exit: Optional[asyncio.Future] = None
        self._lost: Optional[asyncio.Future] = None

    # ---- running ---------------------------------------------------------------------------------------------

    async def run(self, sock: socket.socket) -> int:
        self.loop = asyncio.get_running_loop()
        self._exit = self.loop.create_future()
        self._lost = self.loop.create_future()
        self._can_write = asyncio.Event()
        self._can_write.set()
        await self.loop.create_unix_connection(lambda: self, sock=sock)
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self.loop.add_signal_handler(signum, self._on_signal, signum)
            except (ValueError, RuntimeError, NotImplementedError):  # not the main thread, or no signals
                pass
        for signum in self.early_signals:
            self._on_signal(signum)
        code = await self._exit
        self._flush()
        if self.transport is not None and not self._lost.done():
            self.transport.close()
            try:
                await asyncio.wait_for(asyncio.shield(self._lost), _CLOSE_TIMEOUT_S)
            except asyncio.TimeoutError:
                self.transport.abort()
        for st in list(self.streams.values()):
            if st.task is not None:
                st.task.cancel()
        return code

    def _stop(self, code: int) -> None:
        if self._exit is not None and not self._exit.done():
            self._exit.set_result(code)

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        _log(f"{name}: stopping with {len(self.streams)} request(s) open")
        for st in list(self.streams.values()):
            self._send_error(st, RETRYABLE, f"the worker was stopped by {name}")
        self._stop(0)

    def _maybe_exit(self) -> None:
        if self.shutting_down and not self.streams:
            self._stop(0)

    # ---- asyncio.Protocol --------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._inbuf
        buf += data
        pos = 0
        end = len(buf)
        view = memoryview(buf)
        try:
            while end - pos >= 4:
                (n,) = _LEN.unpack_from(buf, pos)
                if n > self.limits.max_frame_bytes:
                    raise ProtocolError(
                        f"frame of {n} bytes exceeds max_frame_bytes={self.limits.max_frame_bytes}"
                    )
                if end - pos - 4 < n:
                    break
                frame = _decode_frame(bytes(view[pos + 4 : pos + 4 + n]))
                pos += 4 + n
                self._dispatch(frame)
                if self._closed:
                    return
        except ProtocolError as exc:
            _log(f"protocol error from the watchdog: {exc}")
            self._closed = True
            self._out.clear()
            if self.transport is not None:
                self.transport.abort()
            self._stop(1)
            return
        finally:
            view.release()
        del buf[:pos]

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self._closed = True
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        if self._can_write is not None:
            self._can_write.set()
        for st in list(self.streams.values()):
            st.finished = True
            st.wake()
            if st.body_source is not None:
                st.body_source.fail("the watchdog closed the connection")
        # The watchdog went away (or we closed): nothing can be answered any more.
        self._stop(0)

    def pause_writing(self) -> None:
        if self._can_write is not None:
            self._can_write.clear()

    def resume_writing(self) -> None:
        if self._can_write is not None:
            self._can_write.set()

    # ---- sending -------------------------------------------------------------------------------------------------

    def _queue(self, payload: bytes) -> None:
        if self._closed:
            return
        self._out.append(_LEN.pack(len(payload)))
        self._out.append(payload)
        if not self._flush_scheduled and self.loop is not None:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Every frame queued since the last flush leaves in one write."""
        self._flush_scheduled = False
        if not self._out:
            return
        out, self._out = self._out, []
        if self._closed or self.transport is None or self.transport.is_closing():
            return
        self.transport.write(b"".join(out))

    def _send(self, frame: frame_pb2.Frame) -> None:
        self._queue(frame.SerializeToString())

    def _send_error(self, st: _Stream, kind: int, message: str) -> None:
        if st.finished:
            return
        self._send(frame_pb2.Frame(stream_id=st.id, error=frame_pb2.Error(kind=kind, message=message)))
        self._finish(st)

    def _finish(self, st: _Stream) -> None:
        st.finished = True
        st.wake()
        if st.body_source is not None:
            # Anything still reading the body (a thread the handler left behind) must not wait forever.
            st.body_source.fail("the response already ended")
        if self.streams.get(st.id) is st:
            del self.streams[st.id]
        self._maybe_exit()

    # ---- receiving -----------------------------------------------------------------------------------------------

    def _dispatch(self, frame: frame_pb2.Frame) -> None:
        kind = frame.WhichOneof("kind")
        sid = frame.stream_id
        if kind == "ping":
            # Answered right here, in the I/O loop, whatever the handlers are doing.
            self._send(frame_pb2.Frame(stream_id=sid, pong=frame_pb2.Pong(nonce=frame.ping.nonce)))
            return
        if sid == 0:
            if kind == "drain":
                self.draining = True
            elif kind == "shutdown":
                self.draining = True
                self.shutting_down = True
                self._maybe_exit()
            # pong, a repeated hello_ack, window_update on the connection: nothing to do.
            return
        if kind == "request_head":
            self._on_request_head(sid, frame.request_head.envelope)
            return
        st = self.streams.get(sid)
        if st is None or st.finished:
            return  # unknown, finished or cancelled stream: ignored
        if kind == "data":
            self._on_data(st, frame.data.data)
        elif kind == "end":
            self._on_end(st)
        elif kind == "window_update":
            st.send_window += frame.window_update.increment
            st.wake()
        elif kind == "cancel":
            self._on_cancel(st)

    def _on_request_head(self, sid: int, envelope: envelope_pb2.Envelope) -> None:
        if sid <= self.last_stream_id or sid in self.streams:
            return  # ids only increase and are never reused: a repeat is ignored
        self.last_stream_id = sid
        st = _Stream(sid, envelope, self.limits.initial_window_bytes)
        if self.draining:
            # No new work after Drain or Shutdown; the watchdog should not have sent it, but it gets an answer.
            reason = "shutting down" if self.shutting_down else "draining"
            self._send(
                frame_pb2.Frame(
                    stream_id=sid,
                    error=frame_pb2.Error(kind=RETRYABLE, message=f"the worker is {reason}"),
                )
            )
            return
        self.streams[sid] = st
        if envelope.WhichOneof("kind") == "grpc" and envelope.grpc.client_streaming:
            # A client-streaming call may go on for long: its handler starts now and reads the messages as
            # they come (request.stream()), instead of after End.
            st.body_source = _RequestBody(self.loop, lambda n: self._credit(st, n))  # type: ignore[arg-type]
            self._start(st, b"")

    def _on_data(self, st: _Stream, data: bytes) -> None:
        if st.body_done or not data:
            return
        if st.body_source is not None:
            st.body_source.feed(data)  # credit goes back as the handler takes it
            return
        st.chunks.append(data)
        # The body is handed to the application as it arrives (it is assembled for `request.body`).
        self._credit(st, len(data))

    def _credit(self, st: _Stream, n: int) -> None:
        """`n` body bytes reached the application: credit goes back once half the window has been consumed."""
        if st.finished:
            return
        st.unacked += n
        if st.unacked >= max(1, self.limits.initial_window_bytes // 2):
            self._send(
                frame_pb2.Frame(stream_id=st.id, window_update=frame_pb2.WindowUpdate(increment=st.unacked))
            )
            st.unacked = 0

    def _on_end(self, st: _Stream) -> None:
        if st.body_done:
            return
        st.body_done = True
        if st.body_source is not None:
            st.body_source.end()
            return
        body = b"".join(st.chunks)
        st.chunks = []
        self._start(st, body)

    def _start(self, st: _Stream, body: bytes) -> None:
        try:
            request = build_request(st.id, st.envelope, body, st.body_source)
        except Exception as exc:  # a malformed envelope must still get an answer
            _log(f"stream {st.id}: cannot read the request: {exc!r}")
            self._send_error(st, INTERNAL, f"cannot read the request: {_error_text(exc)}")
            return
        st.envelope = None  # type: ignore[assignment]
        st.request = request
        assert self.loop is not None
        st.task = self.loop.create_task(self._handle(st, request))

    def _on_cancel(self, st: _Stream) -> None:
        st.cancelled = True
        if st.request is not None:
            st.request._cancelled.set()
        if st.body_source is not None:
            st.body_source.fail("the request was cancelled")
        task = st.task
        self._finish(st)  # nothing more is sent on it
        if task is not None and not task.done():
            task.cancel()

    # ---- running a handler -------------------------------------------------------------------------------------

    async def _call(self, request: Request) -> Any:
        if not self.is_async:
            assert self.pool is not None
            return await _resolved(await asyncio.wrap_future(self.pool.submit(self.handler, request)))
        # An `async def` gives a coroutine; an async generator function gives its generator (the body).
        try:
            return await _resolved(self.handler(request))
        except BodyPending:
            # SPEC §4 gives every handler `request.body`, but a coroutine cannot wait for a client stream's end
            # inside a property: one that asked for it before anything else starts again once the stream has
            # ended. (A handler that answers as the stream goes reads it with `request.stream()` instead.)
            await request.read()
            return await _resolved(self.handler(request))

    async def _handle(self, st: _Stream, request: Request) -> None:
        try:
            try:
                try:
                    result = await self._call(request)
                except GrpcStatus as status:
                    result = status  # raised or returned, a status is an answer, not a failure
                if st.finished:
                    return
                head, body, trailers = response_parts(request, result)
                await self._respond(st, request, head, body, trailers)
            except asyncio.CancelledError:
                if st.cancelled or st.finished:
                    return
                raise
            except PermanentError as exc:
                self._send_error(st, PERMANENT, _error_text(exc))
            except RetryableError as exc:
                self._send_error(st, RETRYABLE, _error_text(exc))
            except SystemExit as exc:
                # `sys.exit()` in a handler ends the worker, as it would end any Python program: the watchdog
                # answers what was in flight (502 naming the exit status) and starts a new worker.
                _exit_now(exc)
            except BaseException as exc:  # noqa: BLE001 - every failure becomes an INTERNAL answer
                if st.finished:
                    return
                _log(f"request {request.request_id or '-'} (stream {st.id}) failed:")
                try:
                    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
                    sys.stderr.flush()
                except Exception:  # pragma: no cover
                    pass
                self._send_error(st, INTERNAL, _error_text(exc))
        finally:
            if not st.finished and self._closed:
                self._finish(st)

    async def _respond(
        self,
        st: _Stream,
        request: Request,
        head: envelope_pb2.ResponseHead,
        body: Body,
        trailers: list[tuple[str, bytes]],
    ) -> None:
        head_frame = frame_pb2.Frame(stream_id=st.id, response_head=head)
        payload = head_frame.SerializeToString()
        if len(payload) > self.limits.max_frame_bytes:
            self._send_error(
                st,
                INTERNAL,
                f"the response head is {len(payload)} bytes, more than max_frame_bytes="
                f"{self.limits.max_frame_bytes}",
            )
            return
        self._queue(payload)
        if isinstance(body, _Streamed):
            try:
                await self._send_stream(st, body)
            except GrpcStatus as status:
                # A status raised by the body after some of it went out ends the response with that status.
                if st.finished:
                    return
                if request.kind != "grpc":
                    if status.code != StatusCode.OK:
                        self._send_error(st, _error_kind_for_status(status.code), _error_text(status))
                        return
                else:
                    trailers = [(n, v) for n, v in trailers if n.lower() not in _STATUS_TRAILERS]
                    trailers += status._trailer_pairs()
        elif not await self._send_data(st, body):
            return
        if st.finished:
            return
        end = frame_pb2.Frame(stream_id=st.id, end=frame_pb2.End(trailers=_pb_headers(trailers))).SerializeToString()
        if len(end) > self.limits.max_frame_bytes:
            self._send_error(
                st, INTERNAL, f"the trailers are {len(end)} bytes, more than max_frame_bytes={self.limits.max_frame_bytes}"
            )
            return
        self._queue(end)
        self._finish(st)

    async def _send_data(self, st: _Stream, body: bytes) -> bool:
        """Sends `body` as Data frames within the stream's window; False once the stream is finished (cancelled,
        connection gone). Without a window to wait for, everything is queued for the same write."""
        view = memoryview(body)
        offset = 0
        total = len(body)
        chunk = self.limits.chunk
        assert self._can_write is not None
        while offset < total:
            if st.finished:
                return False
            if st.send_window <= 0:
                # Wait for the watchdog's WindowUpdate (or a Cancel, or the connection closing).
                assert self.loop is not None
                st.window_waiter = self.loop.create_future()
                try:
                    await st.window_waiter
                finally:
                    st.window_waiter = None
                continue
            n = min(chunk, st.send_window, total - offset)
            data = frame_pb2.Frame(stream_id=st.id, data=frame_pb2.Data(data=bytes(view[offset : offset + n])))
            self._send(data)
            st.send_window -= n
            offset += n
            if not self._can_write.is_set():
                await self._can_write.wait()
        return not st.finished

    async def _send_stream(self, st: _Stream, body: _Streamed) -> None:
        """Sends each item of a streamed body as soon as it is produced (and its window allows)."""
        if body.is_async:
            items = body.items.__aiter__()
            try:
                async for item in items:
                    if not await self._send_data(st, _item_bytes(item, body.frame)):
                        return
            finally:
                # Runs the generator's cleanup (its `finally`) when we stop early, e.g. on Cancel.
                aclose = getattr(items, "aclose", None)
                if aclose is not None:
                    try:
                        await aclose()
                    except Exception:  # noqa: BLE001 - cleanup failures must not hide the answer
                        pass
            return
        if isinstance(body.items, (list, tuple)):
            # Nothing to wait for between items: send them from the loop, in as few writes as possible.
            for item in body.items:
                if not await self._send_data(st, _item_bytes(item, body.frame)):
                    return
            return
        # A generator may block between items (it is plain code): it runs in a thread, handing each item to
        # the loop and waiting until it is sent, so the stream's window holds the producer back.
        if self.pool is None:
            # An async handler that returned a plain generator. Not asyncio's default executor: its threads are
            # not daemons, so one generator stuck in a blocking call would keep the process from exiting.
            self.pool = _ThreadPool(DEFAULT_SYNC_CONCURRENCY)
        await asyncio.wrap_future(self.pool.submit(self._pump, (st, body)))

    def _pump(self, arg: tuple[_Stream, _Streamed]) -> None:
        """In a handler thread: iterates a sync body, sending each item through the loop."""
        st, body = arg
        loop = self.loop
        assert loop is not None
        iterator = iter(body.items)
        try:
            for item in iterator:
                data = _item_bytes(item, body.frame)
                if st.finished:
                    return
                sent = asyncio.run_coroutine_threadsafe(self._send_data(st, data), loop)
                if not sent.result():
                    return
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001
                    pass


# --------------------------------------------------------------------------------------------------------------
# serve()


def _is_async(handler: Any) -> bool:
    def async_function(fn: Any) -> bool:
        return inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)

    if async_function(handler):
        return True
    call = getattr(handler, "__call__", None)
    return call is not None and not inspect.isfunction(handler) and async_function(call)


def _max_concurrency(is_async: bool, concurrency: Optional[int]) -> int:
    if concurrency is None:
        return 0 if is_async else DEFAULT_SYNC_CONCURRENCY
    if isinstance(concurrency, bool) or not isinstance(concurrency, int):
        raise TypeError(f"concurrency must be an int, not {type(concurrency).__name__}")
    if concurrency < 0 or concurrency > 0xFFFFFFFF:
        raise ValueError(f"concurrency must be between 0 and 4294967295, not {concurrency}")
    if concurrency == 0 and not is_async:
        raise ValueError("a plain (sync) handler needs concurrency >= 1: it is the size of its thread pool")
    return concurrency


def _run(handler: Any, concurrency: Optional[int]) -> int:
    path = os.environ.get("WATCHDOG_SOCKET")
    if not path:
        _log(
            "WATCHDOG_SOCKET is not set: run this function under the watchdog, "
            'e.g. fprocess="python3 handler.py" mode=http fwatchdog'
        )
        return 1

    setup_error: Optional[BaseException] = None
    is_async = False
    max_concurrency = 0
    try:
        if not callable(handler):
            raise TypeError(f"the handler must be callable, not {type(handler).__name__}")
        is_async = _is_async(handler)
        max_concurrency = _max_concurrency(is_async, concurrency)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("serve() runs its own event loop: call it outside any running asyncio loop")
    except Exception as exc:
        setup_error = exc

    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
    except OSError as exc:
        _log(f"cannot connect to WATCHDOG_SOCKET={path}: {exc}")
        return 1

    try:
        _send_blocking(
            sock,
            frame_pb2.Frame(
                stream_id=0,
                hello=frame_pb2.Hello(
                    protocol=PROTOCOL,
                    sdk_name=SDK_NAME,
                    sdk_version=__version__,
                    max_concurrency=max_concurrency,
                ),
            ),
        )
        while True:
            frame = _recv_frame_blocking(sock, PRE_ACK_MAX_FRAME_BYTES)
            kind = frame.WhichOneof("kind")
            if kind == "hello_ack":
                break
            if kind == "ping":
                _send_blocking(sock, frame_pb2.Frame(stream_id=0, pong=frame_pb2.Pong(nonce=frame.ping.nonce)))
                continue
            raise ProtocolError(f"expected hello_ack, got {kind}")
    except (OSError, ProtocolError) as exc:
        _log(f"handshake with the watchdog failed: {exc}")
        sock.close()
        return 1

    conn: Optional[Connection] = None
    if setup_error is None:
        try:
            conn = Connection(handler, is_async, max_concurrency, Limits(frame.hello_ack))
        except Exception as exc:
            setup_error = exc

    if setup_error is not None or conn is None:
        message = f"{type(setup_error).__name__}: {_error_text(setup_error)}" if setup_error else "setup failed"
        _log(f"cannot serve: {message}")
        try:
            _send_blocking(sock, frame_pb2.Frame(stream_id=0, init_error=frame_pb2.InitError(message=message)))
        except OSError:
            pass
        sock.close()
        return 1

    # A SIGTERM/SIGINT that comes between Ready and the loop's own handlers is kept for the loop.
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(signum, lambda num, _frame: conn.early_signals.append(num))
        except (ValueError, OSError):  # not the main thread
            pass
    try:
        _send_blocking(sock, frame_pb2.Frame(stream_id=0, ready=frame_pb2.Ready()))
    except OSError as exc:
        _log(f"the watchdog went away during the handshake: {exc}")
        sock.close()
        return 1
    sock.setblocking(False)
    return asyncio.run(conn.run(sock))


def serve(handler: Callable[[Request], Any], *, concurrency: Optional[int] = None) -> None:
    """Serves `handler` to the watchdog over `$WATCHDOG_SOCKET`, then exits the process.

    `handler(request)` is a plain function (run on a pool of `concurrency` threads, default 32) or an
    `async def` (run on the asyncio loop; by default with no concurrency limit), or a generator / async generator
    function (its items are the streamed body). It returns a Response, a GrpcStatus, a CloudEvent, bytes or str
    (200), a generator (200, streamed), or None (202), or raises PermanentError / RetryableError / GrpcStatus.

    Returns never: the process exits with 0 after Shutdown (once the open requests are answered), when the
    watchdog closes the socket, or on SIGTERM/SIGINT; with 1 when it cannot set up or the watchdog breaks the
    protocol (sending InitError when the connection allows it).
    """
    # Function logs go to stdout/stderr, which the watchdog reads line by line: do not hold lines back.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        except Exception:
            pass
    code = _run(handler, concurrency)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        pass
    sys.exit(code)
