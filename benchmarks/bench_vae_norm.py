"""Benchmark of the fused VAE norm + SiLU kernels against diffusers' modules and torch.compile of them.

    PYTHONPATH=. python benchmarks/bench_vae_norm.py            # one H100/H200 -> data/bench/vae_norm_<gpu>.json
    PYTHONPATH=. python benchmarks/bench_vae_norm.py --sweep    # also time other tiles, splits and warps
    PYTHONPATH=. python benchmarks/bench_vae_norm.py --smoke    # CPU sanity check, tiny shapes -> runs/bench/
    TRITON_INTERPRET=1 PYTHONPATH=. python benchmarks/bench_vae_norm.py --smoke   # same, Triton interpreted

Shapes, bf16, as the decoders meet them:
  rms    Wan2.1's decoder at 720x1280, a 4-frame chunk, at its three widths: (1, 96, 4, 720, 1280),
         (1, 192, 4, 360, 640), (1, 384, 4, 180, 320); WanRMS_norm(C, images=False)
  group  GLM-Image's AutoencoderKL decoder at 2048x2048: (1, 128, 2048, 2048), (1, 256, 1024, 1024),
         (1, 512, 512, 512); nn.GroupNorm(32, C, eps=1e-6)
Compared, each a norm then SiLU:
  fused     the Triton launcher (kernels/vae_norm.py)
  eager     diffusers' modules: the norm, then nn.SiLU
  compiled  torch.compile(fullgraph=True, dynamic=False) of that eager sequence
  copy      x.clone(): the same bytes read and written, the bandwidth reference
Times are triton.testing.do_bench medians (L2 flushed before each call). GB/s = (bytes of x + bytes of y) /
time, the least traffic any implementation needs; pct_of_copy = copy ms / ms. The GroupNorm kernels read x
twice (statistics, then apply), so about 67% of copy is their ceiling; the RMS kernel reads x once for
C <= 512 (kernels.vae_norm.MAX_ONE_TILE_C). Accuracy: the fused output against the float32 reference (one
rounding), in units of the output dtype's eps, and the largest difference to eager diffusers.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from workbench.kernels import vae_norm_ref

SHAPES = {
    "rms": [(1, 96, 4, 720, 1280), (1, 192, 4, 360, 640), (1, 384, 4, 180, 320)],
    "group": [(1, 128, 2048, 2048), (1, 256, 1024, 1024), (1, 512, 512, 512)],
}
SMOKE_SHAPES = {"rms": [(1, 96, 1, 9, 16), (1, 48, 2, 5, 7)], "group": [(1, 128, 16, 16), (1, 64, 9, 11)]}
GROUPS = 32  # GLM-Image's AutoencoderKL (norm_num_groups)
EPS = {"rms": 1e-12, "group": 1e-6}  # F.normalize's default in WanRMS_norm; diffusers' VAE GroupNorm
SWEEP = {  # launcher overrides timed with --sweep
    "rms": [{"block_c": 32, "block_s": 128, "num_warps": 4}, {"block_c": 64, "block_s": 64, "num_warps": 4},
            {"block_c": 32, "block_s": 256, "num_warps": 8}, {"num_warps": 4}, {"num_warps": 16}],
    "group": [{"stats_block": 1024}, {"stats_block": 4096}, {"block_s": 1024}, {"block_s": 4096, "num_warps": 8},
              {"splits": 8}, {"splits": 64}],
}


# --- the sequences compared ----------------------------------------------------------------------------------

def eager_sequence(op: str, channels: int, dtype, device, seed=0) -> nn.Sequential:
    """diffusers' norm with seeded parameters near a trained model's (gamma/weight ~ 1, bias ~ 0), then SiLU."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

    torch.manual_seed(seed)
    norm = WanRMS_norm(channels, images=False) if op == "rms" else nn.GroupNorm(GROUPS, channels, eps=EPS[op])
    with torch.no_grad():
        for name, p in norm.named_parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (0.0 if name == "bias" else 1.0))
    return nn.Sequential(norm, nn.SiLU()).to(device=device, dtype=dtype).eval()


def fused_sequence(op: str, eager: nn.Sequential, impl, **launch):
    """The fused op of `impl` (kernels.vae_norm, workbench.ops or REFERENCES) with eager's parameters."""
    norm = eager[0]
    if op == "rms":
        return lambda x: impl.rms_norm_silu(x, norm.gamma, None, EPS[op], True, **launch)
    return lambda x: impl.group_norm_silu(x, GROUPS, norm.weight, norm.bias, EPS[op], True, **launch)


REFERENCES = SimpleNamespace(rms_norm_silu=vae_norm_ref.rms_norm_silu_reference,
                             group_norm_silu=vae_norm_ref.group_norm_silu_reference)


# --- timing --------------------------------------------------------------------------------------------------

def median_ms(fn, device, warmup_ms: float, rep_ms: float) -> float:
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")
    fn()  # CPU (--smoke): wall clock, a few calls
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def max_error_in_eps(actual, expected) -> float:
    """max |actual - expected| / (eps |expected| + 1e-5), eps of the output dtype: about 1 means one rounding step."""
    eps = torch.finfo(actual.dtype).eps
    err = (actual.float() - expected.float()).abs()
    return float((err / (eps * expected.float().abs() + 1e-5)).max())


