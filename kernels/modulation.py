"""Triton kernels: LayerNorm + adaptive scale/shift (+ per-token 0/1 modulation-set select, + residual add).

One kernel, specialised by constexpr flags into the four variants; one program normalises one token row.
Statistics are float32 whatever the input dtype; every output is rounded once. Any hidden size up to
`MAX_HIDDEN` (the row is held in registers, masked to the next power of two). Inputs may have any strides
(passed to the kernel); outputs are contiguous. Semantics, dtypes and argument checks are those of the
references in `kernels/modulation_ref.py`.

Runs on CUDA tensors, or on CPU tensors through the Triton interpreter: TRITON_INTERPRET=1 must be set
before triton is first imported in the process (triton.jit reads it when a function is decorated, and
triton.language's own tl.sum is one).

    python -m pytest tests/test_kernels.py -q
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from .modulation_ref import check_modulation_args

__all__ = [
    "MAX_HIDDEN",
    "layernorm_scale_shift",
    "layernorm_scale_shift_residual",
    "layernorm_scale_shift_gate_select01",
    "layernorm_scale_shift_gate_select01_residual",
]

MAX_HIDDEN = 65536  # one row per program, in registers; every DiT's hidden size is far below


@triton.jit
def _load_row(ptr, batch, stride_b, stride_d, cols, mask):
    return tl.load(ptr + batch * stride_b + cols * stride_d, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _layernorm_modulate_kernel(
    y_ptr, residual_out_ptr, gate_out_ptr,  # outputs, contiguous (B, L, D)
    x_ptr, stride_x_b, stride_x_l, stride_x_d,
    residual_ptr, stride_r_b, stride_r_l, stride_r_d,
    residual_gate_ptr, stride_rg_b, stride_rg_l, stride_rg_d,  # stride_rg_l = 0 for a (B, 1, D) gate
    weight_ptr, stride_w, bias_ptr, stride_bias,
    scale0_ptr, stride_scale0_b, stride_scale0_d, shift0_ptr, stride_shift0_b, stride_shift0_d,
    gate0_ptr, stride_gate0_b, stride_gate0_d,
    scale1_ptr, stride_scale1_b, stride_scale1_d, shift1_ptr, stride_shift1_b, stride_shift1_d,
    gate1_ptr, stride_gate1_b, stride_gate1_d,
    index_ptr, stride_i_b, stride_i_l,
    tokens, hidden, eps,
    HAS_RESIDUAL: tl.constexpr, HAS_INDEX: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # int64: B * L * D may pass 2**31
    b = row // tokens
    t = row % tokens
    cols = tl.arange(0, BLOCK_D)
    mask = cols < hidden
    out_offsets = row * hidden + cols

    x = tl.load(x_ptr + b * stride_x_b + t * stride_x_l + cols * stride_x_d, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(residual_ptr + b * stride_r_b + t * stride_r_l + cols * stride_r_d, mask=mask, other=0.0)
        g = tl.load(residual_gate_ptr + b * stride_rg_b + t * stride_rg_l + cols * stride_rg_d, mask=mask, other=0.0)
        x = r.to(tl.float32) + g.to(tl.float32) * x
        x = x.to(residual_out_ptr.dtype.element_ty)  # normalise what is stored, as the unfused sequence does
        tl.store(residual_out_ptr + out_offsets, x, mask=mask)
        x = x.to(tl.float32)

    mean = tl.sum(x, axis=0) / hidden
    centered = tl.where(mask, x - mean, 0.0)
    var = tl.sum(centered * centered, axis=0) / hidden
    y = centered * tl.rsqrt(var + eps)
    if HAS_WEIGHT:
        y = y * tl.load(weight_ptr + cols * stride_w, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + cols * stride_bias, mask=mask, other=0.0).to(tl.float32)

    if HAS_INDEX:
        # Branch on the token's set, so only the chosen set is read.
        if tl.load(index_ptr + b * stride_i_b + t * stride_i_l) != 0:
            scale = _load_row(scale1_ptr, b, stride_scale1_b, stride_scale1_d, cols, mask)
            shift = _load_row(shift1_ptr, b, stride_shift1_b, stride_shift1_d, cols, mask)
            gate = _load_row(gate1_ptr, b, stride_gate1_b, stride_gate1_d, cols, mask)
        else:
            scale = _load_row(scale0_ptr, b, stride_scale0_b, stride_scale0_d, cols, mask)
            shift = _load_row(shift0_ptr, b, stride_shift0_b, stride_shift0_d, cols, mask)
            gate = _load_row(gate0_ptr, b, stride_gate0_b, stride_gate0_d, cols, mask)
        tl.store(gate_out_ptr + out_offsets, gate, mask=mask)  # exact: a copy of the chosen gate
    else:
        scale = _load_row(scale0_ptr, b, stride_scale0_b, stride_scale0_d, cols, mask)
        shift = _load_row(shift0_ptr, b, stride_shift0_b, stride_shift0_d, cols, mask)
    tl.store(y_ptr + out_offsets, y * (1.0 + scale) + shift, mask=mask)


def _interpreted() -> bool:
    """Whether the kernel runs in the Triton interpreter; raises if only half of Triton does."""
    ours, triton_own = (isinstance(f, InterpretedFunction) for f in (_layernorm_modulate_kernel, tl.sum))
    if ours != triton_own:
        raise RuntimeError("TRITON_INTERPRET=1 was set after triton was imported but before kernels.modulation: "
                           "set it before triton is first imported")
    return ours


def _num_warps(block_d: int) -> int:
    """Warps per program. Tuned on an H200 at hidden 3072 (the num_warps sweep of
    data/bench/modulation_h200_kernels.json): 4 is the fastest of 2/4/8/16 for every variant at 4096 and 16384
    tokens, the set choice (select01) included: 25.98 vs 29.73 us with 8 at 4096 tokens, 90.62 vs 100.86 us at
    16384. Wider rows need more warps."""
    return 4 if block_d <= 4096 else 8 if block_d < 8192 else 16 if block_d < 32768 else 32


def _launch(x, weight, bias, scale0, shift0, eps, *, gate0=None, scale1=None, shift1=None, gate1=None, index=None,
            residual=None, residual_gate=None, num_warps=None):
    """Allocate the outputs, launch one program per token, return (y, residual_out or None, gate or None)."""
    batch, tokens, hidden = x.shape
    if hidden > MAX_HIDDEN:
        raise ValueError(f"hidden size {hidden} is above MAX_HIDDEN={MAX_HIDDEN} of the single-pass kernel")
    if x.device.type != "cuda" and not _interpreted():
        raise RuntimeError(f"kernels.modulation runs on CUDA tensors, got {x.device}; for CPU tensors set "
                           "TRITON_INTERPRET=1 before triton is first imported")
    has_residual, has_index = residual is not None, index is not None
    norm_in_dtype = x.dtype
    residual_out = None
    if has_residual:
        norm_in_dtype = torch.promote_types(torch.promote_types(residual.dtype, residual_gate.dtype), x.dtype)
        residual_out = torch.empty(x.shape, dtype=norm_in_dtype, device=x.device)
        residual_gate = residual_gate.expand(x.shape)  # (B, 1, D) -> token stride 0
    y = torch.empty(x.shape, dtype=torch.promote_types(norm_in_dtype, scale0.dtype), device=x.device)
    gate = torch.empty(x.shape, dtype=gate0.dtype, device=x.device) if has_index else None
    if x.numel() == 0:
        return y, residual_out, gate

    def strides(t, n):  # absent tensors: a dummy pointer (x) the kernel never reads, strides 0
        return (x, *([0] * n)) if t is None else (t, *t.stride())

    block_d = triton.next_power_of_2(hidden)
    device = torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()
    with device:
        _layernorm_modulate_kernel[(batch * tokens,)](
            y, residual_out if has_residual else y, gate if has_index else y,
            *strides(x, 3), *strides(residual, 3), *strides(residual_gate, 3),
            *strides(weight, 1), *strides(bias, 1),
            *strides(scale0, 2), *strides(shift0, 2), *strides(gate0, 2),
            *strides(scale1, 2), *strides(shift1, 2), *strides(gate1, 2),
            *strides(index, 2),
            tokens, hidden, float(eps),
            HAS_RESIDUAL=has_residual, HAS_INDEX=has_index, HAS_WEIGHT=weight is not None,
            HAS_BIAS=bias is not None, BLOCK_D=block_d, num_warps=num_warps or _num_warps(block_d),
        )
    return y, residual_out, gate


def layernorm_scale_shift(x, weight, bias, scale, shift, eps, *, num_warps=None):
    """(B, L, D) -> y = LN(x) * (1 + scale) + shift; scale, shift (B, D); weight, bias (D,) or None."""
    check_modulation_args(x, weight, bias, {"scale": scale, "shift": shift}, eps=eps)
    return _launch(x, weight, bias, scale, shift, eps, num_warps=num_warps)[0]


def layernorm_scale_shift_residual(x, residual, residual_gate, weight, bias, scale, shift, eps, *, num_warps=None):
    """-> (y, residual_out): residual_out = residual + residual_gate * x, y = LN(residual_out) * (1 + scale) + shift."""
    check_modulation_args(x, weight, bias, {"scale": scale, "shift": shift}, residual=residual,
                          residual_gate=residual_gate, eps=eps)
    y, residual_out, _ = _launch(x, weight, bias, scale, shift, eps, residual=residual, residual_gate=residual_gate,
                                 num_warps=num_warps)
    return y, residual_out


def layernorm_scale_shift_gate_select01(x, weight, bias, scale0, shift0, gate0, scale1, shift1, gate1, index, eps, *,
                                        num_warps=None):
    """-> (y, gate), (B, L, D): scale/shift/gate of set 0 where index (B, L) == 0, else of set 1."""
    mods = {"scale0": scale0, "shift0": shift0, "gate0": gate0, "scale1": scale1, "shift1": shift1, "gate1": gate1}
    check_modulation_args(x, weight, bias, mods, index=index, eps=eps)
    y, _, gate = _launch(x, weight, bias, scale0, shift0, eps, gate0=gate0, scale1=scale1, shift1=shift1,
                         gate1=gate1, index=index, num_warps=num_warps)
    return y, gate


def layernorm_scale_shift_gate_select01_residual(x, residual, residual_gate, weight, bias, scale0, shift0, gate0,
                                                 scale1, shift1, gate1, index, eps, *, num_warps=None):
    """-> (y, residual_out, gate): the residual add, then the select01 modulation of residual_out."""
    mods = {"scale0": scale0, "shift0": shift0, "gate0": gate0, "scale1": scale1, "shift1": shift1, "gate1": gate1}
    check_modulation_args(x, weight, bias, mods, index=index, residual=residual, residual_gate=residual_gate, eps=eps)
    return _launch(x, weight, bias, scale0, shift0, eps, gate0=gate0, scale1=scale1, shift1=shift1, gate1=gate1,
                   index=index, residual=residual, residual_gate=residual_gate, num_warps=num_warps)
