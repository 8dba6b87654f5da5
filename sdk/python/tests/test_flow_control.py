import hashlib
import os

import pytest

from fakewatchdog import KiB, MiB, http_envelope


def test_8_mib_body_both_ways(worker):
    body = os.urandom(8 * MiB)
    res = worker.call(http_envelope(path="/echo"), body)
    assert res.error is None, res.error
    assert res.status == 200
    assert res.header_values("x-len") == [str(len(body))]
    assert len(res.body) == len(body)
    assert hashlib.sha256(res.body).digest() == hashlib.sha256(body).digest()
    sid = res.stream_id
    # The worker returned credit for the request body (we could not have sent more than 256 KiB otherwise).
    updates = worker.window_updates_from_worker.get(sid, [])
    assert sum(updates) >= len(body) - worker.initial_window_bytes
    assert all(u > 0 for u in updates)
    # Response chunks respected max_chunk_bytes and the window (checked frame by frame by the fake).
    assert max(worker.data_sizes[sid]) <= 64 * KiB
    assert sum(worker.data_sizes[sid]) == len(body)
    assert worker.violations == []


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_worker_stops_at_the_window_and_resumes_on_window_update(watchdog, mode):
    wd = watchdog("app.py", mode, auto_credit=False, initial_window_bytes=64 * KiB, max_chunk_bytes=16 * KiB)
    n = 300_000
    sid = wd.start(http_envelope(path="/big", query=f"n={n}"))
    head = wd.next_frame(sid)
    assert head.WhichOneof("kind") == "response_head"
    got = bytearray()
    frames = wd.frames_within(sid, 1.0)
    for f in frames:
        assert f.WhichOneof("kind") == "data"
        got += f.data.data
    assert len(got) == 64 * KiB, "the worker must send exactly its window, then wait"
    assert max(wd.data_sizes[sid]) <= 16 * KiB

    wd.grant(sid, 100_000)
    for f in wd.frames_within(sid, 1.0):
        assert f.WhichOneof("kind") == "data"
        got += f.data.data
    assert len(got) == 64 * KiB + 100_000

    wd.grant(sid, n)
    rest = wd.result(sid, head=head.response_head)
    got += rest.body
    assert rest.end is not None
    assert bytes(got) == bytes(i % 251 for i in range(n))
    assert wd.violations == []


def test_window_updates_come_as_the_body_is_consumed(watchdog):
    # A small window: the fake can only send 32 KiB before the worker returns credit.
    wd = watchdog("app.py", "async", initial_window_bytes=32 * KiB, max_chunk_bytes=8 * KiB)
    body = os.urandom(1 * MiB)
    res = wd.call(http_envelope(path="/echo"), body)
    assert res.body == body
    updates = wd.window_updates_from_worker[res.stream_id]
    assert len(updates) >= (len(body) - 32 * KiB) // (32 * KiB)
    assert max(updates) <= 32 * KiB  # credit is returned as it is consumed, never in advance
    assert max(wd.data_sizes[res.stream_id]) <= 8 * KiB
    assert wd.violations == []


def test_small_max_frame_bytes_caps_data_frames(watchdog):
    # max_chunk_bytes is larger than max_frame_bytes allows: every frame must still fit the frame limit.
    wd = watchdog("app.py", "sync", max_frame_bytes=16 * KiB, max_chunk_bytes=64 * KiB)
    body = os.urandom(200 * KiB)
    res = wd.call(http_envelope(path="/echo"), body, chunk=8 * KiB)
    assert res.body == body
    assert max(wd.data_sizes[res.stream_id]) <= 16 * KiB
    assert wd.violations == []


def test_one_stalled_stream_does_not_block_others(watchdog):
    wd = watchdog("app.py", "async", auto_credit=False, initial_window_bytes=16 * KiB)
    stalled = wd.start(http_envelope(path="/big", query="n=1000000"))
    assert wd.next_frame(stalled).WhichOneof("kind") == "response_head"
    # Others still flow while `stalled` waits for credit.
    for _ in range(5):
        res = wd.call(http_envelope(path="/bytes"))
        assert res.body == b"hello bytes"
    wd.ping(9)
    assert wd.next_conn_frame().pong.nonce == 9
    assert wd.violations == []
