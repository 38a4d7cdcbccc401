"""Tasks a `Cluster` runs on every rank (module-level so that spawned workers can unpickle them)."""

from __future__ import annotations

import dataclasses
import os

import torch


def decode_task(ctx, job, mode: str, params: dict):
    """Decode on every rank of the decode group; rank 0 returns the Result, the others their shard (if any)."""
    from ..compare import run_local

    job = dataclasses.replace(job, device=str(ctx.device))
    result = run_local(job, mode, params, group=ctx.groups.decode, device=ctx.device)
    if ctx.rank == 0:
        return result
    return result.output if result.params.get("output") == "sharded" else None


def rank_outputs_task(ctx, job, mode: str, params: dict):
    """Every rank's output (None where a strategy leaves a rank without one)."""
    from ..compare import run_local

    job = dataclasses.replace(job, device=str(ctx.device))
    return run_local(job, mode, params, group=ctx.groups.decode, device=ctx.device, gather_stats=False).output


def pid_task(ctx):
    """(rank, pid, device): which process holds which rank."""
    return ctx.rank, os.getpid(), str(ctx.device)


def fail_task(ctx, on_rank: int, message: str = "planned failure"):
    """Raise on one rank (the others return): for tests of error propagation."""
    if ctx.rank == on_rank:
        raise RuntimeError(f"{message} on rank {ctx.rank}")
    return ctx.rank


def hang_task(ctx, on_rank: int, seconds: float):
    """One rank sleeps (the others return): for tests of call timeouts."""
    import time

    if ctx.rank == on_rank:
        time.sleep(seconds)
    return ctx.rank


def all_reduce_task(ctx, value: float):
    """Sum of `value + rank` over the world: a smoke test of the process group."""
    import torch.distributed as dist

    t = torch.tensor([value + ctx.rank], dtype=torch.float64, device=ctx.device)
    if ctx.world_size > 1:
        dist.all_reduce(t)
    return float(t.item())
