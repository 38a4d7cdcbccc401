"""workbench: parallel VAE decoding and parallel pipelines of large diffusion models.

    from workbench import Cluster, DecodeJob, make_runner, build_vae

Layout: models (registry, loader, latents), parallel (dims, comm, vae strategies and cost model, dit),
runtime (platform, launch, worker pool; generic), pipeline (stages, executor, one file per model),
ops (custom ops over the Triton sources in kernels/), runner (local | pool | torchrun), and the thin
clients: cli, ui, report, viz, metrics, measure. Names are imported lazily, so `python -m workbench --help`
starts without torch.
"""

_EXPORTS = {
    "Cluster": "runner", "DecodeJob": "runner", "make_runner": "runner", "LocalRunner": "runner",
    "SpmdRunner": "runner", "build_vae": "models", "decode": "parallel.vae",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
