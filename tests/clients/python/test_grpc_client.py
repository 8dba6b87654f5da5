"""ng-watchdog's gRPC side (SPEC section 5) driven by a client nobody here wrote: Python grpcio.

Every call goes over an insecure grpcio channel to the real binary. The stubs of `watchdog.v1.Function`,
`watchdog.v1.CloudEvents`, `io.cloudevents.v1` and `helloworld.Greeter` are generated at test time by grpc_gen.py
(grpcio-tools) from the repository's protos; health and reflection use grpcio-health-checking and
grpcio-reflection's own clients. http-mode functions are written with the watchdog's Python SDK.
"""

from __future__ import annotations

import queue
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

import grpc_gen
from conftest import REPO

pb = grpc_gen.load()
fn = pb.function_pb2
ce = pb.cloudevents_pb2
greeter = pb.greeter_pb2
GREETER_SET = str(REPO / "examples" / "grpc" / "greeter.binpb")
TIMEOUT = 30  # seconds: every call has a deadline, so a hang fails instead of blocking the run


def function_stub(channel):
    return pb.function_pb2_grpc.FunctionStub(channel)


def code_of(excinfo) -> grpc.StatusCode:
    return excinfo.value.code()


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def read_pid(path: Path, within: float = 20) -> int:
    deadline = time.monotonic() + within
    while True:
        try:
            text = path.read_text().strip()
            if text:
                return int(text)
        except FileNotFoundError:
            pass
        assert time.monotonic() < deadline, f"{path} was never written"
        time.sleep(0.02)


def wait_dead(pid: int, within: float = 20) -> None:
    deadline = time.monotonic() + within
    while alive(pid):
        assert time.monotonic() < deadline, f"the function process {pid} is still running"
        time.sleep(0.05)


class Feeder:
    """A request iterator for a streaming call that yields what `put` gives it, when it is given: the test
    decides when each message leaves. `close()` ends the request stream."""

    _END = object()

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()

    def put(self, message) -> None:
        self._queue.put(message)

    def close(self) -> None:
        self._queue.put(self._END)

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            yield item


# A Python SDK function for the http-mode tests. `x-mode` (metadata) picks the behaviour of Invoke and
# InvokeStream; helloworld.Greeter is served as in sdk/python/README.md, with messages encoded by hand (field 1,
# a string) so the worker needs no generated code.
SDK_HANDLER = r'''
import os
import time

import watchdog_sdk
from watchdog_sdk import GrpcStatus, Response, StatusCode


def string_field(text):
    data = text.encode()
    assert len(data) < 128
    return bytes([0x0A, len(data)]) + data


def parse_string_field(raw):
    assert raw[0] == 0x0A and raw[1] < 128, raw
    return raw[2 : 2 + raw[1]].decode()


def handle(request):
    assert request.kind == "grpc", request.kind
    method = request.grpc_method
    mode = request.metadata.get("x-mode", "")
    if method == "/helloworld.Greeter/SayHello":
        (raw,) = request.grpc_messages()
        name = parse_string_field(raw)
        return Response(200, {"x-served-by": "python"}, string_field("Hello, " + name + "!"),
                        trailers={"x-greeted": name})
    if method == "/helloworld.Greeter/SayHelloStream":
        (raw,) = request.grpc_messages()
        name = parse_string_field(raw)
        def replies():
            for n in (1, 2, 3):
                yield string_field("Hello #%d, %s!" % (n, name))
        return Response(200, {"x-served-by": "python"}, replies(), trailers={"x-replies": "3"})
    if method == "/watchdog.v1.Function/Invoke":
        if mode == "permanent":
            raise watchdog_sdk.PermanentError("bad input")
        if mode == "retryable":
            raise watchdog_sdk.RetryableError("try later")
        if mode == "not-found":
            raise GrpcStatus(StatusCode.NOT_FOUND, "x")
        seen = "|".join([method, request.headers.get("content-type", ""), request.headers.get("x-custom", ""),
                         request.headers.get("x-other", "")])
        return Response(200, {"content-type": "application/x-echo", "x-echo": request.headers.get("x-custom", "")},
                        seen.encode() + b"|" + request.body)
    if method == "/watchdog.v1.Function/InvokeStream":
        if mode == "crash":
            def crash():
                yield b"first"
                time.sleep(0.3)
                os._exit(1)
            return crash()
        def echo():
            for chunk in request.stream():
                yield chunk
        return Response(200, {"x-stream": "echo"}, echo(), trailers={"x-stream-end": "done"})
    return GrpcStatus(StatusCode.UNIMPLEMENTED, "no method " + method)


watchdog_sdk.serve(handle)
'''


