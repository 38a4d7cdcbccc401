"""Decode benchmark: `python -m workbench bench` (under torchrun for several GPUs).

    torchrun --nproc-per-node 4 -m workbench bench \
        --configs qwen-image:2048x2048,wan2.1:480x832x81 --modes parallel_tiled,patch,shard \
        --dtype bfloat16 --out data/bench/decode_h200_sp4.json

Per (model, size, mode): warm-up runs, then `--repeats` timed runs (all ranks start together after
a barrier; the time of a run is its slowest rank's), per-rank peak allocated and reserved memory,
the memory the planner estimated, and the error against the serial full decode computed on rank 0
in the same launch. Serial modes run on rank 0 alone. A parallel mode whose estimate exceeds the
device is skipped (an out-of-memory error on one rank would leave the others waiting in a
collective); a serial one is attempted and an out-of-memory error is recorded as such.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

__all__ = ["add_parser", "run_bench"]


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="time and measure decode strategies (torchrun for several ranks)")
    p.add_argument("--configs", required=True,
                   help="comma-separated MODEL:HxW[xF], e.g. qwen-image:2048x2048,wan2.1:480x832x81")
    p.add_argument("--modes", default="full,tiled", help="comma-separated strategies")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--tiny", action="store_true", help="tiny configs (a CPU smoke run)")
    p.add_argument("--device", default=None, help="cuda, npu or cpu (default: the platform)")
    p.add_argument("--tile", type=int, default=256, dest="tile_px")
    p.add_argument("--stride", type=int, default=192, dest="stride_px")
    p.add_argument("--halo", type=int, default=1, dest="halo_latent")
    p.add_argument("--merge", default="rank0", help="parallel_tiled merge mode")
    p.add_argument("--no-reference", action="store_true", help="skip the full-decode reference and the errors")
    p.add_argument("--out", required=True, help="JSON file (rank 0 writes it)")
    p.set_defaults(handler=run_bench)


def _machine(device: torch.device) -> dict:
    out = {"hostname": platform.node(), "device_type": device.type}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(gpu=props.name, gpu_count=torch.cuda.device_count(), gpu_memory_bytes=props.total_memory,
                   sm_count=props.multi_processor_count, cuda=torch.version.cuda,
                   nccl=".".join(map(str, torch.cuda.nccl.version())))
    return out


def _device_total_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return None


def _parse_configs(text: str) -> list[tuple[str, tuple[int, int, int]]]:
    from .models import get_preset, parse_size

    configs = []
    for item in text.split(","):
        if ":" not in item:
            raise ValueError(f"--configs items must be MODEL:HxW[xF], got {item!r}")
        name, size = item.split(":", 1)
        configs.append((get_preset(name.strip()).name, parse_size(size.strip())))
    return configs


def run_bench(args) -> int:
    from .compare import DecodeJob, clear_model_cache, load_model, run_local
    from .decode import PARALLEL, SERIAL, STRATEGIES, strategy_params
    from .decode.auto import estimate_bytes
    from .dist import init_spmd
    from .metrics import compare

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in STRATEGIES]
    if bad:
        raise ValueError(f"unknown mode {', '.join(bad)}; accepted: {', '.join(STRATEGIES)}")
    configs = _parse_configs(args.configs)
    ctx = init_spmd(args.device)
    world, rank = ctx.world_size, ctx.rank
    main = rank == 0
    params = {"tile_px": args.tile_px, "stride_px": args.stride_px, "halo_latent": args.halo_latent,
              "merge": args.merge}
    total = _device_total_bytes(ctx.device)
    rows = []
    for model, size in configs:
        job = DecodeJob(model=model, size=size, tiny=args.tiny, dtype=args.dtype, device=str(ctx.device))
        vae = load_model(job, ctx.device)
        reference = None
        if main and not args.no_reference:
            reference, ref_row = _reference(job, run_local)
            if ref_row:
                rows.append(ref_row)
        ctx.barrier()
        for mode in modes:
            mode_params = {k: v for k, v in params.items() if k in strategy_params(mode)}
            if mode in SERIAL and not main:
                ctx.barrier()
                continue
            mode_world = 1 if mode in SERIAL else world
            row = {"model": model, "size": list(size), "mode": mode, "world_size": mode_world, "params": mode_params,
                   "dtype": args.dtype}
            row["estimate_bytes"] = _estimate(vae, job, mode, mode_world, mode_params, estimate_bytes)
            if mode in PARALLEL and total and row["estimate_bytes"] and row["estimate_bytes"] > total:
                row["skipped"] = f"estimated {row['estimate_bytes'] / 2**30:.1f} GiB per rank > {total / 2**30:.1f} GiB"
            else:
                _time_mode(row, job, mode, mode_params, args, ctx, run_local, reference, compare)
            if main:
                rows.append(row)
                _print_row(row)
                _write(args.out, ctx, world, rows)  # after every row: a launch stopped at a limit keeps its rows
            if mode in SERIAL:
                ctx.barrier()
        del reference
        clear_model_cache()
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    if main:
        _write(args.out, ctx, world, rows)
        print(table(rows))
        print(f"wrote {args.out}")
    ctx.close()
    return 0


def _write(path, ctx, world: int, rows: list) -> None:
    from .measure import versions

    report = {"machine": _machine(ctx.device), "versions": versions(), "world_size": world,
              "command": _command(world), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "rows": rows}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=1, default=str))


def _command(world: int) -> str:
    argv = " ".join(sys.argv[1:])
    return f"torchrun --nproc-per-node {world} -m workbench {argv}" if world > 1 else f"python -m workbench {argv}"


def _estimate(vae, job, mode, world, params, estimate_bytes):
    from .decode.frames import FrameDecoder

    if mode == "auto":
        return None
    fd = FrameDecoder(vae)
    shape = fd.as_5d(torch.empty(job.latent_shape(), device="meta")).shape
    try:
        return estimate_bytes(vae, fd, tuple(shape), mode, world, **params)
    except Exception:  # a plan that cannot be made is reported by the run itself
        return None


def _reference(job, run_local):
    """The full decode on this rank, on the CPU for comparisons (None and an OOM row if it does not fit)."""
    try:
        result = run_local(job, "full", {}, profile=False)
        reference = result.output.cpu()
        del result
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # else rank 0's reserved memory in the timed runs includes the reference's
        return reference, None
    except torch.OutOfMemoryError as e:
        torch.cuda.empty_cache()
        return None, {"model": job.model, "size": list(job.size), "mode": "full (reference)", "world_size": 1,
                      "oom": True, "error": str(e).splitlines()[0][:300]}


def _time_mode(row, job, mode, params, args, ctx, run_local, reference, compare):
    from .decode import SERIAL

    group_runs = mode not in SERIAL
    times, peaks_alloc, peaks_reserved, last = [], [], [], None
    try:
        for i in range(args.warmup + args.repeats):
            if group_runs:
                ctx.barrier()
            result = run_local(job, mode, params, profile=False, gather_stats=group_runs)
            if i >= args.warmup:
                times.append(result.time_s)
                peaks_alloc.append([r.peak_allocated_bytes for r in result.ranks])
                peaks_reserved.append([r.peak_reserved_bytes for r in result.ranks])
            last = result
    except torch.OutOfMemoryError as e:
        row.update(oom=True, error=str(e).splitlines()[0][:300])
        torch.cuda.empty_cache()
        return
    row.update(times_s=times, median_s=statistics.median(times),
               peak_allocated_bytes=_max_per_rank(peaks_alloc), peak_reserved_bytes=_max_per_rank(peaks_reserved),
               peak_rss_bytes=[r.peak_rss_bytes for r in last.ranks], grid=list(last.plan.grid) if last.plan else None,
               choice=last.choice, reason=last.reason)
    if ctx.rank == 0 and reference is not None and last.output is not None and last.output.shape == reference.shape:
        q = compare(last.output.cpu(), reference, last.plan)
        row["quality"] = q.to_dict()


def _max_per_rank(runs):
    if not runs or runs[0][0] is None:
        return None
    return [max(run[r] for run in runs) for r in range(len(runs[0]))]


def _gib(n) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


def _print_row(row) -> None:
    print(" ".join(table([row]).splitlines()[-1:]), flush=True)


def table(rows) -> str:
    head = f"{'model':<16}{'size':<14}{'mode':<18}{'world':>5}{'median s':>10}{'peak GiB':>10}{'est GiB':>9}{'PSNR dB':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        size = "x".join(str(v) for v in (r["size"] if r["size"][2] > 1 else r["size"][:2]))
        peak = max(r["peak_allocated_bytes"]) if r.get("peak_allocated_bytes") else (
            max(r["peak_rss_bytes"]) if r.get("peak_rss_bytes") and r["peak_rss_bytes"][0] else None)
        if r.get("oom"):
            tail = f"{'OOM':>10}"
        elif r.get("skipped"):
            tail = f"  skipped: {r['skipped']}"
        else:
            q = r.get("quality", {})
            psnr = q.get("psnr_db")
            psnr = "-" if psnr is None else ("exact" if psnr == float("inf") else f"{psnr:.1f}")
            tail = f"{r['median_s']:>10.3f}{_gib(peak):>10}{_gib(r.get('estimate_bytes')):>9}{psnr:>9}"
        lines.append(f"{r['model']:<16}{size:<14}{r['mode']:<18}{r['world_size']:>5}{tail}")
    return "\n".join(lines)

