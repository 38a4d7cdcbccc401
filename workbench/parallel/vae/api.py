"""`decode`: run one strategy on a VAE and measure it (imported lazily by `workbench.parallel.vae`).

VAE decode strategies over one pure planner, applied from outside to an unmodified diffusers VAE.

    from workbench.parallel.vae import decode
    result = decode(vae, latents, mode="tiled", tile_px=256, stride_px=192)
    result.output, result.plan, result.ranks[0].timings_s

Modes: full, tiled (one process); parallel_tiled, patch, shard (every rank of `group` calls decode with
the same latents); auto picks one. Each strategy is one file holding `decode_<mode>(ctx, z, **params)`;
the cost model (`cost.py`) runs that same function on meta tensors to estimate its peak memory.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass

import torch

from ...measure import Measure, RankStats, Result
from ..comm import Comm
from .frames import FrameDecoder
from .plan import PlanError

__all__ = ["decode", "STRATEGIES", "SERIAL", "PARALLEL", "DecodeContext", "FrameDecoder", "PlanError",
           "strategy", "strategy_params", "check_params"]


@dataclass
class DecodeContext:
    """What a strategy needs besides the latent: the decoder, the measurement, the collectives."""

    fd: FrameDecoder
    measure: Measure
    comm: Comm  # this rank and its group (a Comm.trace when the cost model runs the strategy)
    progress: bool = False


from . import (  # noqa: E402
    MERGES,
    MID_BLOCKS,
    MODE_LEVERS,
    NORM_STATS,
    PARALLEL,
    PATCH_OUTPUTS,
    SERIAL,
    SHARD_ATTENTIONS,
    SHARD_OUTPUTS,
    STRATEGIES,
)

# The parameters whose values are a fixed set, per mode.
CHOICES = {
    "tiled": {"norm_stats": NORM_STATS, "mid_block": MID_BLOCKS},
    "parallel_tiled": {"merge": MERGES, "norm_stats": NORM_STATS, "mid_block": MID_BLOCKS},
    "patch": {"output": PATCH_OUTPUTS},
    "shard": {"output": SHARD_OUTPUTS, "attention": SHARD_ATTENTIONS},
}


def strategy(mode: str):
    """The function that implements `mode`: `decode_<mode>` in the module of that name."""
    if mode not in STRATEGIES:
        raise ValueError(f"unknown mode {mode!r}; accepted: {', '.join(STRATEGIES)}")
    return getattr(importlib.import_module(f".{mode}", __package__), f"decode_{mode}")


def strategy_params(mode: str) -> dict:
    """The keyword parameters a strategy accepts, with their defaults."""
    return {name: p.default for name, p in inspect.signature(strategy(mode)).parameters.items()
            if p.kind is p.KEYWORD_ONLY}


def check_params(mode: str, params: dict) -> dict:
    """`params` if `mode` takes every one of them, each with an accepted value where the values are a fixed
    set (CHOICES); else a ValueError naming the parameter and what is accepted."""
    accepted = strategy_params(mode)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"mode {mode!r} does not take {', '.join(unknown)}; it accepts: "
                         f"{', '.join(accepted) or 'no parameters'}")
    for name, values in CHOICES.get(mode, {}).items():
        if name in params and params[name] not in values:
            raise ValueError(f"{mode}: {name}={params[name]!r} is not accepted; accepted: {', '.join(values)}")
    bad = [lever for lever in params.get("levers") or () if lever not in MODE_LEVERS[mode]]
    if bad:
        raise ValueError(f"{mode}: lever(s) {', '.join(map(repr, bad))} not accepted; accepted: {', '.join(MODE_LEVERS[mode])}")
    return params


def decode(vae, latents: torch.Tensor, mode: str = "full", *, group=None, progress: bool = False,
           profile: bool = True, model: str | None = None, gather_stats: bool = True, **params) -> Result:
    """Decode `latents` with strategy `mode` and measure it.

    Parallel modes are collective: every rank of `group` (default: the world, or one process when
    torch.distributed is not initialised) calls this with the same latents. Serial modes run in this
    process alone. `profile` synchronises the device around each phase for per-phase times; with
    False only the total is timed. `gather_stats` collects every rank's RankStats on every rank.
    """
    run = strategy(mode)
    check_params(mode, params)
    fd = FrameDecoder(vae)
    if latents.dim() != fd.native_ndim:
        layout = "(B, C, T, H, W)" if fd.native_ndim == 5 else "(B, C, H, W)"
        raise ValueError(f"{type(vae).__name__} takes latents {layout}, got shape {tuple(latents.shape)}")
    latents = latents.to(device=fd.device, dtype=fd.dtype)
    comm = Comm.alone() if mode in SERIAL else Comm(group)
    with torch.inference_mode(), Measure(fd.device, sync=profile) as measure:
        output, plan, info = run(DecodeContext(fd, measure, comm, progress), latents, **params)
    stats = [measure.stats(comm.rank)]
    if comm.world_size > 1 and gather_stats:
        stats = _gather_stats(stats[0], group, comm.world_size)
    info = dict(info)
    choice, reason = info.pop("choice", None), info.pop("reason", None)
    return Result(strategy=mode, output=output, plan=plan, ranks=stats, dtype=str(fd.dtype).replace("torch.", ""),
                  device=str(fd.device), world_size=comm.world_size, backend=_backend(group) if comm.live else None,
                  model=model, params={**strategy_params(mode), **params, **info}, choice=choice, reason=reason)


def _backend(group) -> str | None:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return None
    return str(dist.get_backend(group))


def _gather_stats(mine: RankStats, group, world_size: int) -> list[RankStats]:
    import torch.distributed as dist

    gathered = [None] * world_size
    dist.all_gather_object(gathered, mine, group=group)
    return sorted(gathered, key=lambda s: s.rank)
