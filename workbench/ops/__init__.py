"""Custom ops with an implementation per platform (native PyTorch, Triton on CUDA, torch_npu on Ascend),
registered with torch.library as torch.ops.workbench.* so torch.compile captures each as one node.

    from workbench import ops
    y, gate = ops.layernorm_scale_shift_gate_select01(x, None, None, scale0, shift0, gate0,
                                                      scale1, shift1, gate1, index, 1e-6)

The Qwen-Image adapter (fused modulation in an unmodified diffusers model) is `workbench.ops.qwen`.
"""

from .custom_op import CustomOp
from .modulation import (
    layernorm_scale_shift,
    layernorm_scale_shift_gate_select01,
    layernorm_scale_shift_gate_select01_residual,
    layernorm_scale_shift_residual,
)

__all__ = [
    "CustomOp",
    "layernorm_scale_shift",
    "layernorm_scale_shift_residual",
    "layernorm_scale_shift_gate_select01",
    "layernorm_scale_shift_gate_select01_residual",
]
