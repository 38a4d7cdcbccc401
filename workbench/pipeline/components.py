"""What each pipeline is made of: the diffusers transformer (real and tiny configs), the text encoder,
the scheduler settings and the VAE preset, and how to build them.

    spec = get_spec("wan2.1")
    transformer = build_transformer(spec, tiny=True, dtype="float32", device="cpu")

Real configs are the published architectures (random weights unless `weights` names a local diffusers
folder); tiny configs keep every structural feature (joint text/image attention, rotary layout, zero_cond_t,
two experts) with a few channels so a whole generation runs on a laptop CPU.

Text encoders: tiny random models of the real architecture (Qwen2.5-VL's language model, UMT5, ByT5-style
T5) with ByT5's byte-level tokenizer, which needs no vocabulary files. Without weights the real-size
configs use `EmbeddingStandIn` instead: a seeded token-embedding table of the real width (a 7B or 5.7B
random text encoder would cost minutes and gigabytes to produce noise just as meaningless).
GLM-Image's autoregressive stage is transformers' GlmImageForConditionalGeneration (tiny or real config).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..models import build_vae, get_preset, parse_dtype

__all__ = ["PipelineSpec", "SPECS", "get_spec", "build_transformer", "build_text_encoder", "build_ar_model",
           "build_vae_for", "EmbeddingStandIn", "TextEncoder", "scheduler_config"]

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


def scheduler_config(spec: PipelineSpec, height: int) -> dict:
    config = dict(spec.scheduler)
    if spec.name.startswith("wan") and "shift" in config:
        config["shift"] = 3.0 if height <= 480 else 5.0  # Wan: 3 for 480p, 5 for 720p
    return config


# ------------------------------------------------------------------------------------------- builders


def _seeded(seed: int, device, build):
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        return build()


def _finish(module, dtype):
    # nn.Module.to: weights drawn in float32 then rounded, so bf16 is the fp32 model rounded
    return torch.nn.Module.to(module, dtype=parse_dtype(dtype)).eval().requires_grad_(False)


def _subfolder(weights, name: str) -> Path | None:
    if weights is None:
        return None
    folder = Path(weights) / name
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no {name}/config.json under {weights}: pass a diffusers pipeline folder")
    return folder


def build_transformer(spec: PipelineSpec, *, tiny: bool, weights=None, dtype="float32", device="cpu", seed: int = 0,
                      expert: int = 0):
    """The spec's diffusers transformer: seeded random weights, or `weights`/transformer[_2] (a local folder)."""
    import diffusers

    cls = getattr(diffusers, spec.transformer_class)
    folder = _subfolder(weights, "transformer" if expert == 0 else f"transformer_{expert + 1}")
    if folder is not None:
        return load_local(cls, folder, dtype=dtype, device=device)
    if tiny:  # drawn in float32 and rounded: the bf16 tiny model is the fp32 one rounded
        model = _finish(_seeded(seed + 1000 * expert, device, lambda: cls(**spec.transformer_config(tiny))), dtype)
    else:
        with _default_dtype(parse_dtype(dtype)):  # real size: drawn in the target dtype (20B in fp32: 80 GB)
            model = _finish(_seeded(seed + 1000 * expert, device, lambda: cls(**spec.transformer_config(tiny))), dtype)
    return keep_in_fp32(model)


def load_local(cls, folder: Path, *, dtype="float32", device="cpu"):
    """A diffusers model from a local folder (config.json + safetensors shards), loaded shard by shard into a
    model built on `device` (peak: the model plus one shard). Unlike from_pretrained it needs no `accelerate`,
    and the modules diffusers keeps in float32 receive the checkpoint's values before any rounding."""
    from safetensors.torch import load_file

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {folder}")
    with _default_dtype(parse_dtype(dtype)), torch.device(device):
        model = keep_in_fp32(_finish(cls.from_config(cls.load_config(str(folder))), dtype))
    missing = set(model.state_dict())
    for f in files:
        shard = load_file(str(f), device=str(device))
        unexpected = sorted(set(shard) - missing)
        if unexpected:
            raise ValueError(f"{f}: tensors the {cls.__name__} config does not have, e.g. {unexpected[:3]}")
        model.load_state_dict(shard, strict=False)
        missing -= set(shard)
    if missing:
        raise ValueError(f"{folder}: no weights for {len(missing)} tensors of {cls.__name__}, e.g. {sorted(missing)[:3]}")
    return model


