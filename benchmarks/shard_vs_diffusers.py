"""`shard` on 4 GPUs against diffusers' own one-GPU `vae.decode`: time, peak memory and PSNR, in one launch.

    PYTHONPATH=. torchrun --nproc-per-node 4 benchmarks/shard_vs_diffusers.py \
        --configs qwen-image:2048x2048,wan2.1:720x1280x81 --out data/bench/shard_vs_diffusers.json
    PYTHONPATH=. torchrun --nproc-per-node 4 benchmarks/shard_vs_diffusers.py --tiny \
        --configs qwen-image:256x256,wan2.1:128x128x9 --repeats 1 --out /tmp/svd.json   # CPU smoke (gloo)

Per config, with the preset's real config and seeded random weights (--tiny: the tiny config):
1. rank 0 alone (the others wait at a barrier): diffusers' `vae.decode(z).sample` in --dtype, median of
   --repeats after one warm-up, peak allocated memory with the weights resident; then the float32 decode
   of the same latent with a float32 copy of the model, the reference of both PSNRs (kept on the CPU);
2. every rank: the `shard` strategy with its defaults (output gathered to rank 0), timed exactly as
   `python -m workbench bench --modes shard` times it (runner.compare_on_ranks: a barrier before each
   decode, the device synchronised around it, the slowest rank's time, every rank's peak).
Rank 0 rewrites --out after each part, so a run cut short keeps what it measured. A failure of rank 0's
decodes (out of memory) is recorded in the row and shard still runs: every rank meets the same collectives.
A shard failure on every rank (the memory guard, a size the grid cannot take) is recorded likewise; one on
some ranks only ends the launch, as their peers are left inside a data collective.
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys

import torch

from workbench.measure import Measure
from workbench.metrics import psnr
from workbench.models import get_preset, parse_size
from workbench.report import write_bench
from workbench.runner import DecodeJob, MemoryGuardError, clear_model_cache, compare_on_ranks, load_model
from workbench.runtime import RankFailure, init_spmd


def free_device_memory(device: torch.device) -> None:
    gc.collect()  # an exception's traceback may still hold tensors until collected
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measured(fn, device, repeats: int):
    """(last output, times, peak bytes) of `fn` after one warm-up; `Measure` synchronises the device at both
    ends and resets the allocator's peak at the start, with the model resident (the peak includes it)."""
    fn()
    times, peaks, out = [], [], None
    for _ in range(repeats):
        del out  # the previous output is not part of the next run's peak
        with Measure(device, sync=False) as m:
            out = fn()
        times.append(m.elapsed)
        peaks.append(m.stats().peak_bytes)
    return out, times, max(peaks)


def diffusers_on_rank0(job: DecodeJob, device, repeats: int, row: dict) -> torch.Tensor | None:
    """diffusers' decode in the job's dtype (timed), then the float32 reference; fills `row`, returns the reference on the CPU."""
    vae = load_model(job, device)  # the cached model shard reuses: one copy of the weights on rank 0
    z = job.latents(device, vae)
    with torch.inference_mode():
        out, times, peak = measured(lambda: vae.decode(z).sample, device, repeats)
        out = out.float().cpu()
        row.update(diffusers_s=statistics.median(times), diffusers_times_s=times, diffusers_peak_bytes=peak)
        ref_vae = copy.deepcopy(vae).float()
        ref = ref_vae.decode(z.float()).sample.float().cpu()
    del ref_vae  # freed before shard runs, so rank 0's shard peak holds only the working model
    row["psnr_fp32_db"]["diffusers_bf16"] = psnr(out, ref)
    return ref


def diffusers_part(ctx, job: DecodeJob, repeats: int, row: dict) -> torch.Tensor | None:
    """Rank 0's decodes, the others waiting; a failure is recorded in `row` (every rank meets the barrier)."""
    ref = None
    if ctx.is_main:
        try:
            ref = diffusers_on_rank0(job, ctx.device, repeats, row)
        except Exception as e:  # which decode failed: the timed one, or the float32 reference after it
            step = "float32 reference: " if "diffusers_s" in row else ""
            row["diffusers_error"] = f"{step}{type(e).__name__}: {e}"[:500]
        free_device_memory(ctx.device)
    ctx.barrier()  # gloo (the control group): the other ranks may wait out rank 0's long decodes
    return ref


