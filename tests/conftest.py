"""Shared fixtures: worker pools live for the whole session (each worker pays ~5 s to import diffusers)."""

import pytest

from workbench.dist import Cluster


@pytest.fixture(scope="session")
def clusters():
    """clusters(world) -> a started CPU Cluster of that size, shared by every test that asks."""
    pools = {}

    def get(world: int) -> Cluster:
        if world not in pools:
            pools[world] = Cluster(world_size=world, threads_per_rank=1)
        return pools[world].start()

    yield get
    for pool in pools.values():
        pool.close()
