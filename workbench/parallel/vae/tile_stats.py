"""Whole-image GroupNorm statistics for tiled decodes (`tiled` / `parallel_tiled`, norm_stats="sampled").

A GroupNorm decoder (GLM-Image's AutoencoderKL) normalises each tile by that tile's own statistics, so a
tile of smooth fur and a tile of busy whiskers get different gains and offsets: seams, whatever the blend.
Here one decode of the latent subsampled to a tile's size (every s-th latent row and column) records each
GroupNorm's per-group mean and variance, and every tile is then normalised with those: statistics of the
whole picture, taken in one consistent decode, at the memory of one tile.

Why a subsampled decode and not the tiles themselves: the statistics of a norm depend on every norm before
it. Statistics collected from tiles normalised by their own statistics are biased (3-16% in the standard
deviations of the tiny GLM decoder), and re-collecting them under the previous pass's statistics moves the
bias instead of removing it (it compounded through the residual blocks, 25 dB worse after a second pass);
exact statistics need every tile at every norm at once, the full decode's memory. Measured on the CPU, the
trained tiny GLM-Image VAE, chelsea at 512x512, PSNR of the tiled decode against the full one:

    tiles      own statistics   sampled, s=2   sampled, s=4   exact (from the full decode)
    128 px     30.9 dB          46.0 dB        41.6 dB        50.5 dB
    256 px     34.8 dB          46.5 dB        41.5 dB        59.8 dB

Decoders without GroupNorm (the Wan and Qwen-Image RMS norms normalise each position over its channels)
are normalised exactly as in the full decode already: they make no extra decode.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn

from . import NORM_STATS  # noqa: F401  (the names live with the strategies' options, importable without torch)

FUSED_GROUP_NORM = "FusedGroupNormSiLU"  # workbench.ops.vae_norm: GroupNorm + SiLU as one op


def group_norms(decoder: nn.Module) -> list[nn.Module]:
    """The decoder's GroupNorms (fused with their SiLU or not), in module order."""
    return [m for m in decoder.modules() if isinstance(m, nn.GroupNorm) or type(m).__name__ == FUSED_GROUP_NORM]


def subsample_step(latent_hw: tuple[int, int], tile_hw: tuple[int, int]) -> int:
    """The smallest step s whose subsampled latent (every s-th row and column) fits in one tile."""
    return max(1, *(math.ceil(n / t) for n, t in zip(latent_hw, tile_hw)))


@contextmanager
def _patched(norms, make_forward):
    for i, norm in enumerate(norms):
        norm.forward = make_forward(i, norm)
    try:
        yield
    finally:
        for norm in norms:
            del norm.forward  # the class's own forward again


def sampled_stats(decoder: nn.Module, x: torch.Tensor, step: int) -> list | None:
    """Per GroupNorm of `decoder`, (mean, rstd), each (B, G) float32, from one decode of x (B, C, H, W)
    subsampled by `step`; None for a decoder without GroupNorm."""
    norms = group_norms(decoder)
    if not norms:
        return None
    stats = [None] * len(norms)

    def recording(i, norm):
        own_forward = type(norm).forward.__get__(norm)

        def forward(h):  # (B, C, *spatial)
            hg = h.reshape(h.shape[0], norm.num_groups, -1).float()
            var, mean = torch.var_mean(hg, dim=-1, correction=0)  # two passes: no E[x^2] - E[x]^2 cancellation
            stats[i] = (mean, torch.rsqrt(var + norm.eps))
            return own_forward(h)
        return forward

    with _patched(norms, recording):
        decoder(x[..., ::step, ::step])
    return stats


@contextmanager
def normalised_by(decoder: nn.Module, stats: list | None):
    """Within the block, every GroupNorm of `decoder` normalises with `stats` (from `sampled_stats`) instead of
    its input's own; the inputs may hold several tiles of the latent's batch B (tile-major). No-op for None."""
    if stats is None:
        yield
        return

    from ...ops.vae_norm import group_norm_silu_stats  # Triton on CUDA, the float32 reference elsewhere

    def normalising(i, norm):
        mean, rstd = stats[i]
        silu = type(norm).__name__ == FUSED_GROUP_NORM

        def forward(h):  # (k * B, C, *spatial) -> the same
            k = h.shape[0] // mean.shape[0]  # tiles stacked tile-major: each gets the latent's statistics
            return group_norm_silu_stats(h, norm.num_groups, mean.repeat(k, 1), rstd.repeat(k, 1), norm.weight,
                                         norm.bias, silu)
        return forward

    with _patched(group_norms(decoder), normalising):
        yield
