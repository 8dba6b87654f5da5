import os
import time

import pytest

from fakewatchdog import Frame, frame_pb2, http_envelope


def wait_for_file(path, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and os.path.getsize(path) > 0:
            with open(path) as f:
                return f.read()
        time.sleep(0.02)
    return None


def test_cancel_stops_the_stream(worker, mode, tmp_path):
    marker = tmp_path / "marker"
    sid = worker.start(http_envelope(path="/cancellable", query=f"marker={marker}"))
    time.sleep(0.3)
    worker.cancel(sid)
    # async: the task is cancelled; sync: the handler sees request.cancelled.
    assert wait_for_file(marker) == ("cancelled" if mode == "async" else "saw-cancel")
    # Nothing is ever sent on a cancelled stream (the sync handler returns b"late", which is discarded).
    assert worker.frames_within(sid, 1.0) == []
    # The worker goes on serving.
    assert worker.call(http_envelope(path="/bytes")).body == b"hello bytes"


def test_cancel_before_the_body_ends(worker):
    sid = worker.open_stream(http_envelope(path="/bytes"))
    worker.send_body(sid, b"part", end=False)
    worker.cancel(sid)
    worker.send_body(sid, b"more", end=True)  # crosses the Cancel: ignored
    assert worker.frames_within(sid, 0.7) == []
    assert worker.call(http_envelope(path="/bytes")).status == 200


def test_frames_for_unknown_and_finished_streams_are_ignored(worker):
    done = worker.call(http_envelope(path="/bytes"))
    for sid in (99, done.stream_id):
        worker.send(Frame(stream_id=sid, data=frame_pb2.Data(data=b"x")))
        worker.send(Frame(stream_id=sid, window_update=frame_pb2.WindowUpdate(increment=5)))
        worker.send(Frame(stream_id=sid, end=frame_pb2.End()))
        worker.send(Frame(stream_id=sid, cancel=frame_pb2.Cancel(reason="late")))
    worker.ping(5)
    assert worker.next_conn_frame().pong.nonce == 5
    assert worker.frames_within(done.stream_id, 0.3) == []
    assert worker.call(http_envelope(path="/str")).status == 200
    assert worker.violations == []  # in particular, nothing on stream 99


def test_shutdown_finishes_open_requests_then_exits_0(worker):
    sid = worker.start(http_envelope(path="/sleep", query="ms=800", request_id="in-flight"))
    time.sleep(0.2)
    worker.shutdown(grace_ms=10_000)
    res = worker.result(sid)
    assert res.status == 200 and res.body == b"in-flight"
    assert worker.wait_exit() == 0
    assert worker.eof.wait(5)


def test_shutdown_when_idle_exits_0(worker):
    worker.shutdown()
    assert worker.wait_exit(timeout=5) == 0


def test_drain_refuses_new_work_and_finishes_open_work(worker):
    open_sid = worker.start(http_envelope(path="/sleep", query="ms=600", request_id="old"))
    time.sleep(0.2)
    worker.drain()
    late = worker.call(http_envelope(path="/bytes"))
    assert late.error_kind == "ERROR_KIND_RETRYABLE"
    assert worker.result(open_sid).body == b"old"
    worker.ping(3)
    assert worker.next_conn_frame().pong.nonce == 3  # still connected after draining
    assert worker.proc.poll() is None


def test_socket_closed_by_the_watchdog_exits_0(worker):
    worker.close_connection()
    assert worker.wait_exit() == 0


def test_sys_exit_in_a_handler_ends_the_worker_with_its_status(worker):
    worker.start(http_envelope(path="/exit", query="code=3"))
    assert worker.wait_exit() == 3


def test_sigterm_exits_0(worker):
    import signal

    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait_exit() == 0


def test_stdout_printing_does_not_corrupt_frames(worker):
    sids = [worker.start(http_envelope(path="/print")) for _ in range(10)]
    sids += [worker.start(http_envelope(path="/echo"), b"payload %d" % i) for i in range(10)]
    for sid in sids[:10]:
        assert worker.result(sid).body == b"printed"
    for i, sid in enumerate(sids[10:]):
        assert worker.result(sid).body == b"payload %d" % i
    worker.shutdown()
    assert worker.wait_exit() == 0
    assert worker.stdout.count("to stdout: line one") == 10
    assert "to stderr: a log line" in worker.stderr
    assert worker.violations == []
