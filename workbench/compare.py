"""Run several decode strategies on one latent and compare them with the full decode.

The CLI, the notebooks and the benchmarks all go through here:

    job = DecodeJob(model="qwen-image", size=(512, 512, 1), tiny=True)
    comparison = compare(job, ["full", "tiled"], tile_px=256, stride_px=192)
    print(comparison.table())
    comparison.save("runs/x")

A `DecodeJob` is a small picklable description (model, size, weights, dtype, seed): worker processes
rebuild the model and the latents from it instead of receiving tensors.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .decode import STRATEGIES, decode, strategy_params
from .measure import Result
from .metrics import Quality
from .metrics import compare as compare_outputs
from .models import build_vae, check_latents, get_preset, latent_shape, random_latents

__all__ = ["DecodeJob", "Comparison", "compare", "run_local", "split_params", "clear_model_cache"]


@dataclass(frozen=True)
class DecodeJob:
    """What to decode: a preset at a size, with random (seeded) or real (local folder) weights."""

    model: str = "qwen-image"
    size: tuple[int, int, int] = (512, 512, 1)  # (height, width, frames) in pixels
    tiny: bool = True
    weights: str | None = None
    dtype: str = "float32"
    device: str = "cpu"  # in a cluster, "cuda"/"npu" means each rank's own device
    seed: int = 0
    batch: int = 1

    def __post_init__(self):
        get_preset(self.model)  # fail early on an unknown name
        self.latent_shape()

    def latent_shape(self) -> tuple[int, ...]:
        h, w, f = self.size
        return latent_shape(self.model, h, w, f, batch=self.batch)

    def latents(self, device=None) -> torch.Tensor:
        return random_latents(self.model, self.latent_shape(), seed=self.seed, dtype=self.dtype,
                              device=device or self.device)

    def label(self) -> str:
        h, w, f = self.size
        size = f"{h}x{w}" + (f"x{f}" if f > 1 else "")
        return f"{self.model}{' (tiny)' if self.tiny and not self.weights else ''} {size} {self.dtype}"


_MODELS: dict = {}


def load_model(job: DecodeJob, device=None):
    """The job's VAE, built once per (model, tiny, weights, dtype, device) in this process."""
    device = str(device or job.device)
    key = (job.model, job.tiny, job.weights, job.dtype, device)
    if key not in _MODELS:
        _MODELS[key] = build_vae(job.model, tiny=job.tiny, weights=job.weights, dtype=job.dtype, device=device)
    return _MODELS[key]


def clear_model_cache() -> None:
    _MODELS.clear()


def split_params(mode: str, params: dict) -> dict:
    """The subset of `params` that `mode` accepts (a comparison passes one set to every mode)."""
    accepted = strategy_params(mode)
    return {k: v for k, v in params.items() if k in accepted and v is not None}


def run_local(job: DecodeJob, mode: str, params: dict | None = None, *, latents=None, progress=False,
              profile=True, group=None, device=None, **kwargs) -> Result:
    """Decode `job` with `mode` in this process (or as one rank of `group`)."""
    vae = load_model(job, device)
    z = latents if latents is not None else job.latents(device=device)
    check_latents(job.model, z)
    return decode(vae, z, mode, group=group, progress=progress, profile=profile, model=job.model,
                  **split_params(mode, params or {}), **kwargs)


