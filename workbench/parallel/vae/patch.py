"""`patch`: a rows x cols grid, one patch per rank, each decoded alone and pasted without blending.

This is SGLang's patch decode, kept faithful so it can be compared: a halo of `halo_latent` latent
rows/columns is decoded and thrown away, but the decoder's receptive field and its mid-block
attention over the whole frame reach further, so the patch edges show seams. Measure them.
"""

from __future__ import annotations

import torch

from . import PATCH_OUTPUTS as OUTPUTS  # noqa: E402
from .blend import gather_blocks
from .plan import plan_patches


def decode_patch(ctx, z: torch.Tensor, *, halo_latent: int = 1, grid=None, output: str = "all"):
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    fd = ctx.fd
    z5 = fd.as_5d(z)
    plan = plan_patches(z5.shape[2:], scale=fd.spatial_ratio, world_size=ctx.comm.world_size,
                        halo_latent=halo_latent, grid=grid)
    mine = plan.items[ctx.comm.rank]
    with ctx.measure.phase("decode"):
        x = fd.prepare(z5[:, :, :, mine.halo_rows.slice(), mine.halo_cols.slice()])
        decoded = fd.finish(fd.decode(x, fd.new_cache(), first=True))
        rows, cols = mine.crop_px
        core = fd.as_5d(decoded)[..., rows, cols].contiguous()
    with ctx.measure.phase("gather"):
        out = gather_blocks(core, plan, ctx.comm, everywhere=output == "all")
    if out is None:
        return None, plan, {"output": output}
    return fd.to_native(out), plan, {"grid": list(plan.grid), "output": output}
