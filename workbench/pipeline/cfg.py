"""Classifier-free guidance, serial or CFG-parallel.

    pred = guided(lambda branch: model(latents, embeds[branch]), scale=4.0, ctx=ctx)

With a CFG degree of 2 the conditional branch runs on the ranks with cfg_rank 0 and the unconditional one
on cfg_rank 1, at the same time; the two predictions are all-gathered over the CFG group (ranks with the
same sp_rank) and every rank combines them with the serial formula, in the same order, so both groups
continue from identical latents.
"""

from __future__ import annotations

import torch

from ..parallel.comm import all_gather_list

__all__ = ["guided", "combine", "BRANCHES"]

BRANCHES = ("cond", "uncond")


def combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float, *, renorm: bool = False) -> torch.Tensor:
    """uncond + scale * (cond - uncond); `renorm` (Qwen-Image's true CFG) rescales it to the norm of `cond`
    along the channel (last) dim."""
    out = uncond + scale * (cond - uncond)
    if renorm:
        out = out * (torch.norm(cond, dim=-1, keepdim=True) / torch.norm(out, dim=-1, keepdim=True))
    return out


def guided(predict, *, scale: float, ctx, renorm: bool = False) -> torch.Tensor:
    """The guided prediction from `predict(branch)` ("cond" or "uncond"); no guidance when scale <= 1."""
    if scale <= 1:
        return predict("cond")
    if ctx.dims.cfg == 1:
        cond, uncond = predict("cond"), predict("uncond")
    else:
        cond, uncond = all_gather_list(predict(BRANCHES[ctx.cfg_rank]).contiguous(), ctx.groups.cfg)
    return combine(cond, uncond, scale, renorm=renorm)
