"""Fused modulation for diffusers' Qwen-Image DiT, applied from outside to an unmodified model.

    from workbench.ops.qwen import fuse_modulation, unfuse_modulation
    transformer = fuse_modulation(transformer)     # in place; returns the model
    transformer = unfuse_modulation(transformer)   # back to diffusers' own forward

Every QwenImageTransformerBlock gets the class FusedQwenImageTransformerBlock (the fully_shard habit: a
subclass swapped in on the instance, so parameters, state dict, hooks and isinstance checks are untouched).
Its forward is diffusers 0.42's QwenImageTransformerBlock.forward with each LayerNorm + modulation, and
each gated residual add that feeds a LayerNorm, done by one workbench op:

    norm1 + modulate                      -> layernorm_scale_shift (text; image without an index)
                                             layernorm_scale_shift_gate_select01 (image, Qwen-Image-Edit)
    residual + gate1 * attn, norm2 + mod  -> layernorm_scale_shift_residual / ..._gate_select01_residual

Qwen-Image-Edit (zero_cond_t) is the index path: the image modulation has batch 2B, rows [0, B) are set 0
(the noisy target tokens), rows [B, 2B) set 1 (the reference-image tokens, timestep 0), and
modulate_index (B, L) says which set each image token takes.
Equality with the unmodified block is tested in tests/test_ops_compile.py.
"""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_qwenimage import QwenImageTransformerBlock
from torch import nn

from . import modulation as ops

__all__ = ["FusedQwenImageTransformerBlock", "fuse_modulation", "unfuse_modulation"]


def _norm_modulate(norm: nn.LayerNorm, x, mod_params, index=None):
    """norm(x) then diffusers' _modulate(., mod_params, index) -> (modulated, gate)."""
    shift, scale, gate = mod_params.chunk(3, dim=-1)  # (B, D) each, or (2B, D) with an index
    if index is None:
        return ops.layernorm_scale_shift(x, norm.weight, norm.bias, scale, shift, norm.eps), gate.unsqueeze(1)
    half = shift.shape[0] // 2  # rows [0, half): set 0, [half, 2 half): set 1
    return ops.layernorm_scale_shift_gate_select01(
        x, norm.weight, norm.bias, scale[:half], shift[:half], gate[:half], scale[half:], shift[half:],
        gate[half:], index, norm.eps)


def _residual_norm_modulate(norm: nn.LayerNorm, x, residual, residual_gate, mod_params, index=None):
    """residual + residual_gate * x, then norm and modulate it -> (modulated, residual_out, gate)."""
    shift, scale, gate = mod_params.chunk(3, dim=-1)
    if index is None:
        y, residual_out = ops.layernorm_scale_shift_residual(x, residual, residual_gate, norm.weight, norm.bias,
                                                             scale, shift, norm.eps)
        return y, residual_out, gate.unsqueeze(1)
    half = shift.shape[0] // 2
    return ops.layernorm_scale_shift_gate_select01_residual(
        x, residual, residual_gate, norm.weight, norm.bias, scale[:half], shift[:half], gate[:half],
        scale[half:], shift[half:], gate[half:], index, norm.eps)


class FusedQwenImageTransformerBlock(QwenImageTransformerBlock):
    """QwenImageTransformerBlock with fused norm + modulation; made by fuse_modulation, never constructed."""

    def forward(self, hidden_states, encoder_hidden_states, encoder_hidden_states_mask, temb,
                image_rotary_emb=None, joint_attention_kwargs=None, modulate_index=None):
        img_mod1, img_mod2 = self.img_mod(temb).chunk(2, dim=-1)  # (B or 2B, 3D) each: shift, scale, gate
        if self.zero_cond_t:
            temb = torch.chunk(temb, 2, dim=0)[0]
        txt_mod1, txt_mod2 = self.txt_mod(temb).chunk(2, dim=-1)  # (B, 3D) each

        img_modulated, img_gate1 = _norm_modulate(self.img_norm1, hidden_states, img_mod1, modulate_index)
        txt_modulated, txt_gate1 = _norm_modulate(self.txt_norm1, encoder_hidden_states, txt_mod1)
        img_attn_output, txt_attn_output = self.attn(
            hidden_states=img_modulated,
            encoder_hidden_states=txt_modulated,
            encoder_hidden_states_mask=encoder_hidden_states_mask,
            image_rotary_emb=image_rotary_emb,
            **(joint_attention_kwargs or {}),
        )

        img_modulated2, hidden_states, img_gate2 = _residual_norm_modulate(
            self.img_norm2, img_attn_output, hidden_states, img_gate1, img_mod2, modulate_index)
        hidden_states = hidden_states + img_gate2 * self.img_mlp(img_modulated2)
        txt_modulated2, encoder_hidden_states, txt_gate2 = _residual_norm_modulate(
            self.txt_norm2, txt_attn_output, encoder_hidden_states, txt_gate1, txt_mod2)
        encoder_hidden_states = encoder_hidden_states + txt_gate2 * self.txt_mlp(txt_modulated2)

        # Clip to prevent overflow for fp16 (as diffusers does)
        if encoder_hidden_states.dtype == torch.float16:
            encoder_hidden_states = encoder_hidden_states.clip(-65504, 65504)
        if hidden_states.dtype == torch.float16:
            hidden_states = hidden_states.clip(-65504, 65504)
        return encoder_hidden_states, hidden_states


def _swap_blocks(model: nn.Module, old: type, new: type) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not any(isinstance(m, QwenImageTransformerBlock) for m in model.modules()):
        raise ValueError(f"model ({type(model).__name__}) holds no diffusers QwenImageTransformerBlock; "
                         "accepted: QwenImageTransformer2DModel, a QwenImageTransformerBlock, or a module holding them")
    for module in model.modules():
        if type(module) is old:  # exact type: a subclass of diffusers' block may have its own forward
            module.__class__ = new
    return model


def fuse_modulation(model: nn.Module) -> nn.Module:
    """Make every QwenImageTransformerBlock in `model` (or `model` itself) use the fused ops; in place, returns model.

    Compile after fusing: torch.compile(fuse_modulation(transformer), fullgraph=True).
    """
    return _swap_blocks(model, QwenImageTransformerBlock, FusedQwenImageTransformerBlock)


def unfuse_modulation(model: nn.Module) -> nn.Module:
    """Undo fuse_modulation: the blocks run diffusers' own forward again."""
    return _swap_blocks(model, FusedQwenImageTransformerBlock, QwenImageTransformerBlock)
