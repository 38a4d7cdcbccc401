"""What one Ulysses all-to-all costs on this machine: `dist.all_to_all_single` over all ranks of a torchrun
launch, per message size, as the SP step sends it (bf16, one contiguous (P, chunk) buffer per rank).

    torchrun --nproc-per-node 4 benchmarks/bench_all_to_all.py --out data/bench/all_to_all_h200_sp4.json

Per size: the median of --repeats timed calls (CUDA events, a barrier before each; the slowest rank's time),
and the bus bandwidth as nccl-tests defines it for all-to-all: bytes * (P - 1) / P / time. The sizes include
the Qwen-Image step's q/k/v at 1024x1024 (1088 tokens x 3072 x 2 bytes per rank, 6.7 MB) and at 2048x2048.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench.measure import versions  # noqa: E402
from workbench.runtime import init_spmd  # noqa: E402

SIZES_MB = (0.25, 1, 4, 6.7, 16, 26.3, 64)  # 26.3 MB: qwen-image 2048x2048 (4160 tokens x 3072 x 2 bytes)


def time_one(send, received, repeats: int, warmup: int = 3) -> list[float]:
    times = []
    for i in range(warmup + repeats):
        dist.barrier()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dist.all_to_all_single(received, send)
        end.record()
        end.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end) / 1000)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    ctx = init_spmd()
    if ctx.device.type != "cuda":
        raise SystemExit("bench_all_to_all times NCCL on CUDA devices")
    world, rows = ctx.world_size, []
    for mb in SIZES_MB:
        numel = int(mb * 1e6 / 2) // world * world
        send = torch.randn(numel, device=ctx.device, dtype=torch.bfloat16)
        received = torch.empty_like(send)
        mine = time_one(send, received, args.repeats)
        every = [None] * world
        dist.all_gather_object(every, mine)
        slowest = [max(r[i] for r in every) for i in range(args.repeats)]
        t = statistics.median(slowest)
        nbytes = numel * 2
        rows.append({"mbytes_per_rank": nbytes / 1e6, "median_s": t, "min_s": min(slowest),
                     "busbw_gbps": nbytes * (world - 1) / world / t / 1e9})
        if ctx.rank == 0:
            print(f"{nbytes / 1e6:8.2f} MB  {t * 1e6:9.1f} us  {rows[-1]['busbw_gbps']:7.1f} GB/s", flush=True)
    if ctx.rank == 0:
        Path(args.out).write_text(json.dumps({
            "benchmark": "all_to_all_single, bf16", "world_size": world, "gpu": torch.cuda.get_device_name(),
            "command": f"torchrun --nproc-per-node {world} benchmarks/bench_all_to_all.py " + " ".join(sys.argv[1:]),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": versions(), "rows": rows},
            indent=1))
    ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
