"""`tiled`: overlapping tiles in one process, blended with normalised linear ramps."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ...ops.vae import optimized
from .blend import blend_into
from .plan import frame_windows, plan_tiles


def decode_tiled(ctx, z: torch.Tensor, *, tile_px: int = 256, stride_px: int = 192, tile_frames: int | None = None,
                 levers: tuple = ()):
    """Overlapping spatial tiles blended with linear ramps; videos optionally in windows of frames.

    `tile_frames` (latent frames per window; None = all) bounds how much of each tile's video is in
    flight: every tile keeps its own causal frame cache across windows, so any window size gives the
    same output as one pass, while memory holds only one window of decoded frames per tile.
    `levers`: speed levers for the tiles' decodes (workbench.ops.vae.LEVERS).
    """
    with optimized(ctx.fd.vae, levers):
        return _decode_tiles(ctx, z, tile_px, stride_px, tile_frames)


def _decode_tiles(ctx, z: torch.Tensor, tile_px: int, stride_px: int, tile_frames: int | None):
    fd = ctx.fd
    z5 = fd.as_5d(z)
    plan = plan_tiles(z5.shape[2:], scale=fd.spatial_ratio, tile_px=tile_px, stride_px=stride_px)
    windows = frame_windows(z5.shape[2], tile_frames, fd.temporal_ratio)
    out = torch.zeros(fd.output_shape(z5.shape), dtype=torch.float32, device=z.device)
    x = fd.prepare(z5)
    caches = {}
    with tqdm(total=len(windows) * len(plan.items), desc="tiles", disable=not ctx.progress, leave=False) as bar:
        for w, window in enumerate(windows):
            last = w == len(windows) - 1
            for tile, pixels in fd.decode_window(x, plan.items, window, caches, last, ctx.measure):
                with ctx.measure.phase("blend"):
                    blend_into(out, tile, pixels, window.pixel)
                del pixels
                bar.update()
    out = fd.finish(out.to(fd.dtype))
    return out, plan, {"tiles": len(plan.items), "windows": len(windows), **used_stride(plan, stride_px)}


def used_stride(plan, stride_px: int) -> dict:
    """The strides the plan used (tiles are spread evenly, so up to `stride_px`), for the record."""
    starts = sorted({t.rows.start for t in plan.items}) or [0]
    cols = sorted({t.cols.start for t in plan.items}) or [0]
    steps = [b - a for a, b in zip(starts, starts[1:])] + [b - a for a, b in zip(cols, cols[1:])]
    return {"stride_px_requested": stride_px, "stride_px": max(steps, default=0) * plan.scale}
