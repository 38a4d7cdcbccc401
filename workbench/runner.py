"""The one runner: where decodes and generations run, behind one interface.

    runner = make_runner(world_size=1, device="cpu")   # LocalRunner: this process
    runner = make_runner(world_size=4, device="cuda")  # Cluster: four worker processes (a notebook's pool)
    runner = make_runner()                             # under torchrun: SpmdRunner, this process is one rank
    comparison = runner.compare(DecodeJob(model="qwen-image", size=(512, 512, 1)), ["tiled", "shard"])

The CLI, the notebook panels, `workbench bench` and the benchmark scripts all go through a runner, and every
runner runs the same per-rank code (`compare_on_ranks`, `run_decode`):

- a serial mode (full, tiled) runs on rank 0 alone while the others wait for its status; a parallel mode
  runs on every rank of the decode group, and the ranks exchange their statuses (a failure raises
  `RankFailure` on every rank, naming the failed ranks);
- the reference decode (`full`) runs first, only where the cost model says it fits; else it is skipped
  and the comparison says why; a requested mode whose estimate exceeds the budget is skipped likewise;
- rank 0 moves every output it compares to the CPU, explicitly, and measures the errors there.

A `Cluster` runs everything, serial modes included, in its workers: the notebook process never
initialises CUDA. A `DecodeJob` is a small picklable description (model, size, weights, dtype, seed):
workers rebuild the model and the latents from it instead of receiving tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .models import build_vae, check_latents, get_preset, latent_shape, parse_dtype, random_latents
from .models.bundled import check_image
from .models.presets import is_local_folder
from .runtime import RankFailure, WorkerPool, local_context

__all__ = ["DecodeJob", "Runner", "LocalRunner", "Cluster", "SpmdRunner", "make_runner", "run_decode",
           "compare_on_ranks", "load_model", "clear_model_cache", "split_params"]


@dataclass(frozen=True)
class DecodeJob:
    """What to decode: a preset at a size; weights None (tiny: the trained ones), "trained", "random" or a
    local folder; random latents or a picture (`image`) through the encoder.

    `device` is where a LocalRunner decodes; a Cluster or torchrun rank uses its own device instead."""

    model: str = "qwen-image"
    size: tuple[int, int, int] = (512, 512, 1)  # (height, width, frames) in pixels
    tiny: bool = True
    weights: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    batch: int = 1
    image: str | None = None  # a bundled photo's name or an image/video file: encoded in place of random latents

    def __post_init__(self):
        object.__setattr__(self, "model", get_preset(self.model).name)  # a KeyError naming the presets
        parse_dtype(self.dtype)
        if not isinstance(self.batch, int) or self.batch < 1:
            raise ValueError(f"batch must be an int >= 1, got {self.batch!r}")
        size = tuple(self.size)
        if len(size) == 2:
            size = (*size, 1)
        if len(size) != 3 or any(not isinstance(v, int) or v < 1 for v in size):
            raise ValueError(f"size must be (height, width[, frames]) of positive ints in pixels, got {self.size!r}")
        object.__setattr__(self, "size", size)
        self.latent_shape()
        check_image(self.image)

    def latent_shape(self) -> tuple[int, ...]:
        h, w, f = self.size
        return latent_shape(self.model, h, w, f, batch=self.batch)

    def picture(self) -> torch.Tensor | None:
        """The `image` at the job's size, (3, H, W) or (3, F, H, W) in [-1, 1] (a still photo becomes a seeded
        camera-motion clip for a video size); None without an image."""
        if self.image is None:
            return None
        from .models.photos import photo_to_size, synthetic_clip
        from .models.trained import load_picture

        h, w, f = self.size
        picture = load_picture(self.image)
        if f > 1 and picture.dim() == 3:
            return synthetic_clip(picture, f, h, w, seed=self.seed, min_scale=0.7)
        return photo_to_size(picture, h, w)

    def latents(self, device=None, vae=None) -> torch.Tensor:
        """What to decode: the picture through `vae`'s encoder, else seeded random latents with the preset's
        statistics."""
        if self.image is None:
            return random_latents(self.model, self.latent_shape(), seed=self.seed, dtype=self.dtype,
                                  device=device or self.device)
        if vae is None:
            raise ValueError("a job with an image needs its VAE to encode it: job.latents(device, vae)")
        from .models.trained import encode

        h, w, f = self.size
        z = encode(vae, self.picture(), height=h, width=w, frames=f)
        return z.expand(self.batch, *z.shape[1:]).contiguous()

    def on(self, device) -> DecodeJob:
        return replace(self, device=str(device))

    def label(self) -> str:
        h, w, f = self.size
        size = f"{h}x{w}" + (f"x{f}" if f > 1 else "")
        tag = "" if is_local_folder(self.weights) or not self.tiny else " (tiny, random weights)" if self.weights == "random" else " (tiny)"
        picture = f", {self.image}" if self.image else ""
        return f"{self.model}{tag} {size} {self.dtype}{picture}"


class MemoryGuardError(ValueError):
    """A requested strategy's estimated peak exceeds the budget: refused before any decode."""


