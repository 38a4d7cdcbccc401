"""`tiled`: overlapping tiles in one process, blended with normalised linear ramps."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from tqdm.auto import tqdm

from ...ops.vae import optimized
from .blend import blend_into
from .plan import frame_windows, plan_tiles
from .stem import check_global_up_blocks, resolve_mid_block, run_stem, stem_passed_through
from .tile_stats import NORM_STATS, group_norms, normalised_by, sampled_stats, subsample_step


def decode_tiled(ctx, z: torch.Tensor, *, tile_px: int = 256, stride_px: int = 192, tile_frames: int | None = None,
                 tile_batch: int = 1, norm_stats: str = "sampled", mid_block: str = "auto", global_up_blocks: int = 0,
                 levers: tuple = ()):
    """Overlapping spatial tiles blended with linear ramps; videos optionally in windows of frames.

    `tile_frames` (latent frames per window; None = all) bounds how much of each tile's video is in
    flight: every tile keeps its own causal frame cache across windows, so any window size gives the
    same output as one pass, while memory holds only one window of decoded frames per tile.
    `tile_batch`: tiles decoded per decoder call (memory grows with it; the output is the same up to
    summation order). `norm_stats`: "sampled" normalises a GroupNorm decoder's tiles with whole-image
    statistics from one decode of the latent subsampled to a tile's size (tile_stats.py), "tile" with
    each tile's own; decoders without GroupNorm are the same either way and make no extra decode.
    `mid_block`: "global" runs the decoder's conv_in and mid-block (its attention over the whole frame) once
    over the whole latent and only the up blocks per tile (stem.py); "tile" runs the whole decoder per tile,
    as diffusers does; "auto" (default) is "global" where the decoder allows it (not compiled), else "tile".
    `global_up_blocks` (image decoders, with the global stem): the first k up blocks join the stem, run once over
    the whole image with exact statistics; the tiles run the rest (more memory: the trunk's output; stem.py).
    `levers`: speed levers for the tiles' decodes (workbench.ops.vae.LEVERS).
    """
    with optimized(ctx.fd.vae, levers):
        check_tiling(ctx.fd, tile_batch, norm_stats, mid_block, global_up_blocks)  # inside: compile changes mid_block
        return _decode_tiles(ctx, z, tile_px, stride_px, tile_frames, tile_batch, norm_stats, mid_block,
                             global_up_blocks)


def check_tiling(fd, tile_batch: int, norm_stats: str, mid_block: str, global_up_blocks: int = 0) -> None:
    """The tiled strategies' own parameters, before any work: ValueError naming the parameter."""
    if not isinstance(tile_batch, int) or isinstance(tile_batch, bool) or tile_batch < 1:
        raise ValueError(f"tile_batch must be a positive integer, got {tile_batch!r}")
    if norm_stats not in NORM_STATS:
        raise ValueError(f"norm_stats must be one of {', '.join(NORM_STATS)}, got {norm_stats!r}")
    resolve_mid_block(fd, mid_block)
    check_global_up_blocks(fd, mid_block, global_up_blocks)


@contextmanager
def tile_source(ctx, z5: torch.Tensor, plan, norm_stats: str, mid_block: str, global_up_blocks: int = 0):
    """Yield (what the tiles decode from: the prepared latent, or the global stem's output; its resolution over
    the latent's, 2**global_up_blocks or 1; the record), with the decoder set up for it for the duration of the
    block: its stem passed through after a global stem, and its GroupNorms normalised with sampled statistics.
    tiled and parallel_tiled (every rank the same)."""
    fd = ctx.fd
    x = fd.prepare(z5)
    stem, stem_info = run_stem(ctx, x, mid_block, global_up_blocks)
    scale = 1 if stem is None else stem.shape[-1] // x.shape[-1]
    with stem_passed_through(fd.vae.decoder, stem is not None, global_up_blocks):
        x = x if stem is None else stem
        stats, info = tile_norm_stats(ctx, x, plan, norm_stats, scale)  # the decoder after the stem on x, subsampled
        with normalised_by(fd.vae.decoder, stats):
            yield x, scale, {**stem_info, **info}


def _decode_tiles(ctx, z: torch.Tensor, tile_px: int, stride_px: int, tile_frames: int | None, tile_batch: int,
                  norm_stats: str, mid_block: str, global_up_blocks: int):
    fd = ctx.fd
    z5 = fd.as_5d(z)
    plan = plan_tiles(z5.shape[2:], scale=fd.spatial_ratio, tile_px=tile_px, stride_px=stride_px)
    windows = frame_windows(z5.shape[2], tile_frames, fd.temporal_ratio)
    out = torch.zeros(fd.output_shape(z5.shape), dtype=torch.float32, device=z.device)
    caches = {}
    bar = tqdm(total=len(windows) * len(plan.items), desc="tiles", disable=not ctx.progress, leave=False)
    with tile_source(ctx, z5, plan, norm_stats, mid_block, global_up_blocks) as (x, scale, info), bar:
        for w, window in enumerate(windows):
            last = w == len(windows) - 1
            for tile, pixels in fd.decode_window(x, plan.items, window, caches, last, ctx.measure, tile_batch, scale):
                with ctx.measure.phase("blend"):
                    blend_into(out, tile, pixels, window.pixel)
                del pixels
                bar.update()
    out = fd.finish(out.to(fd.dtype))
    return out, plan, {"tiles": len(plan.items), "windows": len(windows), **used_stride(plan, stride_px), **info}


def tile_norm_stats(ctx, x: torch.Tensor, plan, norm_stats: str, scale: int = 1):
    """(GroupNorm statistics for the tiles or None, what was done for the record): with "sampled", from one
    decode of x (B, C, T, H, W: the prepared latent, or the global stem's output at `scale` times its resolution,
    which the decoder then takes with its stem passed through) subsampled to the requested tile size, for image
    decoders with GroupNorm whose latent is larger than one tile. Every rank computes the same."""
    fd = ctx.fd
    tile = plan.tile_latent * scale  # the requested tile at x's resolution: its memory
    step = subsample_step(x.shape[-2:], (tile, tile))
    if norm_stats != "sampled" or fd.causal or step == 1 or not group_norms(fd.vae.decoder):
        return None, {"stats_subsample": None}
    with ctx.measure.phase("statistics"):
        stats = sampled_stats(fd.vae.decoder, x[:, :, 0], step)  # (B, C, H, W): an image decoder's layout
    return stats, {"stats_subsample": step}


def used_stride(plan, stride_px: int) -> dict:
    """The strides the plan used (tiles are spread evenly, so up to `stride_px`), for the record."""
    starts = sorted({t.rows.start for t in plan.items}) or [0]
    cols = sorted({t.cols.start for t in plan.items}) or [0]
    steps = [b - a for a, b in zip(starts, starts[1:])] + [b - a for a, b in zip(cols, cols[1:])]
    return {"stride_px_requested": stride_px, "stride_px": max(steps, default=0) * plan.scale}