def shard_part(ctx, job: DecodeJob, repeats: int, row: dict, ref: torch.Tensor | None, levers: tuple = ()) -> None:
    """shard on every rank (with `levers` inside each rank), timed as `workbench bench` times it; rank 0 fills `row`."""
    params = {"levers": levers} if levers else {}
    try:
        comparison = compare_on_ranks(ctx, job, ["shard"], params, reference=False, repeats=repeats, warmup=1)
    except (MemoryGuardError, RankFailure) as e:
        # Only a failure every rank shares (the memory guard, a plan the size cannot take) leaves no rank
        # inside a data collective; after any other, end the launch (torchrun stops the waiting ranks).
        if isinstance(e, RankFailure) and len(e.failures) < ctx.world_size:
            raise
        comparison, row["shard_error"] = None, f"{type(e).__name__}: {e}"[:500]
    clear_model_cache()
    free_device_memory(ctx.device)
    if comparison is None or not ctx.is_main:
        return
    r = comparison.results["shard"]
    row.update(shard_s=statistics.median(r.times_s), shard_times_s=r.times_s, grid=list(r.plan.grid),
               shard_peak_bytes=[s.peak_bytes for s in r.ranks])
    if ref is not None:
        if r.output.shape != ref.shape:  # psnr would broadcast silently
            raise RuntimeError(f"shard output {tuple(r.output.shape)} != reference {tuple(ref.shape)}")
        row["psnr_fp32_db"]["shard"] = psnr(r.output.float(), ref)
    if "diffusers_s" in row:
        row.update(speedup_vs_diffusers=row["diffusers_s"] / row["shard_s"],
                   peak_ratio=max(row["shard_peak_bytes"]) / row["diffusers_peak_bytes"])
    if len(row["psnr_fp32_db"]) == 2:
        row["psnr_deficit_db"] = row["psnr_fp32_db"]["diffusers_bf16"] - row["psnr_fp32_db"]["shard"]


def summary(row: dict) -> str:
    gib = 2**30
    size = "x".join(map(str, row["size"][:2] if row["size"][2] == 1 else row["size"]))
    parts = [f"{row['model']} {size}:"]
    if "diffusers_s" in row:
        parts.append(f"diffusers {row['diffusers_s']:.3f} s {row['diffusers_peak_bytes'] / gib:.2f} GiB")
    if "shard_s" in row:
        parts.append(f"shard {row['shard_s']:.3f} s {max(row['shard_peak_bytes']) / gib:.2f} GiB/rank")
    if "speedup_vs_diffusers" in row:
        parts.append(f"speed-up {row['speedup_vs_diffusers']:.2f}x peak ratio {row['peak_ratio']:.2f}")
    parts += [f"PSNR {k} {v:.2f} dB" for k, v in row["psnr_fp32_db"].items()]
    parts += [f"{k}: {row[k]}" for k in ("diffusers_error", "shard_error") if k in row]
    return "  ".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", required=True, help="comma-separated MODEL:HxW[xF]")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--tiny", action="store_true", help="the presets' tiny configs (a CPU smoke run)")
    p.add_argument("--levers", default="", help="shard's speed levers inside each rank, comma-separated "
                   "(workbench.parallel.vae.SHARD_LEVERS: causal_conv, fused_norm); none by default")
    p.add_argument("--out", required=True, help="JSON file (rank 0 writes it)")
    args = p.parse_args(argv)
    levers = tuple(lever for lever in args.levers.split(",") if lever)
    jobs = []
    for item in args.configs.split(","):
        model, _, size = item.partition(":")
        jobs.append(DecodeJob(model=get_preset(model.strip()).name, size=parse_size(size.strip()), tiny=args.tiny,
                              weights="random", dtype=args.dtype))

    ctx = init_spmd()  # cuda:LOCAL_RANK with NCCL where there are GPUs, else the CPU with gloo
    prefix = f"torchrun --nproc-per-node {ctx.world_size} " if ctx.world_size > 1 else "python "
    command = prefix + " ".join(sys.argv)
    rows = []

    def save():  # rank 0, after each part: a launch ended by a time limit or a failure keeps what it measured
        if ctx.is_main:
            write_bench(args.out, rows, command=command, device=ctx.device, world_size=ctx.world_size)

    try:
        for job in jobs:
            row = {"model": job.model, "size": list(job.size), "dtype": job.dtype, "psnr_fp32_db": {},
                   "shard_levers": list(levers)}
            rows.append(row)
            ref = diffusers_part(ctx, job, args.repeats, row)
            save()
            shard_part(ctx, job, args.repeats, row, ref, levers)
            save()
            if ctx.is_main:
                print(summary(row), flush=True)
    finally:
        ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
