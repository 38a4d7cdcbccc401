"""Exact `shard` decodes at sizes one GPU cannot hold, the output left sharded: each rank writes its block to disk.

    PYTHONPATH=. torchrun --nproc-per-node 4 benchmarks/beyond_memory.py \
        --configs qwen-image:16384x16384,wan2.1:1440x2560x81 --blocks /tmp/beyond --out data/bench/beyond_memory.json
    PYTHONPATH=. torchrun --nproc-per-node 2 benchmarks/beyond_memory.py --tiny \
        --configs qwen-image:256x256 --blocks /tmp/beyond --out /tmp/beyond.json      # CPU smoke (gloo)

Per config (the preset's real config, seeded random weights, bf16 by default): the cost model's estimate of the
one-GPU `full` decode and of `shard` per rank, the device's memory, then the decode through the runner
(`decode_to_disk`: its memory guard first, then shard with output="sharded", every rank writing
`block_<rank>.npy`), then rank 0 assembles the blocks into one memory-mapped `output.npy` and checks it
(shape, finite, within the decoder's clamp). Rank 0 rewrites --out after each config; the blocks of each
config are deleted after the check (they are as large as the video).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from workbench.blocks import assemble
from workbench.models import get_preset, parse_size
from workbench.parallel.vae.cost import estimate_bytes
from workbench.report import write_bench
from workbench.runner import DecodeJob, SpmdRunner, load_model

GIB = 2**30


def device_bytes(device: torch.device) -> int | None:
    return torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None


def check(path: Path, shape) -> dict:
    """The assembled output, read block by block through the memory map: finite and within [-1, 1]."""
    out = np.load(path, mmap_mode="r")
    lo, hi, finite = np.inf, -np.inf, True
    for f in range(out.shape[2]):
        frame = np.asarray(out[:, :, f])
        finite &= bool(np.isfinite(frame).all())
        lo, hi = min(lo, float(frame.min())), max(hi, float(frame.max()))
    return {"assembled_shape": list(out.shape), "shape_ok": list(out.shape) == list(shape), "finite": finite,
            "min": lo, "max": hi, "in_clamp_range": -1.0 <= lo and hi <= 1.0}


def one(runner: SpmdRunner, job: DecodeJob, blocks: Path, row: dict) -> None:
    ctx = runner.ctx
    vae = load_model(job, ctx.device)
    shape = job.latent_shape()
    row["full_1gpu_estimate_bytes"] = estimate_bytes(vae, shape, "full", 1)
    row["shard_estimate_bytes"] = estimate_bytes(vae, shape, "shard", ctx.world_size, output="sharded")
    row["device_bytes"] = device_bytes(ctx.device)
    out_dir = blocks / f"{job.model}_{'x'.join(map(str, job.size))}"
    if ctx.is_main:
        shutil.rmtree(out_dir, ignore_errors=True)
    ctx.barrier()
    t0 = time.perf_counter()
    done = runner.decode_to_disk(job, out_dir, "shard")
    row["decode_and_write_s"] = time.perf_counter() - t0
    if not ctx.is_main:
        return
    result, paths = done
    row.update(shard_s=result.time_s, shard_peak_bytes=[r.peak_bytes for r in result.ranks], blocks=len(paths),
               plan_grid=list(result.plan.grid))
    t0 = time.perf_counter()
    path = assemble(out_dir)
    row["assemble_s"] = time.perf_counter() - t0
    h, w, f = job.size
    row.update(check(path, (job.batch, 3, f, h, w)))
    row["completed"] = int(row["shape_ok"] and row["finite"] and row["in_clamp_range"] and len(paths) == ctx.world_size)
    shutil.rmtree(out_dir, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", required=True, help="comma-separated MODEL:HxW[xF]")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--tiny", action="store_true", help="the presets' tiny configs (a CPU smoke run)")
    p.add_argument("--blocks", required=True, help="folder for the ranks' blocks (one host: every rank writes there)")
    p.add_argument("--out", required=True, help="JSON file (rank 0 writes it)")
    args = p.parse_args(argv)
    runner = SpmdRunner()
    ctx = runner.ctx
    command = f"torchrun --nproc-per-node {ctx.world_size} " + " ".join(sys.argv)
    rows = []
    try:
        for item in args.configs.split(","):
            model, _, size = item.partition(":")
            job = DecodeJob(model=get_preset(model.strip()).name, size=parse_size(size.strip()), tiny=args.tiny,
                            weights="random", dtype=args.dtype)
            row = {"model": job.model, "size": list(job.size), "dtype": job.dtype, "mode": "shard", "output": "sharded"}
            rows.append(row)
            try:
                one(runner, job, Path(args.blocks), row)
            except Exception as e:  # recorded; every rank raised the same (the guard, or a failed collective)
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                row["completed"] = 0
            if ctx.is_main:
                write_bench(args.out, rows, command=command, device=ctx.device, world_size=ctx.world_size)
                est = row.get("full_1gpu_estimate_bytes")
                print(f"{job.model} {size}: completed={row.get('completed')} "
                      f"full on one GPU ~{(est or 0) / GIB:.1f} GiB, device {(row.get('device_bytes') or 0) / GIB:.0f} GiB; "
                      f"shard {row.get('shard_s', float('nan')):.2f} s, largest rank's peak "
                      f"{max(row.get('shard_peak_bytes') or [0]) / GIB:.1f} GiB; "
                      f"{row.get('error', '')}", flush=True)
    finally:
        ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
