"""The registry (VAE presets, pipeline specs), the one model loader, latent shapes and seeded latents.

    build_vae("qwen-image", tiny=True)             # seeded random weights, or weights="/local/folder"
    latent_shape("wan2.1", 480, 832, 81)           # (1, 16, 21, 60, 104)
    random_latents("wan2.1", shape, seed=0)        # with the preset's latent statistics
    get_spec("wan2.1")                              # the pipeline's transformer, text encoder, scheduler

Names are imported on first use: the registry and the shapes need no torch (the CLI checks its
arguments with them before importing anything heavy).
"""

_EXPORTS = {
    "PRESETS": "presets", "Preset": "presets", "get_preset": "presets", "ModelError": "presets",
    "SPECS": "specs", "PipelineSpec": "specs", "get_spec": "specs",
    "parse_size": "shapes", "latent_shape": "shapes", "check_dtype": "shapes", "DTYPE_NAMES": "shapes",
    "build_vae": "loader", "load_local": "loader", "read_config": "loader", "seeded": "loader", "finish": "loader",
    "keep_in_fp32": "loader", "default_dtype": "loader", "count_parameters": "loader", "parse_dtype": "loader",
    "latent_stats": "latents", "check_latents": "latents", "random_latents": "latents",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'workbench.models' has no attribute {name!r}")
