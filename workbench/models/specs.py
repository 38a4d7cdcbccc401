"""The DiT side of the registry: each pipeline's transformer (real and tiny configs), text encoder, scheduler
settings, sizes and VAE preset.

    spec = get_spec("wan2.1")      # spec.transformer_class, spec.transformer_config(tiny=True), spec.vae

Real configs are the published architectures; tiny configs keep every structural feature (joint
text/image attention, rotary layout, zero_cond_t, two experts) with a few channels, so a whole
generation runs on a laptop CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["PipelineSpec", "SPECS", "get_spec"]

_WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                 out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                 qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
_WAN_A14B = dict(_WAN_1_3B, num_attention_heads=40, ffn_dim=13824, num_layers=40)  # = WanTransformer3DModel defaults
_WAN_TINY = dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=16, in_channels=16, out_channels=16,
                 text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True,
                 qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=256)
_QWEN_TINY = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=16,
                  num_attention_heads=4, joint_attention_dim=32, axes_dims_rope=(4, 6, 6))
_GLM_TINY = dict(patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=16,
                 num_attention_heads=4, text_embed_dim=32, time_embed_dim=32, condition_dim=16,
                 prior_vq_quantizer_codebook_size=64)

_QWEN_TEXT_TINY = dict(vocab_size=384, bos_token_id=None, eos_token_id=None, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                               "mrope_section": [2, 3, 3]})
_T5_TINY = dict(vocab_size=384, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2)

# Qwen/Qwen-Image scheduler/scheduler_config.json
_QWEN_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
                       base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02,
                       time_shift_type="exponential")
# GLM-Image: GlmImagePipeline's own calculate_shift (mu = sqrt(seq / 256) * 0.75 + 0.25), applied linearly
_GLM_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.25, max_shift=0.75,
                      base_image_seq_len=256, time_shift_type="linear")


@dataclass(frozen=True)
class PipelineSpec:
    """One pipeline's components: diffusers/transformers classes and configs, real and tiny."""

    name: str
    vae: str  # a workbench.models preset
    transformer_class: str
    transformer: dict
    tiny_transformer: dict
    text_encoder: str  # "qwen2.5-vl", "umt5" or "t5" (ByT5 glyph encoder)
    text_dim: int  # width of the text embeddings the transformer takes (real config)
    text_len: int  # maximum text tokens (Wan pads to it)
    scheduler: dict
    default_size: tuple[int, int, int]  # (height, width, frames) in pixels
    tiny_size: tuple[int, int, int]
    guidance_scale: float
    experts: int = 1  # Wan2.2 A14B: a high-noise and a low-noise transformer
    boundary_ratio: float | None = None  # Wan2.2: the first expert runs while t >= boundary_ratio * 1000
    source: str = ""
    notes: str = ""
    tiny_text: dict = field(default_factory=dict)

    @property
    def is_video(self) -> bool:
        return self.default_size[2] > 1

    def transformer_config(self, tiny: bool) -> dict:
        return dict(self.tiny_transformer if tiny else self.transformer)


SPECS: dict[str, PipelineSpec] = {s.name: s for s in [
    PipelineSpec(
        name="qwen-image", vae="qwen-image", transformer_class="QwenImageTransformer2DModel",
        transformer={}, tiny_transformer=_QWEN_TINY, text_encoder="qwen2.5-vl", text_dim=3584, text_len=1024,
        scheduler=_QWEN_SCHEDULER, default_size=(1024, 1024, 1), tiny_size=(128, 128, 1), guidance_scale=4.0,
        source="Qwen/Qwen-Image (QwenImageTransformer2DModel defaults: 60 layers, 24 heads x 128, 20B)",
        tiny_text=_QWEN_TEXT_TINY),
    PipelineSpec(
        name="qwen-image-edit", vae="qwen-image-edit", transformer_class="QwenImageTransformer2DModel",
        transformer=dict(zero_cond_t=True), tiny_transformer=dict(_QWEN_TINY, zero_cond_t=True),
        text_encoder="qwen2.5-vl", text_dim=3584, text_len=1024, scheduler=_QWEN_SCHEDULER,
        default_size=(1024, 1024, 1), tiny_size=(128, 128, 1), guidance_scale=4.0,
        source="Qwen/Qwen-Image-Edit-2511 (zero_cond_t: the reference tokens are modulated at t=0)",
        notes="The reference image is encoded by the VAE and appended to the image tokens; modulate_index "
              "selects the t or t=0 modulation per token (the fused select01 op where workbench.ops has it). "
              "The prompt is encoded as text only (the real pipeline also shows the image to Qwen2.5-VL).",
        tiny_text=_QWEN_TEXT_TINY),
    PipelineSpec(
        name="wan2.1", vae="wan2.1", transformer_class="WanTransformer3DModel", transformer=_WAN_1_3B,
        tiny_transformer=_WAN_TINY, text_encoder="umt5", text_dim=4096, text_len=512,
        scheduler=dict(num_train_timesteps=1000, shift=3.0), default_size=(480, 832, 81), tiny_size=(64, 64, 5),
        guidance_scale=5.0, source="Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json",
        notes="Flow-matching Euler with shift 3 (480p); the diffusers pipeline defaults to UniPC.", tiny_text=_T5_TINY),
    PipelineSpec(
        name="wan2.2", vae="wan2.2-a14b", transformer_class="WanTransformer3DModel", transformer=_WAN_A14B,
        tiny_transformer=_WAN_TINY, text_encoder="umt5", text_dim=4096, text_len=512,
        scheduler=dict(num_train_timesteps=1000, shift=5.0), default_size=(720, 1280, 81), tiny_size=(64, 64, 5),
        guidance_scale=4.0, experts=2, boundary_ratio=0.875,
        source="Wan-AI/Wan2.2-T2V-A14B-Diffusers: two 14B experts (high noise, low noise), boundary 0.875",
        notes="One guidance scale for both experts (the real pipeline allows a second one).", tiny_text=_T5_TINY),
    PipelineSpec(
        name="glm-image", vae="glm-image", transformer_class="GlmImageTransformer2DModel",
        transformer=dict(num_layers=30, attention_head_dim=128, num_attention_heads=32),
        tiny_transformer=_GLM_TINY, text_encoder="t5", text_dim=1472, text_len=2048, scheduler=_GLM_SCHEDULER,
        default_size=(1024, 1024, 1), tiny_size=(128, 128, 1), guidance_scale=1.5,
        source="zai-org/GLM-Image transformer/config.json (30 layers, 32 heads x 128, 7B; not the class defaults)",
        notes="The AR stage samples the target grid's tokens only (the real one first samples a small preview "
              "grid); the glyph encoder reads the quoted text of the prompt.", tiny_text=_T5_TINY),
]}


def get_spec(name: str) -> PipelineSpec:
    key = str(name).lower()
    if key not in SPECS:
        raise ValueError(f"unknown pipeline {name!r}; accepted: {', '.join(SPECS)}")
    return SPECS[key]


