"""Speed levers for an unmodified diffusers VAE decoder, applied from outside and undone on exit.

    with optimized(vae, ["channels_last", "causal_conv"]):
        out = decode(vae, z, "full").output

Levers (LEVERS):
- channels_last: parameters in channels-last (3-D: NDHWC) memory format. cuDNN's bf16 convolutions run
  natively in it, and the Wan resample's (B, C, T, H, W) -> (B*T, C, H, W) permute becomes a view.
- causal_conv: the causal 3-D convolutions (encoder and decoder) pad H and W inside the convolution instead
  of copying the input into a zero-padded tensor first (diffusers' WanCausalConv3d runs F.pad over the whole
  input, then an unpadded conv). A single frame without a cache (every Qwen-Image decode, a video's first
  latent frame, every image a training step sees) would be padded with two zero frames and convolved with
  all three temporal taps, two of them on zeros: it runs as a 2-D convolution with the last tap instead,
  a third of the work. Exact up to summation order: the skipped products are all zeros.
- fused_norm: each RMS norm or GroupNorm followed by a SiLU becomes one fused op (workbench.ops.vae_norm:
  Triton on CUDA, float32 statistics, one rounding), in place of diffusers' float32 copy, norm, divide,
  cast, two multiplies and SiLU, or PyTorch's GroupNorm kernel (one block per group: 32 blocks for a
  whole 2048x2048 image). Decoder and encoder; single-device decodes only (shard refuses fused norms).
- conv_buffers: with fused_norm, each causal convolution of a Wan residual block reads one buffer holding its
  cached frames followed by the fused norm's output, which the norm kernel writes there in place
  (rms_norm_silu_out). diffusers' block instead writes the norm's output, then torch.cat's the cache and it
  into a new tensor for every convolution of every latent frame: a read and a write of 2 + T frames at each
  of the decoder's widths. The frame cache keeps diffusers' contents (the last two input frames). And conv1's
  bias is added inside norm2's kernel, in float32, instead of by a pass of its own over conv1's output (cuDNN
  convolutions in PyTorch add the bias separately). Exact up to that rounding: the buffer holds the values
  the concatenation would. Without fused_norm, or where another wrapper owns the convolution (shard's halo
  convs), blocks run diffusers' forward.
- compile: torch.compile of the decoder module (one graph per frame shape); not for Wan2.2-TI2V.

The model's state_dict and outputs' layout are unchanged; every lever is exact up to the kernels cuDNN or
inductor choose (summation order), which the benchmarks check against a float32 decode.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager

import torch
import torch.nn.functional as F

from ..parallel.vae import LEVERS  # the names live with the strategies' options, importable without torch

__all__ = ["LEVERS", "optimized"]

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


def takes_lone_frame_2d(conv) -> bool:
    """A causal conv (conv._padding is diffusers' F.pad order: (w, w, h, h, 2*t, 0)) whose temporal padding is all
    in front, stride and dilation 1 in time: for a lone uncached frame only its last temporal tap meets data."""
    return conv._padding[4] == conv.kernel_size[0] - 1 and conv.stride[0] == 1 and conv.dilation[0] == 1


def last_tap_conv2d(conv, x, padding, with_bias: bool = True):
    """A lone frame x (B, C, h, w) through `conv`'s last temporal tap -> (B, C_out, 1, h', w'): the causal conv of
    that frame, up to summation order (the other taps multiply exact zeros); without its bias if not `with_bias`."""
    bias = conv.bias if with_bias else None
    y = F.conv2d(x, conv.weight[:, :, -1], bias, conv.stride[1:], padding, conv.dilation[1:], conv.groups)
    return y.unsqueeze(2)


def _causal_forward(conv):
    """WanCausalConv3d.forward with H/W padding done by the convolution and a lone uncached frame as a 2-D
    convolution."""
    pad_w, pad_h, pad_t = conv._padding[0], conv._padding[2], conv._padding[4]
    lone_frame_2d = takes_lone_frame_2d(conv)

    def forward(x, cache_x=None):
        if lone_frame_2d and cache_x is None and x.shape[2] == 1:  # (B, C, 1, H, W): zeros on all but the last tap
            return last_tap_conv2d(conv, x[:, :, 0], (pad_h, pad_w))
        t = pad_t
        if cache_x is not None and t > 0:
            x = torch.cat([cache_x.to(x.device), x], dim=2)
            t -= cache_x.shape[2]
        if t > 0:
            x = F.pad(x, (0, 0, 0, 0, t, 0))
        return F.conv3d(x, conv.weight, conv.bias, conv.stride, (0, pad_h, pad_w), conv.dilation, conv.groups)

    forward._workbench_causal_conv = True  # conv_buffers may bypass it: the same arithmetic
    return forward


@contextmanager
def _causal_conv(vae):
    convs = [m for m in vae.modules() if type(m).__name__ in _CAUSAL_CONVS]
    for conv in convs:
        conv.forward = _causal_forward(conv)
    try:
        yield
    finally:
        for conv in convs:
            del conv.forward  # back to the class's forward


def _norm_then_conv(norm, conv, x, feat_cache, feat_idx, x_bias=None, conv_bias=True):
    """`conv(norm(x + x_bias))` as diffusers' residual block runs it with the frame cache (feat_cache[feat_idx[0]]:
    None or the last 1-2 frames this conv read), the norm writing into the conv's input buffer after the cache.
    x_bias: the previous conv's bias, left out there (conv_bias=False) and added inside the norm kernel."""
    idx = feat_idx[0]
    feat_idx[0] += 1
    cached = feat_cache[idx]
    b, c, t, h, w = x.shape
    pad_t, pad_h, pad_w = conv._padding[4], conv._padding[2], conv._padding[0]  # pad_t = CACHE_T = 2
    channels_last = x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    if cached is None and t == 1 and takes_lone_frame_2d(conv):  # first frame: 2-D conv over the last tap
        y = torch.empty_like(x, memory_format=layout)
        norm.forward_into(x, y, x_bias)
        feat_cache[idx] = y  # diffusers caches a clone of this whole frame; y is fresh and never written again
        return last_tap_conv2d(conv, y[:, :, 0], (pad_h, pad_w), conv_bias)
    buffer = torch.empty((b, c, pad_t + t, h, w), dtype=x.dtype, device=x.device, memory_format=layout)
    n = 0 if cached is None else min(cached.shape[2], pad_t)  # cached frames; the causal zero padding before them
    if n < pad_t:
        buffer[:, :, :pad_t - n].zero_()
    if n:
        buffer[:, :, pad_t - n:pad_t].copy_(cached[:, :, -n:])
    norm.forward_into(x, buffer[:, :, pad_t:], x_bias)  # (B, C, pad_t + t, H, W): cache, then norm(x + x_bias)
    feat_cache[idx] = buffer[:, :, -min(pad_t, n + t):].clone()  # as diffusers: the last two frames seen
    return F.conv3d(buffer, conv.weight, conv.bias if conv_bias else None, conv.stride, (0, pad_h, pad_w),
                    conv.dilation, conv.groups)


