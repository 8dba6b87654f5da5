import time

import pytest

from fakewatchdog import http_envelope


@pytest.mark.parametrize("mode,args", [("sync", ()), ("sync", ("--concurrency", "64")), ("async", ())])
def test_64_concurrent_requests_on_one_worker(watchdog, mode, args):
    wd = watchdog("app.py", mode, *args)
    started = time.monotonic()
    sids = {wd.start(http_envelope(path="/sleep", query="ms=400", request_id=f"r{i}")): f"r{i}" for i in range(64)}
    results = {sid: wd.result(sid) for sid in sids}
    elapsed = time.monotonic() - started
    for sid, rid in sids.items():
        assert results[sid].status == 200
        assert results[sid].body == rid.encode()  # each answer on its own stream
    # One at a time this would take 25.6 s; 32 threads need two rounds, 64 (or async) one.
    assert elapsed < 5.0, elapsed
    assert wd.violations == []


def test_pong_while_every_handler_thread_is_busy(watchdog):
    wd = watchdog("app.py", "sync", "--concurrency", "1")
    sid = wd.start(http_envelope(path="/sleep", query="ms=2000"))
    time.sleep(0.3)
    sent = time.monotonic()
    wd.ping(0xDEADBEEF)
    pong = wd.next_conn_frame(timeout=1.5)
    assert time.monotonic() - sent < 0.5
    assert pong.WhichOneof("kind") == "pong"
    assert pong.pong.nonce == 0xDEADBEEF
    assert wd.frames_within(sid, 0) == []  # the handler is still sleeping
    assert wd.result(sid).status == 200


def test_many_pings_answered_in_order(worker):
    for nonce in range(1, 51):
        worker.ping(nonce)
    assert [worker.next_conn_frame().pong.nonce for _ in range(50)] == list(range(1, 51))
