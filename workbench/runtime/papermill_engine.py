"""Notebooks headless under papermill without a lost reply: `papermill IN.ipynb OUT.ipynb --engine workbench`.

papermill (nbclient) waits for each cell's reply with one long poll of a zmq.asyncio socket. On the H100 and
H200 hosts a reply that had arrived woke nobody: the kernel had stamped its reply and gone idle within 21-43 s,
and the cell ended only at its 170 s execution timeout (data/ci/notebook02_sweep1_h100.log); with no timeout,
papermill's default, it would wait for ever (the symptom of jupyter/nbclient#312). A fresh poll sees a
message that is waiting, so this engine polls in slices of at most POLL_SLICE_S seconds.

Generic: nothing of the application is imported. The entry point `papermill.engine: workbench` registers it.
"""

from __future__ import annotations

import contextlib
import time
from queue import Empty

from papermill.engines import NBClientEngine

POLL_SLICE_S = 1.0


@contextlib.contextmanager
def sliced_polls(slice_s: float = POLL_SLICE_S):
    """Within the block, every asynchronous Jupyter channel waits in polls of at most `slice_s` seconds (the
    caller's timeout still holds: Empty once it has passed; None still waits for ever)."""
    from jupyter_client.channels import AsyncZMQSocketChannel

    original = AsyncZMQSocketChannel.get_msg

    async def get_msg(self, timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = slice_s if deadline is None else min(slice_s, max(0.0, deadline - time.monotonic()))
            try:
                return await original(self, timeout=left)
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    AsyncZMQSocketChannel.get_msg = get_msg
    try:
        yield
    finally:
        AsyncZMQSocketChannel.get_msg = original


class WorkbenchEngine(NBClientEngine):
    """papermill's nbclient engine, its channels polled in slices (`sliced_polls`)."""

    @classmethod
    def execute_managed_notebook(cls, *args, **kwargs):
        with sliced_polls():
            return super().execute_managed_notebook(*args, **kwargs)


def register(name: str = "workbench") -> str:
    """Register the engine with papermill under `name` (what the entry point does where the package is
    pip-installed; needed where it is only on PYTHONPATH)."""
    from papermill.engines import papermill_engines

    papermill_engines.register(name, WorkbenchEngine)
    return name


if __name__ == "__main__":  # papermill's command line, the engine registered where the package is not installed
    from papermill.cli import papermill

    register()
    papermill()
