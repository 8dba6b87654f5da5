"""The types a function author sees: the request, the response, the reply event and the two error classes."""

from __future__ import annotations

import base64
import datetime as _dt
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Optional, Union

__all__ = [
    "CloudEvent",
    "Event",
    "Headers",
    "PermanentError",
    "Request",
    "Response",
    "RetryableError",
]


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


class Request:
    """One request, whatever its ingress. See the SDK's README for every attribute."""

    __slots__ = (
        "kind",
        "method",
        "path",
        "raw_path",
        "query",
        "headers",
        "body",
        "grpc_method",
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
        body: bytes = b"",
        grpc_method: Optional[str] = None,
        event: Optional[Event] = None,
        request_id: str = "",
        deadline: Optional[_dt.datetime] = None,
        host: str = "",
        http_version: str = "",
        content_length: Optional[int] = None,
        traceparent: str = "",
        tracestate: str = "",
        stream_id: int = 0,
    ) -> None:
        self.kind = kind
        self.method = method
        self.path = path
        self.raw_path = raw_path
        self.query = query
        self.headers = headers if headers is not None else Headers()
        self.body = body
        self.grpc_method = grpc_method
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

    @property
    def cancelled(self) -> bool:
        """True once the watchdog cancelled this request (client gone, deadline passed): a sync handler may
        poll it to stop early. Whatever the handler returns after that is discarded."""
        return self._cancelled.is_set()

    def __repr__(self) -> str:
        return (
            f"Request(kind={self.kind!r}, method={self.method!r}, path={self.path!r}, query={self.query!r}, "
            f"request_id={self.request_id!r}, body=<{len(self.body)} bytes>)"
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


class Response:
    """A response: `Response(status=200, headers=None, body=b"", *, trailers=None)`.

    `headers` is a dict of str to str (a list value repeats the header) or a list of (name, value) pairs; `body`
    is bytes or str (encoded as UTF-8). For a gRPC call the status maps to a gRPC code by gRPC's HTTP-to-gRPC
    table; `trailers` are gRPC trailers. For a CloudEvent request a 2xx Response's body becomes the data of the
    reply event the watchdog builds (SPEC section 6 defaults).
    """

    __slots__ = ("status", "headers", "body", "trailers")

    def __init__(
        self,
        status: int = 200,
        headers: HeadersArg = None,
        body: BodyArg = b"",
        *,
        trailers: HeadersArg = None,
    ) -> None:
        self.status = int(status)
        self.headers = headers if headers is not None else {}
        self.body = body if body is not None else b""
        self.trailers = trailers

    def __repr__(self) -> str:
        return f"Response(status={self.status!r}, headers={self.headers!r}, body=<{len(_to_body(self.body))} bytes>)"


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
