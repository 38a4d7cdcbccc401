"""`parallel_tiled`: the serial planner's tiles spread over the ranks; output equals serial `tiled`.

Tiles are assigned by work (largest first onto the least loaded rank), not in contiguous index
blocks. Each rank decodes its tiles window by window (each tile keeping its causal frame cache, as
in the serial decode); after every window the decoded tiles move as one flat tensor per rank, whose
size every rank computes from the plan, and are blended in plan order with the serial arithmetic.

Merge modes: allgather (every rank blends and holds the image), rank0 (gather to rank 0, blend
once, broadcast), rank0-only (gather to rank 0, blend; the others get None).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from . import MERGES  # noqa: E402
from .blend import blend_into
from .plan import frame_windows, plan_tiles
from .tiled import check_tiling, tile_source, used_stride


def decode_parallel_tiled(ctx, z: torch.Tensor, *, tile_px: int = 256, stride_px: int = 192,
                          tile_frames: int | None = None, merge: str = "allgather", tile_batch: int = 1,
                          norm_stats: str = "sampled", mid_block: str = "auto", global_up_blocks: int = 0):
    """`tiled`'s tiles over the ranks (see the module's docstring); `tile_batch`, `norm_stats`, `mid_block` and
    `global_up_blocks` as for `tiled`: every rank batches its own tiles and computes the same global stem and
    sampled statistics."""
    if merge not in MERGES:
        raise ValueError(f"merge must be one of {', '.join(MERGES)}, got {merge!r}")
    fd, comm = ctx.fd, ctx.comm
    check_tiling(fd, tile_batch, norm_stats, mid_block, global_up_blocks)
    z5 = fd.as_5d(z)
    plan = plan_tiles(z5.shape[2:], scale=fd.spatial_ratio, tile_px=tile_px, stride_px=stride_px).assign(comm.world_size)
    windows = frame_windows(z5.shape[2], tile_frames, fd.temporal_ratio)
    out_shape = fd.output_shape(z5.shape)
    blends_here = merge == "allgather" or comm.rank == 0
    out = torch.zeros(out_shape, dtype=torch.float32, device=z.device) if blends_here else None
    mine = plan.owned_by(comm.rank)
    caches = {}
    bar = tqdm(total=len(windows) * len(mine), desc=f"rank {comm.rank} tiles", disable=not ctx.progress, leave=False)
    with tile_source(ctx, z5, plan, norm_stats, mid_block, global_up_blocks) as (x, scale, info), bar:
        for w, window in enumerate(windows):
            last = w == len(windows) - 1
            decoded = []
            for _, pixels in fd.decode_window(x, mine, window, caches, last, ctx.measure, tile_batch, scale):
                decoded.append(pixels)
                bar.update()
            _merge_window(ctx, plan, window, decoded, out, out_shape, merge, x)
    result = fd.finish(out.to(fd.dtype)) if out is not None else None
    if merge == "rank0":
        with ctx.measure.phase("broadcast"):
            if result is None:
                native = out_shape if fd.native_ndim == 5 else out_shape[:2] + out_shape[3:]
                result = torch.empty(native, dtype=fd.dtype, device=z.device)
            result = comm.broadcast(result, src=0)
    work = plan.work_by_rank(comm.world_size)
    return result, plan, {"tiles": len(plan.items), "windows": len(windows), "merge": merge,
                          **used_stride(plan, stride_px), **info,
                          "imbalance": max(work) / (sum(work) / len(work)) if sum(work) else 1.0}


def _merge_window(ctx, plan, window, decoded: list, out, out_shape, merge: str, x) -> None:
    """Move one window's decoded tiles between the ranks (as one flat tensor per rank, whose size every rank
    computes from the plan) and blend them into `out` in plan order, where this rank blends."""
    comm = ctx.comm
    b, c = out_shape[:2]
    frames = window.pixel.size
    numel = {t.index: b * c * frames * t.rows_px.size * t.cols_px.size for t in plan.items}
    per_rank = [sum(numel[t.index] for t in plan.owned_by(r)) for r in range(comm.world_size)]
    flat = torch.cat([d.reshape(-1) for d in decoded]) if decoded else x.new_empty(0)
    decoded.clear()
    with ctx.measure.phase("gather"):
        if merge == "allgather":
            parts = comm.all_gather_padded(flat, per_rank)
        else:
            parts = comm.gather_padded(flat, per_rank, dst=0)
    del flat
    if parts is not None:
        with ctx.measure.phase("blend"):
            tiles = _unpack(plan, parts, numel, (b, c, frames))
            for tile in plan.items:  # plan order: the serial decode's arithmetic
                blend_into(out, tile, tiles[tile.index], window.pixel)


def _unpack(plan, parts, numel, lead) -> dict:
    """Per-tile pixel tensors from each rank's flat buffer (its tiles in plan order)."""
    tiles = {}
    for r, part in enumerate(parts):
        offset = 0
        for t in plan.owned_by(r):
            n = numel[t.index]
            tiles[t.index] = part[offset: offset + n].view(*lead, t.rows_px.size, t.cols_px.size)
            offset += n
    return tiles


