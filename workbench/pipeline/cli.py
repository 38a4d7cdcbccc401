"""`python -m workbench generate`: one generation, stage by stage, on one or several ranks.

    python -m workbench generate --pipeline qwen-image --tiny --steps 2 --out runs/gen
    python -m workbench generate --pipeline wan2.1 --tiny --world 2 --sp 2 --steps 2       # spawned workers
    torchrun --nproc-per-node 4 -m workbench generate --pipeline qwen-image --sp 4 --steps 4 --dtype bfloat16

Prints the stage table (seconds per rank, peak memory) and, with --out, writes the image (or frames), the
stage timeline and memory timeline plots and a JSON record. Under torchrun every rank runs and rank 0 writes.
"""

from __future__ import annotations

import argparse
import os

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    from ..decode import STRATEGIES
    from .components import SPECS

    p = subparsers.add_parser("generate", help="run a whole generation (text encode, denoise, decode) across ranks")
    p.add_argument("--pipeline", default="qwen-image", help=f"{', '.join(SPECS)} (default: qwen-image)")
    p.add_argument("--prompt", default=None)
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--size", default=None, help="HxW or HxWxF in pixels (default: the pipeline's, or its tiny size)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--guidance", type=float, default=None, dest="guidance_scale", help="default: the pipeline's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image", default=None, help="qwen-image-edit: the reference image (default: a synthetic one)")
    p.add_argument("--tiny", action="store_true", help="tiny configs (CPU friendly); default: the real architectures")
    p.add_argument("--weights", default=None, metavar="PATH", help="local diffusers pipeline folder")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    p.add_argument("--device", default=None, help="cpu, cuda or npu (default: the platform's)")
    p.add_argument("--sp", type=int, default=0, help="sequence-parallel degree (default: world size / cfg)")
    p.add_argument("--cfg", type=int, default=1, choices=(1, 2), help="2: CFG parallel")
    p.add_argument("--attention", default="ulysses", help="sequence-parallel attention: ulysses or ring")
    p.add_argument("--decode", default="auto", choices=STRATEGIES, help="decode strategy (default: auto)")
    p.add_argument("--fused", action="store_true", help="workbench.ops fused modulation where available")
    p.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks")
    p.add_argument("--world", type=int, default=None, help="spawn this many local ranks (not under torchrun)")
    p.add_argument("--out", default=None, help="folder for the image/frames, plots and JSON")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=run)
    return p


def _kwargs(args) -> dict:
    names = ("prompt", "negative_prompt", "steps", "guidance_scale", "seed", "image", "weights", "dtype", "device",
             "sp", "cfg", "attention", "decode", "fused", "compile")
    kw = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    return {**kw, "size": args.size, "tiny": args.tiny, "progress": not args.no_progress}


def run(args) -> int:
    from .run import make_job

    request, options = make_job(args.pipeline, **_kwargs(args))  # bad input fails here, before any process starts
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        return _spmd(request, options, args.out)
    from ..dist.platform import default_device

    device = options.device or default_device()
    if (args.world or 1) > 1:
        from ..dist import Cluster
        from .run import generate_task

        with Cluster(world_size=args.world, device=device.split(":")[0]) as cluster:
            result = cluster.run(generate_task, request, options)[0]
    else:
        from .executor import local_context
        from .run import run_generation

        result = run_generation(local_context(device), request, options)
    _report(result, args.out)
    return 0


def _spmd(request, options, out) -> int:
    from ..dist import init_spmd
    from .run import run_generation

    ctx = init_spmd(options.device)
    result = run_generation(ctx, request, options)
    if ctx.rank == 0:
        _report(result, out)
    ctx.barrier()
    ctx.close()
    return 0


def _report(result, out) -> None:
    print(result.table())
    for note in result.notes:
        print(f"note: {note}")
    if out:
        paths = result.save(out)
        print(f"wrote {len(paths)} files to {out}")
