"""Speed levers for an unmodified diffusers VAE decoder, applied from outside and undone on exit.

    with optimized(vae, ["channels_last", "pads"]):
        out = decode(vae, z, "full").output

Levers (LEVERS):
- channels_last: parameters in channels-last (3-D: NDHWC) memory format. cuDNN's bf16 convolutions run
  natively in it, and the Wan resample's (B, C, T, H, W) -> (B*T, C, H, W) permute becomes a view.
- pads: the causal 3-D convolutions pad H and W inside the convolution instead of copying the input into a
  zero-padded tensor first (diffusers' WanCausalConv3d runs F.pad over the whole input, then an unpadded
  conv); only the causal time padding is still materialised. Exact: the same zeros, the same sums.
- compile: torch.compile of the decoder module (one graph per frame shape).

The model's state_dict and outputs' layout are unchanged; every lever is exact up to the kernels cuDNN or
inductor choose (summation order), which the benchmarks check against a float32 decode.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager

import torch
import torch.nn.functional as F

__all__ = ["LEVERS", "optimized"]

LEVERS = ("channels_last", "pads", "compile")
_CAUSAL_CONVS = ("WanCausalConv3d", "QwenImageCausalConv3d")


def _check(levers) -> list[str]:
    levers = list(levers)
    bad = [lever for lever in levers if lever not in LEVERS]
    if bad:
        raise ValueError(f"unknown VAE lever(s) {', '.join(map(repr, bad))}; accepted: {', '.join(LEVERS)}")
    return levers


@contextmanager
def optimized(vae, levers=LEVERS):
    """`vae` with `levers` applied for the duration of the block (yields the same object)."""
    levers = _check(levers)
    with ExitStack() as stack:
        for lever in levers:
            stack.enter_context(_APPLY[lever](vae))
        yield vae


@contextmanager
def _channels_last(vae):
    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    weights = [p for p in vae.parameters() if p.dim() in formats]  # conv kernels (out, in, [t,] h, w)
    for w in weights:
        w.data = w.data.contiguous(memory_format=formats[w.dim()])
    try:
        yield
    finally:
        for w in weights:
            w.data = w.data.contiguous()


def _causal_forward_no_pad_copy(conv):
    """WanCausalConv3d.forward with H/W padding done by the convolution (conv._padding is diffusers'
    F.pad order: (w, w, h, h, 2*t, 0))."""
    pad_w, pad_h, pad_t = conv._padding[0], conv._padding[2], conv._padding[4]

    def forward(x, cache_x=None):
        t = pad_t
        if cache_x is not None and t > 0:
            x = torch.cat([cache_x.to(x.device), x], dim=2)
            t -= cache_x.shape[2]
        if t > 0:
            x = F.pad(x, (0, 0, 0, 0, t, 0))
        return F.conv3d(x, conv.weight, conv.bias, conv.stride, (0, pad_h, pad_w), conv.dilation, conv.groups)

    return forward


@contextmanager
def _pads(vae):
    convs = [m for m in vae.decoder.modules() if type(m).__name__ in _CAUSAL_CONVS]
    for conv in convs:
        conv.forward = _causal_forward_no_pad_copy(conv)
    try:
        yield
    finally:
        for conv in convs:
            del conv.forward  # back to the class's forward


@contextmanager
def _compile(vae):
    compiled = getattr(vae, "_workbench_compiled_decoder", None)
    original = vae.decoder
    if compiled is None:  # kept on the model: a second `optimized` block reuses the compiled graphs
        compiled = torch.compile(original, dynamic=False)  # few frame shapes; dynamic ones trip Wan2.2's first chunk
        object.__setattr__(vae, "_workbench_compiled_decoder", compiled)
    vae.decoder = compiled
    try:
        yield
    finally:
        vae.decoder = original


_APPLY = {"channels_last": _channels_last, "pads": _pads, "compile": _compile}
