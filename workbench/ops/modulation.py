"""Fused LayerNorm + adaptive scale/shift (+ gate) as workbench custom ops.

    torch.ops.workbench.layernorm_scale_shift(x, weight, bias, scale, shift, eps) -> y
    torch.ops.workbench.layernorm_scale_shift_residual(x, residual, residual_gate, weight, bias, scale, shift, eps)
        -> (y, residual_out)
    torch.ops.workbench.layernorm_scale_shift_gate_select01(x, weight, bias, scale0, shift0, gate0,
        scale1, shift1, gate1, index, eps) -> (y, gate)
    torch.ops.workbench.layernorm_scale_shift_gate_select01_residual(x, residual, residual_gate, weight, bias,
        scale0, shift0, gate0, scale1, shift1, gate1, index, eps) -> (y, residual_out, gate)

x, residual (B, L, D); residual_gate (B, L, D) or (B, 1, D); scale/shift/gate (B, D); index (B, L), 0 -> set 0,
nonzero -> set 1; weight, bias (D,) or None. Semantics: `kernels/modulation_ref.py`.
native: the PyTorch reference (float32 statistics, one rounding); cuda: the Triton kernels of
`kernels/modulation.py`; npu: the reference with torch_npu's LayerNorm (`npu_layer_norm_eval`).
"""

from __future__ import annotations

from workbench.kernels import modulation_ref as ref

from .custom_op import KernelOp

__all__ = [
    "layernorm_scale_shift",
    "layernorm_scale_shift_residual",
    "layernorm_scale_shift_gate_select01",
    "layernorm_scale_shift_gate_select01_residual",
]

_MOD = "Tensor scale, Tensor shift"
_MOD01 = "Tensor scale0, Tensor shift0, Tensor gate0, Tensor scale1, Tensor shift1, Tensor gate1, Tensor index"
_RES = "Tensor residual, Tensor residual_gate"
_AFFINE = "Tensor? weight, Tensor? bias"


class ModulationOp(KernelOp):
    """One of the four variants: `name` is both the op's and the Triton launcher's, `name`_reference the native."""

    kernels = "modulation"

    def __init__(self, name: str, schema: str):
        super().__init__(name, schema, ref)

    def forward_npu(self, *args):
        import torch_npu  # only reached with npu tensors, so torch_npu is already loaded

        return self.reference(*args, layer_norm=torch_npu.npu_layer_norm_eval)


_layernorm_scale_shift = ModulationOp(
    "layernorm_scale_shift", f"(Tensor x, {_AFFINE}, {_MOD}, float eps) -> Tensor").register()
_layernorm_scale_shift_residual = ModulationOp(
    "layernorm_scale_shift_residual", f"(Tensor x, {_RES}, {_AFFINE}, {_MOD}, float eps) -> (Tensor, Tensor)",
).register()
_layernorm_scale_shift_gate_select01 = ModulationOp(
    "layernorm_scale_shift_gate_select01", f"(Tensor x, {_AFFINE}, {_MOD01}, float eps) -> (Tensor, Tensor)",
).register()
_layernorm_scale_shift_gate_select01_residual = ModulationOp(
    "layernorm_scale_shift_gate_select01_residual",
    f"(Tensor x, {_RES}, {_AFFINE}, {_MOD01}, float eps) -> (Tensor, Tensor, Tensor)",
).register()


def layernorm_scale_shift(x, weight, bias, scale, shift, eps):
    """y = LN(x) * (1 + scale) + shift: x (B, L, D), scale/shift (B, D) -> y (B, L, D)."""
    return _layernorm_scale_shift(x, weight, bias, scale, shift, eps)


def layernorm_scale_shift_residual(x, residual, residual_gate, weight, bias, scale, shift, eps):
    """residual_out = residual + residual_gate * x, then y = LN(residual_out) * (1 + scale) + shift -> (y, residual_out)."""
    return _layernorm_scale_shift_residual(x, residual, residual_gate, weight, bias, scale, shift, eps)


def layernorm_scale_shift_gate_select01(x, weight, bias, scale0, shift0, gate0, scale1, shift1, gate1, index, eps):
    """-> (y, gate), (B, L, D): scale/shift/gate per token from set 0 where index == 0, else from set 1."""
    return _layernorm_scale_shift_gate_select01(x, weight, bias, scale0, shift0, gate0, scale1, shift1, gate1,
                                                index, eps)


def layernorm_scale_shift_gate_select01_residual(x, residual, residual_gate, weight, bias, scale0, shift0, gate0,
                                                 scale1, shift1, gate1, index, eps):
    """-> (y, residual_out, gate): the residual add, then the select01 modulation of residual_out."""
    return _layernorm_scale_shift_gate_select01_residual(x, residual, residual_gate, weight, bias, scale0, shift0,
                                                         gate0, scale1, shift1, gate1, index, eps)
