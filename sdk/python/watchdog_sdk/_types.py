"""The types a function author sees: the request, the response, the reply event and the two error classes."""

from __future__ import annotations

import asyncio
import base64
import collections
import datetime as _dt
import enum
import gzip
import struct
import threading
import uuid
import zlib
from collections.abc import AsyncIterable, Iterable, Iterator, Mapping
from typing import Any, Callable, Optional, Union

__all__ = [
    "CloudEvent",
    "Event",
    "GrpcFramingError",
    "GrpcStatus",
    "Headers",
    "PermanentError",
    "Request",
    "Response",
    "RetryableError",
    "StatusCode",
    "grpc_frame",
]

# The two methods of the watchdog's own service whose bodies are plain bytes (SPEC section 5); every other
# gRPC method is a passthrough whose streaming sides use gRPC's 5-byte message framing.
_INVOKE = "/watchdog.v1.Function/Invoke"
_INVOKE_STREAM = "/watchdog.v1.Function/InvokeStream"
_GRPC_PREFIX = struct.Struct(">BI")


class PermanentError(Exception):
    """The request cannot succeed as sent; do not retry it (HTTP 400, gRPC INVALID_ARGUMENT)."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = str(message)

    def __str__(self) -> str:
        return self.message


class RetryableError(Exception):
    """A later attempt may succeed (HTTP 503, gRPC UNAVAILABLE; Knative retries it)."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = str(message)

    def __str__(self) -> str:
        return self.message


class StatusCode(enum.IntEnum):
    """gRPC status codes (https://grpc.github.io/grpc/core/md_doc_statuscodes.html)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# How a status answers a request that is not a gRPC call (the mapping of google.rpc.Code to HTTP).
_HTTP_FOR_CODE = {
    StatusCode.OK: 200,
    StatusCode.CANCELLED: 499,
    StatusCode.UNKNOWN: 500,
    StatusCode.INVALID_ARGUMENT: 400,
    StatusCode.DEADLINE_EXCEEDED: 504,
    StatusCode.NOT_FOUND: 404,
    StatusCode.ALREADY_EXISTS: 409,
    StatusCode.PERMISSION_DENIED: 403,
    StatusCode.RESOURCE_EXHAUSTED: 429,
    StatusCode.FAILED_PRECONDITION: 400,
    StatusCode.ABORTED: 409,
    StatusCode.OUT_OF_RANGE: 400,
    StatusCode.UNIMPLEMENTED: 501,
    StatusCode.INTERNAL: 500,
    StatusCode.UNAVAILABLE: 503,
    StatusCode.DATA_LOSS: 500,
    StatusCode.UNAUTHENTICATED: 401,
}


class GrpcStatus(Exception):
    """A gRPC status: `GrpcStatus(code, message="", trailers=None, *, headers=None)`.

    Return it or raise it, from a handler or from inside a streamed response body (after some messages have
    gone out). For a gRPC call it becomes the trailers `grpc-status` (the code in decimal) and `grpc-message`
    (`message`, plain UTF-8: the watchdog percent-encodes it), after `trailers` (more trailing metadata);
    `headers` are the initial metadata. For any other request it answers the HTTP status that gRPC's
    documented mapping gives the code (NOT_FOUND → 404...) with `message` as a text/plain body.
    """

    def __init__(
        self,
        code: Union[StatusCode, int],
        message: str = "",
        trailers: "HeadersArg" = None,
        *,
        headers: "HeadersArg" = None,
    ) -> None:
        if isinstance(code, bool) or not isinstance(code, int):
            raise TypeError(f"a gRPC status code must be an int or StatusCode, not {type(code).__name__}")
        if not 0 <= code <= 0xFFFFFFFF:
            raise ValueError(f"a gRPC status code must not be negative, not {code}")
        try:
            code = StatusCode(code)
        except ValueError:
            pass  # gRPC allows codes beyond 16; clients read them as UNKNOWN
        super().__init__(code, message)
        self.code: Union[StatusCode, int] = code
        self.message = str(message)
        self.trailers = trailers
        self.headers = headers

    @property
    def http_status(self) -> int:
        """The HTTP status this code answers a non-gRPC request with."""
        return _HTTP_FOR_CODE.get(self.code, 500)  # type: ignore[call-overload]

    def _trailer_pairs(self) -> list[tuple[str, bytes]]:
        return _header_pairs(self.trailers) + [
            ("grpc-status", str(int(self.code)).encode("ascii")),
            # Cut so that the End frame carrying it always fits a frame (the watchdog logs the whole cause).
            ("grpc-message", _cut(self.message).encode("utf-8")),
        ]

    def __str__(self) -> str:
        name = self.code.name if isinstance(self.code, StatusCode) else str(self.code)
        return f"{name}: {self.message}" if self.message else name

    def __repr__(self) -> str:
        return f"GrpcStatus({self.code!r}, {self.message!r})"


_MAX_STATUS_MESSAGE_CHARS = 16 * 1024


def _cut(message: str) -> str:
    if len(message) > _MAX_STATUS_MESSAGE_CHARS:
        return message[:_MAX_STATUS_MESSAGE_CHARS] + "…"
    return message


class BodyPending(RuntimeError):
    """`request.body` was read on the event loop while a client stream was still arriving; the SDK then waits for
    the stream's end and runs the async handler again (see `request.body`)."""