def _buffered_forward(block):
    """WanResidualBlock.forward with _norm_then_conv for norm1 -> conv1 and norm2 -> conv2 where it applies;
    conv1's bias is added in norm2's kernel instead of by a separate pass over conv1's output."""
    from .vae_norm import FusedRMSNormSiLU

    def ours(conv) -> bool:  # the class's forward or the causal_conv lever's: plain causal convs
        return "forward" not in conv.__dict__ or getattr(conv.forward, "_workbench_causal_conv", False)

    def forward(x, feat_cache=None, feat_idx=[0]):  # noqa: B006 (diffusers' signature)
        if (feat_cache is None or block.training or x.dim() != 5
                or not all(isinstance(n, FusedRMSNormSiLU) for n in (block.norm1, block.norm2))
                or not all(ours(c) and c._padding[4] == 2 for c in (block.conv1, block.conv2))):
            return type(block).forward(block, x, feat_cache, feat_idx)
        h = block.conv_shortcut(x)
        x = _norm_then_conv(block.norm1, block.conv1, x, feat_cache, feat_idx, conv_bias=False)
        x = _norm_then_conv(block.norm2, block.conv2, x, feat_cache, feat_idx, x_bias=block.conv1.bias)
        return x + h  # dropout between norm2 and conv2: identity in eval

    return forward


@contextmanager
def _conv_buffers(vae):
    blocks = [m for m in vae.modules() if type(m).__name__ == "WanResidualBlock"]
    for block in blocks:
        block.forward = _buffered_forward(block)
    try:
        yield
    finally:
        for block in blocks:
            del block.forward


@contextmanager
def _compile(vae):
    if any(type(m).__name__ == "DupUp3D" for m in vae.decoder.modules()):
        raise NotImplementedError("the compile lever does not support Wan2.2-TI2V's decoder: dynamo fails on its "
                                  "first-chunk shortcut (torch 2.11-2.13); use the other levers")
    compiled = getattr(vae, "_workbench_compiled_decoder", None)
    original = vae.decoder
    if compiled is None:  # kept on the model: a second `optimized` block reuses the compiled graphs
        compiled = torch.compile(original, dynamic=False)  # a few frame shapes: no dynamic ones
        object.__setattr__(vae, "_workbench_compiled_decoder", compiled)
    vae.decoder = compiled
    try:
        # The Wan decoder breaks its graph at the frame cache, so each block is its own frame: one compile
        # per block shape exceeds dynamo's default limit of 8, after which it would silently run eager.
        with torch._dynamo.config.patch(recompile_limit=256, accumulated_recompile_limit=4096):
            yield
    finally:
        vae.decoder = original


@contextmanager
def _fused_norm(vae):
    from .vae_norm import fuse_norm_silu, unfuse_norm_silu

    fuse_norm_silu(vae)
    try:
        yield
    finally:
        unfuse_norm_silu(vae)


_APPLY = {"channels_last": _channels_last, "causal_conv": _causal_conv, "fused_norm": _fused_norm,
          "conv_buffers": _conv_buffers, "compile": _compile}
