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


# ------------------------------------------------------------------------------------- failure injection


def _fail(kind: str, rank: int):
    """Fail as asked: an exception, an out-of-memory error, or death by SIGKILL (no cleanup, no reply)."""
    import signal

    if kind == "oom":
        raise torch.OutOfMemoryError(f"CUDA out of memory (injected on rank {rank})")
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"injected failure on rank {rank}")


def failing_decode_task(ctx, job, mode: str, fail_rank: int, kind: str = "error"):
    """A parallel decode in which rank `fail_rank` fails halfway through the decoder, while its peers wait
    for it in a halo exchange."""
    from workbench.runner import load_model, run_decode

    job = job.on(ctx.device)
    vae = load_model(job, ctx.device)
    convs = [m for m in vae.decoder.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]

    def hook(module, args):
        if ctx.rank == fail_rank:
            _fail(kind, ctx.rank)

    handle = convs[len(convs) // 2].register_forward_pre_hook(hook)
    try:
        result = run_decode(ctx, vae, job.latents(ctx.device), mode, {})
    finally:
        handle.remove()
    return None if result is None else result.output


def failing_generate_task(ctx, request, options, fail_rank: int, fail_at_call: int = 2, kind: str = "error"):
    """A generation whose transformer fails on rank `fail_rank` at its `fail_at_call`-th forward (inside
    the denoise loop, where its peers wait in a sequence-parallel all-to-all)."""
    from workbench.pipeline.run import load_pipeline, run_generation

    pipeline = load_pipeline(request, options, ctx.device)
    calls = [0]

    def hook(module, args, kwargs):
        calls[0] += 1
        if ctx.rank == fail_rank and calls[0] >= fail_at_call:
            _fail(kind, ctx.rank)

    handle = pipeline.transformers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        return run_generation(ctx, request, options).cpu()
    finally:
        handle.remove()


def failing_ar_task(ctx, request, options):
    """GLM-Image whose autoregressive stage (MAIN_RANK_ONLY_AND_SEND_TO_OTHERS) fails on rank 0."""
    from workbench.pipeline.run import load_pipeline, run_generation

    pipeline = load_pipeline(request, options, ctx.device)
    generate = pipeline.ar.model.generate

    def broken(*args, **kwargs):
        _fail("error", ctx.rank)

    pipeline.ar.model.generate = broken
    try:
        return run_generation(ctx, request, options).cpu()
    finally:
        pipeline.ar.model.generate = generate


def killed_in_collective_task(ctx, fail_rank: int):
    """All-reduces in a loop; rank `fail_rank` is killed by SIGKILL between two of them."""
    import torch.distributed as dist

    t = torch.zeros(1, device=ctx.device)
    for i in range(200):
        if i == 20 and ctx.rank == fail_rank:
            _fail("kill", ctx.rank)
        dist.all_reduce(t)
    return float(t.item())
