"""VAE decode strategies over one pure planner.

    from workbench.decode import decode
    result = decode(vae, latents, mode="tiled", tile_px=256, stride_px=192)
    result.output, result.plan, result.ranks[0].timings_s

Modes: full, tiled (one process); parallel_tiled, patch, shard (every rank of `group` calls decode
with the same latents); auto picks one. Every strategy is applied from outside to an unmodified
diffusers VAE.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass

import torch

from ..measure import Measure, RankStats, Result
from .frames import FrameDecoder
from .plan import PlanError

__all__ = ["decode", "STRATEGIES", "SERIAL", "PARALLEL", "DecodeContext", "FrameDecoder", "PlanError", "strategy_params"]


@dataclass
class DecodeContext:
    """What a strategy needs besides the latent: the decoder, the measurement, the ranks."""

    fd: FrameDecoder
    measure: Measure
    group: object | None  # a torch.distributed ProcessGroup, or None for one process
    rank: int
    world_size: int
    progress: bool
    memory_budget_bytes: int | None = None


_IMPLEMENTATIONS = {
    "full": ("serial", "decode_full"),
    "tiled": ("serial", "decode_tiled"),
    "parallel_tiled": ("parallel_tiled", "decode_parallel_tiled"),
    "patch": ("patch", "decode_patch"),
    "shard": ("shard", "decode_shard"),
    "auto": ("auto", "decode_auto"),
}
STRATEGIES = tuple(_IMPLEMENTATIONS)
SERIAL = ("full", "tiled")
PARALLEL = ("parallel_tiled", "patch", "shard")


def _strategy(mode: str):
    if mode not in _IMPLEMENTATIONS:
        raise ValueError(f"unknown mode {mode!r}; accepted: {', '.join(STRATEGIES)}")
    module, name = _IMPLEMENTATIONS[mode]
    return getattr(importlib.import_module(f".{module}", __name__), name)


def strategy_params(mode: str) -> dict:
    """The keyword parameters a strategy accepts, with their defaults."""
    fn = _strategy(mode)
    return {name: p.default for name, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY}


def decode(vae, latents: torch.Tensor, mode: str = "full", *, group=None, progress: bool = False,
           profile: bool = True, model: str | None = None, memory_budget_bytes: int | None = None,
           gather_stats: bool = True, **params) -> Result:
    """Decode `latents` with strategy `mode` and measure it.

    Parallel modes are collective: every rank of `group` (default: the world, or one process when
    torch.distributed is not initialised) calls this with the same latents. `profile` synchronises
    the device around each phase for per-phase times; with False only the total is timed.
    `gather_stats` collects every rank's RankStats on rank 0 (pickled, after the decode).
    """
    strategy = _strategy(mode)
    accepted = strategy_params(mode)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"mode {mode!r} does not take {', '.join(unknown)}; it accepts: {', '.join(accepted) or 'no parameters'}")
    fd = FrameDecoder(vae)
    if latents.dim() != fd.native_ndim:
        layout = "(B, C, T, H, W)" if fd.native_ndim == 5 else "(B, C, H, W)"
        raise ValueError(f"{type(vae).__name__} takes latents {layout}, got shape {tuple(latents.shape)}")
    latents = latents.to(device=fd.device, dtype=fd.dtype)
    rank, world_size = _rank_world(group) if mode not in SERIAL else (0, 1)  # serial: this process alone
    with torch.inference_mode(), Measure(fd.device, sync=profile) as measure:
        ctx = DecodeContext(fd, measure, group, rank, world_size, progress, memory_budget_bytes)
        output, plan, info = strategy(ctx, latents, **params)
    stats = [measure.stats(rank)]
    if world_size > 1 and gather_stats:
        stats = _gather_stats(stats[0], group, world_size)
    info = dict(info)
    choice, reason = info.pop("choice", None), info.pop("reason", None)
    return Result(strategy=mode, output=output, plan=plan, ranks=stats, dtype=str(fd.dtype).replace("torch.", ""),
                  device=str(fd.device), world_size=world_size, backend=_backend(group), model=model,
                  params={**accepted, **params, **info}, choice=choice, reason=reason)


def _rank_world(group) -> tuple[int, int]:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        if group is not None:
            raise ValueError("a process group was passed but torch.distributed is not initialised")
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _backend(group) -> str | None:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return None
    return str(dist.get_backend(group))


def _gather_stats(mine: RankStats, group, world_size: int) -> list[RankStats] | list:
    import torch.distributed as dist

    gathered = [None] * world_size
    dist.all_gather_object(gathered, mine, group=group)
    return sorted(gathered, key=lambda s: s.rank)
