import pytest

from fakewatchdog import FakeWatchdog


@pytest.fixture
def watchdog():
    """watchdog(app, *args, handshake=True, **limits) -> a FakeWatchdog with a running worker; cleaned up after."""
    made = []

    def make(*args, handshake=True, **kwargs):
        wd = FakeWatchdog(*args, **kwargs)
        made.append(wd)
        if handshake:
            wd.handshake()
        return wd

    yield make
    for wd in made:
        wd.close()


@pytest.fixture(params=["sync", "async"])
def mode(request):
    return request.param


@pytest.fixture
def worker(watchdog, mode):
    """A handshaken worker running tests/apps/app.py in the sync or the async variant."""
    wd = watchdog("app.py", mode)
    yield wd
    assert wd.violations == [], wd.violations
