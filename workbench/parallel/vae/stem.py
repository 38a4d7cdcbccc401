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

`global_up_blocks` = k > 0 (image decoders: AutoencoderKL, GLM-Image) extends the stem by the first k up blocks:
they run once over the whole stem output, with exact GroupNorm statistics, and the tiles crop their output (2**k
times the latent's resolution) and run the remaining up blocks. The trunk costs the memory of its output,
(B, C_k, 2**k h, 2**k w), and buys statistics that no longer come from a subsampled decode for those blocks
(GLM-Image, chelsea 512x512, 256 px tiles on the CPU: 48.9 dB with k=0, 54.3 with k=2). The causal decoders
keep k=0: their up blocks upsample time too, frame by frame with a cache.

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


def check_global_up_blocks(fd, mid_block: str, global_up_blocks) -> None:
    """ValueError naming the parameter unless `global_up_blocks` is an int from 0 to the image decoder's up
    blocks less one (0 for the causal decoders and with the stem per tile)."""
    if not isinstance(global_up_blocks, int) or isinstance(global_up_blocks, bool) or global_up_blocks < 0:
        raise ValueError(f"global_up_blocks must be an integer >= 0, got {global_up_blocks!r}")
    if global_up_blocks == 0:
        return
    if fd.causal:
        raise ValueError(f"global_up_blocks must be 0 for {type(fd.vae).__name__}: its up blocks upsample time, "
                         f"frame by frame with a cache; got {global_up_blocks}")
    if resolve_mid_block(fd, mid_block) != "global":
        raise ValueError(f"global_up_blocks={global_up_blocks} needs the global stem (mid_block 'global' or 'auto', "
                         f"not {mid_block!r})")
    most = len(fd.vae.decoder.up_blocks) - 1  # the last up block has no upsampler: it is the tiles' work
    if global_up_blocks > most:
        raise ValueError(f"global_up_blocks must be from 0 to {most} for this decoder, got {global_up_blocks}")


def run_stem(ctx, x: torch.Tensor, mid_block: str, up_blocks: int = 0) -> tuple[torch.Tensor | None, dict]:
    """(The stem's output of the prepared latent x (B, C, T, H, W): (B, C_k, T, 2**k H, 2**k W) after the first
    k = `up_blocks` up blocks, timed as phase "stem"; or None with "tile"; the record). Every rank of
    parallel_tiled computes the same."""
    fd = ctx.fd
    if resolve_mid_block(fd, mid_block) == "tile":
        return None, {"mid_block": "tile"}
    decoder = fd.vae.decoder
    cut = {"up_blocks": nn.ModuleList(decoder.up_blocks[:up_blocks]), **{name: _PassThrough() for name in _head(decoder)}}
    with ctx.measure.phase("stem"), _replaced(decoder, cut):
        h = fd.run_decoder(x, fd.new_cache(x.shape[2]), first=True)  # (B, C_k, T, 2**k H, 2**k W)
    return h, {"mid_block": "global", "global_up_blocks": up_blocks}


@contextmanager
def stem_passed_through(decoder, enabled: bool = True, up_blocks: int = 0):
    """Within the block the decoder's conv_in and mid_block return their input and its first `up_blocks` up blocks
    are left out: the decoder runs the remaining up blocks and the head on what it is given (a crop of run_stem's
    output)."""
    if not enabled:
        yield
        return
    with _replaced(decoder, {**{name: _PassThrough() for name in _STEM},
                             "up_blocks": nn.ModuleList(decoder.up_blocks[up_blocks:])}):
        yield