class GrpcFramingError(PermanentError):
    """A gRPC request body that is not well-formed length-prefixed messages (a caller's fault: a handler that
    lets it escape answers INVALID_ARGUMENT)."""


def grpc_frame(message: Union[bytes, bytearray, memoryview, str]) -> bytes:
    """`message` in gRPC's length-prefixed framing: flag 0 (uncompressed), 4-byte big-endian length, bytes."""
    data = _to_body(message)
    return _GRPC_PREFIX.pack(0, len(data)) + data


class _GrpcDeframer:
    """Splits gRPC length-prefixed messages out of bytes that arrive in arbitrary pieces."""

    __slots__ = ("_buf", "_encoding")

    def __init__(self, encoding: str) -> None:
        self._buf = bytearray()
        self._encoding = encoding.strip().lower()

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        while len(buf) - pos >= 5:
            flag, n = _GRPC_PREFIX.unpack_from(buf, pos)
            if len(buf) - pos - 5 < n:
                break
            out.append(self._message(flag, bytes(buf[pos + 5 : pos + 5 + n])))
            pos += 5 + n
        del buf[:pos]
        return out

    def close(self) -> None:
        if self._buf:
            if len(self._buf) < 5:
                raise GrpcFramingError(
                    f"truncated gRPC message: the body ends {len(self._buf)} bytes into a 5-byte message prefix"
                )
            _, n = _GRPC_PREFIX.unpack_from(self._buf, 0)
            raise GrpcFramingError(
                f"truncated gRPC message: the prefix announces {n} bytes but the body ends after "
                f"{len(self._buf) - 5}"
            )

    def _message(self, flag: int, data: bytes) -> bytes:
        if flag == 0:
            return data
        if flag != 1:
            raise GrpcFramingError(f"bad gRPC message prefix: compressed-flag {flag} (expected 0 or 1)")
        # The watchdog normally hands over uncompressed messages; decode the two codecs the stdlib has anyway.
        try:
            if self._encoding == "gzip":
                return gzip.decompress(data)
            if self._encoding == "deflate":
                return zlib.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise GrpcFramingError(f"a {self._encoding}-compressed gRPC message does not decompress: {exc}") from None
        raise GrpcFramingError(
            f"a compressed gRPC message with grpc-encoding {self._encoding or '(none)'!r}, which this SDK cannot decode"
        )


def _decode_header_value(value: bytes) -> str:
    # Header values are bytes on the wire. UTF-8 covers almost everything sent today; a value that is not
    # UTF-8 is taken as ISO-8859-1, as HTTP/1.1 historically defined it (every byte maps to one character).
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


