"""Shared fixtures: worker pools live for the whole session (each worker pays ~5 s to import diffusers)."""

import pytest
from helpers import DEVICE, ranks_available

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
