"""Model presets and how to build them: `get_preset`, `build_vae`, `latent_shape`, `random_latents`."""

from .build import (
    ModelError,
    build_vae,
    check_latents,
    count_decoder_parameters,
    count_parameters,
    latent_shape,
    parse_dtype,
    parse_size,
    random_latents,
)
from .presets import PRESETS, Preset, get_preset

__all__ = [
    "PRESETS", "Preset", "get_preset", "ModelError", "build_vae", "check_latents", "count_parameters",
    "count_decoder_parameters", "latent_shape", "parse_dtype", "parse_size", "random_latents",
]
