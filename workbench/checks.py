"""Argument checks that run before anything heavy: no torch, no diffusers, no model, no worker.

Each check raises `BadInput`, a ValueError whose one-line message names the parameter, the value and
what is accepted. The CLI turns it into exit status 2 with nothing written.

    check_decode(model="qwen-image", size="512x512", modes=["shard"], world=2, device="cpu", ...)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["BadInput", "check_decode", "check_generate", "check_out", "check_device", "check_world",
           "visible_devices"]

DEVICES = ("cpu", "cuda", "npu")


class BadInput(ValueError):
    """A user's mistake, found before any work: the message names the parameter and what is accepted."""


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", 1)) > 1


def _positive(name: str, value, minimum=1, kind: str = "int"):
    if value is None:
        return
    if value < minimum:
        raise BadInput(f"{name} must be {kind} >= {minimum}, got {value}")


def visible_devices(kind: str) -> int:
    """How many devices of `kind` this machine shows, without importing torch or initialising CUDA."""
    if kind == "cpu":
        return os.cpu_count() or 1
    if kind == "cuda":
        gpus = Path("/proc/driver/nvidia/gpus")
        count = len(list(gpus.iterdir())) if gpus.is_dir() else 0
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            count = min(count, len([v for v in visible.split(",") if v.strip() and v.strip() != "-1"]))
        return count
    if kind == "npu":
        import importlib.util

        present = importlib.util.find_spec("torch_npu") is not None and (
            any(os.environ.get(v) for v in ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME")) or
            os.path.isdir("/usr/local/Ascend"))
        return 8 if present else 0  # the count is torch_npu's to tell; present is what matters here
    return 0


def check_device(device: str | None) -> str | None:
    if device is None:
        return None
    kind = str(device).split(":")[0]
    if kind not in DEVICES:
        raise BadInput(f"--device {device!r} is not a device type here; accepted: {', '.join(DEVICES)}")
    if kind != "cpu" and visible_devices(kind) == 0:
        have = [k for k in DEVICES if visible_devices(k)]
        raise BadInput(f"--device {device!r}: this machine has no {kind} device; available: {', '.join(have)}")
    return kind


def check_world(world: int | None, device_kind: str) -> int:
    world = 1 if world is None else world
    if world < 1:
        raise BadInput(f"--world must be >= 1 (ranks to spawn), got {world}")
    limit = visible_devices(device_kind)
    if world > limit:
        what = "CPU cores" if device_kind == "cpu" else f"{device_kind} devices"
        raise BadInput(f"--world {world} exceeds the {limit} {what} of this machine (one rank per "
                       f"{'core' if device_kind == 'cpu' else 'device'}); use --world <= {limit}")
    return world


def check_out(out: str | None) -> None:
    """--out must be a folder that can be created or written: checked without writing anything."""
    if out is None:
        return
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise BadInput(f"--out {out!r} is an existing file; give a folder (it is created if missing)")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise BadInput(f"--out {out!r}: {parent} is not writable; give a folder you can write to")


def check_weights(weights: str | None, tiny: bool = True, folder_only: bool = False) -> None:
    """--weights: trained (tiny only), random, or a local diffusers folder (`folder_only`: a folder or nothing)."""
    from .models.presets import WEIGHT_KINDS

    if folder_only and weights in WEIGHT_KINDS:
        raise BadInput(f"--weights {weights}: give a local diffusers pipeline folder, or leave it out "
                       "(tiny pipelines use the trained tiny VAE, other weights are seeded)")
    if weights == "trained" and not tiny:
        raise BadInput("--weights trained: trained weights exist for the tiny presets only; add --tiny")
    if weights is None or weights in WEIGHT_KINDS:
        return
    path = Path(weights)
    if not path.is_dir():
        raise BadInput(f"--weights {weights!r} is not a folder; give trained, random or a local diffusers folder "
                       "(config.json + safetensors, or a pipeline folder with vae/)")
    for config in (path / "vae" / "config.json", path / "config.json"):
        if config.is_file():
            try:
                json.loads(config.read_text())
            except json.JSONDecodeError as e:
                raise BadInput(f"--weights: {config} is not valid JSON: {e}") from None
            return


def check_image(image: str | None) -> None:
    from .models.bundled import check_image as check

    try:
        check(image)
    except ValueError as e:
        raise BadInput(f"--image: {e}") from None


def _grid(grid) -> tuple[int, int] | None:
    if grid is None or isinstance(grid, tuple):
        return grid
    try:
        rows, cols = (int(v) for v in str(grid).lower().split("x"))
    except ValueError:
        raise BadInput(f"--grid must be RxC (e.g. 2x2), got {grid!r}") from None
    return rows, cols


def _dtype(dtype) -> None:
    from .models.shapes import check_dtype

    try:
        check_dtype(dtype)
    except ValueError as e:
        raise BadInput(f"--dtype: {e}") from None


def check_decode(*, model: str, size, modes: list[str], world: int, tiny: bool = True, dtype: str = "float32",
                 batch: int = 1, tile_px=None, stride_px=None, tile_frames=None, tile_batch=None, norm_stats=None,
                 mid_block=None, global_up_blocks=None, halo_latent=None, grid=None,
                 merge=None, output=None, attention=None, budget_gib=None, levers=None,
                 under_torchrun: bool = False) -> dict:
    """Every decode argument against the preset, the latent and the ranks; the checked strategy parameters."""
    from .models.presets import ModelError, get_preset
    from .models.shapes import latent_shape, parse_size
    from .parallel.vae import (
        MERGES,
        MID_BLOCKS,
        NORM_STATS,
        PARALLEL,
        SHARD_ATTENTIONS,
        SHARD_OUTPUTS,
        STRATEGIES,
    )
    from .parallel.vae.plan import PlanError, plan_patches, plan_shards, plan_tiles

    try:
        preset = get_preset(model)
    except KeyError as e:
        raise BadInput(f"--model: {e.args[0]}") from None
    bad = [m for m in modes if m not in STRATEGIES]
    if bad or not modes:
        raise BadInput(f"--mode: unknown mode {', '.join(bad) or 'none given'}; accepted: {', '.join(STRATEGIES)} or all")
    _dtype(dtype)
    _positive("--batch", batch)
    _positive("--tile-frames", tile_frames)
    _positive("--tile-batch", tile_batch)
    if norm_stats is not None and norm_stats not in NORM_STATS:
        raise BadInput(f"--norm-stats: {norm_stats!r} is not accepted; accepted: {', '.join(NORM_STATS)}")
    if mid_block is not None and mid_block not in MID_BLOCKS:
        raise BadInput(f"--mid-block: {mid_block!r} is not accepted; accepted: {', '.join(MID_BLOCKS)}")
    _positive("--global-up-blocks", global_up_blocks, 0)
    if (tile_batch is not None or norm_stats is not None or mid_block is not None or global_up_blocks is not None) \
            and not {"tiled", "parallel_tiled"} & set(modes):
        raise BadInput("--tile-batch, --norm-stats, --mid-block and --global-up-blocks apply to tiled and "
                       "parallel_tiled; add one of them to --mode")
    if global_up_blocks and (preset.vae_class != "AutoencoderKL" or mid_block == "tile"):
        raise BadInput(f"--global-up-blocks {global_up_blocks}: the up blocks join the global stem of image decoders "
                       f"(glm-image) only, with --mid-block global or auto; {model} with --mid-block "
                       f"{mid_block or 'auto'} takes 0")
    _positive("--halo", halo_latent, 0)
    if budget_gib is not None and budget_gib <= 0:
        raise BadInput(f"--budget-gib must be > 0 (GiB per device), got {budget_gib}")
    if merge is not None and merge not in MERGES:
        raise BadInput(f"--merge {merge!r} is not a merge mode; accepted: {', '.join(MERGES)}")
    if output is not None and output not in SHARD_OUTPUTS:
        raise BadInput(f"--gather {output!r} is not a shard output; accepted: {', '.join(SHARD_OUTPUTS)}")
    if attention is not None and attention not in SHARD_ATTENTIONS:
        raise BadInput(f"--shard-attention {attention!r} is not a shard attention; accepted: "
                       f"{', '.join(SHARD_ATTENTIONS)}")
    try:
        h, w, f = parse_size(size) if isinstance(size, str) else size
        shape = latent_shape(preset, h, w, f, batch=batch or 1)
    except (ValueError, ModelError) as e:
        raise BadInput(f"--size: {e}") from None
    parallel = [m for m in modes if m in PARALLEL]
    if parallel and world < 2 and not under_torchrun:
        raise BadInput(f"--mode {','.join(parallel)} runs over several ranks: add --world N (N >= 2) or launch "
                       f"with torchrun; on one rank choose among full, tiled, auto")
    latent = (shape[2] if len(shape) == 5 else 1, shape[-2], shape[-1])
    grid = _grid(grid)
    tile, stride = tile_px or 256, stride_px or 192
    try:
        if {"tiled", "parallel_tiled", "auto"} & set(modes) or tile_px or stride_px:
            tiles = plan_tiles(latent, scale=preset.spatial_ratio, tile_px=tile, stride_px=stride)
            if "parallel_tiled" in modes and world > len(tiles.items):
                raise BadInput(f"--world {world}: parallel_tiled has {len(tiles.items)} tiles of {tile} px at this "
                               f"size, so {world - len(tiles.items)} ranks would idle; use --world <= "
                               f"{len(tiles.items)} or smaller --tile")
        if "shard" in modes:
            plan_shards(latent, scale=preset.spatial_ratio, world_size=world, grid=grid)
        if "patch" in modes:
            plan_patches(latent, scale=preset.spatial_ratio, world_size=world, halo_latent=halo_latent, tile_px=tile,
                         stride_px=stride, grid=grid)
    except PlanError as e:
        raise BadInput(f"{e}") from None
    if grid is not None and not {"shard", "patch"} & set(modes):
        raise BadInput("--grid applies to patch and shard only; add one of them to --mode or drop --grid")
    levers = _levers(levers, modes, preset)
    if mid_block == "global" and "compile" in (levers or ()):
        raise BadInput("--mid-block global passes the decoder's stem through, which a compiled decoder cannot: drop "
                       "compile from --levers or use --mid-block auto")
    params = {"tile_px": tile_px, "stride_px": stride_px, "tile_frames": tile_frames, "tile_batch": tile_batch,
              "norm_stats": norm_stats, "mid_block": mid_block, "global_up_blocks": global_up_blocks,
              "halo_latent": halo_latent,
              "merge": merge, "output": output, "attention": attention, "memory_budget_gib": budget_gib, "grid": grid,
              "levers": levers}
    return {k: v for k, v in params.items() if v is not None}


def _levers(levers, modes, preset) -> tuple | None:
    """--levers: known speed levers, for modes that take them (parallel.vae.MODE_LEVERS)."""
    if not levers:
        return None
    from .parallel.vae import LEVERS, MODE_LEVERS

    levers = tuple(levers)
    bad = [lever for lever in levers if lever not in LEVERS]
    if bad:
        raise BadInput(f"--levers: unknown lever {', '.join(bad)}; accepted: {', '.join(LEVERS)}")
    if not set(MODE_LEVERS) & set(modes):
        raise BadInput("--levers applies to full, tiled and shard; add one of them to --mode")
    for mode in [m for m in modes if m in MODE_LEVERS]:
        refused = [lever for lever in levers if lever not in MODE_LEVERS[mode]]
        if refused:
            raise BadInput(f"--levers {','.join(refused)}: {mode} takes {', '.join(MODE_LEVERS[mode])}")
    if "shard" in modes:
        if "fused_norm" in levers and preset.vae_class == "AutoencoderKL":
            raise BadInput(f"--levers fused_norm: {preset.name}'s GroupNorm needs every rank's statistics under shard; "
                           "use causal_conv there")
    return levers


def check_generate(*, pipeline: str, size, steps: int, world: int, sp: int, cfg: int, attention: str,
                   decode: str, dtype: str, tiny: bool, guidance_scale=None) -> None:
    from .models.presets import get_preset
    from .models.shapes import parse_size
    from .models.specs import SPECS
    from .parallel.vae import STRATEGIES

    spec = SPECS.get(str(pipeline).lower())
    if spec is None:
        raise BadInput(f"--pipeline: unknown pipeline {pipeline!r}; accepted: {', '.join(SPECS)}")
    _dtype(dtype)
    _positive("--steps", steps)
    if spec.name.startswith("qwen") and steps < 2:
        raise BadInput(f"--steps: {spec.name} needs steps >= 2 (its schedule ends at shift_terminal), got {steps}")
    if attention not in ("ulysses", "ring"):
        raise BadInput(f"--attention {attention!r}; accepted: ulysses, ring")
    if decode not in STRATEGIES:
        raise BadInput(f"--decode {decode!r}; accepted: {', '.join(STRATEGIES)}")
    if cfg not in (1, 2):
        raise BadInput(f"--cfg must be 1 or 2 (CFG-parallel degree), got {cfg}")
    if sp < 0:
        raise BadInput(f"--sp must be >= 0 (0: world / cfg), got {sp}")
    if world % cfg:
        raise BadInput(f"--cfg {cfg} does not divide --world {world}")
    sp = sp or world // cfg
    if sp * cfg != world:
        raise BadInput(f"--sp {sp} x --cfg {cfg} must equal the ranks (--world {world}); accepted --sp: {world // cfg}")
    if cfg == 2 and guidance_scale is not None and guidance_scale <= 1:
        raise BadInput(f"--cfg 2 (CFG parallel) needs --guidance > 1, got {guidance_scale}")
    config = spec.transformer_config(tiny)
    heads = config.get("num_attention_heads", 24 if "Qwen" in spec.transformer_class else 40)
    if attention == "ulysses" and heads % sp:
        raise BadInput(f"--sp {sp}: ulysses splits the {heads} attention heads of {spec.name}"
                       f"{' (tiny)' if tiny else ''}, which do not divide by {sp}; use --attention ring or an SP "
                       f"degree dividing {heads}")
    if size:
        try:
            h, w, f = parse_size(size)
        except ValueError as e:
            raise BadInput(f"--size: {e}") from None
        preset = get_preset(spec.vae)
        step = preset.spatial_ratio * 2  # every DiT here patches 2x2 latents
        if h % step or w % step:
            raise BadInput(f"--size: {spec.name} needs height and width in multiples of {step} pixels, got {h}x{w}")
        if spec.is_video and (f - 1) % 4:
            raise BadInput(f"--size: {spec.name} needs frames = 1 + 4k (1, 5, ..., 81), got {f}")
        if not spec.is_video and f != 1:
            raise BadInput(f"--size: {spec.name} makes images: frames must be 1, got {f}")
