"""Denoising step time of the real-size DiTs, sequence-parallel over all ranks of one torchrun launch.

One launch measures SP = the number of processes; run it once per degree (from the repository root):

    torchrun --nproc-per-node 1 benchmarks/bench_pipeline.py
    torchrun --nproc-per-node 2 benchmarks/bench_pipeline.py
    torchrun --nproc-per-node 4 benchmarks/bench_pipeline.py
    python benchmarks/bench_pipeline.py --smoke                          # CPU, tiny configs, one rank
    torchrun --nproc-per-node 2 benchmarks/bench_pipeline.py --smoke     # CPU, tiny configs, gloo

Models (random weights, bf16): the Qwen-Image transformer (QwenImageTransformer2DModel defaults, 20B) at
1024x1024 (4096 image + 256 text tokens) and the Wan2.1-T2V-1.3B transformer at 480x832x81 (32760 image
tokens, 512 text tokens). A step here is one transformer forward, which is a denoising step without CFG
(true CFG runs two, or one per rank group with CFG parallel); the scheduler update is negligible.

Variants: eager and torch.compile (each block's forward, default mode, no CUDA graphs), each without and
with the fused modulation ops (Qwen-Image only; recorded as unavailable where workbench.ops is missing), and
`graphs`: each block compiled with mode="reduce-overhead" (CUDA graphs), for the launch-bound SP=4 step.
Timing: CUDA events around each forward after warm-up, a barrier before each; a step's time is the
slowest rank's; the table gives the median over steps. Also recorded: per-rank peak allocated memory,
the compile time (first compiled call), errors (a failing variant is recorded, the others still run).

Writes data/bench/pipeline_<gpu>_sp<N>.json (machine, versions, command, one row per model x variant; rows of
an earlier launch at the same path that this one did not measure are kept) and prints a table last.
Budget: about 6 minutes per launch on H200s, most of it compiling; split a launch with --models if needed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from workbench.measure import versions  # noqa: E402
from workbench.models import get_spec  # noqa: E402
from workbench.parallel.dit import parallelize_dit  # noqa: E402
from workbench.pipeline.components import build_transformer, image_tokens  # noqa: E402
from workbench.pipeline.qwen_image import pack  # noqa: E402
from workbench.runtime import init_spmd  # noqa: E402

SIZES = {"qwen-image": (1024, 1024, 1), "wan2.1": (480, 832, 81)}
SMOKE_SIZES = {"qwen-image": (128, 128, 1), "wan2.1": (64, 64, 5)}
TEXT_TOKENS = {"qwen-image": 256, "wan2.1": 512}
VARIANTS = ("eager", "compile", "eager+fused", "compile+fused", "graphs")  # graphs: compile mode reduce-overhead
COMPILE = {"eager": False, "compile": True, "graphs": "reduce-overhead"}
eager_outputs: dict = {}  # model -> the eager variant's output, the reference of the other variants


def inputs_for(name: str, size, tiny: bool, device, dtype) -> dict:
    """Seeded model inputs (identical on every rank): latents, text embeddings, timestep."""
    spec = get_spec(name)
    g = torch.Generator().manual_seed(0)
    h, w, f = size
    text = TEXT_TOKENS[name] if not tiny else 16
    width = spec.text_dim if not tiny else 32
    rand = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    if name == "qwen-image":
        lh, lw = h // 8, w // 8
        return dict(hidden_states=pack(rand(1, 16, 1, lh, lw)), encoder_hidden_states=rand(1, text, width),
                    timestep=torch.tensor([0.5], device=device, dtype=dtype), img_shapes=[[(1, lh // 2, lw // 2)]],
                    return_dict=False)
    t = (f - 1) // 4 + 1
    return dict(hidden_states=rand(1, 16, t, h // 8, w // 8), encoder_hidden_states=rand(1, text, width),
                timestep=torch.tensor([500.0], device=device), return_dict=False)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _barrier(ctx):
    if ctx.world_size > 1:
        ctx.barrier()


def time_steps(model, inputs, ctx, warmup: int, steps: int):
    """(per-step seconds of this rank after `warmup` untimed forwards, the first forward's seconds, the output)."""
    device = ctx.device
    times = []
    with torch.inference_mode():
        for i in range(warmup + steps):
            _barrier(ctx)
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = model(**inputs)[0]
                end.record()
                end.synchronize()
                elapsed = start.elapsed_time(end) / 1000
            else:
                t0 = time.perf_counter()
                out = model(**inputs)[0]
                elapsed = time.perf_counter() - t0
            times.append(elapsed)
    return times[warmup:], times[0], out


def _dynamo_counts() -> tuple[int, int]:
    """(graphs compiled, graph breaks) so far in this process."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


def _gather(value, ctx) -> list:
    if ctx.world_size == 1:
        return [value]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, value)
    return out


def run_variant(model, name, variant, inputs, ctx, args, size) -> dict:
    compile_as, fused = COMPILE[variant.split("+")[0]], variant.endswith("fused")
    compiled = bool(compile_as)
    row = dict(model=name, variant=variant, world=ctx.world_size, sp=ctx.world_size, attention=args.attention,
               compile=compiled, fused=fused)
    try:
        notes = parallelize_dit(model, group=None, attention=args.attention, fused="always" if fused else False,
                                compile=compile_as)  # "always": measured also where the pipeline would decline
        row["notes"] = notes
        if fused and not any(n.startswith("fused ops: workbench.ops") for n in notes):
            row["error"] = "; ".join(notes) or "no fused path"
            return row
        if ctx.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(ctx.device)
        warmup = args.warmup + (args.compile_warmup if compiled else 0)
        graphs, breaks = _dynamo_counts()
        mine, first, out = time_steps(model, inputs, ctx, warmup, args.steps)
        peak = torch.cuda.max_memory_allocated(ctx.device) if ctx.device.type == "cuda" else None
    except Exception as e:  # recorded; the next variant still runs (every rank fails alike: same inputs)
        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        return row
    if compiled:
        row["dynamo_graphs"], row["dynamo_graph_breaks"] = (a - b for a, b in zip(_dynamo_counts(), (graphs, breaks)))
    if variant in args.profile.split(","):
        profile_step(model, name, variant, inputs, ctx, args, size)
    reference = eager_outputs.setdefault(name, out.float()) if variant == "eager" else eager_outputs.get(name)
    if reference is not None:  # random weights: a large (or nan) difference means the variant computes something else
        row["max_abs_vs_eager"] = float((out.float() - reference).abs().max())
        row["output_abs_max"] = float(reference.abs().max())
    per_rank = _gather((mine, first, peak), ctx)
    slowest = [max(r[0][i] for r in per_rank) for i in range(args.steps)]  # a step ends when its last rank does
    row.update(step_s=statistics.median(slowest), step_min_s=min(slowest), step_max_s=max(slowest),
               steps_s=slowest, first_call_s=max(r[1] for r in per_rank),
               peak_gib_per_rank=[None if r[2] is None else r[2] / 2**30 for r in per_rank])
    return row


def profile_step(model, name, variant, inputs, ctx, args, size) -> None:
    """One more forward under torch.profiler; rank 0 writes the ops sorted by self device time."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if ctx.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    _barrier(ctx)
    with torch.inference_mode(), torch.profiler.profile(activities=activities) as prof:
        model(**inputs)
        _sync(ctx.device)
    if ctx.rank == 0:
        hw = "x".join(map(str, size[:2] if size[2] == 1 else size))
        out = Path(args.out) / "profiles" / f"pipeline_{name}_{hw}_sp{ctx.world_size}_{variant.replace('+', '_')}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        sort = "self_cuda_time_total" if ctx.device.type == "cuda" else "self_cpu_time_total"
        out.write_text(f"# {command(sys.argv[1:])}\n# one forward, rank 0 of {ctx.world_size}\n"
                       + prof.key_averages().table(sort_by=sort, row_limit=60, max_name_column_width=70))


def machine(ctx) -> dict:
    info = {"hostname": socket.gethostname(), "platform": platform.platform(), "world_size": ctx.world_size,
            "backend": ctx.backend, "device": str(ctx.device)}
    if ctx.device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(ctx.device), gpu_count=torch.cuda.device_count(),
                    gpu_memory_gib=torch.cuda.get_device_properties(ctx.device).total_memory / 2**30)
    return info


