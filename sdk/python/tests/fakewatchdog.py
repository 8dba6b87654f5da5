"""A fake watchdog: the watchdog side of `watchdog.v1` (proto/README.md), just enough to drive a worker.

It listens on a Unix socket in a private temp dir, starts a worker subprocess (`tests/apps/<app>`) with
`WATCHDOG_SOCKET` set, performs the handshake and then lets a test send frames and read what comes back.

It checks the worker as the real watchdog would and records every violation in `violations`:
frames over max_frame_bytes, Data over max_chunk_bytes, Data beyond the stream's window, frames that do not
decode or have no kind, worker frames for streams that were never opened. When sending request bodies it
respects the worker's window itself and waits for the worker's WindowUpdates.
"""

from __future__ import annotations

import os
import queue
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

SDK_DIR = Path(__file__).resolve().parents[1]
APPS_DIR = Path(__file__).resolve().parent / "apps"
if str(SDK_DIR) not in sys.path:
    sys.path.insert(0, str(SDK_DIR))

from google.protobuf.timestamp_pb2 import Timestamp  # noqa: E402

from watchdog_sdk._pb.io.cloudevents.v1 import cloudevents_pb2  # noqa: E402
from watchdog_sdk._pb.watchdog.v1 import envelope_pb2, frame_pb2  # noqa: E402

Frame = frame_pb2.Frame
LEN = struct.Struct(">I")
TIMEOUT = 15.0

KiB = 1024
MiB = 1024 * 1024


class WorkerGone(Exception):
    pass


def encode(frame: frame_pb2.Frame) -> bytes:
    payload = frame.SerializeToString()
    return LEN.pack(len(payload)) + payload


def http_envelope(
    method: str = "POST",
    path: bytes | str = b"/",
    query: str = "",
    headers: Iterable[tuple[str, bytes | str]] = (),
    request_id: str = "req-1",
    deadline: Optional[float] = None,
    content_length: int = -1,
    host: str = "example.test",
    traceparent: str = "",
) -> envelope_pb2.Envelope:
    env = envelope_pb2.Envelope(request_id=request_id, content_length=content_length)
    env.http.method = method
    env.http.path = path.encode() if isinstance(path, str) else path
    env.http.query = query
    env.http.host = host
    env.http.version = "HTTP/1.1"
    for name, value in headers:
        env.headers.add(name=name, value=value.encode() if isinstance(value, str) else value)
    if deadline is not None:
        seconds = int(deadline)
        env.deadline.CopyFrom(Timestamp(seconds=seconds, nanos=round((deadline - seconds) * 1e9)))
    if traceparent:
        env.trace.traceparent = traceparent
    return env


def grpc_envelope(
    method: str,
    metadata: Iterable[tuple[str, str]] = (),
    request_id: str = "req-g",
    client_streaming: bool = False,
    server_streaming: bool = False,
    host: str = "",
) -> envelope_pb2.Envelope:
    env = envelope_pb2.Envelope(request_id=request_id, content_length=-1)
    env.grpc.method = method
    env.grpc.client_streaming = client_streaming
    env.grpc.server_streaming = server_streaming
    for name, value in metadata:
        env.headers.add(name=name, value=value.encode())
    if host:
        env.transport.method = "POST"
        env.transport.path = method.encode()
        env.transport.host = host
        env.transport.version = "HTTP/2.0"
    return env


def grpc_frame(message: bytes) -> bytes:
    """gRPC's length-prefixed framing, written independently of the SDK's."""
    return b"\x00" + LEN.pack(len(message)) + message


