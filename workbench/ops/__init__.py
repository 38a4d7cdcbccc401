"""Custom ops with an implementation per platform (native PyTorch, Triton on CUDA, torch_npu on Ascend),
registered with torch.library as torch.ops.workbench.* so torch.compile captures each as one node.

    from workbench import ops
    y, gate = ops.layernorm_scale_shift_gate_select01(x, None, None, scale0, shift0, gate0,
                                                      scale1, shift1, gate1, index, 1e-6)
    y = ops.rms_norm_silu(x, gamma, None, 1e-12, True)          # WanRMS_norm + SiLU, x (B, C, *spatial)
    y = ops.group_norm_silu(x, 32, weight, bias, 1e-6, True)     # GroupNorm + SiLU

The Qwen-Image adapter (fused modulation in an unmodified diffusers model) is `workbench.ops.qwen`; the VAE
one (fused norm + SiLU in diffusers' decoders) is `workbench.ops.vae_norm.fuse_norm_silu`.
"""

from .custom_op import CustomOp
from .modulation import (
    layernorm_scale_shift,
    layernorm_scale_shift_gate_select01,
    layernorm_scale_shift_gate_select01_residual,
    layernorm_scale_shift_residual,
)
from .vae_norm import group_norm_silu, rms_norm_silu, rms_norm_silu_out

__all__ = [
    "CustomOp",
    "layernorm_scale_shift",
    "layernorm_scale_shift_residual",
    "layernorm_scale_shift_gate_select01",
    "layernorm_scale_shift_gate_select01_residual",
    "rms_norm_silu",
    "rms_norm_silu_out",
    "group_norm_silu",
]