def command(argv: list[str]) -> str:
    """The command line that reproduces this run, from the repository root."""
    prefix = f"torchrun --nproc-per-node {os.environ['WORLD_SIZE']} " if "WORLD_SIZE" in os.environ else "python "
    return prefix + " ".join([os.path.relpath(__file__, ROOT), *argv])


def table(rows: list[dict]) -> str:
    head = (f"{'model':<11} {'variant':<14} {'sp':>2} {'step ms':>9} {'min ms':>8} {'first s':>8} {'peak GiB':>9} "
            f"{'vs eager':>9}  note")
    lines = [head, "-" * (len(head) + 10)]
    for r in rows:
        if "step_s" in r:
            peak = max((p for p in r["peak_gib_per_rank"] if p is not None), default=None)
            diff = r.get("max_abs_vs_eager")
            breaks = f"{r['dynamo_graph_breaks']} graph breaks" if r.get("dynamo_graph_breaks") else ""
            lines.append(f"{r['model']:<11} {r['variant']:<14} {r['sp']:>2} {1000 * r['step_s']:>9.1f} "
                         f"{1000 * r['step_min_s']:>8.1f} {r['first_call_s']:>8.1f} "
                         f"{'-' if peak is None else f'{peak:.1f}':>9} {'-' if diff is None else f'{diff:.1e}':>9}"
                         f"  {breaks}")
        else:
            lines.append(f"{r['model']:<11} {r['variant']:<14} {r['sp']:>2} {'-':>9} {'-':>8} {'-':>8} {'-':>9} "
                         f"{'-':>9}  {r.get('error', '')[:70]}")
    return "\n".join(lines)