@pytest.fixture
def sdk_watchdog(watchdog, python_handler):
    """Starts an http-mode watchdog running SDK_HANDLER (with `env` added)."""

    def start(**env: str):
        fprocess, handler_env = python_handler(SDK_HANDLER)
        return watchdog(fprocess, **handler_env, **env)

    return start


# --- health ---------------------------------------------------------------------------------------------------


def test_health_check_and_watch(watchdog, grpc_channel):
    wd = watchdog("cat")
    health = health_pb2_grpc.HealthStub(grpc_channel(wd))
    serving = health_pb2.HealthCheckResponse.SERVING
    for service in ["", "watchdog.v1.Function"]:
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
        assert reply.status == serving, service
    with pytest.raises(grpc.RpcError) as err:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=TIMEOUT)
    assert code_of(err) == grpc.StatusCode.NOT_FOUND

    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT)
    assert next(watch).status == serving
    watch.cancel()


def test_health_knows_the_descriptor_set_services(watchdog, grpc_channel):
    wd = watchdog("cat", grpc_descriptor_set=GREETER_SET)
    health = health_pb2_grpc.HealthStub(grpc_channel(wd))
    reply = health.Check(health_pb2.HealthCheckRequest(service="helloworld.Greeter"), timeout=TIMEOUT)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_is_not_serving_while_the_worker_is_not_ready(unready_watchdog, grpc_channel):
    wd = unready_watchdog("sleep 100", mode="http")  # a "worker" that never connects
    assert wd.request("GET", "/_/ready").status == 503
    health = health_pb2_grpc.HealthStub(grpc_channel(wd))
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    for service in ["", "watchdog.v1.Function"]:
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
        assert reply.status == not_serving, service
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT)
    assert next(watch).status == not_serving
    watch.cancel()


# --- reflection -----------------------------------------------------------------------------------------------


def test_reflection_v1alpha_lists_and_resolves_services(watchdog, grpc_channel, grpc_greeter):
    wd = watchdog(grpc_greeter, grpc_descriptor_set=GREETER_SET)
    channel = grpc_channel(wd)
    db = ProtoReflectionDescriptorDatabase(channel)
    services = set(db.get_services())
    assert {"watchdog.v1.Function", "grpc.health.v1.Health", "helloworld.Greeter"} <= services, services

    pool = descriptor_pool.DescriptorPool(db)
    invoke = pool.FindMethodByName("watchdog.v1.Function.Invoke")
    assert invoke.input_type.full_name == "watchdog.v1.InvokeRequest"
    assert invoke.output_type.full_name == "watchdog.v1.InvokeResponse"
    assert [f.name for f in invoke.input_type.fields] == ["body", "content_type", "metadata"]
    stream = pool.FindMethodByName("helloworld.Greeter.SayHelloStream")
    assert stream.input_type.full_name == "helloworld.HelloRequest"
    assert stream.output_type.full_name == "helloworld.HelloReply"

    # A dynamic call with nothing but what reflection said: the greeter's messages built from its descriptors.
    say_hello = pool.FindMethodByName("helloworld.Greeter.SayHello")
    request_class = message_factory.GetMessageClass(say_hello.input_type)
    reply_class = message_factory.GetMessageClass(say_hello.output_type)
    call = channel.unary_unary(
        f"/{say_hello.containing_service.full_name}/{say_hello.name}",
        request_serializer=request_class.SerializeToString,
        response_deserializer=reply_class.FromString,
    )
    assert call(request_class(name="reflection"), timeout=TIMEOUT).message == "Hello, reflection!"


