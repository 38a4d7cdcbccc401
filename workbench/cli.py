"""Command line: `python -m workbench decode|generate|bench ...`, thin clients of `workbench.runner`.

    python -m workbench decode --model qwen-image --tiny --size 512x512 --mode full,tiled --out runs/x
    python -m workbench decode --model wan2.1 --tiny --size 128x128x9 --mode all --world 2     # a worker pool
    torchrun --nproc-per-node 4 -m workbench decode --model wan2.1 --size 480x832x81 --mode shard
    python -m workbench generate --pipeline qwen-image --tiny --steps 2 --out runs/gen
    torchrun --nproc-per-node 4 -m workbench bench --configs qwen-image:2048x2048 --modes shard --out x.json

decode prints a table (time, peak memory, the cost model's estimate, errors against the full decode) and
writes PNGs and JSON; bench times repeated runs and writes one JSON record; generate runs a whole
pipeline. Under torchrun every rank runs and rank 0 prints and writes.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]

PRESET_NAMES = ("wan2.1", "wan2.2-a14b", "wan2.2-ti2v-5b", "qwen-image", "qwen-image-edit", "glm-image")
MODES = ("full", "tiled", "parallel_tiled", "patch", "shard", "auto")
PIPELINES = ("qwen-image", "qwen-image-edit", "wan2.1", "wan2.2", "glm-image")


def _add_job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="qwen-image", metavar="NAME",
                   help=f"preset: {', '.join(PRESET_NAMES)} (default: qwen-image)")
    p.add_argument("--size", default=None, help="HxW or HxWxF in pixels (default: 512x512, or 128x128x9 for video)")
    p.add_argument("--tiny", action="store_true", help="the preset's tiny config (CPU friendly)")
    p.add_argument("--weights", default=None, metavar="trained|random|PATH",
                   help="trained (the default with --tiny: data/weights), random (seeded), or a local diffusers folder")
    p.add_argument("--image", default=None, metavar="NAME|PATH",
                   help="decode this picture's latent (a bundled photo such as chelsea, or an image/video file) "
                        "instead of random latents; a photo becomes a camera-motion clip at a video size")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    p.add_argument("--device", default=None, help="cpu, cuda or npu (default: the platform's accelerator, else cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=1)


def _add_strategy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tile", type=int, default=None, dest="tile_px", help="tile size in pixels (default 256)")
    p.add_argument("--stride", type=int, default=None, dest="stride_px", help="tile stride in pixels (default 192)")
    p.add_argument("--tile-frames", type=int, default=None, help="latent frames per temporal window (video)")
    p.add_argument("--tile-batch", type=int, default=None,
                   help="tiled and parallel_tiled: tiles per decoder call (default 1; faster, memory grows with it)")
    p.add_argument("--norm-stats", default=None,
                   help="tiled and parallel_tiled, GroupNorm decoders (glm-image): sampled (default: whole-image "
                        "statistics from a subsampled decode) or tile (each tile's own)")
    p.add_argument("--mid-block", default=None,
                   help="tiled and parallel_tiled: global (the decoder's conv_in and mid-block once over the whole "
                        "latent, the tiles run the up blocks), tile (the whole decoder per tile, as diffusers) or auto "
                        "(default: global, unless the decoder is compiled)")
    p.add_argument("--global-up-blocks", type=int, default=None,
                   help="tiled and parallel_tiled, glm-image: how many up blocks join the global stem (default 0): "
                        "exact GroupNorm statistics for them, for the memory of their output (2**k x the latent)")
    p.add_argument("--halo", type=int, default=None, dest="halo_latent", help="patch halo in latent rows (default: SGLang's, half the tile overlap: 4 for 256/192 px at 8x)")
    p.add_argument("--grid", default=None, help="RxC grid for patch and shard (default: as square as possible)")
    p.add_argument("--merge", default=None, help="parallel_tiled merge: allgather, rank0, rank0-only")
    p.add_argument("--gather", default=None, dest="output", help="shard output: rank0, all, sharded")
    p.add_argument("--shard-attention", default=None, dest="attention",
                   help="shard mid-block attention: local_queries (default) or all_queries (bitwise equal to full)")
    p.add_argument("--budget-gib", type=float, default=None, help="auto: memory budget per device (GiB)")
    p.add_argument("--levers", default=None, type=lambda text: tuple(v.strip() for v in text.split(",") if v.strip()),
                   help="full and tiled: comma-separated speed levers (workbench.ops.vae), e.g. causal_conv,fused_norm; "
                        "also channels_last, conv_buffers (with fused_norm), compile")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description="Parallel VAE decode workbench")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train-tiny", help="train a tiny VAE family on the bundled photos (see train-tiny --help)")

    d = sub.add_parser("decode", help="decode one latent with several strategies and compare them")
    _add_job_args(d)
    d.add_argument("--mode", default="full,tiled", help=f"comma-separated strategies, or 'all': {', '.join(MODES)}")
    _add_strategy_args(d)
    d.add_argument("--world", type=int, default=None,
                   help="spawn this many local worker processes (not under torchrun)")
    d.add_argument("--out", default=None, help="folder for PNGs and JSON (--gather sharded: for every rank's block)")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(handler=cmd_decode)

    a = sub.add_parser("assemble", help="join the blocks a decode with --gather sharded wrote into one .npy")
    a.add_argument("folder", help="the --out folder of that decode")
    a.add_argument("--out", default=None, help="the .npy to write (default: FOLDER/output.npy)")
    a.set_defaults(handler=cmd_assemble)

    b = sub.add_parser("bench", help="time and measure decode strategies (torchrun for several ranks)")
    b.add_argument("--configs", required=True,
                   help="comma-separated MODEL:HxW[xF], e.g. qwen-image:2048x2048,wan2.1:480x832x81")
    b.add_argument("--modes", default="full,tiled", help="comma-separated strategies")
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--dtype", default="bfloat16")
    b.add_argument("--tiny", action="store_true", help="tiny configs (a CPU smoke run)")
    b.add_argument("--device", default=None, help="cuda, npu or cpu (default: the platform)")
    _add_strategy_args(b)
    b.add_argument("--no-reference", action="store_true", help="skip the full-decode reference and the errors")
    b.add_argument("--out", required=True, help="JSON file (rank 0 writes it)")
    b.set_defaults(handler=cmd_bench)

    g = sub.add_parser("generate", help="run a whole generation (text encode, denoise, decode) across ranks")
    g.add_argument("--pipeline", default="qwen-image", help=f"{', '.join(PIPELINES)} (default: qwen-image)")
    g.add_argument("--prompt", default=None)
    g.add_argument("--negative-prompt", default=None)
    g.add_argument("--size", default=None, help="HxW or HxWxF in pixels (default: the pipeline's, or its tiny size)")
    g.add_argument("--steps", type=int, default=4)
    g.add_argument("--guidance", type=float, default=None, dest="guidance_scale", help="default: the pipeline's")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--image", default=None, metavar="NAME|PATH",
                   help="qwen-image-edit: the reference picture, a bundled photo or an image file (default: chelsea)")
    g.add_argument("--tiny", action="store_true", help="tiny configs (CPU friendly); default: the real architectures")
    g.add_argument("--weights", default=None, metavar="PATH", help="local diffusers pipeline folder")
    g.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    g.add_argument("--device", default=None, help="cpu, cuda or npu (default: the platform's)")
    g.add_argument("--sp", type=int, default=0, help="sequence-parallel degree (default: world size / cfg)")
    g.add_argument("--cfg", type=int, default=1, choices=(1, 2), help="2: CFG parallel")
    g.add_argument("--attention", default="ulysses", help="sequence-parallel attention: ulysses or ring")
    g.add_argument("--decode", default="auto", choices=MODES, help="decode strategy (default: auto)")
    g.add_argument("--fused", action="store_true", help="workbench.ops fused modulation where it pays (declined at --sp > 1, where the "
                   "step is launch-bound; the run's notes say so)")
    g.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks")
    g.add_argument("--world", type=int, default=None, help="spawn this many local ranks (not under torchrun)")
    g.add_argument("--out", default=None, help="folder for the image/frames, plots and JSON")
    g.add_argument("--no-progress", action="store_true")
    g.set_defaults(handler=cmd_generate)
    return parser


from .checks import BadInput as CliError  # noqa: E402  (user mistakes: exit 2, one line)


def _default_size(args) -> str:
    from .models.presets import get_preset

    try:
        preset = get_preset(args.model)
    except KeyError as e:
        raise CliError(f"--model: {e.args[0]}") from None
    return "128x128x9" if preset.is_video and args.tiny else ("512x512" if not preset.is_video else "480x832x81")


def _check_decode(args, modes: list[str]) -> tuple[dict, int]:
    """Every argument checked before any import of torch, model or worker: (strategy params, world)."""
    from . import checks

    kind = checks.check_device(args.device) or "cpu"
    world = checks.check_world(args.world, kind)
    checks.check_out(args.out)
    checks.check_weights(args.weights, args.tiny)
    checks.check_image(args.image)
    size = args.size or _default_size(args)
    params = checks.check_decode(model=args.model, size=size, modes=modes, world=world, tiny=args.tiny,
                                 dtype=args.dtype, batch=args.batch, tile_px=args.tile_px, stride_px=args.stride_px,
                                 tile_frames=args.tile_frames, tile_batch=args.tile_batch, norm_stats=args.norm_stats, mid_block=args.mid_block,
                                 global_up_blocks=args.global_up_blocks,
                                 halo_latent=args.halo_latent, grid=args.grid, merge=args.merge, output=args.output, attention=args.attention, budget_gib=args.budget_gib,
                                 levers=args.levers, under_torchrun=checks.under_torchrun())
    if args.output == "sharded":  # each rank writes its block to --out (workbench.blocks), nothing is gathered
        if modes != ["shard"]:
            raise CliError("--gather sharded leaves each rank its block of the shard decode: give --mode shard alone")
        if not args.out:
            raise CliError("--gather sharded needs --out: the folder every rank writes its block to")
        if any(Path(args.out).glob("block_*.json")):
            raise CliError(f"--out {args.out!r} already holds the blocks of a decode; give a new or empty folder")
    return params, world


def _job(args):
    from .models import get_preset, parse_size
    from .runner import DecodeJob

    size = parse_size(args.size or _default_size(args))
    return DecodeJob(model=get_preset(args.model).name, size=size, tiny=args.tiny, weights=args.weights,
                     dtype=args.dtype, device=args.device or "cpu", seed=args.seed, batch=args.batch, image=args.image)


def _modes(text: str) -> list[str]:
    modes = list(MODES) if text == "all" else [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise CliError(f"--mode: unknown mode {', '.join(bad) or repr(text)}; accepted: {', '.join(MODES)} or all")
    return modes


def cmd_decode(args) -> int:
    modes = _modes(args.mode)
    params, world = _check_decode(args, modes)
    from .runner import make_runner, under_torchrun

    job = _job(args)
    if params.get("output") == "sharded":
        return _decode_to_disk(args, job, params, world)
    reference = modes != ["auto"]  # --mode auto alone never decodes full first
    with make_runner(world, args.device) as runner:
        comparison = runner.compare(job, modes, reference=reference, progress=not args.no_progress, **params)
        if under_torchrun() and not runner.is_main:
            return 0
    print(comparison.table())
    if args.out:
        paths = comparison.save(args.out)
        print(f"wrote {len(paths)} files to {args.out}")
    return 0


def _decode_to_disk(args, job, params: dict, world: int) -> int:
    from .runner import make_runner, under_torchrun

    with make_runner(world, args.device) as runner:
        done = runner.decode_to_disk(job, args.out, "shard", **params)
        if under_torchrun() and not runner.is_main:
            return 0
    result, paths = done
    print(f"shard on {len(paths)} rank(s): {result.time_s:.3f} s, largest rank's peak {result.peak_bytes / 2**30:.2f} GiB; "
          f"each rank wrote its block to {args.out}")
    print(f"assemble them with: python -m workbench assemble {args.out}")
    return 0


def cmd_assemble(args) -> int:
    from .blocks import assemble, read_manifest

    try:
        shape, metas = read_manifest(args.folder)
    except ValueError as e:
        raise CliError(str(e)) from None
    path = assemble(args.folder, args.out)
    print(f"{len(metas)} blocks -> {path}: {' x '.join(map(str, shape))} (B, C, F, H, W) float32")
    return 0


def cmd_bench(args) -> int:
    from .models import get_preset, parse_size

    configs = []
    for item in args.configs.split(","):
        if ":" not in item:
            raise CliError(f"--configs items must be MODEL:HxW[xF], got {item!r}")
        name, size = item.split(":", 1)
        configs.append((get_preset(name.strip()).name, parse_size(size.strip())))
    modes = _modes(args.modes)
    from . import checks

    checks.check_device(args.device)
    _positive_args(args, repeats=1, warmup=0)
    params = checks.check_decode(model=configs[0][0], size=configs[0][1], modes=modes, world=2, tiny=args.tiny,
                                 dtype=args.dtype, tile_px=args.tile_px, stride_px=args.stride_px,
                                 tile_frames=args.tile_frames, tile_batch=args.tile_batch, norm_stats=args.norm_stats, mid_block=args.mid_block,
                                 global_up_blocks=args.global_up_blocks,
                                 halo_latent=args.halo_latent, grid=args.grid, merge=args.merge, output=args.output, attention=args.attention, budget_gib=args.budget_gib,
                                 levers=args.levers, under_torchrun=True) if configs else {}
    from .report import bench_rows, bench_table, write_bench  # torch: after the checks
    from .runner import DecodeJob, clear_model_cache, make_runner

    rows = []
    with make_runner(1, args.device) as runner:
        world = runner.world_size
        main = getattr(runner, "is_main", True)
        command = (f"torchrun --nproc-per-node {world} -m workbench " if world > 1 else "python -m workbench ") + \
            " ".join(sys.argv[1:])
        for model, size in configs:
            job = DecodeJob(model=model, size=size, tiny=args.tiny, dtype=args.dtype)
            comparison = runner.compare(job, modes, reference=not args.no_reference, repeats=args.repeats,
                                        warmup=args.warmup, **params)
            clear_model_cache()
            if main:
                rows += bench_rows(comparison)
                write_bench(args.out, rows, command=command, device=runner.device, world_size=world)
                print(bench_table(bench_rows(comparison)).split("\n", 2)[-1], flush=True)
        if main:
            print(bench_table(rows))
            print(f"wrote {args.out}")
    return 0


def cmd_generate(args) -> int:

    names = ("prompt", "negative_prompt", "steps", "guidance_scale", "seed", "image", "weights", "dtype", "device",
             "sp", "cfg", "attention", "decode", "fused", "compile")
    kwargs = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    kwargs.update(size=args.size, tiny=args.tiny, progress=not args.no_progress)
    from . import checks

    kind = checks.check_device(args.device) or "cpu"
    world = checks.check_world(args.world, kind)
    if checks.under_torchrun():
        world = int(os.environ["WORLD_SIZE"])
    checks.check_out(args.out)
    checks.check_weights(args.weights, folder_only=True)
    checks.check_image(args.image)
    checks.check_generate(pipeline=args.pipeline, size=args.size, steps=args.steps, world=world, sp=args.sp,
                          cfg=args.cfg, attention=args.attention, decode=args.decode, dtype=args.dtype,
                          tiny=args.tiny, guidance_scale=args.guidance_scale)
    from .pipeline.run import make_job
    from .runner import make_runner, under_torchrun

    make_job(args.pipeline, **kwargs)  # the remaining checks, before any process starts
    with make_runner(world, args.device) as runner:
        result = runner.generate(args.pipeline, **kwargs)
        if under_torchrun() and not runner.is_main:
            return 0
    print(result.table())
    for note in result.notes:
        print(f"note: {note}")
    if args.out:
        paths = result.save(args.out)
        print(f"wrote {len(paths)} files to {args.out}")
    return 0


def _positive_args(args, **minimums) -> None:
    for name, minimum in minimums.items():
        if getattr(args, name) < minimum:
            raise CliError(f"--{name} must be >= {minimum}, got {getattr(args, name)}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train-tiny"]:  # its own parser: python -m workbench train-tiny --help
        from .models.train import main as train_main

        return train_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, KeyError) as e:  # CliError, ModelError, PlanError, MemoryGuardError among them
        message = e.args[0] if e.args else str(e)
        print(f"workbench: error: {message}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a rank's error through a pool (RankError): its first line, then the details
        if type(e).__name__ != "RankError":
            raise
        print(f"workbench: error: {str(e).splitlines()[0]}", file=sys.stderr)
        print(str(e), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