def bench_shape(op: str, shape, args, device, dtype, impl, sweep_launches: bool) -> dict:
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(*shape, generator=gen, device=device, dtype=torch.float32).mul_(2).add_(0.5).to(dtype)
    eager = eager_sequence(op, shape[1], dtype, device)
    fused = fused_sequence(op, eager, impl)
    torch._dynamo.reset()
    compiled = torch.compile(eager, fullgraph=True, dynamic=False)
    with torch.no_grad():
        out = fused(x)
        error_in_eps = max_error_in_eps(out, fused_sequence(op, eager, REFERENCES)(x))
        diff_vs_eager = float((out.float() - eager(x).float()).abs().max())
        start = time.perf_counter()
        compiled(x)  # compile outside the timing
        compile_s = time.perf_counter() - start
        runs = {"fused": fused, "eager": eager, "compiled": compiled, "copy": torch.clone}
        ms = {name: median_ms(lambda fn=fn: fn(x), device, args.warmup_ms, args.rep_ms) for name, fn in runs.items()}
        sweep = {}
        if sweep_launches:
            for launch in SWEEP[op]:
                sweep[json.dumps(launch)] = median_ms(lambda f=fused_sequence(op, eager, impl, **launch): f(x), device,
                                                      args.warmup_ms, args.rep_ms)
    moved = 2 * x.numel() * x.element_size()  # x read once, y written once
    row = {"op": op, "shape": list(shape), "dtype": str(dtype).removeprefix("torch."), "bytes_moved": moved,
           "ms": ms, "GBps": {k: moved / t / 1e6 for k, t in ms.items()},
           "pct_of_copy": {k: 100 * ms["copy"] / t for k, t in ms.items()},
           "fused_speedup_vs_eager": ms["eager"] / ms["fused"], "fused_speedup_vs_compiled": ms["compiled"] / ms["fused"],
           "fused_error_vs_reference_in_eps": error_in_eps, "fused_max_abs_diff_vs_eager": diff_vs_eager,
           "compile_s": compile_s}
    if sweep:
        row["fused_ms_by_launch"] = sweep
    print(f"  {op:5s} {str(tuple(shape)):24s} fused {ms['fused']:8.3f} ms ({row['pct_of_copy']['fused']:3.0f}% of copy), "
          f"eager {ms['eager']:8.3f}, compiled {ms['compiled']:8.3f}, copy {ms['copy']:8.3f}; "
          f"error {error_in_eps:.2f} eps", flush=True)
    return row


# --- provenance, table, main ---------------------------------------------------------------------------------

def machine(device) -> dict:
    if device.type != "cuda":
        return {"device": "cpu", "cpu_count": os.cpu_count()}
    props = torch.cuda.get_device_properties(device)
    return {"device": "cuda", "gpu": props.name, "sm_count": props.multi_processor_count,
            "memory_GiB": round(props.total_memory / 2**30, 1), "compute_capability": f"{props.major}.{props.minor}",
            "l2_cache_MiB": getattr(props, "L2_cache_size", 0) / 2**20}


def table(result: dict) -> str:
    lines = [f"{result['machine'].get('gpu', 'cpu')}; fused = {result['fused_impl']}",
             f"{'op':5s} {'shape':24s} {'MB':>7s} {'fused ms':>9s} {'eager ms':>9s} {'compiled':>9s} {'copy ms':>8s} "
             f"{'fused GB/s':>10s} {'% copy':>6s} {'vs eager':>8s} {'vs comp':>7s}"]
    for r in result["rows"]:
        lines.append(f"{r['op']:5s} {str(tuple(r['shape'])):24s} {r['bytes_moved'] / 1e6:7.0f} {r['ms']['fused']:9.3f} "
                     f"{r['ms']['eager']:9.3f} {r['ms']['compiled']:9.3f} {r['ms']['copy']:8.3f} "
                     f"{r['GBps']['fused']:10.0f} {r['pct_of_copy']['fused']:6.1f} "
                     f"{r['fused_speedup_vs_eager']:7.2f}x {r['fused_speedup_vs_compiled']:6.2f}x")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="CPU sanity check, tiny shapes; fused = Triton interpreted if TRITON_INTERPRET=1, else native")
    p.add_argument("--ops", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--sweep", action="store_true", help="also time the launcher overrides of SWEEP")
    p.add_argument("--warmup-ms", type=float, default=25)
    p.add_argument("--rep-ms", type=float, default=100)
    p.add_argument("--out", type=Path, help="JSON path (default data/bench/vae_norm_<gpu>.json; smoke runs/bench/)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cpu" and not args.smoke:
        sys.exit("no CUDA device: run on a GPU, or pass --smoke for the CPU sanity check")
    dtype = getattr(torch, args.dtype)
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"  # CPU: set before triton was first imported
    if importlib.util.find_spec("triton") is not None and (device.type == "cuda" or interpreted):
        from workbench.kernels import vae_norm as impl

        fused_impl = "triton" if device.type == "cuda" else "triton-interpreter"
    else:
        from workbench import ops as impl

        fused_impl = "workbench.ops (native)"
    if device.type == "cuda":
        torch.cuda.init()

    from workbench.measure import versions

    started = time.perf_counter()
    result = {"benchmark": "vae_norm", "smoke": args.smoke, "command": "python " + shlex.join(sys.argv),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(device),
              "versions": versions(), "fused_impl": fused_impl,
              "timer": "triton.testing.do_bench median (L2 flushed)" if device.type == "cuda" else "wall clock median",
              "rows": []}
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    for op in args.ops:
        for shape in shapes[op]:
            result["rows"].append(bench_shape(op, shape, args, device, dtype, impl,
                                              args.sweep and fused_impl.startswith("triton")))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    result["total_s"] = time.perf_counter() - started

    out = args.out or (Path("runs/bench/vae_norm_smoke.json") if args.smoke
                       else Path("data/bench") / f"vae_norm_{_slug(result['machine']['gpu'])}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out} ({result['total_s']:.0f} s)\n")
    print(table(result))
    return result


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


if __name__ == "__main__":
    main()