# ----------------------------------------------------------------------------------------- per rank

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
    """The subset of `params` that `mode` accepts (one comparison passes one set to every mode)."""
    from .parallel.vae import strategy_params

    accepted = strategy_params(mode)
    return {k: v for k, v in params.items() if k in accepted and v is not None}


def _decode_group(ctx):
    from .parallel.dims import ParallelDims, use_dims

    if ctx.groups is None:
        use_dims(ctx, ParallelDims(ctx.world_size))
    return ctx.groups.decode


def run_decode(ctx, vae, z: torch.Tensor, mode: str, params: dict | None = None, *, profile: bool = True,
               progress: bool = False, model: str | None = None):
    """One decode as the ranks of `ctx` run it: a serial mode on rank 0 alone (the others wait for its
    status and get None), a parallel mode on every rank of the decode group (statuses exchanged). A failure
    raises RankFailure on every rank. Returns this rank's Result (rank 0's holds every rank's stats)."""
    from .parallel.vae import SERIAL, decode

    params = params or {}
    if mode in SERIAL:
        return ctx.on_main(mode, decode, vae, z, mode, progress=progress, profile=profile, model=model, **params)
    group = _decode_group(ctx)
    result, error = None, None
    try:
        result = decode(vae, z, mode, group=group, progress=progress, profile=profile, model=model, **params)
    except Exception as e:  # every rank learns of it below
        error = e
    ctx.agree(mode, error)
    return result


def budget_bytes(ctx) -> int:
    """The smallest memory budget of the ranks (free device memory plus what this process holds, or free RAM)."""
    from .parallel.vae.auto import default_budget_bytes

    return min(ctx.gather_objects(default_budget_bytes(torch.device(ctx.device))))


def fits(vae, job: DecodeJob, mode: str, params: dict, world_size: int, budget: int) -> tuple[bool, int | None, str]:
    """(fits, estimated bytes, why not) for `mode`, from the cost model."""
    from .parallel.vae.cost import estimate_bytes
    from .parallel.vae.plan import PlanError

    if mode == "auto":
        return True, None, ""
    try:
        need = estimate_bytes(vae, job.latent_shape(), mode, world_size, **params)
    except PlanError:
        return True, None, ""  # the decode itself raises with the reason
    if need <= budget:
        return True, need, ""
    return False, need, f"estimated {need / 2**30:.2f} GiB per rank > budget {budget / 2**30:.2f} GiB"


def compare_on_ranks(ctx, job: DecodeJob, modes, params: dict | None = None, *, reference: bool = True,
                     repeats: int = 1, warmup: int = 0, progress: bool = False, budget: int | None = None):
    """Every rank's part of a comparison (all ranks call it together); rank 0 returns the Comparison.

    The reference (`full`) runs first where it fits; each mode runs `warmup` untimed and `repeats` timed
    times (its Result is the last, `times_s` has every timed run); outputs go to the CPU on rank 0."""
    from .parallel.vae import STRATEGIES
    from .report import Comparison

    modes = [m for m in dict.fromkeys(modes)]
    requested = list(modes)
    for mode in modes:
        if mode not in STRATEGIES:
            raise ValueError(f"unknown mode {mode!r}; accepted: {', '.join(STRATEGIES)}")
    if "full" in modes or reference:
        modes = ["full"] + [m for m in modes if m != "full"]
    job = job.on(ctx.device)
    vae = load_model(job, ctx.device)
    z = job.latents(ctx.device, vae)
    check_latents(job.model, z)
    given = (params or {}).get("memory_budget_gib")
    budget = budget or (int(given * 2**30) if given else budget_bytes(ctx))  # --budget-gib binds every mode
    comparison = Comparison(job, world_size=ctx.world_size, budget_bytes=budget)
    world = _decode_group_size(ctx)
    verdicts = {m: fits(vae, job, m, split_params(m, params or {}), world, budget) for m in modes}
    asked = [m for m in modes if m != "full" or not reference or "full" in requested]
    too_big = [m for m in asked if not verdicts[m][0]]
    if too_big:  # the memory guard: refuse before any decode, naming what would fit
        fitting = [m for m, (ok, _, _) in verdicts.items() if ok] or ["none: lower the size or add ranks"]
        raise MemoryGuardError("; ".join(f"{m}: {verdicts[m][2]}" for m in too_big) +
                               f"; strategies that fit: {', '.join(fitting)}")
    for mode in modes:
        mode_params = split_params(mode, params or {})
        ok, need, why = verdicts[mode]
        comparison.estimates[mode] = need
        if not ok:  # the reference, when it was not asked for
            comparison.skipped[mode] = why
            continue
        times, result = [], None
        for i in range(warmup + repeats):
            if ctx.world_size > 1:
                ctx.barrier()  # every rank starts together
            result = run_decode(ctx, vae, z, mode, mode_params, profile=repeats == 1, progress=progress,
                                model=job.model)
            if i >= warmup and result is not None:
                times.append(result.time_s)
        if ctx.is_main:
            result.output = None if result.output is None else result.output.detach().cpu()
            result.times_s = times
            comparison.add(mode, result)
        del result
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()  # the next mode's reserved memory starts from the weights
    return comparison if ctx.is_main else None


