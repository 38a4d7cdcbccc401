"""Tiles after a global stem: the decoder's conv_in and mid-block run once over the whole latent, the tiles
run only the up blocks and the head.

The mid-block holds a self-attention over every latent position, so each of its outputs depends on the
whole latent. A tile decoded whole (diffusers' enable_tiling, and `tiled` with mid_block="tile") sees only
its own latent there: its error spreads over the whole tile, not only near the tile's edges where the
blend hides it. The stem works at latent resolution, where it is cheap (GLM-Image at 2048x2048: 256x256
positions, 1/64 of the output's pixels), so it runs once, exactly as in the full decode; its output,
cropped like the latent, feeds each tile's up blocks. What remains of the tiling error is the up blocks'
receptive field, near the edges, and their GroupNorm statistics (`norm_stats`: "sampled" runs the up
blocks once on the stem's output subsampled to a tile's size).

For image decoders (diffusers' vae.Decoder: AutoencoderKL, GLM-Image). The causal video decoders (Wan,
Qwen-Image) run their stem frame by frame with a frame cache, and keep the per-tile stem for now.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from . import MID_BLOCKS  # auto: global where the decoder supports it, else tile


class _PassThrough(nn.Module):
    """Where a stem module was while the tiles decode: returns its input (the stem output, cropped)."""

    def forward(self, x, *args, **kwargs):
        return x


def supports_global_stem(fd) -> bool:
    """diffusers' vae.Decoder layout: conv_in -> mid_block -> up_blocks -> head, no frame cache, and not compiled
    (the compile lever's graph holds the stem: it cannot be passed through)."""
    decoder = fd.vae.decoder
    return (not fd.causal and not hasattr(decoder, "_orig_mod")
            and all(hasattr(decoder, m) for m in ("conv_in", "mid_block", "up_blocks")))


def resolve_mid_block(fd, mid_block: str) -> str:
    """"global" or "tile" for this decoder; ValueError for a value not in MID_BLOCKS, or "global" where the
    decoder does not support it."""
    if mid_block not in MID_BLOCKS:
        raise ValueError(f"mid_block must be one of {', '.join(MID_BLOCKS)}, got {mid_block!r}")
    if mid_block == "auto":
        return "global" if supports_global_stem(fd) else "tile"
    if mid_block == "global" and not supports_global_stem(fd):
        raise ValueError(f"mid_block='global' needs an image decoder (AutoencoderKL, GLM-Image), not compiled; "
                         f"this {type(fd.vae).__name__} runs its stem per tile: use mid_block='tile' or 'auto'")
    return mid_block


def run_stem(ctx, x: torch.Tensor, mid_block: str) -> tuple[torch.Tensor | None, dict]:
    """(The stem's output (B, C_mid, 1, H, W) of the prepared latent x (B, C, 1, H, W), timed as phase "stem", or
    None with "tile"; the record). Every rank of parallel_tiled computes the same."""
    if resolve_mid_block(ctx.fd, mid_block) == "tile":
        return None, {"mid_block": "tile"}
    decoder = ctx.fd.vae.decoder
    with ctx.measure.phase("stem"):
        h = decoder.mid_block(decoder.conv_in(x[:, :, 0]), None).unsqueeze(2)
    return h, {"mid_block": "global"}


@contextmanager
def stem_passed_through(decoder, enabled: bool = True):
    """Within the block the decoder's conv_in and mid_block return their input: the decoder runs its up blocks
    and head on what it is given (a crop of run_stem's output)."""
    if not enabled:
        yield
        return
    stem = {name: getattr(decoder, name) for name in ("conv_in", "mid_block")}
    for name in stem:
        setattr(decoder, name, _PassThrough())
    try:
        yield
    finally:
        for name, module in stem.items():
            setattr(decoder, name, module)