def test_reflection_v1_raw(watchdog, grpc_channel):
    """grpcio-reflection ships only a v1alpha client; v1 has the same messages under another package, so the
    v1alpha classes speak it."""
    wd = watchdog("cat", grpc_descriptor_set=GREETER_SET)
    call = grpc_channel(wd).stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="helloworld.Greeter"),
    ]
    listed, files = list(call(iter(requests), timeout=TIMEOUT))
    names = {s.name for s in listed.list_services_response.service}
    assert {"watchdog.v1.Function", "grpc.health.v1.Health", "helloworld.Greeter"} <= names, names
    raw_files = files.file_descriptor_response.file_descriptor_proto
    protos = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in raw_files]
    greeter_file = next(p for p in protos if p.package == "helloworld")
    (service,) = greeter_file.service
    methods = {m.name: m for m in service.method}
    assert methods["SayHello"].input_type == ".helloworld.HelloRequest"
    assert methods["SayHelloStream"].server_streaming and not methods["SayHello"].server_streaming


def test_reflection_unknown_names_are_key_errors_and_the_database_goes_on(watchdog, grpc_channel):
    """An unknown symbol or file is answered in the stream with a NOT_FOUND error_response, which
    grpcio-reflection turns into the KeyError a DescriptorPool expects (a stream-ending status would be an
    RpcError); the same database then still resolves real names."""
    wd = watchdog("cat", grpc_descriptor_set=GREETER_SET)
    db = ProtoReflectionDescriptorDatabase(grpc_channel(wd))
    pool = descriptor_pool.DescriptorPool(db)
    with pytest.raises(KeyError):
        pool.FindMessageTypeByName("no.Such")
    assert pool.FindMessageTypeByName("helloworld.HelloRequest").fields_by_name["name"].number == 1
    with pytest.raises(KeyError):
        db.FindFileByName("no/such.proto")
    say_hello = pool.FindMethodByName("helloworld.Greeter.SayHello")
    assert say_hello.output_type.full_name == "helloworld.HelloReply"


# --- Function/Invoke ------------------------------------------------------------------------------------------


def test_invoke_classic_round_trip(watchdog, script, grpc_channel):
    f = script(
        r"""printf '%s|%s|%s|%s|%s|' "$Grpc_Method" "$Http_Content_Type" "$Http_X_Custom" "$Http_X_Other" "$Http_Method"
cat"""
    )
    wd = watchdog(f)
    request = fn.InvokeRequest(body=b"hello \x00\xff", content_type="text/plain", metadata={"x-custom": "from-map"})
    reply, call = function_stub(grpc_channel(wd)).Invoke.with_call(
        request, metadata=[("x-other", "from-metadata")], timeout=TIMEOUT
    )
    assert reply.body == b"/watchdog.v1.Function/Invoke|text/plain|from-map|from-metadata|POST|hello \x00\xff"
    assert reply.content_type == "text/plain"
    assert "x-duration-seconds" in reply.metadata, reply.metadata
    assert call.code() == grpc.StatusCode.OK


@pytest.mark.parametrize("compression", [grpc.Compression.Gzip, grpc.Compression.Deflate])
def test_compressed_requests_are_accepted(watchdog, grpc_channel, grpc_greeter, compression):
    """grpcio compresses every message of a call made with `compression`: Invoke, health and passthrough take
    them, and the function sees the plain bytes."""
    channel = grpc_channel(watchdog("cat"))
    body = b"squeeze me " * 64
    reply = function_stub(channel).Invoke(fn.InvokeRequest(body=body), compression=compression, timeout=TIMEOUT)
    assert reply.body == body
    check = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=""), compression=compression, timeout=TIMEOUT
    )
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    greeter_channel = grpc_channel(watchdog(grpc_greeter, grpc_descriptor_set=GREETER_SET))
    stub = pb.greeter_pb2_grpc.GreeterStub(greeter_channel)
    hello = stub.SayHello(greeter.HelloRequest(name="zip " * 100), compression=compression, timeout=TIMEOUT)
    assert hello.message == "Hello, " + "zip " * 100 + "!"


