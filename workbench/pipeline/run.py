"""Running a generation: the job (Request + Options), the per-rank entry point, and its result.

    result = generate("qwen-image", tiny=True, steps=2)                  # this process, one rank
    with Cluster(world_size=2) as cluster:                               # workbench.runner.Cluster
        result = cluster.generate("wan2.1", tiny=True, sp=2, steps=2)   # two worker ranks
    torchrun --nproc-per-node 4 -m workbench generate --pipeline qwen-image --sp 4 --steps 4

Every rank runs `run_generation(ctx, request, options)` (the runners call it); the GenerationResult carries
the output image or video (rank 0), the final latents, every rank's stage spans and memory timeline, and
provenance.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from ..measure import RankStats, RankSummary, Result, versions
from ..models import get_spec, parse_dtype, parse_size
from ..parallel.dims import ParallelDims, use_dims
from ..parallel.dit import ATTENTION_METHODS
from ..parallel.vae import STRATEGIES
from .executor import Executor, Span
from .pipelines import build_pipeline
from .stages import Batch, Request

__all__ = ["Options", "GenerationResult", "make_job", "run_generation", "generate", "clear_pipelines"]


@dataclass(frozen=True)
class Options:
    """How to run a generation (the Request says what to generate)."""

    tiny: bool = True  # tiny configs (CPU friendly) or the real architectures
    weights: str | None = None  # a local diffusers pipeline folder (transformer/, vae/, text_encoder/, ...)
    dtype: str = "float32"
    device: str | None = None  # None: each rank's platform device
    sp: int = 0  # sequence-parallel degree; 0: world_size // cfg
    cfg: int = 1  # 2: conditional and unconditional branches on different rank groups
    attention: str = "ulysses"  # or "ring"
    decode: str = "auto"  # a workbench.parallel.vae strategy
    decode_params: dict = field(default_factory=dict)
    fused: bool = False  # workbench.ops fused modulation (Qwen-Image blocks), where installed
    compile: bool = False  # torch.compile the transformer blocks
    progress: bool = True


def make_job(pipeline: str = "qwen-image", *, size=None, **kwargs) -> tuple[Request, Options]:
    """Split keyword arguments into a Request and Options, with the pipeline's defaults; errors name the
    parameter and what it accepts. `size` is "HxW", "HxWxF" or a tuple (pixels, frames)."""
    spec = get_spec(pipeline)
    request_names = {f.name for f in fields(Request)} - {"pipeline"}
    option_names = {f.name for f in fields(Options)}
    unknown = sorted(set(kwargs) - request_names - option_names)
    if unknown:
        accepted = ", ".join(["size", *sorted(request_names | option_names)])
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)}; accepted: {accepted}")
    options = Options(**{k: v for k, v in kwargs.items() if k in option_names})
    _check_options(options)
    if size is not None and {"height", "width", "frames"} & set(kwargs):
        raise ValueError("give either size or height/width/frames, not both")
    h, w, f = _size(size) if size is not None else (spec.tiny_size if options.tiny else spec.default_size)
    given = {k: v for k, v in kwargs.items() if k in request_names}
    request = Request(pipeline=spec.name, **{"height": h, "width": w, "frames": f,
                                             "guidance_scale": spec.guidance_scale, **given})
    if options.cfg == 2 and request.guidance_scale <= 1:
        raise ValueError(f"cfg=2 (CFG parallel) needs guidance_scale > 1, got {request.guidance_scale}")
    if request.steps < 1:
        raise ValueError(f"steps must be >= 1, got {request.steps}")
    return request, options


def _size(size) -> tuple[int, int, int]:
    if isinstance(size, str):
        return parse_size(size)
    values = tuple(int(v) for v in size)
    if len(values) not in (2, 3):
        raise ValueError(f"size must be (height, width) or (height, width, frames), got {size!r}")
    return values if len(values) == 3 else (*values, 1)


def _check_options(o: Options) -> None:
    parse_dtype(o.dtype)
    if o.cfg not in (1, 2):
        raise ValueError(f"cfg (CFG-parallel degree) must be 1 or 2, got {o.cfg}")
    if o.sp < 0:
        raise ValueError(f"sp must be >= 0 (0: world_size // cfg), got {o.sp}")
    if o.attention not in ATTENTION_METHODS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_METHODS)}, got {o.attention!r}")
    if o.decode not in STRATEGIES:
        raise ValueError(f"unknown decode mode {o.decode!r}; accepted: {', '.join(STRATEGIES)}")


# ------------------------------------------------------------------------------------------- result


@dataclass
class GenerationResult(RankSummary):
    """One generation as seen from one rank (rank 0's holds the output), with every rank's spans and stats."""

    request: Request
    options: Options
    dims: ParallelDims
    rank: int
    output: torch.Tensor | None  # the VAE's pixels (B, 3, [T,] H, W), about [-1, 1] (clamped when drawn); rank 0
    latents: torch.Tensor | None  # final latents in the model's layout
    prior_token_ids: torch.Tensor | None  # glm-image: the AR tokens this rank used
    spans: list[Span]
    ranks: list[RankStats]
    step_times_s: list[float]
    decode: Result | None
    notes: list[str]
    device: str
    backend: str
    versions: dict = field(default_factory=versions)

    @property
    def strategy(self) -> str:  # the title workbench.viz.plot_memory_timeline uses
        return f"{self.request.pipeline} sp={self.dims.sp} cfg={self.dims.cfg}"

    @property
    def step_time_s(self) -> float | None:
        """Median denoising step (this rank), or None."""
        return statistics.median(self.step_times_s) if self.step_times_s else None

    def stage_times(self) -> dict[str, list[float]]:
        """Stage -> seconds on each rank."""
        out: dict[str, list[float]] = {}
        for s in sorted(self.spans, key=lambda s: s.rank):
            out.setdefault(s.stage, []).append(s.duration_s)
        return out

    def table(self) -> str:
        """Stages x ranks: seconds, and the largest per-stage peak memory."""
        world = self.dims.world_size
        memory = "peak MiB" if self.ranks[0].peak_allocated_bytes is not None else "RSS MiB"
        head = ["stage", "parallelism", *[f"rank {r} s" for r in range(world)], memory]
        rows = []
        for stage, times in self.stage_times().items():
            spans = [s for s in self.spans if s.stage == stage]
            peak = max(s.peak_bytes for s in spans) / 2**20
            rows.append([stage, self._how(spans[0].parallelism), *[f"{t:.3f}" for t in times], f"{peak:.0f}"])
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        fmt = "  ".join(f"{{:{'<' if i < 2 else '>'}{w}}}" for i, w in enumerate(widths))
        step = f", median step {self.step_time_s:.3f} s" if self.step_time_s else ""
        title = (f"{self.request.label()} | world {world}, sp {self.dims.sp}, cfg {self.dims.cfg}, "
                 f"{self.options.attention}, decode {self.options.decode}"
                 f"{'->' + self.decode.choice if self.decode is not None and self.decode.choice else ''}, "
                 f"{self.options.dtype} on {self.device}{step}")
        return "\n".join([title, fmt.format(*head), fmt.format(*["-" * w for w in widths])]
                         + [fmt.format(*r) for r in rows])

    def _how(self, parallelism: str) -> str:
        """How a stage ran: a CFG-parallel stage at CFG degree 1 ran both branches on every rank."""
        if parallelism == "cfg_parallel" and self.dims.cfg == 1:
            return "replicated (cfg 1: both branches per rank)"
        return parallelism

    def cpu(self) -> GenerationResult:
        """A copy with every tensor on the CPU (what crosses to a notebook)."""
        move = {f.name: getattr(self, f.name).detach().cpu() for f in fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)}
        return dataclasses.replace(self, **move)

    def to_dict(self) -> dict:
        d = {"request": dataclasses.asdict(self.request), "options": dataclasses.asdict(self.options),
             "dims": dataclasses.asdict(self.dims), "spans": [dataclasses.asdict(s) for s in self.spans],
             "ranks": [dataclasses.asdict(r) for r in self.ranks], "step_times_s": self.step_times_s,
             "decode": self.decode.to_dict() if self.decode is not None else None, "notes": self.notes,
             "device": self.device, "backend": self.backend, "versions": self.versions,
             "time_s": self.time_s, "peak_bytes": self.peak_bytes,
             "output_shape": list(self.output.shape) if self.output is not None else None}
        return d

    def save(self, out_dir) -> list[Path]:
        """Write the image (or the first, middle and last frames), the timeline plots and a JSON summary."""
        from .. import viz
        from . import viz as pviz

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        if self.output is not None:
            frames = self.output.shape[2] if self.output.dim() == 5 else 1
            for f in sorted({0, frames // 2, frames - 1}):
                path = out / (f"{self.request.pipeline}.png" if frames == 1 else f"{self.request.pipeline}_f{f:03d}.png")
                viz.save_png(self.output, path, frame=f)
                written.append(path)
        for name, draw in (("timeline", pviz.plot_stage_timeline), ("memory", pviz.plot_memory)):
            fig = draw(self)
            fig.savefig(out / f"{name}.png", dpi=100)
            written.append(out / f"{name}.png")
        (out / "generation.json").write_text(json.dumps(self.to_dict(), indent=1, default=str))
        return written + [out / "generation.json"]


# --------------------------------------------------------------------------------------------- running

_PIPELINES: dict = {}


def weight_bytes(request: Request, options: Options) -> int:
    """The transformer(s)' and the VAE's weights in the run's dtype, counted on the meta device."""
    import diffusers

    spec = get_spec(request.pipeline)
    size = parse_dtype(options.dtype).itemsize
    with torch.device("meta"):
        model = getattr(diffusers, spec.transformer_class)(**spec.transformer_config(options.tiny))
        count = sum(p.numel() for p in model.parameters()) * spec.experts
    from ..models import count_parameters

    return (count + count_parameters(spec.vae, tiny=options.tiny)) * size


def check_memory(request: Request, options: Options, device) -> None:
    """The memory guard of a generation: refuse, before building anything, weights that cannot fit."""
    from ..parallel.vae.auto import default_budget_bytes
    from ..runner import MemoryGuardError

    need, budget = weight_bytes(request, options), default_budget_bytes(torch.device(device))
    if need > budget:
        raise MemoryGuardError(f"{request.pipeline}{' (tiny)' if options.tiny else ''} in {options.dtype}: its "
                               f"weights alone need {need / 2**30:.1f} GiB per rank > {budget / 2**30:.1f} GiB free "
                               f"on {device}; use --tiny, a smaller dtype, or a device with more memory")


def load_pipeline(request: Request, options: Options, device):
    """The pipeline's components, built once per (pipeline, tiny, weights, dtype, device) in this process."""
    key = (request.pipeline, options.tiny, options.weights, options.dtype, str(device))
    if key not in _PIPELINES:
        check_memory(request, options, device)
        _PIPELINES[key] = build_pipeline(request.pipeline, tiny=options.tiny, weights=options.weights,
                                         dtype=options.dtype, device=device)
    return _PIPELINES[key]


def clear_pipelines() -> None:
    _PIPELINES.clear()


def run_generation(ctx, request: Request, options: Options) -> GenerationResult:
    """One rank's part of a generation; every rank of the world calls it with the same arguments."""
    if options.device is not None and torch.device(options.device).type != torch.device(ctx.device).type:
        raise ValueError(f"device={options.device!r} but this run's ranks are on {ctx.device.type} "
                         "(a Cluster's device is chosen when it is created)")
    dims = ParallelDims(ctx.world_size, sp=options.sp, cfg=options.cfg)
    use_dims(ctx, dims)  # collective when the degrees change
    pipeline = load_pipeline(request, options, ctx.device)
    pipeline.check(request)
    notes = pipeline.configure(sp_group=ctx.groups.sp, attention=options.attention, fused=options.fused,
                               compile=options.compile)
    stages = pipeline.stages(decode=options.decode, decode_params=options.decode_params)
    run = Executor(stages, ctx, progress=options.progress).run(Batch(request))
    b = run.batch
    return GenerationResult(request, options, dims, ctx.rank, b.output, b.latents, b.prior_token_ids, run.spans,
                            run.stats, b.extras.get("step_times_s", []), b.extras.get("decode"), notes,
                            str(ctx.device), ctx.backend)


def generate(pipeline: str = "qwen-image", **kwargs) -> GenerationResult:
    """Generate in this process (one rank). Keywords: see `make_job` (Request and Options fields, size)."""
    from ..runner import LocalRunner

    request, options = make_job(pipeline, **kwargs)
    return LocalRunner(options.device)._generate(request, options)
