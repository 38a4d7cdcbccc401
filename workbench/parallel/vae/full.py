"""`full`: the model's own decode of the whole latent in one pass."""

from __future__ import annotations

import torch

from ...ops.vae import optimized


def decode_full(ctx, z: torch.Tensor, *, levers: tuple = ()):
    """The whole latent in one pass: equals diffusers' `vae.decode(z).sample` bit for bit, or, with speed
    `levers` (workbench.ops.vae.LEVERS), up to their summation order."""
    fd = ctx.fd
    with optimized(fd.vae, levers), ctx.measure.phase("decode"):
        x = fd.prepare(fd.as_5d(z))
        out = fd.finish(fd.decode(x, fd.new_cache(x.shape[2]), first=True))
    return out, None, {}