def test_invoke_http_mode_round_trip(sdk_watchdog, grpc_channel):
    wd = sdk_watchdog()
    request = fn.InvokeRequest(body=b"over frames", content_type="application/json", metadata={"x-custom": "abc"})
    reply = function_stub(grpc_channel(wd)).Invoke(request, metadata=[("x-other", "def")], timeout=TIMEOUT)
    assert reply.body == b"/watchdog.v1.Function/Invoke|application/json|abc|def|over frames"
    assert reply.content_type == "application/x-echo"
    assert reply.metadata.get("x-echo") == "abc", reply.metadata


@pytest.mark.parametrize(
    "mode,code,message",
    [
        ("permanent", grpc.StatusCode.INVALID_ARGUMENT, "bad input"),
        ("retryable", grpc.StatusCode.UNAVAILABLE, "try later"),
        ("not-found", grpc.StatusCode.NOT_FOUND, "x"),
    ],
)
def test_invoke_http_mode_errors(sdk_watchdog, grpc_channel, mode, code, message):
    wd = sdk_watchdog()
    stub = function_stub(grpc_channel(wd))
    with pytest.raises(grpc.RpcError) as err:
        stub.Invoke(fn.InvokeRequest(body=b"x"), metadata=[("x-mode", mode)], timeout=TIMEOUT)
    assert code_of(err) == code, err.value
    assert message in err.value.details(), err.value
    # The worker is still fine afterwards.
    assert stub.Invoke(fn.InvokeRequest(body=b"ok"), timeout=TIMEOUT).body.endswith(b"|ok")


# --- Function/InvokeStream ------------------------------------------------------------------------------------


def ping_pong(stub):
    """Sends one chunk, reads its echo, only then sends the next: the function must stream both ways. Returns
    the finished call."""
    feeder = Feeder()
    feeder.put(fn.Chunk(data=b"one "))
    responses = stub.InvokeStream(iter(feeder), timeout=TIMEOUT)
    received = b""
    try:
        for expected, following in [(b"one ", b"two "), (b"two ", b"three")]:
            got = b""
            while len(got) < len(expected):
                got += next(responses).data
            assert got == expected
            received += got
            feeder.put(fn.Chunk(data=following))
    finally:
        feeder.close()
    received += b"".join(chunk.data for chunk in responses)
    assert received == b"one two three"
    assert responses.code() == grpc.StatusCode.OK
    return responses


def test_invoke_stream_classic_streams_both_ways(watchdog, grpc_channel):
    wd = watchdog("cat")
    ping_pong(function_stub(grpc_channel(wd)))


def test_invoke_stream_to_an_async_handler_reading_the_whole_body(watchdog, python_handler, grpc_channel):
    """SPEC §4's handler, `async def` returning `request.body`, also answers a client stream (InvokeStream)."""
    fprocess, env = python_handler(
        "import watchdog_sdk\n\nasync def handle(request):\n    return request.body\n\nwatchdog_sdk.serve(handle)\n"
    )
    wd = watchdog(fprocess, **env)
    chunks = [fn.Chunk(data=d) for d in (b"one-", b"two-", b"three")]
    replies = function_stub(grpc_channel(wd)).InvokeStream(iter(chunks), timeout=TIMEOUT)
    assert b"".join(r.data for r in replies) == b"one-two-three"


def test_invoke_stream_http_mode_streams_both_ways(sdk_watchdog, grpc_channel):
    wd = sdk_watchdog()
    responses = ping_pong(function_stub(grpc_channel(wd)))
    # The handler's Response headers and trailers are the call's initial and trailing metadata.
    assert dict(responses.initial_metadata()).get("x-stream") == "echo", responses.initial_metadata()
    assert dict(responses.trailing_metadata()).get("x-stream-end") == "done", responses.trailing_metadata()


