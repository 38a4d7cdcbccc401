"""PyTorch references for the fused VAE normalisation (+ SiLU) kernels, and their argument checks.

x is channel-first, (B, C, *spatial) with any number of spatial dims (none included); S = prod(spatial).

    rms_norm_silu:   y = x / max(||x||_C, eps) * sqrt(C) * gamma + bias      (norm over C at each position)
    group_norm_silu: y = (x - mean_g) / sqrt(var_g + eps) * weight + bias    (mean, biased var over the
                                                                              (C/G) * S values of a group)
    then y = y * sigmoid(y) when silu.
    rms_norm_silu_out: rms_norm_silu of x + x_bias (per channel: a convolution's bias, folded in) written into
                       a given tensor `out` (a view of a larger one, say).

rms_norm_silu is diffusers' WanRMS_norm (and QwenImageRMS_norm, the same code) with channel_first=True:
F.normalize(x, dim=1) (eps 1e-12 there) * dim**0.5 * gamma + bias, gamma and bias (C, 1, 1[, 1]) or (C,).
group_norm_silu is nn.GroupNorm then SiLU (diffusers' ResnetBlock2D and the AutoencoderKL decoder head).

Precision: statistics and arithmetic in float32, ONE rounding to x.dtype at the end; the output has x's
dtype (whatever the parameters' dtype) and is contiguous. diffusers' bf16/fp16 sequence rounds more often:
WanRMS_norm normalises in float32, rounds, then rounds after `* scale`, after `* gamma` (and `+ bias`), and
SiLU rounds again; nn.GroupNorm rounds its output and SiLU rounds again. So in bf16/fp16 these references
are closer to the float64 result than diffusers is (at most half a unit in the last place away, plus float32
noise), and not bit-equal to it; in float32 they agree with diffusers to float32 rounding.
No Triton here: this module imports on any machine.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .checks import check_float

__all__ = ["check_norm_args", "check_out", "rms_norm_silu_reference", "rms_norm_silu_out_reference",
           "group_norm_silu_reference", "group_norm_silu_stats_reference"]

def _check_per_channel(name: str, t: torch.Tensor, channels: int) -> None:
    """(C,) or (C, 1, ..., 1), as diffusers' norms hold their parameters."""
    check_float(name, t)
    if t.dim() == 0 or t.shape[0] != channels or t.numel() != channels:
        raise ValueError(f"{name} must have shape (C,) or (C, 1, ...) with C = {channels}, got {tuple(t.shape)}")


def check_norm_args(x, params: dict, eps, num_groups: int | None = None) -> None:
    """Raise a clear error (naming the parameter and what it accepts) unless the arguments fit together.
    `params` maps names to per-channel tensors or None."""
    check_float("x", x)
    if x.dim() < 2:
        raise ValueError(f"x must be channel-first (batch, channels, *spatial), got shape {tuple(x.shape)}")
    channels = x.shape[1]
    for name, t in params.items():
        if t is not None:
            _check_per_channel(name, t, channels)
            if t.device != x.device:
                raise ValueError(f"{name} is on {t.device}, x on {x.device}: all tensors must be on one device")
    if num_groups is not None and (not isinstance(num_groups, int) or num_groups < 1 or channels % num_groups):
        raise ValueError(f"num_groups must be a positive divisor of the {channels} channels, got {num_groups!r}")
    if not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"eps must be a float >= 0, got {eps!r}")


def check_out(x, out) -> None:
    """`out`, where an op writes its result in place: x's shape, dtype and device."""
    if not isinstance(out, torch.Tensor) or out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
        got = (tuple(out.shape), out.dtype, out.device) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"out must have x's shape, dtype and device {(tuple(x.shape), x.dtype, x.device)}, got {got}")


def _per_channel(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """(C,) or (C, 1, ...) -> float32 (C, 1, ..., 1), broadcasting against a (B, C, *spatial) tensor."""
    return t.float().reshape(-1, *([1] * (ndim - 2)))


def _finish(y: torch.Tensor, silu: bool, dtype: torch.dtype) -> torch.Tensor:
    """SiLU in float32 if asked, then the one rounding to `dtype`."""
    return (F.silu(y) if silu else y).to(dtype).contiguous()


def _affine_finish(y: torch.Tensor, weight, bias, silu: bool, dtype: torch.dtype) -> torch.Tensor:
    """A normalised float32 y (B, C, *spatial) times weight, plus bias (either may be None), then _finish."""
    if weight is not None:
        y = y * _per_channel(weight, y.dim())
    if bias is not None:
        y = y + _per_channel(bias, y.dim())
    return _finish(y, silu, dtype)


def rms_norm_silu_reference(x, gamma, bias, eps, silu):
    """(B, C, *spatial) -> same shape and dtype: channel-first RMS norm (WanRMS_norm), then SiLU if `silu`."""
    check_norm_args(x, {"gamma": gamma, "bias": bias}, eps)
    y = F.normalize(x.float(), dim=1, eps=eps) * math.sqrt(x.shape[1]) * _per_channel(gamma, x.dim())
    if bias is not None:
        y = y + _per_channel(bias, x.dim())
    return _finish(y, silu, x.dtype)


def rms_norm_silu_out_reference(x, x_bias, gamma, bias, eps, silu, out):
    """rms_norm_silu_reference of x + x_bias (per channel, added in float32; None: x alone) written into `out`
    (x's shape and dtype; may be a view of a larger tensor)."""
    check_norm_args(x, {"x_bias": x_bias, "gamma": gamma, "bias": bias}, eps)
    check_out(x, out)
    xf = x.float() if x_bias is None else x.float() + _per_channel(x_bias, x.dim())
    y = F.normalize(xf, dim=1, eps=eps) * math.sqrt(x.shape[1]) * _per_channel(gamma, x.dim())
    if bias is not None:
        y = y + _per_channel(bias, x.dim())
    out.copy_(_finish(y, silu, x.dtype))


def group_norm_silu_reference(x, num_groups, weight, bias, eps, silu):
    """(B, C, *spatial) -> same shape and dtype: GroupNorm over num_groups groups, then SiLU if `silu`."""
    check_norm_args(x, {"weight": weight, "bias": bias}, eps, num_groups)
    return _affine_finish(F.group_norm(x.float(), num_groups, eps=eps), weight, bias, silu, x.dtype)


def group_norm_silu_stats_reference(x, num_groups, mean, rstd, weight, bias, silu):
    """(B, C, *spatial) -> same shape and dtype: GroupNorm with given per-(B, group) statistics mean and rstd
    (float32), affine, then SiLU if `silu`; float32 arithmetic, one rounding."""
    check_norm_args(x, {"weight": weight, "bias": bias}, 0.0, num_groups)
    n, c = x.shape[:2]
    y = (x.reshape(n, num_groups, -1).float() - mean.float()[..., None]) * rstd.float()[..., None]
    return _affine_finish(y.view(x.shape), weight, bias, silu, x.dtype)
