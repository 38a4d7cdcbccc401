"""`auto`: choose among full, tiled, parallel_tiled and shard from the latent, the ranks and a memory budget.

Each candidate's peak per rank is estimated by the cost model, which runs that strategy's own code on
meta tensors (`cost.estimate_bytes`). Preference, fastest first among those that fit:

- several ranks: shard (exact, and every rank does 1/N of the work), then full (every rank decodes
  all of it: no faster, but exact), then parallel_tiled; shard is skipped when the latent is too
  small to split;
- one rank: full, then tiled with the largest tile that fits.

The Result says what was chosen and why.
"""

from __future__ import annotations

import psutil
import torch

from .cost import estimate_bytes
from .plan import PlanError, plan_shards

TILE_CANDIDATES_PX = (1024, 768, 512, 384, 256, 192, 128)
MIN_SHARD_LATENT = 4  # smaller blocks: halo traffic and per-conv latency outweigh the split


def default_budget_bytes(device: torch.device) -> int:
    """What this rank may use: free accelerator memory plus what this process already holds, or free RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device))
    if device.type == "npu":
        free, _ = torch.npu.mem_get_info(device)
        return int(free + torch.npu.memory_reserved(device))
    return int(psutil.virtual_memory().available)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _stride_for(tile: int, tile_px: int, stride_px: int, scale: int) -> int:
    """The stride that keeps the requested overlap fraction at another tile size."""
    stride = round(tile * stride_px / tile_px / scale) * scale
    return min(tile, max(stride, -(-tile // 2 // scale) * scale))


def choose(vae, z_shape, world_size: int, budget_bytes: int, tile_px: int = 256, stride_px: int = 192):
    """(mode, params, reason): the fastest strategy whose estimated peak fits the budget. `z_shape` is the
    latent's shape in the model's native layout."""
    from .frames import FrameDecoder

    fd = FrameDecoder(vae)
    _, _, t, h, w = fd.as_5d(torch.empty(z_shape, device="meta")).shape
    scale = fd.spatial_ratio
    notes = []
    budget = f"budget {_gib(budget_bytes)} per rank"

    def need(mode, **params):
        try:
            n = estimate_bytes(vae, z_shape, mode, world_size, **params)
        except PlanError as e:
            notes.append(f"{mode}: {e}")
            return None
        notes.append(f"{mode}{'' if not params else ' ' + str(params.get('tile_px')) + ' px'} ~{_gib(n)}")
        return n if n <= budget_bytes else None

    tiles = [c for c in sorted({tile_px, *TILE_CANDIDATES_PX}, reverse=True) if c <= max(h, w) * scale] or [tile_px]
    tiled = "parallel_tiled" if world_size > 1 else "tiled"
    if world_size > 1:
        try:
            smallest = min(min(s.rows.size, s.cols.size) for s in plan_shards((t, h, w), scale=scale, world_size=world_size).items)
        except PlanError:
            smallest = 0
        if smallest >= MIN_SHARD_LATENT and (n := need("shard")) is not None:
            return "shard", {}, f"{world_size} ranks: shard splits the whole decode exactly (~{_gib(n)} per rank, {budget})"
        if smallest < MIN_SHARD_LATENT:
            notes.append(f"shard: blocks of {smallest} latent rows/cols are below {MIN_SHARD_LATENT}")
    if (n := need("full")) is not None:
        why = "one rank" if world_size == 1 else "shard does not fit or the latent is too small to split"
        return "full", {}, f"{why}: full fits (~{_gib(n)}, {budget})"
    for tile in tiles:
        stride = _stride_for(tile, tile_px, stride_px, scale)
        if (n := need(tiled, tile_px=tile, stride_px=stride)) is not None:
            return tiled, {"tile_px": tile, "stride_px": stride}, (
                f"{'; '.join(notes[:-1])} do not fit the {budget}: {tiled} with {tile} px tiles needs ~{_gib(n)}")
    raise MemoryError(f"no strategy fits the {budget}: {'; '.join(notes)}")


def decode_auto(ctx, z: torch.Tensor, *, memory_budget_gib: float | None = None, tile_px: int = 256,
                stride_px: int = 192):
    """Pick a strategy (see the module docstring) and run it."""
    from . import strategy

    fd = ctx.fd
    budget = int(memory_budget_gib * 2**30) if memory_budget_gib else default_budget_bytes(fd.device)
    if ctx.comm.world_size > 1:  # every rank must make the same choice: decide on the smallest budget
        budget = int(ctx.comm.all_reduce(torch.tensor([budget], dtype=torch.float64, device=fd.device), "min").item())
    mode, params, reason = choose(fd.vae, tuple(z.shape), ctx.comm.world_size, budget, tile_px, stride_px)
    out, plan, info = strategy(mode)(ctx, z, **params)
    return out, plan, {**info, **params, "choice": mode, "reason": reason}
