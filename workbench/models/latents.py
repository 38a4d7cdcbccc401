"""Latent shapes and seeded latents with a preset's statistics (what a denoiser hands the VAE)."""

from __future__ import annotations

import torch

from .loader import parse_dtype
from .presets import ModelError, Preset, get_preset
from .shapes import latent_shape, parse_size

__all__ = ["parse_size", "latent_shape", "check_latents", "latent_stats", "random_latents"]
def check_latents(preset: Preset | str, z: torch.Tensor) -> None:
    """Raise a ModelError naming the expected layout if `z` cannot be this preset's latent."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    layout = "(B, C, H, W)" if preset.latent_ndim == 4 else "(B, C, T, H, W)"
    if z.dim() != preset.latent_ndim or z.shape[1] != preset.latent_channels:
        raise ModelError(f"{preset.name}: latents must be {layout} with C={preset.latent_channels}, got {tuple(z.shape)}")
    if preset.latent_ndim == 5 and not preset.is_video and z.shape[2] != 1:
        raise ModelError(f"{preset.name} is an image model: latents must have T=1, got {tuple(z.shape)}")


def latent_stats(preset: Preset | str, ndim: int, *, device="cpu", dtype=torch.float32):
    """(mean, std) of the preset's latents per channel, shaped to broadcast over an `ndim`-D latent."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    view = (1, -1) + (1,) * (ndim - 2)
    mean = torch.tensor(preset.latents_mean).view(view).to(device=device, dtype=parse_dtype(dtype))
    std = torch.tensor(preset.latents_std).view(view).to(device=device, dtype=parse_dtype(dtype))
    return mean, std


def random_latents(preset: Preset | str, shape, *, seed: int = 0, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Seeded latents with the preset's per-channel statistics, drawn in float32 on the CPU (the same on
    every rank and platform)."""
    z = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    mean, std = latent_stats(preset, len(shape))
    return (z * std + mean).to(device=device, dtype=parse_dtype(dtype))
