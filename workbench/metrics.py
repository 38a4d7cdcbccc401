"""Picture quality against a reference decode: errors, PSNR, error maps and the seam signature.

Outputs are in [-1, 1] (the VAE range), so PSNR uses a peak-to-peak range of 2:
PSNR = 10 log10(2^2 / MSE). The seam signature compares the error near the plan's boundaries (tile
overlaps, patch and shard edges) with the error away from them: a strategy with seams has a band
error many times its interior error; an exact one has both at rounding level.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .parallel.vae.plan import Patch, Shard, Tile

__all__ = ["Quality", "compare", "error_map", "psnr", "boundary_distance", "seam_profile"]

DATA_RANGE = 2.0  # VAE outputs live in [-1, 1]


@dataclass
class Quality:
    max_abs: float
    mean_abs: float
    psnr_db: float  # inf when identical
    seam_mean_abs: float | None = None  # mean error within band_px of a boundary
    interior_mean_abs: float | None = None  # mean error farther than band_px from every boundary
    band_px: int | None = None

    @property
    def seam_ratio(self) -> float | None:
        if self.seam_mean_abs is None or self.interior_mean_abs is None:
            return None
        if self.interior_mean_abs == 0:
            return math.inf if self.seam_mean_abs > 0 else 1.0
        return self.seam_mean_abs / self.interior_mean_abs

    def to_dict(self) -> dict:
        return {**asdict(self), "seam_ratio": self.seam_ratio}


def _as_5d(x: torch.Tensor) -> torch.Tensor:
    return x if x.dim() == 5 else x.unsqueeze(2)


def psnr(out: torch.Tensor, ref: torch.Tensor) -> float:
    mse = torch.mean((out.double() - ref.double()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(DATA_RANGE**2 / mse)


def error_map(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """(H, W) mean absolute error over batch, channels and frames, in float64 on the CPU."""
    if out.shape != ref.shape:
        raise ValueError(f"output shape {tuple(out.shape)} differs from reference shape {tuple(ref.shape)}")
    err = (_as_5d(out).double() - _as_5d(ref).double()).abs()
    return err.mean(dim=(0, 1, 2)).cpu()


def boundary_lines(plan) -> tuple[list[int], list[int]]:
    """Pixel rows and columns where the plan's items meet (tile overlaps: both edges of the overlap)."""
    height, width = plan.pixel_size
    rows, cols = set(), set()
    for item in plan.items:
        for edge in (item.rows_px.start, item.rows_px.stop):
            if 0 < edge < height:
                rows.add(edge)
        for edge in (item.cols_px.start, item.cols_px.stop):
            if 0 < edge < width:
                cols.add(edge)
    return sorted(rows), sorted(cols)


def boundary_distance(plan) -> torch.Tensor:
    """(H, W) distance in pixels from each pixel centre to the nearest boundary line (inf without any)."""
    height, width = plan.pixel_size
    rows, cols = boundary_lines(plan)

    def axis(n, lines):
        centres = torch.arange(n, dtype=torch.float64) + 0.5
        if not lines:
            return torch.full((n,), math.inf, dtype=torch.float64)
        return (centres[:, None] - torch.tensor(lines, dtype=torch.float64)[None, :]).abs().min(dim=1).values

    return torch.minimum(axis(height, rows)[:, None], axis(width, cols)[None, :])


def seam_profile(err: torch.Tensor, plan, max_px: int = 64) -> torch.Tensor:
    """Mean error by distance to the nearest boundary: entry d averages pixels at distance [d, d+1),
    for d < max_px (NaN where no pixel lies at that distance)."""
    dist = boundary_distance(plan).flatten()
    near = dist < max_px
    bins = dist[near].floor().long()
    sums = torch.zeros(max_px, dtype=torch.float64).index_add_(0, bins, err.flatten()[near])
    counts = torch.zeros(max_px, dtype=torch.float64).index_add_(0, bins, torch.ones_like(sums[bins]))
    return sums / counts.where(counts > 0, torch.tensor(float("nan"), dtype=torch.float64))


def default_band_px(plan) -> int:
    """Band around a boundary that counts as 'seam': the overlap for tiles, a latent cell's worth of
    pixels times two for patches and shards (the reach of a few 3x3 convs at full resolution)."""
    if plan.items and isinstance(plan.items[0], Tile):
        return max(plan.overlap_px // 2, plan.scale)
    return 2 * plan.scale


def compare(out: torch.Tensor, ref: torch.Tensor, plan=None, band_px: int | None = None) -> Quality:
    """Errors of `out` against `ref`; with a plan, also the seam band versus the interior."""
    err = error_map(out, ref)
    diff = (out.double() - ref.double()).abs()
    q = Quality(max_abs=diff.max().item(), mean_abs=diff.mean().item(), psnr_db=psnr(out, ref))
    if plan is not None and len(plan.items) > 1 and isinstance(plan.items[0], (Tile, Patch, Shard)):
        band = band_px if band_px is not None else default_band_px(plan)
        near = boundary_distance(plan) < band
        q.band_px = band
        q.seam_mean_abs = err[near].mean().item() if near.any() else None
        q.interior_mean_abs = err[~near].mean().item() if (~near).any() else None
    return q
