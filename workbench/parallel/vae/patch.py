"""`patch`: a rows x cols grid, one patch per rank, each decoded alone and pasted without blending.

This is SGLang's patch decode, kept faithful so it can be compared: a halo of `halo_latent` latent
rows/columns is decoded and thrown away, but the decoder's receptive field and its mid-block
attention over the whole frame reach further, so the patch edges show seams. Measure them.

The default halo is SGLang's, derived from the tiling as SGLang derives it: half the overlap of
`tile_px`/`stride_px` tiles in latent rows, (32 - 24) // 2 = 4 at 256/192 px on the 8x models (see
`plan.sglang_halo_latent`). Any other halo, 1 included, is one `halo_latent` away.
"""

from __future__ import annotations

import torch

from . import PATCH_OUTPUTS as OUTPUTS  # noqa: E402
from .blend import gather_blocks
from .plan import plan_patches


def decode_patch(ctx, z: torch.Tensor, *, halo_latent: int | None = None, tile_px: int = 256, stride_px: int = 192,
                 grid=None, output: str = "all"):
    """One patch per rank with a halo of `halo_latent` latent rows (None: SGLang's for `tile_px`/`stride_px`)."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    fd = ctx.fd
    z5 = fd.as_5d(z)
    plan = plan_patches(z5.shape[2:], scale=fd.spatial_ratio, world_size=ctx.comm.world_size,
                        halo_latent=halo_latent, tile_px=tile_px, stride_px=stride_px, grid=grid)
    mine = plan.items[ctx.comm.rank]
    with ctx.measure.phase("decode"):
        x = fd.prepare(z5[:, :, :, mine.halo_rows.slice(), mine.halo_cols.slice()])
        decoded = fd.finish(fd.decode(x, fd.new_cache(x.shape[2]), first=True))
        rows, cols = mine.crop_px
        core = fd.as_5d(decoded)[..., rows, cols].contiguous()
    with ctx.measure.phase("gather"):
        out = gather_blocks(core, plan, ctx.comm, everywhere=output == "all")
    info = {"grid": list(plan.grid), "output": output, "halo_latent": plan.halo_latent}
    return (None if out is None else fd.to_native(out)), plan, info
