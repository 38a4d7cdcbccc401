"""The workbench ops under torch.library and torch.compile, and the Qwen-Image adapter against diffusers.

A tiny QwenImageTransformer2DModel (2 blocks, hidden 32), plain and zero_cond_t (the Qwen-Image-Edit index
path), random weights. On CPU the ops run their native implementation; the compiled graph holds them as
single nodes whichever implementation runs under them.

    python -m pytest tests/test_ops_compile.py -q
"""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import QwenImageTransformer2DModel
from diffusers.models.transformers.transformer_qwenimage import QwenImageTransformerBlock

from workbench import ops
from workbench.kernels import modulation_ref as ref
from workbench.ops.qwen import FusedQwenImageTransformerBlock, fuse_modulation, unfuse_modulation

FUSED_OPS_PER_BLOCK = 4  # image and text: norm1 + modulate, gated residual + norm2 + modulate


def tiny_model(edit: bool, dtype=torch.float32, seed=0) -> QwenImageTransformer2DModel:
    torch.manual_seed(seed)
    model = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                        axes_dims_rope=(4, 6, 6), zero_cond_t=edit)
    return model.to(dtype).eval()


def tiny_inputs(edit: bool, dtype=torch.float32, batch=2, seed=1) -> dict:
    """Edit: a 4x4 target image then a 4x4 reference image per sample (modulate_index 0 then 1)."""
    gen = torch.Generator().manual_seed(seed)
    img_shapes = [[(1, 4, 4), (1, 4, 4)] if edit else [(1, 4, 6)]] * batch
    tokens = sum(f * h * w for f, h, w in img_shapes[0])
    mask = torch.ones(batch, 7)
    mask[-1, -2:] = 0  # padded text in the last sample
    return {"hidden_states": torch.randn(batch, tokens, 16, generator=gen).to(dtype),
            "encoder_hidden_states": torch.randn(batch, 7, 32, generator=gen).to(dtype),
            "encoder_hidden_states_mask": mask, "timestep": torch.tensor([0.7, 0.3][:batch]), "img_shapes": img_shapes,
            "return_dict": False}


def run(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs)[0]


@pytest.mark.parametrize("edit", [False, True], ids=["qwen-image", "qwen-image-edit"])
def test_fused_model_equals_unmodified_fp32(edit):
    # Tolerance 1e-5: float32 throughout; the fused ops differ from diffusers' sequence only in the order of
    # float32 reductions (on CPU the native ops even run the same arithmetic).
    model, inputs = tiny_model(edit), tiny_inputs(edit)
    expected = run(model, inputs)
    fused = fuse_modulation(copy.deepcopy(model))
    assert all(type(b) is FusedQwenImageTransformerBlock for b in fused.transformer_blocks)
    torch.testing.assert_close(run(fused, inputs), expected, rtol=1e-5, atol=1e-5)
    unfused = unfuse_modulation(fused)
    assert all(type(b) is QwenImageTransformerBlock for b in unfused.transformer_blocks)
    assert torch.equal(run(unfused, inputs), expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("edit", [False, True], ids=["qwen-image", "qwen-image-edit"])
def test_fused_model_is_as_accurate_as_unmodified(edit, dtype):
    # Tolerance: bf16/fp16 round after every op, so fused and unmodified models cannot agree bit for bit (the
    # fused ops round once where diffusers rounds four times). What must hold: the fused model is as close to
    # the float64 model as the unmodified one. Measured over seeds, the ratio of mean errors is 0.95-1.05 and
    # of max errors 0.8-1.25 (the matmuls dominate); the bounds 1.1 and 1.5 leave room without hiding a bug.
    model = tiny_model(edit)
    truth = run(copy.deepcopy(model).double(), tiny_inputs(edit, torch.float64))
    low = copy.deepcopy(model).to(dtype)
    unmodified_err = (run(low, tiny_inputs(edit, dtype)).double() - truth).abs()
    fused_err = (run(fuse_modulation(low), tiny_inputs(edit, dtype)).double() - truth).abs()
    assert fused_err.mean() <= 1.1 * unmodified_err.mean(), (fused_err.mean(), unmodified_err.mean())
    assert fused_err.max() <= 1.5 * unmodified_err.max(), (fused_err.max(), unmodified_err.max())


@pytest.mark.parametrize("edit", [False, True], ids=["qwen-image", "qwen-image-edit"])
def test_fused_model_has_no_graph_breaks(edit):
    fused, inputs = fuse_modulation(tiny_model(edit)), tiny_inputs(edit)
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(fused)(**inputs)
    assert explained.graph_break_count == 0, [str(r.reason) for r in explained.break_reasons]
    assert explained.graph_count == 1
    targets = [str(node.target) for graph in explained.graphs for node in graph.graph.nodes]
    fused_nodes = [t for t in targets if t.startswith("workbench.")]
    assert len(fused_nodes) == FUSED_OPS_PER_BLOCK * len(fused.transformer_blocks), fused_nodes
    assert ("workbench.layernorm_scale_shift_gate_select01.default" in fused_nodes) == edit


def test_compiled_fused_model_equals_eager():
    # The edit model runs all four ops. Inductor (C++ on CPU) must accept the fake implementations and call
    # the ops as opaque kernels: fp32, so 1e-5 (inductor may reorder the float32 arithmetic around them).
    fused, inputs = fuse_modulation(tiny_model(edit=True)), tiny_inputs(edit=True)
    expected = run(fused, inputs)
    torch._dynamo.reset()
    compiled = torch.compile(fused, fullgraph=True)
    torch.testing.assert_close(run(compiled, inputs), expected, rtol=1e-5, atol=1e-5)


def _sample_args(name: str, dtype=torch.float32) -> tuple:
    gen = torch.Generator().manual_seed(0)
    batch, tokens, hidden = 2, 5, 24
    x, residual = torch.randn(2, batch, tokens, hidden, generator=gen).to(dtype)
    shift, scale, gate = torch.randn(2 * batch, 3 * hidden, generator=gen).to(dtype).chunk(3, dim=-1)
    index = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 0, 1, 0]], dtype=torch.int32)
    res = (residual, gate[:batch].unsqueeze(1)) if "residual" in name else ()
    if "select01" in name:
        mods = (scale[:batch], shift[:batch], gate[:batch], scale[batch:], shift[batch:], gate[batch:], index)
    else:
        mods = (scale[:batch], shift[:batch])
    return (x, *res, None, None, *mods, 1e-6)


OP_NAMES = ["layernorm_scale_shift", "layernorm_scale_shift_residual", "layernorm_scale_shift_gate_select01",
            "layernorm_scale_shift_gate_select01_residual"]


@pytest.mark.parametrize("name", OP_NAMES)
def test_op_registration(name):
    """torch.library's own checks: schema, fake implementation against the real one, AOT dispatch."""
    args = _sample_args(name)
    torch.library.opcheck(getattr(torch.ops.workbench, name).default, args)
    # On CPU the op runs the native implementation: the reference, exactly.
    out, expected = getattr(ops, name)(*args), getattr(ref, f"{name}_reference")(*args)
    for a, e in zip(out if isinstance(out, tuple) else (out,), expected if isinstance(expected, tuple) else (expected,)):
        assert torch.equal(a, e)


def test_fuse_needs_qwen_blocks():
    with pytest.raises(ValueError, match="no diffusers QwenImageTransformerBlock"):
        fuse_modulation(torch.nn.Linear(2, 2))
