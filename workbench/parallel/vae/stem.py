"""Tiles after a global stem: the decoder's conv_in and mid-block run once over the whole latent, the tiles
run only the up blocks and the head.

The mid-block holds a self-attention over every latent position of a frame, so each of its outputs
depends on the whole frame. A tile decoded whole (diffusers' enable_tiling, and `tiled` with
mid_block="tile") sees only its own latent there: its error spreads over the whole tile, not only near the
tile's edges where the blend hides it. The stem works at latent resolution, where it is cheap (GLM-Image at
2048x2048: 256x256 positions, 1/64 of the output's pixels), so it runs once, exactly as in the full
decode; its output, cropped like the latent, feeds each tile's up blocks. What remains of the tiling
error is the up blocks' receptive field, near the edges, and their GroupNorm statistics (`norm_stats`:
"sampled" runs the up blocks once on the stem's output subsampled to a tile's size).

Both decoder layouts of diffusers: vae.Decoder (AutoencoderKL, GLM-Image; head conv_norm_out, conv_act,
conv_out) and the causal Wan / Qwen-Image decoders (head norm_out, nonlinearity, conv_out), whose stem runs
frame by frame with its own frame cache. The stem is the decoder itself with its up blocks removed and its
head passed through; the tiles run the decoder with conv_in and mid_block passed through (the causal
decoders then number their frame-cache slots from the up blocks on, the same way in every chunk).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from . import MID_BLOCKS  # auto: global where the decoder supports it, else tile

_HEADS = (("norm_out", "nonlinearity", "conv_out"), ("conv_norm_out", "conv_act", "conv_out"))  # causal, image
_STEM = ("conv_in", "mid_block")


class _PassThrough(nn.Module):
    """Where a decoder module was while it is cut: returns its input."""

    def forward(self, x, *args, **kwargs):
        return x


def _head(decoder) -> tuple[str, ...] | None:
    return next((names for names in _HEADS if all(hasattr(decoder, n) for n in names)), None)


def supports_global_stem(fd) -> bool:
    """conv_in -> mid_block -> up_blocks -> a known head, and not compiled (the compile lever's graph holds the
    whole decoder: its parts cannot be passed through)."""
    decoder = fd.vae.decoder
    return (not hasattr(decoder, "_orig_mod") and all(hasattr(decoder, n) for n in (*_STEM, "up_blocks"))
            and _head(decoder) is not None)


def resolve_mid_block(fd, mid_block: str) -> str:
    """"global" or "tile" for this decoder; ValueError for a value not in MID_BLOCKS, or "global" where the
    decoder does not support it."""
    if mid_block not in MID_BLOCKS:
        raise ValueError(f"mid_block must be one of {', '.join(MID_BLOCKS)}, got {mid_block!r}")
    if mid_block == "auto":
        return "global" if supports_global_stem(fd) else "tile"
    if mid_block == "global" and not supports_global_stem(fd):
        raise ValueError(f"mid_block='global' needs diffusers' decoder layout, not compiled; this "
                         f"{type(fd.vae).__name__}'s decoder runs its stem per tile: use mid_block='tile' or 'auto'")
    return mid_block


@contextmanager
def _replaced(decoder, modules: dict):
    saved = {name: getattr(decoder, name) for name in modules}
    for name, module in modules.items():
        setattr(decoder, name, module)
    try:
        yield
    finally:
        for name, module in saved.items():
            setattr(decoder, name, module)


def run_stem(ctx, x: torch.Tensor, mid_block: str) -> tuple[torch.Tensor | None, dict]:
    """(The stem's output (B, C_mid, T, H, W) of the prepared latent x (B, C, T, H, W), timed as phase "stem", or
    None with "tile"; the record). Every rank of parallel_tiled computes the same."""
    fd = ctx.fd
    if resolve_mid_block(fd, mid_block) == "tile":
        return None, {"mid_block": "tile"}
    decoder = fd.vae.decoder
    cut = {"up_blocks": nn.ModuleList(), **{name: _PassThrough() for name in _head(decoder)}}
    with ctx.measure.phase("stem"), _replaced(decoder, cut):
        h = fd.run_decoder(x, fd.new_cache(x.shape[2]), first=True)  # (B, C_mid, T, H, W)
    return h, {"mid_block": "global"}


@contextmanager
def stem_passed_through(decoder, enabled: bool = True):
    """Within the block the decoder's conv_in and mid_block return their input: the decoder runs its up blocks
    and head on what it is given (a crop of run_stem's output)."""
    if not enabled:
        yield
        return
    with _replaced(decoder, {name: _PassThrough() for name in _STEM}):
        yield
