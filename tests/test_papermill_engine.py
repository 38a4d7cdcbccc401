"""The `workbench` papermill engine: its channels wait in short polls, so a reply whose wake-up was lost is
still seen (on the GPU hosts papermill's own engine saw it only at the cell's timeout: data/ci/README.md)."""

import asyncio
import time
from importlib.metadata import entry_points
from queue import Empty

import pytest

pytest.importorskip("papermill")
from jupyter_client.channels import AsyncZMQSocketChannel  # noqa: E402

from workbench.runtime.papermill_engine import WorkbenchEngine, sliced_polls  # noqa: E402


class LostWakeup:
    """A channel whose message waits from the start but whose first poll is never woken: only a fresh poll
    sees it (the lost wake-up, as the hosts showed it)."""

    def __init__(self):
        self.polls = 0

    async def get_msg(self, timeout=None):
        self.polls += 1
        if self.polls == 1:
            await asyncio.sleep(timeout if timeout is not None else 3600)
            raise Empty
        return {"msg_type": "execute_reply"}


def _get(channel, timeout):
    """AsyncZMQSocketChannel.get_msg (as patched) called on the fake channel."""
    return asyncio.run(AsyncZMQSocketChannel.get_msg(channel, timeout=timeout))


def test_a_lost_wakeup_costs_one_slice_not_the_timeout(monkeypatch):
    monkeypatch.setattr(AsyncZMQSocketChannel, "get_msg", LostWakeup.get_msg)
    channel = LostWakeup()
    with sliced_polls(slice_s=0.2):
        t0 = time.monotonic()
        assert _get(channel, timeout=60)["msg_type"] == "execute_reply"
        assert time.monotonic() - t0 < 2 and channel.polls == 2
        channel.polls = 0
        assert _get(channel, timeout=None)["msg_type"] == "execute_reply"  # no timeout: still found
    assert AsyncZMQSocketChannel.get_msg is LostWakeup.get_msg  # restored


def test_the_timeout_still_holds(monkeypatch):
    async def never(self, timeout=None):
        await asyncio.sleep(timeout)
        raise Empty

    monkeypatch.setattr(AsyncZMQSocketChannel, "get_msg", never)
    with sliced_polls(slice_s=0.2):
        t0 = time.monotonic()
        with pytest.raises(Empty):
            _get(object(), timeout=0.5)
        assert 0.45 < time.monotonic() - t0 < 1.5
        with pytest.raises(Empty):
            _get(object(), timeout=0)


def test_installed_package_registers_the_engine():
    names = {e.name: e.value for e in entry_points(group="papermill.engine")}
    if "workbench" not in names:
        pytest.skip("workbench is on PYTHONPATH here, not pip-installed (no entry points)")
    from papermill.engines import papermill_engines

    assert papermill_engines.get_engine("workbench") is WorkbenchEngine
