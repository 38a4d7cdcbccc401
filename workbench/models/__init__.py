"""The registry (VAE presets, pipeline specs), the one model loader, latent shapes and seeded latents.

    build_vae("qwen-image", tiny=True)             # seeded random weights, or weights="/local/folder"
    latent_shape("wan2.1", 480, 832, 81)           # (1, 16, 21, 60, 104)
    random_latents("wan2.1", shape, seed=0)        # with the preset's latent statistics
    get_spec("wan2.1")                              # the pipeline's transformer, text encoder, scheduler
"""

from .latents import check_latents, latent_shape, latent_stats, parse_size, random_latents
from .loader import (
    ModelError,
    build_vae,
    count_parameters,
    default_dtype,
    finish,
    keep_in_fp32,
    load_local,
    parse_dtype,
    read_config,
    seeded,
)
from .presets import PRESETS, Preset, get_preset
from .specs import SPECS, PipelineSpec, get_spec

__all__ = [
    "PRESETS", "Preset", "get_preset", "SPECS", "PipelineSpec", "get_spec", "ModelError", "build_vae",
    "load_local", "read_config", "seeded", "finish", "keep_in_fp32", "default_dtype", "count_parameters",
    "parse_dtype", "parse_size", "latent_shape", "latent_stats", "check_latents", "random_latents",
]
