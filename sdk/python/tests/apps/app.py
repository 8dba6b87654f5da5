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
from watchdog_sdk import CloudEvent, GrpcStatus, PermanentError, Response, RetryableError, StatusCode

GREETER = "/test.Greeter/"


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
            "grpc_client_streaming": request.grpc_client_streaming,
            "grpc_server_streaming": request.grpc_server_streaming,
            "metadata_is_headers": request.metadata is request.headers,
            "grpc_messages": None
            if request.kind != "grpc"
            else [m.decode("latin-1") for m in request.grpc_messages()],
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


def greeter_common(request):
    """gRPC routes that behave the same sync and async; (True, result) or (False, None)."""
    method = request.grpc_method[len(GREETER):]
    md = {"x-initial": "1", "x-echo": request.metadata.get("x-user", "")}
    if method == "SayHello":
        (name,) = request.grpc_messages()
        return True, Response(200, md, b"Hello " + name, trailers={"x-trailer": "t"})
    if method == "Status":
        return True, GrpcStatus(StatusCode.NOT_FOUND, "no such greeting: \u00e9", trailers={"x-why": "because"})
    if method == "Raise":
        raise GrpcStatus(StatusCode.PERMISSION_DENIED, "not for you", headers={"x-initial": "denied"})
    if method == "Messages":
        return True, b"|".join(request.grpc_messages())
    if method == "List":
        # A list body for a server-streaming call: one framed message per item.
        return True, Response(200, md, [b"one", "two", b""], trailers={"x-count": "3"})
    if method == "One":
        return True, b"single"
    if method == "BadItem":
        return True, Response(200, {}, iter([b"fine", 42]))
    return False, None


def common(request):
    """Routes that need no waiting; returns (True, result) or (False, None)."""
    if request.kind == "grpc" and request.grpc_method.startswith(GREETER):
        done, result = greeter_common(request)
        if done:
            return True, result
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
    if path == "/exit":
        sys.exit(int(params(request)["code"]))
    if path == "/badtype":
        return True, 42
    if path == "/stream-big":
        # A plain generator even in the async variant: it then runs on the default executor.
        n, size = int(params(request)["n"]), int(params(request)["size"])
        return True, (bytes([65 + i % 26]) * size for i in range(n))
    if path == "/grpc-status":
        return True, GrpcStatus(StatusCode.NOT_FOUND, "nothing here")
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


def greet_stream(request, pause):
    """SayHelloStream: three greetings, `pause` seconds apart (the test watches them arrive one by one)."""
    (name,) = request.grpc_messages()
    for i in range(3):
        if i:
            time.sleep(pause)
        yield b"Hello %s #%d" % (name, i)


def handle_grpc(request):
    method = request.grpc_method[len(GREETER):] if request.grpc_method.startswith(GREETER) else None
    if method == "SayHelloStream":
        pause = float(request.metadata.get("x-pause", "0"))
        return Response(200, {"x-initial": "stream"}, greet_stream(request, pause), trailers={"x-trailer": "end"})
    if method == "StreamThenFail":
        def gen():
            yield b"first"
            yield b"second"
            raise GrpcStatus(StatusCode.ABORTED, "stopped halfway")
        return gen()
    if method == "Collect":
        # Client-streaming: messages as they arrive, then one answer.
        got = [m for m in request.stream_grpc_messages()]
        return b",".join(got)
    if method == "Chat":
        # Bidirectional: each answer goes out before the next request message is read.
        def chat():
            for message in request.stream_grpc_messages():
                yield b"echo " + message
        return chat()
    if method == "Body":
        return request.body  # a sync handler may wait for the whole body of a client-streaming call
    if request.grpc_method == "/watchdog.v1.Function/InvokeStream":
        return (chunk.upper() for chunk in request.stream())
    return None


async def handle_grpc_async(request):
    method = request.grpc_method[len(GREETER):] if request.grpc_method.startswith(GREETER) else None
    if method == "SayHelloStream":
        pause = float(request.metadata.get("x-pause", "0"))

        async def gen():
            (name,) = request.grpc_messages()
            for i in range(3):
                if i:
                    await asyncio.sleep(pause)
                yield b"Hello %s #%d" % (name, i)

        return Response(200, {"x-initial": "stream"}, gen(), trailers={"x-trailer": "end"})
    if method == "StreamThenFail":
        async def gen():
            yield b"first"
            yield "second"
            raise GrpcStatus(StatusCode.ABORTED, "stopped halfway")
        return gen()
    if method == "Collect":
        got = [m async for m in request.stream_grpc_messages()]
        return b",".join(got)
    if method == "Chat":
        async def chat():
            async for message in request.stream_grpc_messages():
                yield b"echo " + message
        return chat()
    if method == "Body":
        return request.body  # read first, on the loop: the handler runs again once the body has ended
    if method == "Read":
        await request.read()
        return b"|".join(request.grpc_messages())
    if request.grpc_method == "/watchdog.v1.Function/InvokeStream":
        async def upper():
            async for chunk in request.stream():
                yield chunk.upper()
        return upper()
    return None


def handle(request):
    if request.kind == "grpc":
        result = handle_grpc(request)
        if result is not None:
            return result
    done, result = common(request)
    if done:
        return result
    if request.path == "/stream":
        n = int(params(request).get("n", "3"))
        pause = float(params(request).get("pause", "0"))

        def gen():
            for i in range(n):
                if i:
                    time.sleep(pause)
                yield f"part {i}\n"

        return Response(200, {"content-type": "text/plain"}, gen())
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
    if request.kind == "grpc":
        result = await handle_grpc_async(request)
        if result is not None:
            return result
    done, result = common(request)
    if done:
        return result
    if request.path == "/stream":
        n = int(params(request).get("n", "3"))
        pause = float(params(request).get("pause", "0"))

        async def gen():
            for i in range(n):
                if i:
                    await asyncio.sleep(pause)
                yield f"part {i}\n"

        return Response(200, {"content-type": "text/plain"}, gen())
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