@dataclass
class Comparison:
    job: DecodeJob
    results: dict[str, Result] = field(default_factory=dict)
    quality: dict[str, Quality] = field(default_factory=dict)

    @property
    def reference(self) -> Result | None:
        return self.results.get("full")

    def measure_quality(self) -> None:
        """Errors of every result against the full decode (those with an output of the same shape)."""
        ref = self.reference
        if ref is None or ref.output is None:
            return
        for mode, r in self.results.items():
            if r.output is not None and r.output.shape == ref.output.shape:
                self.quality[mode] = compare_outputs(r.output, ref.output, r.plan)

    def rows(self) -> list[dict]:
        out = []
        for mode, r in self.results.items():
            q = self.quality.get(mode)
            peak = [s.peak_bytes - (s.baseline_bytes if s.peak_allocated_bytes is None else 0) for s in r.ranks]
            out.append({
                "mode": mode + (f"->{r.choice}" if r.choice else ""),
                "world": r.world_size,
                "items": len(r.plan.items) if r.plan is not None else 1,
                "time_s": r.time_s,
                "peak_MiB": max(peak) / 2**20,
                "max_abs": q.max_abs if q else None,
                "mean_abs": q.mean_abs if q else None,
                "psnr_db": q.psnr_db if q else None,
                "seam_x": q.seam_ratio if q else None,
            })
        return out

    def table(self) -> str:
        """A fixed-width table: one row per strategy, errors against the full decode."""
        rows = self.rows()
        peak_kind = "peak MiB" if any(r.ranks[0].peak_allocated_bytes is not None for r in self.results.values()) \
            else "RSS+ MiB"
        head = ["mode", "world", "items", "time s", peak_kind, "max|err|", "mean|err|", "PSNR dB", "seam/int"]
        lines = [[r["mode"], str(r["world"]), str(r["items"]), f"{r['time_s']:.3f}", f"{r['peak_MiB']:.1f}",
                  _fmt(r["max_abs"], "{:.2e}"), _fmt(r["mean_abs"], "{:.2e}"), _fmt(r["psnr_db"], "{:.1f}", "exact"),
                  _fmt(r["seam_x"], "{:.1f}x")] for r in rows]
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
        fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
        title = f"{self.job.label()}, errors against full"
        return "\n".join([title, fmt.format(*head), fmt.format(*["-" * w for w in widths])] +
                         [fmt.format(*line) for line in lines])

    def save(self, out_dir) -> list[Path]:
        """Write each strategy's image, overlay and seam map (PNG) and a summary JSON; return the paths."""
        from . import viz

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        ref = self.reference.output if self.reference is not None else None
        for mode, r in self.results.items():
            if r.output is None:
                continue
            viz.save_png(r.output, out / f"{mode}.png")
            written.append(out / f"{mode}.png")
            if r.plan is not None or (ref is not None and mode != "full"):
                fig = viz.plot_strategy(r, reference=ref if mode != "full" else None)
                fig.savefig(out / f"{mode}_overlay.png", dpi=100)
                viz._plt().close(fig)
                written.append(out / f"{mode}_overlay.png")
            r.save(out / f"{mode}.json")
            written.append(out / f"{mode}.json")
        summary = {"job": asdict(self.job), "rows": self.rows(),
                   "quality": {m: q.to_dict() for m, q in self.quality.items()}}
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=_json_default))
        written.append(out / "summary.json")
        return written


def _fmt(value, pattern: str, infinite: str = "inf") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return infinite
    return pattern.format(value)


def _json_default(value):
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return str(value)


def compare(job: DecodeJob, modes, *, runner=None, reference: bool = True, progress: bool = True,
            **params) -> Comparison:
    """Decode `job` with each of `modes` (full first, as the reference) and measure the errors.

    `runner(job, mode, params)` runs one decode and returns its Result: in-process by default, or a
    `Cluster`'s `decode` for the parallel modes. Parameters a mode does not take are not passed to it.
    """
    from tqdm.auto import tqdm

    modes = list(dict.fromkeys(modes))
    for mode in modes:
        if mode not in STRATEGIES:
            raise ValueError(f"unknown mode {mode!r}; accepted: {', '.join(STRATEGIES)}")
    if reference and "full" not in modes:
        modes.insert(0, "full")
    elif "full" in modes:
        modes.remove("full")
        modes.insert(0, "full")
    runner = runner or (lambda job, mode, params: run_local(job, mode, params))
    comparison = Comparison(job)
    for mode in tqdm(modes, desc="strategies", disable=not progress, leave=False):
        comparison.results[mode] = runner(job, mode, params)
    comparison.measure_quality()
    return comparison