# --- passthrough: helloworld.Greeter --------------------------------------------------------------------------


def say_hello(channel) -> None:
    stub = pb.greeter_pb2_grpc.GreeterStub(channel)
    assert stub.SayHello(greeter.HelloRequest(name="world"), timeout=TIMEOUT).message == "Hello, world!"


def say_hello_stream(channel) -> None:
    stub = pb.greeter_pb2_grpc.GreeterStub(channel)
    replies = [r.message for r in stub.SayHelloStream(greeter.HelloRequest(name="world"), timeout=TIMEOUT)]
    assert replies == ["Hello #1, world!", "Hello #2, world!", "Hello #3, world!"]


def check_greeter(channel) -> None:
    say_hello(channel)
    say_hello_stream(channel)


def test_greeter_passthrough_classic(watchdog, grpc_channel, grpc_greeter):
    wd = watchdog(grpc_greeter, grpc_descriptor_set=GREETER_SET)
    check_greeter(grpc_channel(wd))


def test_greeter_passthrough_classic_failure_is_internal(watchdog, grpc_channel, grpc_greeter):
    """A method the greeter does not know: it exits 2 with a message on stderr."""
    wd = watchdog(grpc_greeter, grpc_descriptor_set=GREETER_SET)
    call = grpc_channel(wd).unary_unary("/helloworld.Greeter/SayGoodbye")
    with pytest.raises(grpc.RpcError) as err:
        call(b"", timeout=TIMEOUT)
    assert code_of(err) == grpc.StatusCode.INTERNAL
    assert "unknown method" in err.value.details(), err.value


def test_greeter_passthrough_http_mode_unary(sdk_watchdog, grpc_channel):
    """The handler's Response headers are the initial metadata, its trailers the trailing metadata."""
    wd = sdk_watchdog(grpc_descriptor_set=GREETER_SET)
    channel = grpc_channel(wd)
    say_hello(channel)
    stub = pb.greeter_pb2_grpc.GreeterStub(channel)
    reply, call = stub.SayHello.with_call(greeter.HelloRequest(name="meta"), timeout=TIMEOUT)
    assert reply.message == "Hello, meta!"
    assert dict(call.initial_metadata()).get("x-served-by") == "python", call.initial_metadata()
    assert dict(call.trailing_metadata()).get("x-greeted") == "meta", call.trailing_metadata()


def test_greeter_passthrough_http_mode_server_streaming(sdk_watchdog, grpc_channel):
    """sdk/python/README.md: for a call that is not client-streaming, `request.grpc_messages()` is the one request
    message; the handler's generator yields one reply message per item."""
    wd = sdk_watchdog(grpc_descriptor_set=GREETER_SET)
    channel = grpc_channel(wd)
    say_hello_stream(channel)
    responses = pb.greeter_pb2_grpc.GreeterStub(channel).SayHelloStream(greeter.HelloRequest(name="m"), timeout=TIMEOUT)
    assert [r.message for r in responses] == ["Hello #1, m!", "Hello #2, m!", "Hello #3, m!"]
    assert dict(responses.initial_metadata()).get("x-served-by") == "python", responses.initial_metadata()
    assert dict(responses.trailing_metadata()).get("x-replies") == "3", responses.trailing_metadata()


# --- deadlines, cancellation, limits, crashes -----------------------------------------------------------------


def test_deadline_exceeded_kills_the_function(watchdog, script, grpc_channel, tmp_path):
    pid_file = tmp_path / "pid"
    f = script(f'echo $$ > "{pid_file}"; exec sleep 5')
    wd = watchdog(f)
    stub = function_stub(grpc_channel(wd))
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        stub.Invoke(fn.InvokeRequest(body=b"x"), timeout=0.5)
    assert code_of(err) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 4
    pid = read_pid(pid_file)
    wait_dead(pid, within=4)  # killed, not left to finish its 5 s

    # The server's own answer (not only the client's timer): with grpc-timeout past exec_timeout.
    pid_file.unlink()
    wd2 = watchdog(f, exec_timeout="500ms")
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        function_stub(grpc_channel(wd2)).Invoke(fn.InvokeRequest(body=b"x"), timeout=TIMEOUT)
    assert code_of(err) == grpc.StatusCode.DEADLINE_EXCEEDED, err.value
    assert time.monotonic() - started < 4
    wait_dead(read_pid(pid_file), within=4)


