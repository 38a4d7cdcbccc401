"""Where a tiled GLM-Image decode's GroupNorm statistics should come from (issue 12, target 4): PSNR against the
float32 full decode of `tiled` (1 tile batch, the causal_conv + fused_norm levers) with each source of the up
blocks' statistics, the global stem in every row but one.

Sources (JSON key, what the up blocks' GroupNorms normalise by):
    stem_sampled    norm_stats="sampled", mid_block="global" (the default): the up blocks once on the stem's
                    output subsampled to a tile's size
    tile_own        norm_stats="tile": each tile its own statistics
    tile_stem       mid_block="tile" (sampled): the whole decoder on the latent subsampled, stem per tile
    latent_sampled  the whole decoder on the latent subsampled to a tile's size, its up-block statistics
    pooled_own      non-overlapping tile-size crops of the stem's output, each with its own statistics, every
                    norm's moments pooled over the crops
    exact           (an oracle, the full decode's memory) every norm's statistics from the full decode

    python benchmarks/tile_stats_sources.py --size 2048 --dtype bfloat16 --out tile_stats.json  # random weights
    python benchmarks/tile_stats_sources.py --size 512 --tile-px 256 --image chelsea --out ...   # trained tiny
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from workbench.measure import versions
from workbench.metrics import psnr
from workbench.models import build_vae
from workbench.ops.vae import optimized
from workbench.parallel.vae import decode
from workbench.parallel.vae import tiled as tiled_module
from workbench.parallel.vae.stem import stem_passed_through
from workbench.parallel.vae.tile_stats import _patched, group_norms, sampled_stats
from workbench.runner import DecodeJob, load_model

LEVERS = ["causal_conv", "fused_norm"]


def recorded_stats(decoder, run) -> list:
    """Per GroupNorm of `decoder`: (mean, rstd) (B, G) float32 pooled over every call during run(), each call
    normalised by its own statistics."""
    norms = group_norms(decoder)
    moments = [[0.0, 0.0, 0] for _ in norms]  # sum of mean * n, sum of E[x^2] * n, n

    def recording(i, norm):
        own_forward = type(norm).forward.__get__(norm)

        def forward(h):
            hg = h.reshape(h.shape[0], norm.num_groups, -1).float()
            var, mean = torch.var_mean(hg, dim=-1, correction=0)
            n = hg.shape[-1]
            moments[i][0] += mean * n
            moments[i][1] += (var + mean * mean) * n
            moments[i][2] += n
            return own_forward(h)
        return forward

    with _patched(norms, recording):
        run()
    stats = []
    for (s1, s2, n), norm in zip(moments, norms):
        mean = s1 / n
        stats.append((mean, torch.rsqrt(s2 / n - mean * mean + norm.eps)))
    return stats


def up_block_stats(decoder, stats) -> list:
    """The entries of `stats` (one per GroupNorm of the whole decoder) for the norms after the mid-block."""
    mid = {id(m) for m in group_norms(decoder.mid_block)}
    return [s for norm, s in zip(group_norms(decoder), stats) if id(norm) not in mid]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--tile-px", type=int, default=None, help="default: half the size")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--image", default=None, help="a bundled photo through the trained tiny GLM VAE (default: "
                                                 "random latents through the real architecture, random weights)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tile_px = args.tile_px or args.size // 2
    size = (args.size, args.size, 1)
    if args.image:
        job = DecodeJob(model="glm-image", size=size, dtype=args.dtype, device=device, image=args.image)
        vae = load_model(job, device)
    else:
        job = DecodeJob(model="glm-image", size=size, tiny=False, weights="random", dtype=args.dtype, device=device)
        vae = build_vae("glm-image", tiny=False, weights="random", dtype=args.dtype, device=device)
    z = job.latents(device, vae)  # (B, C, h, w); GLM-Image has no post-quant conv
    with torch.inference_mode():
        ref = copy.deepcopy(vae).float().decode(z.float()).sample.float()
    decoder = vae.decoder
    tile = {"tile_px": tile_px, "stride_px": tile_px * 3 // 4}
    step = -(-z.shape[-1] // (tile_px // 8))  # the subsample step a tile's size gives (sampled_stats)
    crops = -(-args.size // tile_px)  # tile-size crops per side

    def stem_output():
        return decoder.mid_block(decoder.conv_in(z))

    def pooled_own():
        stem = stem_output()
        h, w = stem.shape[-2:]
        rows = [round(k * h / crops) for k in range(crops + 1)]
        cols = [round(k * w / crops) for k in range(crops + 1)]
        with stem_passed_through(decoder):
            return recorded_stats(decoder, lambda: [decoder(stem[..., r0:r1, c0:c1]) for r0, r1 in zip(rows, rows[1:])
                                                    for c0, c1 in zip(cols, cols[1:])])

    sources = {  # name -> (strategy parameters, the up blocks' statistics or None for the strategy's own)
        "stem_sampled": ({"mid_block": "global"}, None),
        "tile_own": ({"mid_block": "global", "norm_stats": "tile"}, None),
        "tile_stem": ({"mid_block": "tile"}, None),
        "latent_sampled": ({"mid_block": "global"}, lambda: up_block_stats(decoder, sampled_stats(decoder, z, step))),
        "pooled_own": ({"mid_block": "global"}, pooled_own),
        "exact": ({"mid_block": "global"}, lambda: up_block_stats(decoder, recorded_stats(decoder, lambda: vae.decode(z)))),
    }
    given = {"stats": None}
    strategy_stats = tiled_module.tile_norm_stats

    def tile_norm_stats(ctx, x, plan, norm_stats, scale=1):  # the tiled strategy's statistics, or the row's
        if given["stats"] is None:
            return strategy_stats(ctx, x, plan, norm_stats, scale)
        return given["stats"], {"stats_subsample": "given"}

    tiled_module.tile_norm_stats = tile_norm_stats
    rows = {}
    with torch.inference_mode(), optimized(vae, LEVERS):
        rows["full"] = {"psnr_vs_fp32_db": psnr(decode(vae, z, "full", profile=False).output.float(), ref)}
        for name, (params, stats) in sources.items():
            given["stats"] = stats() if stats else None  # with the stem in place
            t0 = time.perf_counter()
            out = decode(vae, z, "tiled", profile=False, **tile, **params).output.float()
            rows[name] = {"psnr_vs_fp32_db": psnr(out, ref), "first_call_s": time.perf_counter() - t0, **params}
            print(f"{name:15s} {rows[name]['psnr_vs_fp32_db']:.2f} dB", flush=True)
    tiled_module.tile_norm_stats = strategy_stats
    doc = {"command": "python " + " ".join(sys.argv), "versions": versions(), "size": args.size, "tile": tile,
           "dtype": args.dtype, "image": args.image, "levers": LEVERS, "rows": rows,
           "note": "PSNR vs the float32 full decode of the same latent; first_call_s includes the statistics"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
