"""Command line: `python -m workbench decode ...` and `python -m workbench generate ...` (workbench.pipeline.cli).

    python -m workbench decode --model qwen-image --tiny --size 512x512 --mode full,tiled --out runs/x
    torchrun --nproc-per-node 4 -m workbench decode --model wan2.1 --size 480x832x81 --mode shard

It prints a table (time, peak memory, errors against the full decode) and writes PNGs and JSON.
Under torchrun every rank decodes and rank 0 writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

__all__ = ["main", "build_parser"]


def _add_job_args(p: argparse.ArgumentParser) -> None:
    from .models import PRESETS

    p.add_argument("--model", default="qwen-image", metavar="NAME",
                   help=f"preset: {', '.join(PRESETS)} (default: qwen-image)")
    p.add_argument("--size", default=None, help="HxW or HxWxF in pixels (default: 512x512, or 128x128x9 for video)")
    p.add_argument("--tiny", action="store_true", help="the preset's tiny config (CPU friendly)")
    p.add_argument("--weights", default=None, metavar="PATH", help="local diffusers folder with real weights")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    p.add_argument("--device", default=None, help="cpu, cuda or npu (default: the platform's accelerator, else cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=1)


def _add_decode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", default="full,tiled",
                   help="comma-separated strategies, or 'all': full, tiled, parallel_tiled, patch, shard, auto")
    p.add_argument("--tile", type=int, default=256, dest="tile_px", help="tile size in pixels")
    p.add_argument("--stride", type=int, default=192, dest="stride_px", help="tile stride in pixels")
    p.add_argument("--tile-frames", type=int, default=None, help="latent frames per temporal window (video)")
    p.add_argument("--halo", type=int, default=None, dest="halo_latent", help="patch halo in latent rows")
    p.add_argument("--grid", default=None, help="RxC grid for patch and shard (default: as square as possible)")
    p.add_argument("--merge", default=None, help="parallel_tiled merge: allgather, rank0, rank0-only")
    p.add_argument("--gather", default=None, dest="output", help="shard output: rank0, all, sharded")
    p.add_argument("--budget-gib", type=float, default=None, help="auto: memory budget per device (GiB)")
    p.add_argument("--world", type=int, default=None,
                   help="spawn this many local worker processes for the parallel modes (not under torchrun)")
    p.add_argument("--out", default=None, help="folder for PNGs and JSON")
    p.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description="Parallel VAE decode workbench")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("decode", help="decode one latent with several strategies and compare them")
    _add_job_args(d)
    _add_decode_args(d)
    from . import bench
    from .pipeline.cli import add_parser as add_generate_parser

    bench.add_parser(sub)
    add_generate_parser(sub)
    return parser


class CliError(Exception):
    pass


def _job(args):
    from .compare import DecodeJob
    from .dist.platform import default_device
    from .models import get_preset, parse_dtype, parse_size

    try:
        preset = get_preset(args.model)
    except KeyError as e:
        raise CliError(e.args[0]) from None
    parse_dtype(args.dtype)
    size = parse_size(args.size) if args.size else (
        (128, 128, 9) if preset.is_video and args.tiny else
        ((512, 512, 1) if not preset.is_video else (480, 832, 81)))
    device = args.device or default_device()
    return DecodeJob(model=preset.name, size=size, tiny=args.tiny, weights=args.weights, dtype=args.dtype,
                     device=device, seed=args.seed, batch=args.batch)


def _modes(text: str) -> list[str]:
    from .decode import STRATEGIES

    modes = list(STRATEGIES) if text == "all" else [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in STRATEGIES]
    if bad or not modes:
        raise CliError(f"unknown mode {', '.join(bad) or repr(text)}; accepted: {', '.join(STRATEGIES)} or all")
    return modes


def _decode_params(args) -> dict:
    params = {"tile_px": args.tile_px, "stride_px": args.stride_px, "tile_frames": args.tile_frames,
              "halo_latent": args.halo_latent, "merge": args.merge, "output": args.output}
    if args.grid:
        try:
            params["grid"] = tuple(int(v) for v in args.grid.lower().split("x"))
        except ValueError:
            raise CliError(f"--grid must be RxC (e.g. 2x2), got {args.grid!r}") from None
    if args.budget_gib is not None:
        params["memory_budget_gib"] = args.budget_gib
    return {k: v for k, v in params.items() if v is not None}


def cmd_decode(args) -> int:
    from .compare import compare
    from .decode import PARALLEL

    job = _job(args)
    modes = _modes(args.mode)
    params = _decode_params(args)
    progress = not args.no_progress
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        return _decode_spmd(job, modes, params, args)
    world = args.world or 1
    if world > 1:
        from .dist import Cluster

        with Cluster(world_size=world, device=job.device.split(":")[0]) as cluster:
            def runner(job, mode, params):
                if mode in PARALLEL or mode == "auto":
                    return cluster.decode(job, mode, **params)
                from .compare import run_local
                return run_local(job, mode, params, progress=progress)
            comparison = compare(job, modes, runner=runner, progress=progress, **params)
    else:
        comparison = compare(job, modes, progress=progress, **params)
    print(comparison.table())
    if args.out:
        paths = comparison.save(args.out)
        print(f"wrote {len(paths)} files to {args.out}")
    return 0


def _decode_spmd(job, modes, params, args) -> int:
    """One rank of a torchrun launch: every rank decodes, rank 0 compares and writes."""
    from .compare import Comparison, run_local
    from .decode import SERIAL
    from .dist import init_spmd

    ctx = init_spmd(job.device)
    job = dataclasses.replace(job, device=str(ctx.device))
    comparison = Comparison(job)
    if "full" not in modes:
        modes = ["full", *modes]
    for mode in modes:
        if mode in SERIAL:
            result = run_local(job, mode, params) if ctx.rank == 0 else None
        else:
            result = run_local(job, mode, params, group=ctx.group)
        if ctx.rank == 0:
            comparison.results[mode] = result
        ctx.barrier()
    if ctx.rank == 0:
        comparison.measure_quality()
        print(comparison.table())
        if args.out:
            comparison.save(args.out)
    ctx.close()
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .decode.plan import PlanError
    from .models import ModelError

    try:
        if args.command == "decode":
            return cmd_decode(args)
        return args.handler(args)
    except (CliError, ModelError, PlanError, ValueError, KeyError) as e:
        message = e.args[0] if e.args else str(e)
        print(f"workbench: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
