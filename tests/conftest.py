"""Shared fixtures: worker pools live for the whole session (each worker pays ~5 s to import diffusers)."""

import os
import time

import pytest
from helpers import DEVICE, ranks_available, start_triton_script, stop_triton_scripts

from workbench.runner import Cluster


@pytest.fixture(scope="session")
def clusters():
    """clusters(world) -> a started Cluster of that size on the test device, shared by every test that asks;
    the test is skipped where the machine has fewer GPUs than ranks."""
    pools = {}

    def get(world: int) -> Cluster:
        if not ranks_available(world):
            pytest.skip(f"{world} ranks need {world} GPUs")
        if world not in pools:
            pools[world] = Cluster(world_size=world, device=DEVICE, threads_per_rank=1)
        return pools[world].start()

    yield get
    for pool in pools.values():
        pool.close()


@pytest.fixture(scope="session", autouse=True)
def triton_children(request, tmp_path_factory):
    """The Triton children of the selected kernel tests (helpers.run_triton_script: a fixture named
    *triton_outputs runs its file as a script) start with the session and run beside the first tests."""
    scripts = {str(item.path) for item in request.session.items
               if any(name.endswith("triton_outputs") for name in getattr(item, "fixturenames", ()))}
    for script in sorted(scripts):
        start_triton_script(script, tmp_path_factory.mktemp("triton"))
    yield
    stop_triton_scripts()


def pytest_runtest_logreport(report):
    """WORKBENCH_TEST_TRACE=FILE appends each test's outcome as it finishes, with its duration and, for a
    failure, the traceback: a run cut by a time limit (the GPU device calls) still says why a test failed.
    Written by the xdist controller alone (it sees every worker's reports)."""
    path = os.environ.get("WORKBENCH_TEST_TRACE")
    if path and not os.environ.get("PYTEST_XDIST_WORKER") and (report.when == "call" or report.outcome != "passed"):
        with open(path, "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {report.outcome:7} {report.duration:7.1f}s {report.nodeid} ({report.when})\n")
            if report.failed:
                f.write(report.longreprtext + "\n\n")


def pytest_runtest_logstart(nodeid, location):
    if (path := os.environ.get("WORKBENCH_TEST_TRACE")) and not os.environ.get("PYTEST_XDIST_WORKER"):
        with open(path, "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} start   {nodeid}\n")
