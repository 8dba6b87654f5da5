"""Starts the real fwatchdog binary for the client tests and gives them a small raw HTTP client.

The binary is `$FWATCHDOG`, else `target/debug/fwatchdog` in the repository (built by
`cargo build --locked --bin fwatchdog`). Each watchdog gets a free port, its own TMPDIR, metrics off and no
shutdown wait, and is killed when the test ends.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
FWATCHDOG = Path(os.environ.get("FWATCHDOG") or REPO / "target" / "debug" / "fwatchdog")
SDK_PYTHON = REPO / "sdk" / "python"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # names lower-cased; a repeated header keeps its last value
    body: bytes

    def text(self) -> str:
        return self.body.decode("utf-8")


class Watchdog:
    def __init__(self, tmp: Path, env: dict[str, str], wait_healthy: bool = True) -> None:
        if not FWATCHDOG.exists():
            raise RuntimeError(f"{FWATCHDOG} is missing: run `cargo build --locked --bin fwatchdog` first")
        self.tmp = tmp
        self.port = free_port()
        self.log_path = tmp / "watchdog.log"
        full = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "TMPDIR": str(tmp),
            "port": str(self.port),
            "metrics_port": "0",
            "healthcheck_interval": "0",
        }
        full.update(env)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(FWATCHDOG)], env=full, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_healthy(wait_healthy)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_healthy(self, healthy: bool = True) -> None:
        """Waits for `/_/health` to answer 200 (or, with `healthy=False`, to answer at all)."""
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fwatchdog exited with {self.proc.returncode}; log:\n{self.log()}")
            try:
                status = self.request("GET", "/_/health").status
                if status == 200 or not healthy:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"fwatchdog did not become healthy; log:\n{self.log()}")
            time.sleep(0.02)

    def request(self, method: str, path: str, headers=None, body: bytes | str = b"", timeout: float = 30) -> Reply:
        """One request on a fresh connection. Header values may be str (sent as Latin-1, so keep them ASCII)
        or bytes (sent exactly)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            if isinstance(body, str):
                body = body.encode()
            conn.putrequest(method, path, skip_accept_encoding=True)
            for name, value in (headers or {}).items():
                conn.putheader(name, value)
            if method in ("POST", "PUT", "PATCH") or body:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            data = resp.read()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        finally:
            conn.close()

    def post(self, headers=None, body: bytes | str = b"", path: str = "/") -> Reply:
        return self.request("POST", path, headers, body)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def _watchdogs(tmp_path):
    """Starts watchdogs (`start(fprocess, env, wait_healthy)`) and stops every one after the test."""
    started: list[Watchdog] = []

    def start(fprocess: str, env: dict[str, str], wait_healthy: bool) -> Watchdog:
        d = tmp_path / f"wd{len(started)}"
        d.mkdir()
        wd = Watchdog(d, {"fprocess": fprocess, **env}, wait_healthy)
        started.append(wd)
        return wd

    yield start
    for wd in started:
        wd.stop()


@pytest.fixture
def watchdog(_watchdogs):
    """`watchdog(fprocess, **env)` starts a watchdog and waits until it is healthy; every one started is stopped
    after the test."""
    return lambda fprocess, **env: _watchdogs(fprocess, env, True)


@pytest.fixture
def unready_watchdog(_watchdogs):
    """`unready_watchdog(fprocess, **env)`: like `watchdog`, but waits only until it answers HTTP at all (e.g. an
    http-mode function whose worker never becomes ready)."""
    return lambda fprocess, **env: _watchdogs(fprocess, env, False)


@pytest.fixture
def grpc_channel():
    """`grpc_channel(wd)` opens an insecure grpcio channel to the watchdog (no proxy); all are closed after the
    test."""
    import grpc

    channels = []

    def open_channel(wd: Watchdog):
        channel = grpc.insecure_channel(f"127.0.0.1:{wd.port}", options=[("grpc.enable_http_proxy", 0)])
        channels.append(channel)
        return channel

    yield open_channel
    for channel in channels:
        channel.close()


@pytest.fixture(scope="session")
def grpc_greeter() -> str:
    """The classic-mode greeter example (`examples/grpc_greeter.rs`): `$GRPC_GREETER`, else
    target/debug/examples/grpc_greeter, built with `cargo build --locked --example grpc_greeter` when it is
    missing or older than its source (`cargo test` and `cargo build --examples` also build it)."""
    override = os.environ.get("GRPC_GREETER")
    if override:
        return override
    binary = REPO / "target" / "debug" / "examples" / "grpc_greeter"
    source = REPO / "examples" / "grpc_greeter.rs"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        subprocess.run(["cargo", "build", "--locked", "--example", "grpc_greeter"], cwd=REPO, check=True)
    return str(binary)


@pytest.fixture
def script(tmp_path):
    """`script(body)` writes an executable /bin/sh function into the test's tmp dir and returns its path."""
    count = 0

    def write(body: str) -> str:
        nonlocal count
        count += 1
        path = tmp_path / f"f{count}.sh"
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
        return str(path)

    return write


@pytest.fixture
def python_handler(tmp_path):
    """`python_handler(source)` writes an http-mode handler using the watchdog's Python SDK (sdk/python from the
    source tree, protobuf from this venv) and returns (fprocess, env) for `watchdog(...)`."""

    def write(source: str) -> tuple[str, dict[str, str]]:
        path = tmp_path / "handler.py"
        path.write_text(source)
        fprocess = f"{sys.executable} {path}"
        assert " " not in sys.executable and " " not in str(path), "fprocess is split on spaces"
        return fprocess, {"mode": "http", "PYTHONPATH": str(SDK_PYTHON)}

    return write
