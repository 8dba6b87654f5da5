from fakewatchdog import SDK_DIR, http_envelope

ECHO = SDK_DIR.parent.parent / "examples" / "http-python" / "echo.py"


def test_echo_example(watchdog):
    wd = watchdog(str(ECHO))
    assert wd.hello.hello.max_concurrency == 0  # an async handler declares no limit
    res = wd.call(http_envelope(path="/anything", headers=[("Content-Type", "text/plain")]), b"echo me")
    assert res.status == 200
    assert res.body == b"echo me"
    assert res.header_values("content-type") == ["text/plain"]
    wd.shutdown()
    assert wd.wait_exit() == 0