def test_client_cancel_mid_stream_kills_the_function(watchdog, script, grpc_channel, tmp_path):
    pid_file = tmp_path / "pid"
    f = script(f'echo $$ > "{pid_file}"; head -c 3; exec sleep 60')
    wd = watchdog(f)
    feeder = Feeder()
    feeder.put(fn.Chunk(data=b"abc"))
    responses = function_stub(grpc_channel(wd)).InvokeStream(iter(feeder), timeout=TIMEOUT)
    assert next(responses).data == b"abc"
    pid = read_pid(pid_file)
    assert alive(pid)
    responses.cancel()
    feeder.close()
    wait_dead(pid)
    assert responses.code() == grpc.StatusCode.CANCELLED


def test_oversized_messages_are_resource_exhausted(watchdog, script, grpc_channel):
    f = script('if [ "$Http_X_Big" = yes ]; then head -c 4096 /dev/zero; else cat; fi')
    wd = watchdog(f, grpc_max_message_bytes="1024")
    stub = function_stub(grpc_channel(wd))
    with pytest.raises(grpc.RpcError) as err:
        stub.Invoke(fn.InvokeRequest(body=b"\x01" * 4096), timeout=TIMEOUT)
    assert code_of(err) == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
    with pytest.raises(grpc.RpcError) as err:
        stub.Invoke(fn.InvokeRequest(body=b"small"), metadata=[("x-big", "yes")], timeout=TIMEOUT)
    assert code_of(err) == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
    assert stub.Invoke(fn.InvokeRequest(body=b"small"), timeout=TIMEOUT).body == b"small"

    # Passthrough with raw bytes, both ways.
    echo = grpc_channel(wd).unary_unary("/pkg.Svc/Echo")
    with pytest.raises(grpc.RpcError) as err:
        echo(b"\x07" * 4096, timeout=TIMEOUT)
    assert code_of(err) == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
    with pytest.raises(grpc.RpcError) as err:
        echo(b"x", metadata=[("x-big", "yes")], timeout=TIMEOUT)
    assert code_of(err) == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
    assert echo(b"raw", timeout=TIMEOUT) == b"raw"


def test_http_mode_crash_mid_stream_is_unavailable(sdk_watchdog, grpc_channel):
    wd = sdk_watchdog()
    stub = function_stub(grpc_channel(wd))
    responses = stub.InvokeStream(iter([fn.Chunk(data=b"abc")]), metadata=[("x-mode", "crash")], timeout=TIMEOUT)
    data = b""
    with pytest.raises(grpc.RpcError) as err:
        for chunk in responses:
            data += chunk.data
    assert code_of(err) == grpc.StatusCode.UNAVAILABLE, err.value
    assert "exit status 1" in err.value.details(), err.value
    assert data in (b"", b"first")


def test_classic_non_zero_exit_is_internal_with_the_stderr_tail(watchdog, script, grpc_channel):
    f = script('if [ "$Http_X_When" = late ]; then head -c 3; fi; echo "something broke" >&2; exit 3')
    wd = watchdog(f)
    stub = function_stub(grpc_channel(wd))
    with pytest.raises(grpc.RpcError) as err:
        stub.Invoke(fn.InvokeRequest(body=b""), timeout=TIMEOUT)
    assert code_of(err) == grpc.StatusCode.INTERNAL
    assert "exit status 3" in err.value.details(), err.value
    assert "something broke" in err.value.details(), err.value

    # Mid-stream: what was written arrives, then the status.
    responses = stub.InvokeStream(iter([fn.Chunk(data=b"abc")]), metadata=[("x-when", "late")], timeout=TIMEOUT)
    data = b""
    with pytest.raises(grpc.RpcError) as err:
        for chunk in responses:
            data += chunk.data
    assert data == b"abc"
    assert code_of(err) == grpc.StatusCode.INTERNAL
    assert "something broke" in err.value.details(), err.value


