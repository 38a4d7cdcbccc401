"""`full`: the model's own decode of the whole latent in one pass."""

from __future__ import annotations

import torch


def decode_full(ctx, z: torch.Tensor):
    """The whole latent in one pass: equals diffusers' `vae.decode(z).sample` bit for bit."""
    fd = ctx.fd
    with ctx.measure.phase("decode"):
        x = fd.prepare(fd.as_5d(z))
        out = fd.finish(fd.decode(x, fd.new_cache(), first=True))
    return out, None, {}
