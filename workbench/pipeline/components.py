"""Building a pipeline's components from its spec (`workbench.models.specs`): the diffusers transformer(s),
the VAE, the text encoder and GLM-Image's AR model.

    spec = get_spec("wan2.1")
    transformer = build_transformer(spec, tiny=True, dtype="float32", device="cpu")

Random weights are seeded (`workbench.models.seeded`) unless `weights` names a local diffusers pipeline
folder, loaded through the one local loader (`workbench.models.load_local`).

Text encoders: tiny random models of the real architecture (Qwen2.5-VL's language model, UMT5, ByT5-style
T5) with ByT5's byte-level tokenizer, which needs no vocabulary files. Without weights the real-size
configs use `EmbeddingStandIn` instead: a seeded token-embedding table of the real width (a 7B or 5.7B
random text encoder would cost minutes and gigabytes to produce noise just as meaningless).
GLM-Image's autoregressive stage is transformers' GlmImageForConditionalGeneration (tiny or real config).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models import (
    ModelError,
    build_vae,
    default_dtype,
    finish,
    get_preset,
    keep_in_fp32,
    load_local,
    parse_dtype,
    seeded,
)
from ..models.specs import PipelineSpec

__all__ = ["build_transformer", "build_text_encoder", "build_ar_model", "build_vae_for", "EmbeddingStandIn",
           "TextEncoder", "scheduler_config"]


def scheduler_config(spec: PipelineSpec, height: int) -> dict:
    config = dict(spec.scheduler)
    if spec.name.startswith("wan") and "shift" in config:
        config["shift"] = 3.0 if height <= 480 else 5.0  # Wan: 3 for 480p, 5 for 720p
    return config


# ------------------------------------------------------------------------------------------- builders


def _subfolder(weights, name: str) -> Path | None:
    if weights is None:
        return None
    folder = Path(weights) / name
    if not (folder / "config.json").is_file():
        raise ModelError(f"no {name}/config.json under {weights}: pass a diffusers pipeline folder")
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
        model = finish(seeded(seed + 1000 * expert, device, lambda: cls(**spec.transformer_config(tiny))), dtype)
    else:
        with default_dtype(parse_dtype(dtype)):  # real size: drawn in the target dtype (20B in fp32: 80 GB)
            model = finish(seeded(seed + 1000 * expert, device, lambda: cls(**spec.transformer_config(tiny))), dtype)
    return keep_in_fp32(model)


def build_vae_for(spec: PipelineSpec, *, tiny: bool, weights=None, dtype="float32", device="cpu"):
    """The VAE preset's model, or `weights`/vae (checked against the preset, as `build_vae` does)."""
    return build_vae(spec.vae, tiny=tiny, weights=_subfolder(weights, "vae"), dtype=dtype, device=device)


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
        model = seeded(seed + 7, device, lambda: EmbeddingStandIn(384, spec.text_dim))
        return TextEncoder(_byte_tokenizer(), finish(model, dtype), spec.text_encoder, spec.text_len, pad_to)
    model = seeded(seed + 7, device, lambda: _tiny_text_model(spec))
    return TextEncoder(_byte_tokenizer(), finish(model, dtype), spec.text_encoder, 64, pad_to)


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
        model = finish(seeded(seed + 11, device, lambda: GlmImageForConditionalGeneration(config)), dtype)
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
