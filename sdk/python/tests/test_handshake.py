import struct

import watchdog_sdk
from fakewatchdog import Frame, frame_pb2


def test_sync_hello_fields_then_ready(watchdog):
    wd = watchdog("app.py", "sync")
    hello = wd.hello.hello
    assert wd.hello.stream_id == 0
    assert hello.protocol == "watchdog.v1"
    assert hello.sdk_name == "watchdog-sdk-python"
    assert hello.sdk_version == watchdog_sdk.__version__ != ""
    assert hello.max_concurrency == 32  # the default thread pool
    assert wd.hello_size < 64 * 1024
    # handshake() already required the frame after HelloAck to be Ready; the worker then serves.
    wd.ping(1)
    assert wd.next_conn_frame().pong.nonce == 1


def test_async_default_concurrency_is_unlimited(watchdog):
    wd = watchdog("app.py", "async")
    assert wd.hello.hello.max_concurrency == 0


def test_concurrency_argument_is_declared(watchdog):
    assert watchdog("app.py", "sync", "--concurrency", "5").hello.hello.max_concurrency == 5
    assert watchdog("app.py", "async", "--concurrency", "7").hello.hello.max_concurrency == 7


def test_no_frame_before_hello_ack(watchdog):
    wd = watchdog("app.py", "sync", handshake=False)
    wd.accept()
    assert wd.hello.WhichOneof("kind") == "hello"
    # Nothing else arrives until HelloAck: Ready must wait for the limits.
    wd.sock.settimeout(0.5)
    try:
        data = wd.sock.recv(1)
    except TimeoutError:
        data = None
    assert data is None, "the worker sent something before HelloAck"
    wd.sock.settimeout(15)
    wd.send_hello_ack()
    assert wd.next_conn_frame().WhichOneof("kind") == "ready"


def test_setup_failure_sends_init_error_and_exits_nonzero(watchdog):
    wd = watchdog("app.py", "sync", "--concurrency", "0", handshake=False)
    wd.accept()
    wd.send_hello_ack()
    frame = wd.next_conn_frame()
    assert frame.WhichOneof("kind") == "init_error", frame
    assert "concurrency" in frame.init_error.message
    assert wd.wait_exit() == 1


def test_unset_socket_exits_with_a_message(tmp_path):
    import os
    import subprocess
    import sys

    from fakewatchdog import APPS_DIR, SDK_DIR

    env = {k: v for k, v in os.environ.items() if k != "WATCHDOG_SOCKET"}
    env["PYTHONPATH"] = str(SDK_DIR)
    proc = subprocess.run(
        [sys.executable, str(APPS_DIR / "app.py"), "sync"], env=env, capture_output=True, timeout=30
    )
    assert proc.returncode == 1
    assert b"WATCHDOG_SOCKET" in proc.stderr


def test_oversized_frame_from_watchdog_is_a_protocol_error(watchdog):
    wd = watchdog("app.py", "sync", max_frame_bytes=128 * 1024)
    wd.send_raw(struct.pack(">I", 128 * 1024 + 1) + b"\0" * 16)
    assert wd.wait_exit() == 1
    assert "protocol error" in wd.stderr


def test_frame_without_kind_is_a_protocol_error(watchdog):
    wd = watchdog("app.py", "async")
    payload = Frame(stream_id=0).SerializeToString()
    wd.send_raw(struct.pack(">I", len(payload)) + payload)
    assert wd.wait_exit() == 1
    assert "no kind" in wd.stderr
