"""Weighted blending of decoded tiles into the output, shared by the serial and parallel tiled decodes.

Both add the tiles of a frame window in plan index order with the same arithmetic, so a parallel
tiled decode reproduces the serial one bit for bit.
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
