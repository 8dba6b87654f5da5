"""The function the tests run as a worker: `app.py sync|async [--concurrency N]`.

Routes on the path (HTTP), the method (gRPC) or the event type (CloudEvents); the sync and async variants
behave the same.
"""

import asyncio
import json
import sys
import time
import urllib.parse

import watchdog_sdk
from watchdog_sdk import CloudEvent, PermanentError, Response, RetryableError


def params(request):
    return dict(urllib.parse.parse_qsl(request.query))


def describe(request):
    return json.dumps(
        {
            "kind": request.kind,
            "method": request.method,
            "path": request.path,
            "raw_path": request.raw_path.decode("latin-1"),
            "query": request.query,
            "headers": {name: request.headers.get_all(name) for name in request.headers},
            "content_type": request.headers.get("CONTENT-TYPE"),
            "first_multi": request.headers.get("x-multi"),
            "has_content_type": "content-type" in request.headers,
            "body": request.body.decode("latin-1"),
            "body_type": type(request.body).__name__,
            "grpc_method": request.grpc_method,
            "event": None
            if request.event is None
            else {"attributes": request.event.attributes, "data": request.event.data.decode("latin-1")},
            "request_id": request.request_id,
            "deadline": None if request.deadline is None else request.deadline.isoformat(),
            "host": request.host,
            "content_length": request.content_length,
        },
        sort_keys=True,
    ).encode()


def common(request):
    """Routes that need no waiting; returns (True, result) or (False, None)."""
    if request.kind == "grpc":
        return True, Response(200, {"grpc-meta": request.grpc_method}, describe(request))
    if request.kind == "cloudevent":
        ev = request.event
        if ev.type == "com.example.describe":
            return True, describe(request)
        if ev.type == "com.example.reply":
            return True, CloudEvent(
                {"type": "com.example.reply.out", "source": "/tests/app", "myext": "ext-value", "count": 3},
                b'{"reply":true}',
            )
        if ev.type == "com.example.reply-with-id":
            return True, CloudEvent(
                {"id": "fixed-id", "type": "t", "source": "/s", "specversion": "1.0"}, "text data"
            )
        if ev.type == "com.example.none":
            return True, None
        if ev.type == "com.example.bytes":
            return True, ev.data.upper()
        raise PermanentError(f"unknown event type {ev.type}")
    path = request.path
    if path == "/echo":
        return True, Response(200, {"content-type": "application/octet-stream", "x-len": str(len(request.body))}, request.body)
    if path.startswith("/info"):
        return True, describe(request)
    if path == "/bytes":
        return True, b"hello bytes"
    if path == "/str":
        return True, "h\u00e9llo str"
    if path == "/none":
        return True, None
    if path == "/response":
        return True, Response(
            status=201, headers={"x-one": "1", "x-multi": ["a", "b"], "content-type": "text/plain"}, body="created"
        )
    if path == "/positional":
        return True, Response(418, {"x-tea": "pot"}, b"short and stout")
    if path == "/permanent":
        raise PermanentError("bad input: field x")
    if path == "/retryable":
        raise RetryableError("try again later")
    if path == "/boom":
        raise ValueError("boom happened")
    if path == "/badtype":
        return True, 42
    if path == "/big":
        n = int(params(request)["n"])
        return True, bytes(i % 251 for i in range(n))
    if path == "/print":
        print("to stdout: line one")
        print("\x00\x00\x00\x05hello fake frame bytes")
        sys.stdout.write("partial line without newline then ")
        sys.stdout.flush()
        print("to stderr: a log line", file=sys.stderr)
        sys.stdout.buffer.write(b"\x00\x00\x00\x02\x08\x01\n" * 100)
        sys.stdout.flush()
        return True, b"printed"
    return False, None


def handle(request):
    done, result = common(request)
    if done:
        return result
    if request.path == "/sleep":
        time.sleep(int(params(request)["ms"]) / 1000)
        return request.request_id.encode()
    if request.path == "/cancellable":
        marker = params(request)["marker"]
        for _ in range(500):
            if request.cancelled:
                with open(marker, "w") as f:
                    f.write("saw-cancel")
                break
            time.sleep(0.01)
        return b"late"
    raise PermanentError(f"no route {request.path}")


async def handle_async(request):
    done, result = common(request)
    if done:
        return result
    if request.path == "/sleep":
        await asyncio.sleep(int(params(request)["ms"]) / 1000)
        return request.request_id.encode()
    if request.path == "/cancellable":
        marker = params(request)["marker"]
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            with open(marker, "w") as f:
                f.write("cancelled")
            raise
        return b"late"
    raise PermanentError(f"no route {request.path}")


if __name__ == "__main__":
    mode = sys.argv[1]
    kwargs = {}
    if "--concurrency" in sys.argv:
        kwargs["concurrency"] = int(sys.argv[sys.argv.index("--concurrency") + 1])
    watchdog_sdk.serve(handle_async if mode == "async" else handle, **kwargs)