def grpc_deframe(body: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(body):
        assert body[pos] == 0, f"compressed flag {body[pos]} at {pos}"
        (n,) = LEN.unpack_from(body, pos + 1)
        assert pos + 5 + n <= len(body), f"truncated message at {pos}"
        out.append(body[pos + 5 : pos + 5 + n])
        pos += 5 + n
    return out


def ce_envelope(
    id: str, source: str, type: str, spec_version: str = "1.0", request_id: str = "req-ce", **attributes
) -> envelope_pb2.Envelope:
    """attributes: name -> (oneof field, value), e.g. myext=("ce_string", "x")."""
    env = envelope_pb2.Envelope(request_id=request_id, content_length=-1)
    ce = env.cloudevent
    ce.id, ce.source, ce.type, ce.spec_version = id, source, type, spec_version
    for name, (which, value) in attributes.items():
        attr = ce.attributes[name]
        if which == "ce_timestamp":
            attr.ce_timestamp.FromJsonString(value)
        else:
            setattr(attr, which, value)
    return env


@dataclass
class Result:
    """One stream's answer as the watchdog saw it."""

    stream_id: int
    frames: list = field(default_factory=list)
    head: Optional[envelope_pb2.ResponseHead] = None
    body: bytes = b""
    end: Optional[frame_pb2.End] = None
    error: Optional[frame_pb2.Error] = None

    @property
    def status(self) -> int:
        assert self.head is not None, f"no response head on stream {self.stream_id}: {self.frames}"
        return self.head.status or 200

    def header_values(self, name: str) -> list[str]:
        assert self.head is not None
        return [h.value.decode() for h in self.head.headers if h.name.lower() == name.lower()]

    @property
    def error_kind(self) -> str:
        assert self.error is not None, f"no error on stream {self.stream_id}: {self.frames}"
        return envelope_pb2.ErrorKind.Name(self.error.kind)


class FakeWatchdog:
    def __init__(
        self,
        app: str,
        *args: str,
        max_frame_bytes: int = 2 * MiB,
        max_chunk_bytes: int = 64 * KiB,
        initial_window_bytes: int = 256 * KiB,
        auto_credit: bool = True,
        env: Optional[dict] = None,
    ) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.max_chunk_bytes = max_chunk_bytes
        self.initial_window_bytes = initial_window_bytes
        self.auto_credit = auto_credit
        self.violations: list[str] = []
        self.hello: Optional[frame_pb2.Frame] = None
        self.hello_size = 0

        # Per stream: our credit for sending request bodies, and the worker's window for its responses.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._send_credit: dict[int, int] = {}
        self._worker_window: dict[int, int] = {}
        self._consumed: dict[int, int] = {}
        self.window_updates_from_worker: dict[int, list[int]] = {}
        self.data_sizes: dict[int, list[int]] = {}
        self._opened: set[int] = set()
        self._queues: dict[int, queue.Queue] = {}
        self._conn_queue: queue.Queue = queue.Queue()
        self._send_lock = threading.Lock()
        self._senders: list[threading.Thread] = []
        self._sender_errors: list[BaseException] = []
        self.eof = threading.Event()
        self._next_stream = 1

        self.dir = tempfile.mkdtemp(prefix="wdsdk-", dir="/tmp")
        self.socket_path = os.path.join(self.dir, "worker.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.socket_path)
        self.listener.listen(1)
        self.listener.settimeout(TIMEOUT)

        child_env = dict(os.environ)
        child_env.update(env or {})
        child_env["WATCHDOG_SOCKET"] = self.socket_path
        child_env["WATCHDOG_PROTOCOL"] = "watchdog.v1"
        child_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(SDK_DIR), child_env.get("PYTHONPATH", "")) if p
        )
        self._stdout = bytearray()
        self._stderr = bytearray()
        self.proc = subprocess.Popen(
            [sys.executable, str(APPS_DIR / app), *args],
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._pipe_threads = [
            threading.Thread(target=self._drain_pipe, args=(self.proc.stdout, self._stdout), daemon=True),
            threading.Thread(target=self._drain_pipe, args=(self.proc.stderr, self._stderr), daemon=True),
        ]
        for t in self._pipe_threads:
            t.start()
        self.sock: Optional[socket.socket] = None

    # ---- process output -------------------------------------------------------------------------------------

    @staticmethod
    def _drain_pipe(pipe, sink: bytearray) -> None:
        for chunk in iter(lambda: pipe.read1(65536), b""):
            sink += chunk

    @property
    def stdout(self) -> str:
        return self._stdout.decode(errors="replace")

    @property
    def stderr(self) -> str:
        return self._stderr.decode(errors="replace")

    # ---- handshake ------------------------------------------------------------------------------------------

    def accept(self) -> frame_pb2.Frame:
        """Accepts the worker's connection and reads its first frame (which must be Hello)."""
        try:
            self.sock, _ = self.listener.accept()
        except socket.timeout:
            raise AssertionError(f"the worker never connected; stderr:\n{self.stderr}") from None
        self.sock.settimeout(TIMEOUT)
        frame, size = self._read_frame(64 * KiB)
        self.hello = frame
        self.hello_size = size
        return frame

    def handshake(self, worker_id: int = 7) -> "FakeWatchdog":
        hello = self.accept()
        assert hello.WhichOneof("kind") == "hello", f"first frame is not hello: {hello}"
        self.send_hello_ack(worker_id)
        ready = self.next_conn_frame()
        assert ready.WhichOneof("kind") == "ready", f"expected ready, got {ready}; stderr:\n{self.stderr}"
        return self

    def send_hello_ack(self, worker_id: int = 7) -> None:
        self.send(
            Frame(
                stream_id=0,
                hello_ack=frame_pb2.HelloAck(
                    max_frame_bytes=self.max_frame_bytes,
                    max_chunk_bytes=self.max_chunk_bytes,
                    initial_window_bytes=self.initial_window_bytes,
                    worker_id=worker_id,
                ),
            )
        )
        threading.Thread(target=self._reader, daemon=True).start()

    # ---- wire -----------------------------------------------------------------------------------------------

    def _recv_exact(self, n: int) -> bytes:
        assert self.sock is not None
        buf = bytearray()
        while len(buf) < n:
            try:
                part = self.sock.recv(n - len(buf))
            except socket.timeout:
                continue
            except OSError:
                part = b""
            if not part:
                raise WorkerGone()
            buf += part
        return bytes(buf)

    def _read_frame(self, limit: int) -> tuple[frame_pb2.Frame, int]:
        (n,) = LEN.unpack(self._recv_exact(4))
        if n > limit:
            self.violations.append(f"frame of {n} bytes > limit {limit}")
        payload = self._recv_exact(n)
        frame = Frame.FromString(payload)
        if frame.WhichOneof("kind") is None:
            self.violations.append("frame with no kind")
        return frame, n

    def send(self, frame: frame_pb2.Frame) -> None:
        self.send_raw(encode(frame))

    def send_raw(self, data: bytes) -> None:
        assert self.sock is not None
        with self._send_lock:
            self.sock.sendall(data)

    def _queue_for(self, sid: int) -> queue.Queue:
        with self._lock:
            q = self._queues.get(sid)
            if q is None:
                q = self._queues[sid] = queue.Queue()
            return q

    def _reader(self) -> None:
        try:
            while True:
                frame, _ = self._read_frame(self.max_frame_bytes)
                self._route(frame)
        except WorkerGone:
            pass
        except Exception as exc:  # pragma: no cover - reported through violations
            self.violations.append(f"reader failed: {exc!r}")
        finally:
            self.eof.set()
            with self._cond:
                self._cond.notify_all()

    def _route(self, frame: frame_pb2.Frame) -> None:
        sid = frame.stream_id
        kind = frame.WhichOneof("kind")
        if sid == 0:
            self._conn_queue.put(frame)
            return
        with self._cond:
            opened = sid in self._opened
        if not opened:
            self.violations.append(f"worker frame {kind} on stream {sid} that was never opened")
            return
        if kind in ("request_head", "cancel", "hello_ack", "drain", "shutdown"):
            self.violations.append(f"request-only frame {kind} sent by the worker on stream {sid}")
        if kind == "window_update":
            with self._cond:
                self._send_credit[sid] += frame.window_update.increment
                self.window_updates_from_worker.setdefault(sid, []).append(frame.window_update.increment)
                self._cond.notify_all()
            return
        if kind == "data":
            n = len(frame.data.data)
            credit = None
            with self._cond:
                self.data_sizes.setdefault(sid, []).append(n)
                if n > self.max_chunk_bytes:
                    self.violations.append(f"stream {sid}: Data of {n} bytes > max_chunk_bytes {self.max_chunk_bytes}")
                if n > self._worker_window[sid]:
                    self.violations.append(
                        f"stream {sid}: Data of {n} bytes exceeds the window ({self._worker_window[sid]} left)"
                    )
                self._worker_window[sid] -= n
                if self.auto_credit:
                    self._consumed[sid] += n
                    if self._consumed[sid] >= self.initial_window_bytes // 2:
                        credit = self._consumed[sid]
                        self._consumed[sid] = 0
                        self._worker_window[sid] += credit
            if credit:
                self.send(Frame(stream_id=sid, window_update=frame_pb2.WindowUpdate(increment=credit)))
        self._queue_for(sid).put(frame)

    # ---- requests -------------------------------------------------------------------------------------------

    def new_stream_id(self) -> int:
        sid = self._next_stream
        self._next_stream += 2
        return sid

    def open_stream(self, envelope: envelope_pb2.Envelope, sid: Optional[int] = None) -> int:
        sid = self.new_stream_id() if sid is None else sid
        with self._cond:
            self._opened.add(sid)
            self._send_credit[sid] = self.initial_window_bytes
            self._worker_window[sid] = self.initial_window_bytes
            self._consumed[sid] = 0
        self._queue_for(sid)
        self.send(Frame(stream_id=sid, request_head=frame_pb2.RequestHead(envelope=envelope)))
        return sid

    def send_body(self, sid: int, body: bytes, chunk: Optional[int] = None, end: bool = True) -> None:
        """Sends `body` as Data frames that never exceed our credit on the stream, then End."""
        chunk = chunk or self.max_chunk_bytes
        view = memoryview(body)
        offset = 0
        while offset < len(body):
            with self._cond:
                deadline = time.monotonic() + TIMEOUT
                while self._send_credit[sid] <= 0:
                    left = deadline - time.monotonic()
                    if left <= 0 or self.eof.is_set():
                        raise AssertionError(
                            f"stream {sid}: no WindowUpdate from the worker after {offset} body bytes"
                        )
                    self._cond.wait(left)
                n = min(chunk, self._send_credit[sid], len(body) - offset)
                self._send_credit[sid] -= n
            self.send(Frame(stream_id=sid, data=frame_pb2.Data(data=bytes(view[offset : offset + n]))))
            offset += n
        if end:
            self.send(Frame(stream_id=sid, end=frame_pb2.End()))

    def start(self, envelope: envelope_pb2.Envelope, body: bytes = b"", chunk: Optional[int] = None) -> int:
        """Opens a stream and sends the body from a background thread (it may have to wait for credit)."""
        sid = self.open_stream(envelope)
        if len(body) <= self._send_credit[sid]:
            self.send_body(sid, body, chunk)
            return sid

        def run() -> None:
            try:
                self.send_body(sid, body, chunk)
            except BaseException as exc:  # noqa: BLE001
                self._sender_errors.append(exc)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self._senders.append(t)
        return sid

    def grant(self, sid: int, increment: int) -> None:
        with self._cond:
            self._worker_window[sid] += increment
        self.send(Frame(stream_id=sid, window_update=frame_pb2.WindowUpdate(increment=increment)))

    def next_frame(self, sid: int, timeout: float = TIMEOUT) -> frame_pb2.Frame:
        try:
            return self._queue_for(sid).get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"no frame on stream {sid} within {timeout}s; stderr:\n{self.stderr[-4000:]}"
            ) from None

    def frames_within(self, sid: int, seconds: float) -> list:
        """Every frame that arrives on `sid` within `seconds`."""
        out = []
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return out
            try:
                out.append(self._queue_for(sid).get(timeout=left))
            except queue.Empty:
                return out

    def result(self, sid: int, timeout: float = TIMEOUT, head=None) -> Result:
        """Reads the stream's answer to its End or Error; `head`: a ResponseHead the test already read."""
        res = Result(stream_id=sid, head=head)
        body = bytearray()
        deadline = time.monotonic() + timeout
        while True:
            frame = self.next_frame(sid, max(0.01, deadline - time.monotonic()))
            res.frames.append(frame)
            kind = frame.WhichOneof("kind")
            if kind == "response_head":
                assert res.head is None, f"stream {sid}: two response heads"
                res.head = frame.response_head
            elif kind == "data":
                assert res.head is not None, f"stream {sid}: Data before ResponseHead"
                body += frame.data.data
            elif kind == "end":
                assert res.head is not None, f"stream {sid}: End before ResponseHead"
                res.end = frame.end
                break
            elif kind == "error":
                res.error = frame.error
                break
            else:
                raise AssertionError(f"stream {sid}: unexpected {kind}")
        res.body = bytes(body)
        for err in self._sender_errors:
            raise err
        return res

    def call(self, envelope: envelope_pb2.Envelope, body: bytes = b"", chunk: Optional[int] = None) -> Result:
        return self.result(self.start(envelope, body, chunk))

    # ---- connection frames ----------------------------------------------------------------------------------

    def next_conn_frame(self, timeout: float = TIMEOUT) -> frame_pb2.Frame:
        try:
            return self._conn_queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no connection frame within {timeout}s; stderr:\n{self.stderr[-4000:]}") from None

    def ping(self, nonce: int) -> None:
        self.send(Frame(stream_id=0, ping=frame_pb2.Ping(nonce=nonce)))

    def cancel(self, sid: int, reason: str = "client disconnected") -> None:
        self.send(Frame(stream_id=sid, cancel=frame_pb2.Cancel(reason=reason)))

    def drain(self) -> None:
        self.send(Frame(stream_id=0, drain=frame_pb2.Drain()))

    def shutdown(self, grace_ms: int = 10_000) -> None:
        self.send(Frame(stream_id=0, shutdown=frame_pb2.Shutdown(grace_ms=grace_ms)))

    def close_connection(self) -> None:
        """Closes the worker's socket as a watchdog that goes away would (shutdown first: the reader thread is
        blocked in recv on it, which would keep a plain close() from taking effect)."""
        assert self.sock is not None
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    # ---- the process ----------------------------------------------------------------------------------------

    def wait_exit(self, timeout: float = TIMEOUT) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the worker did not exit within {timeout}s; stderr:\n{self.stderr}") from None
        for t in self._pipe_threads:
            t.join(5)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for s in (self.sock, self.listener):
            if s is not None:
                try:
                    if s is self.sock:
                        s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                try:
                    s.close()
                except OSError:
                    pass
        shutil.rmtree(self.dir, ignore_errors=True)
