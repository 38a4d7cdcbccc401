"""Test-only tasks a `Cluster` runs on every rank (module-level, so that spawned workers unpickle them by
name: the pool's workers inherit the test process's sys.path, which holds this folder)."""

from __future__ import annotations

import os

import torch


def rank_outputs_task(ctx, job, mode: str, params: dict):
    """Every rank's output (None where a strategy leaves a rank without one)."""
    from workbench.runner import load_model, run_decode

    job = job.on(ctx.device)
    result = run_decode(ctx, load_model(job, ctx.device), job.latents(ctx.device), mode, params)
    return None if result is None else result.output


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
