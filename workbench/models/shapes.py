"""Sizes and latent shapes, in plain Python (no torch): what the CLI checks before anything heavy is imported.

    parse_size("480x832x81")            # (480, 832, 81)
    latent_shape("wan2.1", 480, 832, 81)  # (1, 16, 21, 60, 104)
"""

from __future__ import annotations

from .presets import ModelError, Preset, get_preset

__all__ = ["ModelError", "DTYPE_NAMES", "parse_size", "latent_shape", "check_dtype"]

DTYPE_NAMES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")


def check_dtype(dtype) -> str:
    if str(dtype).lower() not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {dtype!r}; accepted: float32, bfloat16, float16")
    return str(dtype).lower()


def parse_size(size: str) -> tuple[int, int, int]:
    """'HxW' or 'HxWxF' (pixels, frames) -> (height, width, frames)."""
    parts = str(size).lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (2, 3) or any(v < 1 for v in values):
        raise ValueError(f"size must be HxW or HxWxF in pixels (e.g. 512x512 or 480x832x81), got {size!r}")
    return (values[0], values[1], values[2] if len(values) == 3 else 1)


def latent_shape(preset: Preset | str, height: int, width: int, frames: int = 1, batch: int = 1) -> tuple[int, ...]:
    """Latent shape that decodes to (height, width, frames); errors name what the preset accepts."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    s = preset.spatial_ratio
    if height % s or width % s:
        raise ModelError(f"{preset.name}: height and width must be multiples of {s} pixels, got {height}x{width}")
    if not preset.is_video:
        if frames != 1:
            raise ModelError(f"{preset.name} is an image model: frames must be 1, got {frames}")
    elif (frames - 1) % preset.temporal_ratio:
        raise ModelError(f"{preset.name}: frames must be 1 + {preset.temporal_ratio}k (1, 5, ..., 81), got {frames}")
    t = 1 + (frames - 1) // preset.temporal_ratio if preset.temporal_ratio else 1
    if preset.latent_ndim == 4:
        return (batch, preset.latent_channels, height // s, width // s)
    return (batch, preset.latent_channels, t, height // s, width // s)
