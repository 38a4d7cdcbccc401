"""Where the one-GPU decode spends its time, and what each lever buys (issue 12, target 1).

For each config: diffusers' own `vae.decode` (bf16, real config, seeded random weights) under torch.profiler,
its self device time summed per op category; then each variant timed (median of --repeats after one
warm-up), its peak allocated memory, and its PSNR against the float32 decode of the same latent.

    python benchmarks/profile_decode.py --configs qwen-image:2048x2048,wan2.1:720x1280x21 --out prof.json

Variants (comma-separated --variants): diffusers (vae.decode as shipped), diffusers_tiled (vae.enable_tiling(),
its defaults), and workbench's strategies `full` and `tiled` (their defaults), optionally with speed levers
from workbench.ops.vae.LEVERS joined by '+': `full:channels_last+causal_conv+fused_norm`, and strategy parameters
after '@', joined by ';': `tiled:causal_conv+fused_norm@tile_batch=16;tile_px=512;stride_px=448`.
--profile names the variants to run once more under torch.profiler: self device time per aten op, summed
per category (the kernels each op launches are counted once, under their op).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from workbench.measure import versions
from workbench.metrics import psnr
from workbench.models import build_vae, parse_size
from workbench.ops.vae import optimized
from workbench.parallel.vae import decode
from workbench.runner import DecodeJob

CATEGORIES = [  # (category, substrings of aten op names); the first match wins
    ("convolution", ("conv", "cudnn")),
    ("norm", ("norm", "div", "clamp", "reciprocal", "rsqrt", "var", "mean", "sqrt")),
    ("silu", ("silu",)),
    ("copy/pad/cat", ("copy", "cat", "pad", "clone", "contiguous", "to_copy", "fill", "zero")),
    ("upsample", ("upsample",)),
    ("attention", ("attention", "bmm", "softmax", "baddbmm", "mm", "addmm")),
    ("elementwise", ("mul", "add", "sub", "where")),
]


def category(name: str) -> str:
    low = name.lower()
    return next((c for c, keys in CATEGORIES if any(k in low for k in keys)), "other")


def sync():
    torch.cuda.synchronize()


def timed(fn, repeats: int):
    fn()  # warm-up (and compile, where a lever compiles)
    sync()
    times = []
    torch.cuda.reset_peak_memory_stats()
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return out, times, torch.cuda.max_memory_allocated()


def variant_fn(name: str, vae, z):
    if name == "diffusers":
        return lambda: vae.decode(z).sample
    if name == "diffusers_tiled":
        def run():
            vae.enable_tiling()
            try:
                return vae.decode(z).sample
            finally:
                vae.disable_tiling()
        return run
    spec, _, options = name.partition("@")
    mode, _, levers = spec.partition(":")
    if mode not in ("full", "tiled"):
        raise SystemExit(f"unknown variant {name!r}")
    levers = levers.split("+") if levers else []
    params = {k: (int(v) if v.isdigit() else v) for k, _, v in (o.partition("=") for o in options.split(";") if o)}

    def run():
        with optimized(vae, levers):
            return decode(vae, z, mode, profile=False, **params).output
    return run


def profile(fn) -> tuple[dict, str]:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fn()
    sync()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        sync()
    events = prof.key_averages()
    per_category = defaultdict(float)
    per_op = {}
    for e in events:
        if not e.key.startswith(("aten::", "workbench::")):  # kernels and profiler markers: counted under their op
            continue
        self_us = getattr(e, "self_device_time_total", None)
        if self_us is None:
            self_us = e.self_cuda_time_total
        if self_us <= 0:
            continue
        per_category[category(e.key)] += self_us / 1e3
        per_op[e.key] = round(self_us / 1e3, 3)
    top = dict(sorted(per_op.items(), key=lambda kv: -kv[1])[:25])
    table = events.table(sort_by="self_cuda_time_total", row_limit=30)
    total = sum(per_category.values())
    return {"self_device_ms_total": round(total, 2), "self_device_ms_by_category": {k: round(v, 2) for k, v in sorted(per_category.items(), key=lambda kv: -kv[1])},
            "self_device_ms_top_ops": top}, table


def run_config(model: str, size, variants, repeats: int, dtype: str, prof_dir: Path, profiled) -> dict:
    job = DecodeJob(model=model, size=size, tiny=False, weights="random", dtype=dtype, device="cuda")
    vae = build_vae(model, tiny=False, weights="random", dtype=dtype, device="cuda")
    z = job.latents("cuda", vae)
    ref_vae = copy.deepcopy(vae).float()
    with torch.inference_mode():
        ref = ref_vae.decode(z.float()).sample.float()
    del ref_vae
    torch.cuda.empty_cache()
    record = {"model": model, "size": list(size), "dtype": dtype, "latent_shape": list(z.shape), "variants": {}}
    with torch.inference_mode():
        for name in profiled:
            summary, table = profile(variant_fn(name, vae, z))
            record.setdefault("profiles", {})[name] = summary
            label = name.replace(":", "_").replace("+", "-")
            (prof_dir / f"profile_{model}_{'x'.join(map(str, size))}_{label}.txt").write_text(table)
            print(name, json.dumps(summary["self_device_ms_by_category"]), flush=True)
        for name in variants:
            try:
                out, times, peak = timed(variant_fn(name, vae, z), repeats)
            except Exception as e:  # a lever that fails is recorded, not fatal to the others
                record["variants"][name] = {"error": f"{type(e).__name__}: {e}"[:500]}
                print(f"{model} {name}: {type(e).__name__}: {e}", flush=True)
                continue
            row = {"median_s": statistics.median(times), "times_s": times, "peak_gib": peak / 2**30,
                   "psnr_vs_fp32_db": psnr(out.float(), ref)}
            record["variants"][name] = row
            print(f"{model} {'x'.join(map(str, size))} {name:40s} {row['median_s']:.3f} s  {row['peak_gib']:.2f} GiB "
                  f"{row['psnr_vs_fp32_db']:.2f} dB", flush=True)
            del out
            torch.cuda.empty_cache()
    return record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", required=True, help="MODEL:HxW[xF],...")
    p.add_argument("--variants", default="diffusers,full")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--profile", default="", help="variants to profile, comma-separated (default: none)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.backends.cudnn.benchmark = True  # both sides: diffusers and ours pick the best conv kernel
    records = []
    for item in args.configs.split(","):
        model, size = item.split(":")
        records.append(run_config(model, parse_size(size), args.variants.split(","), args.repeats, args.dtype,
                                  out.parent, [v for v in args.profile.split(",") if v]))
        doc = {"command": "python " + " ".join(sys.argv), "versions": versions(), "records": records,
               "note": "median of --repeats after one warm-up; peak = torch.cuda.max_memory_allocated over the "
                       "timed runs (weights included); PSNR vs the float32 decode of the same latent (range 2)"}
        out.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