class Headers(Mapping[str, str]):
    """Request headers (or gRPC metadata): a read-only, case-insensitive mapping of str to str.

    `headers[name]` and `headers.get(name)` give the first value of a repeated name; `get_all(name)` gives every
    value in arrival order; `raw` is the list of (name, bytes value) pairs exactly as received.
    """

    __slots__ = ("_raw", "_index", "_names")

    def __init__(self, pairs: Iterable[tuple[str, Union[str, bytes]]] = ()) -> None:
        self._raw: list[tuple[str, bytes]] = []
        self._index: dict[str, list[str]] = {}
        self._names: dict[str, str] = {}
        for name, value in pairs:
            self._add(name, value)

    def _add(self, name: str, value: Union[str, bytes]) -> None:
        if isinstance(value, str):
            raw = value.encode("utf-8")
            text = value
        else:
            raw = bytes(value)
            text = _decode_header_value(raw)
        self._raw.append((name, raw))
        key = name.lower()
        if key in self._index:
            self._index[key].append(text)
        else:
            self._index[key] = [text]
            self._names[key] = name

    def __getitem__(self, name: str) -> str:
        if not isinstance(name, str):
            raise KeyError(name)
        values = self._index.get(name.lower())
        if not values:
            raise KeyError(name)
        return values[0]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._names.values())

    def __len__(self) -> int:
        return len(self._index)

    def get_all(self, name: str) -> list[str]:
        """Every value of `name` (case-insensitive), in arrival order; [] when absent."""
        return list(self._index.get(name.lower(), ()))

    @property
    def raw(self) -> list[tuple[str, bytes]]:
        """(name, value) pairs exactly as received, repeated names included, in order."""
        return list(self._raw)

    def __repr__(self) -> str:
        return f"Headers({[(n, v) for n, v in self._raw]!r})"


class Event:
    """An incoming CloudEvent: `attributes` (str to str, canonical string form) and `data` (bytes)."""

    __slots__ = ("attributes", "data")

    def __init__(self, attributes: dict[str, str], data: bytes) -> None:
        self.attributes = attributes
        self.data = data

    # Conveniences for the four required attributes.
    @property
    def id(self) -> str:
        return self.attributes.get("id", "")

    @property
    def source(self) -> str:
        return self.attributes.get("source", "")

    @property
    def type(self) -> str:
        return self.attributes.get("type", "")

    @property
    def specversion(self) -> str:
        return self.attributes.get("specversion", "")

    def __repr__(self) -> str:
        return f"Event(attributes={self.attributes!r}, data=<{len(self.data)} bytes>)"