def _decode_group_size(ctx) -> int:
    from .parallel.comm import group_size

    return group_size(_decode_group(ctx)) if ctx.world_size > 1 else 1


# ------------------------------------------------------------------------------------- pool tasks


def compare_task(ctx, job, modes, params, options):
    """Cluster task: a comparison on every rank; rank 0's Comparison (on the CPU)."""
    return compare_on_ranks(ctx, job, modes, params, **options)


def decode_task(ctx, job, mode: str, params: dict, profile: bool = True):
    """Cluster task: one decode on every rank; rank 0's Result, the other ranks' sharded blocks (if any)."""
    job = job.on(ctx.device)
    vae = load_model(job, ctx.device)
    result = run_decode(ctx, vae, job.latents(ctx.device, vae), mode, params, profile=profile, model=job.model)
    if ctx.is_main:
        return result
    return result.output if result is not None and result.params.get("output") == "sharded" else None


def decode_to_disk_task(ctx, job, mode: str, params: dict, out_dir: str):
    """Cluster task: one decode, each rank writing the output it holds to `out_dir` (workbench.blocks): shard
    leaves every rank its block (output="sharded"), so no device and no host holds the whole. Rank 0 gets
    its Result (every rank's stats; output None) and the block paths."""
    from .blocks import write_block
    from .parallel.vae import SERIAL

    job = job.on(ctx.device)
    vae = load_model(job, ctx.device)
    params = {**params, "output": "sharded"} if mode == "shard" else params
    ok, _, why = fits(vae, job, mode, split_params(mode, params), _decode_group_size(ctx), budget_bytes(ctx))
    if not ok:
        raise MemoryGuardError(f"{mode}: {why}")
    result = run_decode(ctx, vae, job.latents(ctx.device, vae), mode, params, model=job.model)
    path, error = None, None
    if result is not None and result.output is not None:
        block = result.output if result.output.dim() == 5 else result.output.unsqueeze(2)  # (B, C, F, h, w)
        alone = mode in SERIAL or ctx.world_size == 1
        item = None if alone else result.plan.shard(ctx.rank)
        height, width = result.plan.pixel_size if item else block.shape[-2:]
        rows, cols = ((0, height), (0, width)) if alone else ((item.rows_px.start, item.rows_px.stop),
                                                                 (item.cols_px.start, item.cols_px.stop))
        try:
            path = str(write_block(out_dir, block, rows, cols, (*block.shape[:3], height, width),
                                   0 if alone else ctx.rank, 1 if alone else ctx.world_size))
        except OSError as e:  # every rank learns of it below: a full disk on one host fails the call everywhere
            error = e
        result.output = None
    ctx.agree(f"{mode} (writing the blocks)", error)
    paths = ctx.gather_objects(path)
    return (result, [p for p in paths if p]) if ctx.is_main else None


def generate_task(ctx, request, options):
    """Cluster task: every rank generates; each returns its GenerationResult on the CPU. Workers show no
    progress bars (their output interleaves with the notebook's)."""
    from .pipeline.run import run_generation

    return run_generation(ctx, request, replace(options, progress=False)).cpu()


# ---------------------------------------------------------------------------------------- runners