def keep_in_fp32(model):
    """Put the modules diffusers keeps in float32 when loading in half precision (`_keep_in_fp32_modules`:
    Wan's rope, time embedder, norms and modulation tables) back in float32, as from_pretrained would."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, module in model.named_modules():
        if any(k in name.split(".") for k in keep):
            torch.nn.Module.to(module, dtype=torch.float32)
    return model


class _default_dtype:
    def __init__(self, dtype):
        self.dtype = dtype

    def __enter__(self):
        self.saved = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc):
        torch.set_default_dtype(self.saved)


def build_vae_for(spec: PipelineSpec, *, tiny: bool, weights=None, dtype="float32", device="cpu"):
    """The VAE preset's model, or `weights`/vae (loaded with `load_local`: workbench.models.build_vae's own
    folder check compares against class defaults it does not fill in, and refuses Wan/Qwen-Image folders)."""
    if weights is None:
        return build_vae(spec.vae, tiny=tiny, dtype=dtype, device=device)
    import diffusers

    cls = getattr(diffusers, get_preset(spec.vae).vae_class)
    return load_local(cls, _subfolder(weights, "vae"), dtype=dtype, device=device)


class EmbeddingStandIn(torch.nn.Module):
    """A seeded token-embedding table of the real text width: the stand-in for a real-size text encoder
    when no weights are given (same token, same embedding; no meaning)."""

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab_size, dim)

    def forward(self, input_ids, attention_mask=None):
        return self.embed(input_ids)


# Qwen-Image's prompt template; its first 34 tokens (the system part) are dropped from the embeddings
_QWEN_TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
                  "text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}"
                  "<|im_end|>\n<|im_start|>assistant\n", 34)


class TextEncoder:
    """A tokenizer and an encoder: `encode(texts) -> (embeds (B, T, C), mask (B, T) bool)`."""

    def __init__(self, tokenizer, model, kind: str, max_len: int, pad_to: int | None = None,
                 template: tuple[str, int] = ("{}", 0)):
        self.tokenizer, self.model, self.kind = tokenizer, model, kind
        self.max_len, self.pad_to, self.template = max_len, pad_to, template

    @property
    def device(self):
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def encode(self, texts: list[str]):
        template, drop = self.template
        tokens = self.tokenizer([template.format(t) for t in texts], padding=True, truncation=True,
                                max_length=self.max_len + drop, return_tensors="pt")
        ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)
        if isinstance(self.model, EmbeddingStandIn):
            embeds = self.model(ids)
        else:
            embeds = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, C)
        embeds, mask = embeds[:, drop:], mask[:, drop:]
        embeds = embeds * mask.unsqueeze(-1).to(embeds.dtype)  # zeros after the text, as the pipelines do
        if self.pad_to and embeds.shape[1] < self.pad_to:  # Wan: fixed-length text, zero padded, no mask
            embeds = torch.nn.functional.pad(embeds, (0, 0, 0, self.pad_to - embeds.shape[1]))
            mask = torch.nn.functional.pad(mask, (0, self.pad_to - mask.shape[1]), value=1)
        return embeds, mask.bool()


def _byte_tokenizer():
    from transformers import ByT5Tokenizer

    return ByT5Tokenizer()  # bytes + 3 special ids; no vocabulary file to download


def build_text_encoder(spec: PipelineSpec, *, tiny: bool, weights=None, dtype="float32", device="cpu",
                       seed: int = 0) -> TextEncoder:
    """The spec's text encoder: tiny random model of the real architecture, a local one, or the stand-in."""
    pad_to = spec.text_len if spec.name.startswith("wan") else None
    if tiny:
        pad_to = 16 if pad_to else None
    folder = None if weights is None else Path(weights) / "text_encoder"
    if folder is not None and (folder / "config.json").is_file():
        return _local_text_encoder(spec, Path(weights), dtype, device, pad_to)
    if not tiny:
        model = _seeded(seed + 7, device, lambda: EmbeddingStandIn(384, spec.text_dim))
        return TextEncoder(_byte_tokenizer(), _finish(model, dtype), spec.text_encoder, spec.text_len, pad_to)
    model = _seeded(seed + 7, device, lambda: _tiny_text_model(spec))
    return TextEncoder(_byte_tokenizer(), _finish(model, dtype), spec.text_encoder, 64, pad_to)


def _tiny_text_model(spec: PipelineSpec):
    import transformers as tf

    if spec.text_encoder == "qwen2.5-vl":
        return tf.Qwen2_5_VLTextModel(tf.Qwen2_5_VLTextConfig(**spec.tiny_text))
    if spec.text_encoder == "umt5":
        return tf.UMT5EncoderModel(tf.UMT5Config(**spec.tiny_text))
    return tf.T5EncoderModel(tf.T5Config(**spec.tiny_text))