class _RequestBody:
    """The body of a request whose handler starts before the body has ended (client-streaming gRPC calls).

    The connection's loop feeds chunks in; the handler takes them out, from its own thread (blocking) or from
    the loop (awaiting). Credit goes back to the watchdog only as the handler takes chunks (`consumed`, always
    called on the loop), so a handler that reads slowly holds the sender back instead of growing a buffer.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, consumed: Callable[[int], None]) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._consumed = consumed
        self._cond = threading.Condition(threading.Lock())
        self._chunks: collections.deque[bytes] = collections.deque()
        self._done = False
        self._failure: Optional[str] = None
        self._waiter: Optional[asyncio.Future] = None
        self.taken = False  # the handler started reading chunks

    # ---- the loop's side ----------------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        with self._cond:
            self._chunks.append(data)
            self._cond.notify_all()
        self._wake()

    def end(self) -> None:
        with self._cond:
            self._done = True
            self._cond.notify_all()
        self._wake()

    def fail(self, reason: str) -> None:
        """The body will never be complete (the request was cancelled, the watchdog went away)."""
        with self._cond:
            if not self._done:
                self._failure = reason
            self._done = True
            self._cond.notify_all()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ---- the handler's side -------------------------------------------------------------------------------------

    def on_loop(self) -> bool:
        return threading.get_ident() == self._loop_thread

    def _take_locked(self) -> tuple[bool, Optional[bytes]]:
        """(True, chunk), (True, None) at the end, or (False, None) when nothing is there yet."""
        if self._chunks:
            return True, self._chunks.popleft()
        if self._failure is not None:
            raise RetryableError(f"the request body did not arrive: {self._failure}")
        if self._done:
            return True, None
        return False, None

    def next_blocking(self) -> Optional[bytes]:
        if self.on_loop():
            # Blocking here would stop the loop that delivers the chunks.
            raise BodyPending(
                "reading the request body of a client-streaming call blocks: in an async handler use "
                "`async for chunk in request.stream()` or `await request.read()`"
            )
        self.taken = True
        with self._cond:
            while True:
                ready, chunk = self._take_locked()
                if ready:
                    break
                self._cond.wait()
        if chunk:
            try:
                self._loop.call_soon_threadsafe(self._consumed, len(chunk))
            except RuntimeError:  # the loop is closed: the process is exiting
                pass
        return chunk

    async def next_async(self) -> Optional[bytes]:
        if not self.on_loop():
            raise RuntimeError("await the request body on the worker's own event loop (from an async handler)")
        self.taken = True
        while True:
            with self._cond:
                ready, chunk = self._take_locked()
            if ready:
                break
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if chunk:
            self._consumed(len(chunk))
        return chunk


class _BodyChunks:
    """`request.stream()`: the body's chunks as they arrive, with `for` in a sync handler (blocking its thread)
    or `async for` in an async one."""

    __slots__ = ("_source", "_whole")

    def __init__(self, source: Optional[_RequestBody], whole: Optional[bytes]) -> None:
        self._source = source
        self._whole = whole  # the body when it was already complete

    def __iter__(self) -> "_BodyChunks":
        return self

    def __next__(self) -> bytes:
        if self._source is None:
            return self._next_whole()
        chunk = self._source.next_blocking()
        if chunk is None:
            raise StopIteration
        return chunk

    def __aiter__(self) -> "_BodyChunks":
        return self

    async def __anext__(self) -> bytes:
        if self._source is None:
            try:
                return self._next_whole()
            except StopIteration:
                raise StopAsyncIteration from None
        chunk = await self._source.next_async()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    def _next_whole(self) -> bytes:
        whole, self._whole = self._whole, None
        if not whole:
            raise StopIteration
        return whole


class _GrpcMessages:
    """`request.stream_grpc_messages()`: request messages as each one is complete, with `for` or `async for`."""

    __slots__ = ("_chunks", "_deframer", "_ready", "_ended")

    def __init__(self, chunks: _BodyChunks, deframer: Optional[_GrpcDeframer]) -> None:
        self._chunks = chunks
        self._deframer = deframer  # None: the body is one message (unary) or plain bytes (Invoke*)
        self._ready: collections.deque[bytes] = collections.deque()
        self._ended = False

    def __iter__(self) -> "_GrpcMessages":
        return self

    def __next__(self) -> bytes:
        while not self._ready:
            if self._ended:
                raise StopIteration
            try:
                chunk: Optional[bytes] = next(self._chunks)
            except StopIteration:
                chunk = None
            self._step(chunk)
        return self._ready.popleft()

    def __aiter__(self) -> "_GrpcMessages":
        return self

    async def __anext__(self) -> bytes:
        while not self._ready:
            if self._ended:
                raise StopAsyncIteration
            try:
                chunk: Optional[bytes] = await self._chunks.__anext__()
            except StopAsyncIteration:
                chunk = None
            self._step(chunk)
        return self._ready.popleft()

    def _step(self, chunk: Optional[bytes]) -> None:
        if self._deframer is None:
            if chunk is None:
                self._ended = True
            else:
                self._ready.append(chunk)
            return
        if chunk is None:
            self._ended = True
            self._deframer.close()
        else:
            self._ready.extend(self._deframer.feed(chunk))


class Request:
    """One request, whatever its ingress. See the SDK's README for every attribute."""

    __slots__ = (
        "kind",
        "method",
        "path",
        "raw_path",
        "query",
        "headers",
        "_body",
        "_body_source",
        "grpc_method",
        "grpc_client_streaming",
        "grpc_server_streaming",
        "event",
        "request_id",
        "deadline",
        "host",
        "http_version",
        "content_length",
        "traceparent",
        "tracestate",
        "stream_id",
        "_cancelled",
    )

    def __init__(
        self,
        *,
        kind: str = "http",
        method: str = "",
        path: str = "/",
        raw_path: bytes = b"/",
        query: str = "",
        headers: Optional[Headers] = None,
        body: Optional[bytes] = b"",
        grpc_method: Optional[str] = None,
        grpc_client_streaming: bool = False,
        grpc_server_streaming: bool = False,
        event: Optional[Event] = None,
        request_id: str = "",
        deadline: Optional[_dt.datetime] = None,
        host: str = "",
        http_version: str = "",
        content_length: Optional[int] = None,
        traceparent: str = "",
        tracestate: str = "",
        stream_id: int = 0,
        body_source: Optional[_RequestBody] = None,
    ) -> None:
        self.kind = kind
        self.method = method
        self.path = path
        self.raw_path = raw_path
        self.query = query
        self.headers = headers if headers is not None else Headers()
        # With a body source the body is still arriving; `body` then waits for it (or refuses, on the loop).
        self._body = body if body_source is None else None
        self._body_source = body_source
        self.grpc_method = grpc_method
        self.grpc_client_streaming = grpc_client_streaming
        self.grpc_server_streaming = grpc_server_streaming
        self.event = event
        self.request_id = request_id
        self.deadline = deadline
        self.host = host
        self.http_version = http_version
        self.content_length = content_length
        self.traceparent = traceparent
        self.tracestate = tracestate
        self.stream_id = stream_id
        self._cancelled = threading.Event()

    # ---- the body -------------------------------------------------------------------------------------------------

    @property
    def body(self) -> bytes:
        """The whole body, bytes.

        For a client-streaming gRPC call the handler starts before the body has ended: then a sync handler's
        first access waits (in its thread) until the body is complete, and an async handler that reads it first
        is started again once the body has ended (it cannot wait here without stopping the event loop); one that
        answers while the stream goes on reads it with `request.stream()` or `await request.read()`.
        """
        if self._body is None:
            source = self._body_source
            assert source is not None
            if source.taken:
                raise RuntimeError("the request body was already consumed with request.stream()")
            self._body = b"".join(_BodyChunks(source, None))
        return self._body

    @body.setter
    def body(self, value: bytes) -> None:
        self._body = value
        self._body_source = None

    async def read(self) -> bytes:
        """The whole body, once it has arrived (for async handlers; the same bytes as `request.body`)."""
        if self._body is None:
            source = self._body_source
            assert source is not None
            if source.taken:
                raise RuntimeError("the request body was already consumed with request.stream()")
            self._body = b"".join([chunk async for chunk in _BodyChunks(source, None)])
        return self._body

    def stream(self) -> _BodyChunks:
        """The body's chunks as they arrive: `for chunk in request.stream()` in a sync handler, `async for` in an
        async one. Only client-streaming gRPC calls deliver their body incrementally; for any other request
        this yields the whole body at once (nothing when it is empty). Credit for more body goes back to the
        watchdog as chunks are taken, so the sender waits for a slow reader."""
        if self._body is not None:
            return _BodyChunks(None, self._body)
        return _BodyChunks(self._body_source, None)

    # ---- gRPC -----------------------------------------------------------------------------------------------------

    @property
    def metadata(self) -> Headers:
        """The gRPC request metadata: the same case-insensitive mapping as `headers` (names in lower case)."""
        return self.headers

    def _deframer(self) -> Optional[_GrpcDeframer]:
        if self.kind != "grpc":
            raise ValueError(f"a {self.kind} request carries no gRPC messages")
        if self.grpc_client_streaming and self.grpc_method not in (_INVOKE, _INVOKE_STREAM):
            return _GrpcDeframer(self.headers.get("grpc-encoding", "identity"))
        return None

    def grpc_messages(self) -> list[bytes]:
        """The request's gRPC messages, each the raw bytes of one protobuf message.

        Unary (or `/watchdog.v1.Function/Invoke*`, whose body is plain bytes): a one-element list, the whole body.
        Client-streaming passthrough: the body split at gRPC's 5-byte message prefixes; GrpcFramingError (a
        PermanentError: INVALID_ARGUMENT if not caught) when the body ends inside a message. Waits for the whole
        body like `request.body` does (async handlers: `await request.read()` first, or use
        `stream_grpc_messages()`). ValueError when the request is not a gRPC call.
        """
        deframer = self._deframer()
        body = self.body
        if deframer is None:
            return [body]
        messages = deframer.feed(body)
        deframer.close()
        return messages

    def stream_grpc_messages(self) -> _GrpcMessages:
        """The request's gRPC messages as each one arrives whole: `for message in ...` in a sync handler,
        `async for` in an async one. For a unary call the one message (the whole body), for
        `/watchdog.v1.Function/InvokeStream` the body's chunks as they arrive; GrpcFramingError at the end of a
        body that stops inside a message."""
        return _GrpcMessages(self.stream(), self._deframer())

    def _frames_response(self) -> bool:
        """Whether the response body is gRPC length-prefixed messages the SDK must frame."""
        return (
            self.kind == "grpc"
            and self.grpc_server_streaming
            and self.grpc_method not in (_INVOKE, _INVOKE_STREAM)
        )

    # ---- cancellation ---------------------------------------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        """True once the watchdog cancelled this request (client gone, deadline passed): a sync handler may
        poll it to stop early. Whatever the handler returns after that is discarded."""
        return self._cancelled.is_set()

    def __repr__(self) -> str:
        body = "<streaming>" if self._body is None else f"<{len(self._body)} bytes>"
        return (
            f"Request(kind={self.kind!r}, method={self.method!r}, path={self.path!r}, query={self.query!r}, "
            f"request_id={self.request_id!r}, body={body})"
        )


HeadersArg = Union[
    None,
    Mapping[str, Union[str, bytes, Iterable[Union[str, bytes]]]],
    Iterable[tuple[str, Union[str, bytes]]],
]
BodyArg = Union[None, bytes, bytearray, memoryview, str]


def _header_pairs(headers: HeadersArg) -> list[tuple[str, bytes]]:
    """Normalises response headers: a dict (a list or tuple value means a repeated header), a Headers, or an
    iterable of (name, value) pairs. Values may be str or bytes."""
    if headers is None:
        return []
    out: list[tuple[str, bytes]] = []
    if isinstance(headers, Headers):
        return headers.raw
    items: Iterable[Any] = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        if isinstance(value, (list, tuple)):
            for v in value:
                out.append((str(name), _to_header_bytes(v)))
        else:
            out.append((str(name), _to_header_bytes(value)))
    return out


def _to_header_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return str(value).encode("utf-8")


def _to_body(body: Any) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8")
    raise TypeError(f"a body must be bytes or str, not {type(body).__name__}")


StreamBody = Union[Iterable[Union[bytes, str]], AsyncIterable[Union[bytes, str]]]


def _is_stream_body(body: Any) -> bool:
    """Whether `body` is produced piece by piece (an iterable or async iterable other than bytes/str)."""
    if isinstance(body, (bytes, bytearray, memoryview, str)) or body is None:
        return False
    return isinstance(body, (Iterable, AsyncIterable))


class Response:
    """A response: `Response(status=200, headers=None, body=b"", *, trailers=None)`.

    `headers` is a dict of str to str (a list value repeats the header) or a list of (name, value) pairs; `body`
    is bytes or str (encoded as UTF-8), or an iterable, generator or async generator of bytes/str items, each
    sent as soon as it is produced (for a server-streaming gRPC call each item is one response message). For a
    gRPC call `headers` are the initial metadata, `trailers` the trailing metadata, and the status maps to a
    gRPC code by gRPC's HTTP-to-gRPC table. For a CloudEvent request a 2xx Response's body becomes the data of
    the reply event the watchdog builds (SPEC section 6 defaults).
    """

    __slots__ = ("status", "headers", "body", "trailers")

    def __init__(
        self,
        status: int = 200,
        headers: HeadersArg = None,
        body: Union[BodyArg, StreamBody] = b"",
        *,
        trailers: HeadersArg = None,
    ) -> None:
        self.status = int(status)
        self.headers = headers if headers is not None else {}
        self.body = body if body is not None else b""
        self.trailers = trailers

    def __repr__(self) -> str:
        body = "<stream>" if _is_stream_body(self.body) else f"<{len(_to_body(self.body))} bytes>"
        return f"Response(status={self.status!r}, headers={self.headers!r}, body={body})"


def _attr_to_str(value: Any) -> str:
    """An attribute value in CloudEvents canonical string form."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    return str(value)


class CloudEvent:
    """A reply event: `CloudEvent(attributes, data=b"")`.

    `attributes` holds `type`, `source`, optionally `id` (a fresh UUID when missing) and `specversion` (the
    request's, else "1.0"), and any other attribute or extension; values are strings (bool, int, bytes and
    datetime values are turned into their canonical string form). `data` is bytes or str.
    """

    __slots__ = ("attributes", "data")

    def __init__(self, attributes: Optional[Mapping[str, Any]] = None, data: BodyArg = b"") -> None:
        self.attributes: dict[str, Any] = dict(attributes or {})
        self.data = data if data is not None else b""

    def _normalised(self, default_specversion: str) -> dict[str, str]:
        attrs = {str(k): _attr_to_str(v) for k, v in self.attributes.items()}
        if not attrs.get("id"):
            attrs["id"] = str(uuid.uuid4())
        if not attrs.get("specversion"):
            attrs["specversion"] = default_specversion or "1.0"
        return attrs

    def __repr__(self) -> str:
        return f"CloudEvent(attributes={self.attributes!r}, data=<{len(_to_body(self.data))} bytes>)"