# --- HTTP/1.1 and gRPC on one port ----------------------------------------------------------------------------


def test_http_and_grpc_interleave_concurrently(watchdog, grpc_channel):
    wd = watchdog("cat")
    stub = function_stub(grpc_channel(wd))

    def one(i: int) -> str:
        body = f"call {i}"
        if i % 2 == 0:
            reply = wd.post({"Content-Type": "text/plain"}, body)
            assert reply.status == 200, reply
            return reply.text()
        return stub.Invoke(fn.InvokeRequest(body=body.encode()), timeout=TIMEOUT).body.decode()

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(24)))
    assert results == [f"call {i}" for i in range(24)]


# --- watchdog.v1.CloudEvents ----------------------------------------------------------------------------------


def event(data: str = "hello", **fields) -> "ce.CloudEvent":
    base = {"id": "e-1", "source": "/clients/python/grpc", "spec_version": "1.0", "type": "com.example.created"}
    base.update(fields)
    message = ce.CloudEvent(**base, text_data=data)
    message.attributes["datacontenttype"].ce_string = "text/plain"
    return message


def data_of(message) -> bytes:
    which = message.WhichOneof("data")
    if which == "text_data":
        return message.text_data.encode()
    if which == "binary_data":
        return message.binary_data
    assert which is None, f"unexpected data {which}"
    return b""


def cloudevents_stub(channel):
    return pb.function_pb2_grpc.CloudEventsStub(channel)


def test_cloudevents_send_gets_a_reply(watchdog, grpc_channel):
    wd = watchdog("cat")
    sent = event("hello")
    response = cloudevents_stub(grpc_channel(wd)).Send(sent, timeout=TIMEOUT)
    assert response.HasField("reply"), response
    reply = response.reply
    assert reply.type == "com.example.created.reply"
    assert reply.source == "/fwatchdog"
    assert reply.spec_version == "1.0"
    assert reply.id and reply.id != sent.id
    assert reply.attributes["datacontenttype"].ce_string == "text/plain"
    assert data_of(reply) == b"hello"

    binary = ce.CloudEvent(id="e-2", source="/clients/python/grpc", spec_version="1.0", type="com.example.raw",
                           binary_data=b"\x00\x01\xff")
    response = cloudevents_stub(grpc_channel(wd)).Send(binary, timeout=TIMEOUT)
    assert response.reply.type == "com.example.raw.reply"
    assert data_of(response.reply) == b"\x00\x01\xff"


def test_cloudevents_send_without_output_has_no_reply(watchdog, script, grpc_channel):
    wd = watchdog(script("cat > /dev/null"))
    response = cloudevents_stub(grpc_channel(wd)).Send(event("ignored"), timeout=TIMEOUT)
    assert not response.HasField("reply"), response


def test_cloudevents_send_invalid_event_is_invalid_argument(watchdog, grpc_channel):
    wd = watchdog("cat")
    with pytest.raises(grpc.RpcError) as err:
        cloudevents_stub(grpc_channel(wd)).Send(event("x", source=""), timeout=TIMEOUT)
    assert code_of(err) == grpc.StatusCode.INVALID_ARGUMENT, err.value
    assert "source" in err.value.details(), err.value


def test_cloudevents_send_batch_replies_in_order(watchdog, grpc_channel):
    wd = watchdog("cat")
    batch = ce.CloudEventBatch(events=[event(f"event {i}", id=f"e-{i}") for i in range(3)])
    response = cloudevents_stub(grpc_channel(wd)).SendBatch(batch, timeout=TIMEOUT)
    assert [data_of(r) for r in response.replies] == [b"event 0", b"event 1", b"event 2"]
    assert all(r.type == "com.example.created.reply" and r.source == "/fwatchdog" for r in response.replies)
    assert len({r.id for r in response.replies}) == 3
