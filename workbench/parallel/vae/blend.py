"""Putting decoded pieces together: weighted blending of tiles (serial and parallel tiled decodes) and
gathering of non-overlapping blocks (patch and shard).

Both tiled decodes add the tiles of a frame window in plan index order with the same arithmetic, so a
parallel tiled decode reproduces the serial one bit for bit.
"""

from __future__ import annotations

import torch

from .plan import Span, Tile


def tile_weight(tile: Tile, device) -> torch.Tensor:
    """(rows_px, cols_px) float32 weights: the outer product of the tile's 1-D ramps."""
    rows = torch.tensor(tile.row_weights, dtype=torch.float32, device=device)
    cols = torch.tensor(tile.col_weights, dtype=torch.float32, device=device)
    return rows[:, None] * cols[None, :]


def blend_into(out: torch.Tensor, tile: Tile, pixels: torch.Tensor, frames: Span) -> None:
    """out[:, :, frames, tile rows, tile cols] += weight * pixels, in float32, one vectorised op."""
    region = out[:, :, frames.slice(), tile.rows_px.slice(), tile.cols_px.slice()]
    region.add_(pixels.float() * tile_weight(tile, out.device))


def gather_blocks(block: torch.Tensor, plan, comm, everywhere: bool) -> torch.Tensor | None:
    """The (B, C, F, H, W) image from every rank's block (plan item r is rank r's, non-overlapping), on every
    rank (`everywhere`) or on rank 0 only (None on the others). Block sizes come from the plan."""
    b, c, f = block.shape[:3]
    numels = [b * c * f * item.rows_px.size * item.cols_px.size for item in plan.items]
    parts = comm.all_gather_padded(block, numels) if everywhere else comm.gather_padded(block, numels, dst=0)
    if parts is None:
        return None
    out = block.new_empty(b, c, f, *plan.pixel_size)
    for item, part in zip(plan.items, parts):
        out[:, :, :, item.rows_px.slice(), item.cols_px.slice()] = part.view(b, c, f, item.rows_px.size,
                                                                             item.cols_px.size)
    return out