def merge_previous(record: dict, old: dict | None) -> dict:
    """Keep the rows of an earlier run at the same path (same GPU and SP degree) that this run did not
    measure again, so that separate launches (--models qwen-image, then --models wan2.1) fill one file.
    `old` is that file as it was when this launch started (this launch rewrites it after every row)."""
    if old is None:
        return {**record, "commands": [record["command"]]}
    def key(r):
        return r["model"], r["variant"], tuple(r.get("size") or SIZES[r["model"]])

    measured = {key(r) for r in record["rows"]}
    kept = [r for r in old.get("rows", []) if key(r) not in measured]
    return {**record, "rows": kept + record["rows"], "commands": old.get("commands", [old.get("command")]) +
            [record["command"]]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="qwen-image,wan2.1", help="comma-separated: qwen-image, wan2.1")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated: {', '.join(VARIANTS)}")
    p.add_argument("--attention", default="ulysses", help="ulysses or ring")
    p.add_argument("--steps", type=int, default=5, help="timed forwards per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed forwards first")
    p.add_argument("--compile-warmup", type=int, default=1, help="extra untimed forwards for compiled variants")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--sizes", default="", help="MODEL=HxW[xF] overrides of the default sizes, comma-separated, "
                   "e.g. qwen-image=2048x2048")
    p.add_argument("--out", default=str(ROOT / "data" / "bench"))
    p.add_argument("--profile", default="", help="comma-separated variants to run once more under torch.profiler; "
                   "rank 0 writes the per-op table to OUT/profiles/pipeline_<model>_<HxW>_sp<N>_<variant, + as _>.txt")
    p.add_argument("--smoke", action="store_true", help="tiny configs on the CPU (gloo), float32, 1+2 steps")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [m for m in models if m not in SIZES] + [v for v in variants if v not in VARIANTS]
    if bad:
        p.error(f"unknown model/variant {', '.join(bad)}; models: {', '.join(SIZES)}; variants: {', '.join(VARIANTS)}")
    sizes = dict(SMOKE_SIZES if args.smoke else SIZES)
    for item in filter(None, (i.strip() for i in args.sizes.split(","))):
        name, _, text = item.partition("=")
        if name not in SIZES or not re.fullmatch(r"\d+x\d+(x\d+)?", text):
            p.error(f"--sizes item {item!r}: want MODEL=HxW[xF] with MODEL one of {', '.join(SIZES)}")
        h, w, *f = map(int, text.split("x"))
        sizes[name] = (h, w, f[0] if f else 1)
    if args.smoke:
        args.dtype, args.steps, args.warmup, args.compile_warmup = "float32", 2, 1, 0
    ctx = init_spmd("cpu" if args.smoke else None)
    dtype = getattr(torch, args.dtype)
    rows = []
    earlier: dict = {}  # output path -> its content before this launch's first write

    def write() -> tuple[dict, Path]:
        """Rank 0 writes after every row, so a launch cut off at its time limit keeps what it measured."""
        record = {"benchmark": "pipeline denoising step (one DiT forward)", "command": command(argv),
                  "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(ctx),
                  "versions": versions(), "rows": list(rows)}
        gpu = record["machine"].get("gpu", "cpu-smoke" if args.smoke else "cpu")
        slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
        out = Path(args.out) / f"pipeline_{slug}_sp{ctx.world_size}.json"
        if out not in earlier:
            earlier[out] = json.loads(out.read_text()) if out.is_file() else None
        record = merge_previous(record, earlier[out])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=1))
        return record, out

    for name in models:
        size = sizes[name]
        t0 = time.perf_counter()
        model = build_transformer(get_spec(name), tiny=args.smoke, dtype=dtype, device=ctx.device)
        build_s = time.perf_counter() - t0
        inputs = inputs_for(name, size, args.smoke, ctx.device, dtype)
        for variant in variants:
            row = run_variant(model, name, variant, inputs, ctx, args, size)
            row.update(size=list(size), image_tokens=image_tokens(get_spec(name), *size), text_tokens=inputs[
                "encoder_hidden_states"].shape[1], dtype=args.dtype, build_s=build_s, tiny=args.smoke)
            rows.append(row)
            if ctx.rank == 0:
                print(table([row]).splitlines()[-1], flush=True)
                write()
        del model, inputs
        eager_outputs.clear()
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    if ctx.rank == 0:
        record, out = write()
        print(f"\n{table(record['rows'])}\nwrote {out}")
    _barrier(ctx)
    ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