class Runner:
    """Where decodes and generations run. `compare`, `decode` and `generate` return rank 0's result."""

    world_size: int = 1

    def compare(self, job: DecodeJob, modes, *, reference: bool = True, repeats: int = 1, warmup: int = 0,
                progress: bool = False, **params):
        """Decode `job` with each of `modes` (full first, as the reference, where it fits) and measure the
        errors against it. Parameters a mode does not take are not passed to it; unknown ones raise."""
        _check_known(modes, params)
        return self._compare(job, list(modes), params, dict(reference=reference, repeats=repeats, warmup=warmup,
                                                            progress=progress))

    def decode_to_disk(self, job: DecodeJob, out_dir, mode: str = "shard", **params):
        """Decode `job` with `mode`, every rank writing the output it holds to `out_dir` (shard: its own block;
        `workbench.blocks.assemble(out_dir)` joins them). Returns rank 0's (Result, block paths)."""
        _check_known([mode], params)
        return self._everywhere(decode_to_disk_task, job, mode, params, str(out_dir))

    def generate(self, pipeline: str = "qwen-image", **kwargs):
        """A whole generation (stages, SP, CFG parallel, decode); keywords: workbench.pipeline.make_job's."""
        from .pipeline.run import make_job

        request, options = make_job(pipeline, **kwargs)
        return self._generate(request, options)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _check_known(modes, params: dict) -> None:
    """Every parameter is taken by some strategy (a misspelled keyword raises, naming the accepted ones), and each
    mode's own parameters have accepted values (checked here, before any worker decodes)."""
    from .parallel.vae import STRATEGIES, check_params, strategy_params

    accepted = sorted({k for m in STRATEGIES for k in strategy_params(m)})
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"unknown decode parameter(s) {', '.join(unknown)}; accepted: {', '.join(accepted)}")
    for mode in modes:
        if mode in STRATEGIES:
            check_params(mode, split_params(mode, params))


class LocalRunner(Runner):
    """This process, one rank (parallel modes run on one rank: world size 1)."""

    def __init__(self, device: str | None = None):
        from .runtime import default_device

        self.device = device or default_device()
        self._ctx = None

    @property
    def ctx(self):
        if self._ctx is None:
            self._ctx = local_context(self.device)
        return self._ctx

    def _compare(self, job, modes, params, options):
        return compare_on_ranks(self.ctx, job, modes, params, **options)

    def _everywhere(self, task, *args):
        return task(self.ctx, *args)

    def decode(self, job: DecodeJob, mode: str, **params):
        _check_known([mode], params)
        job = job.on(self.ctx.device)
        vae = load_model(job)
        return run_decode(self.ctx, vae, job.latents(vae=vae), mode, params, model=job.model)

    def _generate(self, request, options):
        from .pipeline.run import run_generation

        return run_generation(self.ctx, request, options)


class Cluster(WorkerPool, Runner):
    """`world_size` worker processes (a notebook's pool): every mode, serial ones included, runs in them.

        with Cluster(world_size=4, device="cuda") as cluster:   # spawned once, reused across calls
            result = cluster.decode(job, "shard")                # rank 0's output, every rank's stats
            comparison = cluster.compare(job, ["tiled", "shard"])
    """

    def _compare(self, job, modes, params, options):
        return self.run(compare_task, job, modes, params, options)[0]

    def _everywhere(self, task, *args):
        return self.run(task, *args)[0]

    def decode(self, job: DecodeJob, mode: str, **params):
        """Decode `job` with `mode` on all ranks; rank 0's Result (output and every rank's stats)."""
        _check_known([mode], params)
        return self.run(decode_task, job, mode, params)[0]

    def _generate(self, request, options):
        return self.run(generate_task, request, options)[0]


class SpmdRunner(Runner):
    """This process as one rank of a torchrun launch: every rank calls the same methods; rank 0 gets the
    results, the others None."""

    def __init__(self, device: str | None = None):
        from .runtime import init_spmd

        self.ctx = init_spmd(device)
        self.world_size = self.ctx.world_size
        self.device = str(self.ctx.device)

    def _compare(self, job, modes, params, options):
        return compare_on_ranks(self.ctx, job, modes, params, **options)

    def decode(self, job: DecodeJob, mode: str, **params):
        result = decode_task(self.ctx, job, mode, params)
        return result if self.ctx.is_main else None

    def _everywhere(self, task, *args):
        return task(self.ctx, *args)  # every rank calls it; rank 0 gets the value, the others None

    def _generate(self, request, options):
        from .pipeline.run import run_generation

        result = run_generation(self.ctx, request, options)
        return result if self.ctx.is_main else None

    @property
    def is_main(self) -> bool:
        return self.ctx.is_main

    def close(self) -> None:
        self.ctx.close()


from .checks import under_torchrun  # noqa: E402


def make_runner(world_size: int = 1, device: str | None = None) -> Runner:
    """SpmdRunner under torchrun, a Cluster of `world_size` workers for world_size > 1, else a LocalRunner."""
    from .runtime import default_device

    if under_torchrun():
        return SpmdRunner(device)
    if world_size > 1:
        return Cluster(world_size=world_size, device=(device or default_device()).split(":")[0])
    return LocalRunner(device)


__all__ += ["MemoryGuardError", "RankFailure", "compare_task", "decode_task", "decode_to_disk_task", "generate_task", "under_torchrun", "budget_bytes", "fits"]
