"""PyTorch references for the fused LayerNorm + adaptive scale/shift (+ gate) kernels, and their argument checks.

    y = LayerNorm(x) * (1 + scale) + shift                              (per batch: scale, shift (B, D))
    select01: scale, shift, gate per token from set 0 or set 1 by index (B, L): 0 -> set 0, nonzero -> set 1
    residual: residual_out = residual + residual_gate * x first, then the same on residual_out

The references are the semantics the Triton kernels (`kernels/modulation.py`) must reproduce, and the native
implementations of `workbench.ops`. They compute in float32 and round once to the output dtype, as the
kernels do; outputs are always contiguous. Dtypes follow PyTorch promotion of the unfused expression:
y is promote(x, scale), residual_out is promote(residual, residual_gate, x), gate keeps the gates' dtype.
No Triton here: this module imports on any machine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import check_float

__all__ = [
    "check_modulation_args",
    "layernorm_scale_shift_reference",
    "layernorm_scale_shift_residual_reference",
    "layernorm_scale_shift_gate_select01_reference",
    "layernorm_scale_shift_gate_select01_residual_reference",
]

def _check_shape(name: str, t: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {what} = {shape}, got {tuple(t.shape)}")


def check_modulation_args(x, weight, bias, mods: dict, index=None, residual=None, residual_gate=None, eps=None):
    """Raise a clear error (naming the parameter and what it accepts) unless the arguments fit together.

    `mods` maps parameter names to the modulation tensors, each (B, D), all of one dtype.
    """
    check_float("x", x)
    if x.dim() != 3:
        raise ValueError(f"x must be 3-D (batch, tokens, hidden), got shape {tuple(x.shape)}")
    batch, tokens, hidden = x.shape
    for name, t in {"weight": weight, "bias": bias}.items():
        if t is not None:
            check_float(name, t)
            _check_shape(name, t, (hidden,), "(hidden,)")
    for name, t in mods.items():
        check_float(name, t)
        _check_shape(name, t, (batch, hidden), "(batch, hidden)")
    mod_dtypes = {t.dtype for t in mods.values()}
    if len(mod_dtypes) > 1:
        raise TypeError(f"{', '.join(mods)} must share one dtype, got {sorted(map(str, mod_dtypes))}")
    if index is not None:
        if not isinstance(index, torch.Tensor) or index.dtype.is_floating_point or index.dtype.is_complex:
            raise TypeError(f"index must be an integer or bool tensor (0 -> set 0, nonzero -> set 1), got "
                            f"{getattr(index, 'dtype', type(index).__name__)}")
        _check_shape("index", index, (batch, tokens), "(batch, tokens)")
    if residual is not None:
        check_float("residual", residual)
        _check_shape("residual", residual, tuple(x.shape), "x.shape")
        check_float("residual_gate", residual_gate)
        if residual_gate.dim() != 3 or residual_gate.shape[0] != batch or residual_gate.shape[2] != hidden \
                or residual_gate.shape[1] not in (1, tokens):
            raise ValueError(f"residual_gate must have shape (batch, tokens, hidden) = {(batch, tokens, hidden)} "
                             f"or (batch, 1, hidden), got {tuple(residual_gate.shape)}")
    tensors = {"x": x, "weight": weight, "bias": bias, "index": index, "residual": residual,
               "residual_gate": residual_gate, **mods}
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        raise ValueError(f"all tensors must be on one device, got {({k: str(v) for k, v in devices.items()})}")
    if not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"eps must be a float >= 0, got {eps!r}")


def _layer_norm_fp32(x, weight, bias, eps, layer_norm=F.layer_norm):
    weight = None if weight is None else weight.float()
    bias = None if bias is None else bias.float()
    return layer_norm(x.float(), (x.shape[-1],), weight, bias, eps)


def _residual_add(x, residual, residual_gate):
    """residual + residual_gate * x, rounded to its dtype as the unfused expression stores it, as float32."""
    dtype = torch.promote_types(torch.promote_types(residual.dtype, residual_gate.dtype), x.dtype)
    out = (residual.float() + residual_gate.float() * x.float()).to(dtype).contiguous()
    return out, out.float()


def _select01(index, set0, set1):
    """(B, D) per set -> (B, L, D): set 1 where index != 0 (what diffusers' torch.where(index == 0, ...) does)."""
    return torch.where(index.unsqueeze(-1) != 0, set1.unsqueeze(1), set0.unsqueeze(1))


def layernorm_scale_shift_reference(x, weight, bias, scale, shift, eps, *, layer_norm=F.layer_norm):
    """(B, L, D) -> y (B, L, D) = LN(x) * (1 + scale) + shift, scale/shift (B, D)."""
    check_modulation_args(x, weight, bias, {"scale": scale, "shift": shift}, eps=eps)
    y = _layer_norm_fp32(x, weight, bias, eps, layer_norm)
    y = y * (1 + scale.float().unsqueeze(1)) + shift.float().unsqueeze(1)
    return y.to(torch.promote_types(x.dtype, scale.dtype)).contiguous()


def layernorm_scale_shift_residual_reference(x, residual, residual_gate, weight, bias, scale, shift, eps, *,
                                             layer_norm=F.layer_norm):
    """-> (y, residual_out), residual_out = residual + residual_gate * x and y from it."""
    check_modulation_args(x, weight, bias, {"scale": scale, "shift": shift}, residual=residual,
                          residual_gate=residual_gate, eps=eps)
    residual_out, r = _residual_add(x, residual, residual_gate)
    y = _layer_norm_fp32(r, weight, bias, eps, layer_norm)
    y = y * (1 + scale.float().unsqueeze(1)) + shift.float().unsqueeze(1)
    return y.to(torch.promote_types(residual_out.dtype, scale.dtype)).contiguous(), residual_out


def layernorm_scale_shift_gate_select01_reference(x, weight, bias, scale0, shift0, gate0, scale1, shift1, gate1,
                                                  index, eps, *, layer_norm=F.layer_norm):
    """-> (y, gate), both (B, L, D), with scale/shift/gate of set 0 where index == 0, else of set 1."""
    mods = {"scale0": scale0, "shift0": shift0, "gate0": gate0, "scale1": scale1, "shift1": shift1, "gate1": gate1}
    check_modulation_args(x, weight, bias, mods, index=index, eps=eps)
    y = _layer_norm_fp32(x, weight, bias, eps, layer_norm)
    y = y * (1 + _select01(index, scale0.float(), scale1.float())) + _select01(index, shift0.float(), shift1.float())
    return y.to(torch.promote_types(x.dtype, scale0.dtype)).contiguous(), _select01(index, gate0, gate1).contiguous()


def layernorm_scale_shift_gate_select01_residual_reference(x, residual, residual_gate, weight, bias, scale0, shift0,
                                                           gate0, scale1, shift1, gate1, index, eps, *,
                                                           layer_norm=F.layer_norm):
    """-> (y, residual_out, gate): the residual add, then the select01 modulation of residual_out."""
    mods = {"scale0": scale0, "shift0": shift0, "gate0": gate0, "scale1": scale1, "shift1": shift1, "gate1": gate1}
    check_modulation_args(x, weight, bias, mods, index=index, residual=residual, residual_gate=residual_gate,
                          eps=eps)
    residual_out, r = _residual_add(x, residual, residual_gate)
    y = _layer_norm_fp32(r, weight, bias, eps, layer_norm)
    y = y * (1 + _select01(index, scale0.float(), scale1.float())) + _select01(index, shift0.float(), shift1.float())
    y = y.to(torch.promote_types(residual_out.dtype, scale0.dtype)).contiguous()
    return y, residual_out, _select01(index, gate0, gate1).contiguous()