def _local_text_encoder(spec: PipelineSpec, root: Path, dtype, device, pad_to):
    import transformers as tf

    cls = {"qwen2.5-vl": tf.Qwen2_5_VLForConditionalGeneration, "umt5": tf.UMT5EncoderModel,
           "t5": tf.T5EncoderModel}[spec.text_encoder]
    model = cls.from_pretrained(str(root / "text_encoder"), local_files_only=True, torch_dtype=parse_dtype(dtype))
    if spec.text_encoder == "qwen2.5-vl":
        model = model.model.language_model
    tokenizer = tf.AutoTokenizer.from_pretrained(str(root / "tokenizer"), local_files_only=True)
    template = _QWEN_TEMPLATE if spec.text_encoder == "qwen2.5-vl" else ("{}", 0)
    return TextEncoder(tokenizer, torch.nn.Module.to(model, device).eval(), spec.text_encoder, spec.text_len, pad_to,
                       template)


# ------------------------------------------------------------------------------------------- GLM-Image AR

_GLM_AR_TINY = dict(
    text_config=dict(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=1, vision_vocab_size=72, pad_token_id=399, eos_token_id=65,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}),
    vision_config=dict(depth=1, hidden_size=16, num_heads=2, intermediate_size=32, patch_size=16, image_size=64),
    vq_config=dict(embed_dim=16, num_embeddings=64, latent_channels=16),
    image_token_id=398, image_start_token_id=64, image_end_token_id=65)


@dataclass
class ARModel:
    """GLM-Image's autoregressive model and the token ids it needs."""

    model: object
    codebook_size: int  # image tokens are 0 .. codebook_size - 1
    image_start: int
    text_offset: int  # prompt bytes map to text_offset + byte

    @property
    def device(self):
        return next(self.model.parameters()).device


def build_ar_model(*, tiny: bool, weights=None, dtype="float32", device="cpu", seed: int = 0) -> ARModel:
    from transformers import GlmImageConfig, GlmImageForConditionalGeneration

    folder = None if weights is None else Path(weights) / "vision_language_encoder"
    if folder is not None and (folder / "config.json").is_file():
        model = GlmImageForConditionalGeneration.from_pretrained(str(folder), local_files_only=True,
                                                                 torch_dtype=parse_dtype(dtype))
        model = torch.nn.Module.to(model, device).eval()
    else:
        config = GlmImageConfig(**_GLM_AR_TINY) if tiny else GlmImageConfig()
        model = _finish(_seeded(seed + 11, device, lambda: GlmImageForConditionalGeneration(config)), dtype)
    cfg = model.config
    codebook = cfg.vq_config.num_embeddings
    offset = 72 if tiny else 1000  # past the vision vocabulary: plain text ids
    return ARModel(model, codebook, cfg.image_start_token_id, offset)


def glm_token_grid(height: int, width: int) -> tuple[int, int]:
    """The AR model's token grid (1/32 of the pixels); the DiT's is twice as fine."""
    if height % 32 or width % 32:
        raise ValueError(f"glm-image: height and width must be multiples of 32 pixels, got {height}x{width}")
    return height // 32, width // 32


def latent_grid(spec: PipelineSpec, height: int, width: int, frames: int = 1) -> tuple[int, int, int]:
    """(latent frames, latent height, latent width) of the VAE; checks the size fits the patching."""
    preset = get_preset(spec.vae)
    s = preset.spatial_ratio * 2  # every DiT here patches 2x2 latents
    if height % s or width % s:
        raise ValueError(f"{spec.name}: height and width must be multiples of {s} pixels, got {height}x{width}")
    if spec.is_video:
        if (frames - 1) % preset.temporal_ratio:
            raise ValueError(f"{spec.name}: frames must be 1 + {preset.temporal_ratio}k (1, 5, ..., 81), got {frames}")
        t = (frames - 1) // preset.temporal_ratio + 1
    else:
        if frames != 1:
            raise ValueError(f"{spec.name} makes images: frames must be 1, got {frames}")
        t = 1
    return t, height // preset.spatial_ratio, width // preset.spatial_ratio


def image_tokens(spec: PipelineSpec, height: int, width: int, frames: int = 1) -> int:
    t, h, w = latent_grid(spec, height, width, frames)
    return t * (h // 2) * (w // 2)


def mu_for(spec: PipelineSpec, seq_len: int) -> float | None:
    """The dynamic shift of the flow-matching schedule for `seq_len` image tokens (None: static shift)."""
    c = spec.scheduler
    if not c.get("use_dynamic_shifting"):
        return None
    if spec.name.startswith("glm"):
        return math.sqrt(seq_len / c["base_image_seq_len"]) * c["max_shift"] + c["base_shift"]
    m = (c["max_shift"] - c["base_shift"]) / (c["max_image_seq_len"] - c["base_image_seq_len"])
    return seq_len * m + c["base_shift"] - m * c["base_image_seq_len"]
