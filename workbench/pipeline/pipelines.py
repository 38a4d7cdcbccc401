"""The generation pipelines as stages: Qwen-Image, Qwen-Image-Edit, Wan2.1/2.2 and GLM-Image.

    pipe = build_pipeline("qwen-image", tiny=True, device="cpu")
    pipe.configure(sp_group=None)                        # or the SP group of a multi-rank run
    stages = pipe.stages(decode="auto")                  # run by workbench.pipeline.Executor

Each pipeline holds its components (diffusers transformer(s) and VAE, a text encoder, GLM-Image's AR
model) and follows the diffusers pipeline's arithmetic (latent packing, flow-matching Euler schedule,
guidance formula, latent de-normalisation) in stage functions `fn(batch, ctx) -> batch`:

    encode_prompt      REPLICATED                          every rank encodes the prompts (deterministic)
    encode_image       MAIN_RANK_ONLY_AND_SEND_TO_OTHERS   qwen-image-edit: the reference image through the VAE
    ar_tokens          MAIN_RANK_ONLY_AND_SEND_TO_OTHERS   glm-image: rank 0 samples the image tokens
    prepare_latents    REPLICATED                          seeded noise on the CPU: identical on every rank
    denoise            CFG_PARALLEL                        the DiT (sequence-parallel inside), guidance
    decode             REPLICATED (parallel and auto modes over the decode group) or MAIN_RANK_ONLY (full, tiled)
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from ..decode import SERIAL, STRATEGIES, decode
from ..models import get_preset, parse_dtype
from . import components as C
from .cfg import guided
from .sp import ATTENTION_METHODS, parallelize_dit, unparallelize_dit
from .stages import Batch, Parallelism, Stage

__all__ = ["Pipeline", "QwenImagePipeline", "QwenImageEditPipeline", "WanPipeline", "GlmImagePipeline",
           "build_pipeline", "PIPELINES", "configure_transformer", "set_fused", "compile_blocks"]

P = Parallelism


def _noise(shape, seed: int, device, dtype) -> torch.Tensor:
    """Seeded float32 noise drawn on the CPU (the same on every rank and platform), then moved."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device=device, dtype=dtype)


def _stats(preset, ndim: int, device, dtype):
    view = (1, -1) + (1,) * (ndim - 2)
    mean = torch.tensor(preset.latents_mean).view(view).to(device=device, dtype=dtype)
    std = torch.tensor(preset.latents_std).view(view).to(device=device, dtype=dtype)
    return mean, std


class Pipeline:
    """Components of one model and its stage functions; subclasses give the model-specific parts."""

    renorm = False  # Qwen-Image's true CFG rescales the guided prediction to the conditional one's norm

    def __init__(self, spec: C.PipelineSpec, *, tiny: bool = True, weights=None, dtype="float32", device="cpu",
                 seed: int = 0):
        self.spec, self.tiny, self.weights = spec, tiny, weights
        self.dtype, self.device = parse_dtype(dtype), torch.device(device)
        kw = dict(tiny=tiny, weights=weights, dtype=dtype, device=device)
        self.transformers = [C.build_transformer(spec, seed=seed, expert=e, **kw) for e in range(spec.experts)]
        self.vae = C.build_vae_for(spec, **kw)
        self.text = C.build_text_encoder(spec, seed=seed, **kw)
        self.applied: dict = {}

    # ------------------------------------------------------------------------------ configuration

    def configure(self, *, sp_group=None, attention: str = "ulysses", fused: bool = False,
                  compile: bool = False) -> list[str]:
        """Apply (or re-apply) fused ops, sequence parallelism over `sp_group` and torch.compile to the
        transformer(s); collective when `sp_group` has several ranks. Returns notes on what was done."""
        if attention not in ATTENTION_METHODS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_METHODS)}, got {attention!r}")
        wanted = dict(sp_group=sp_group, attention=attention, fused=fused, compile=compile)
        if self.applied == wanted:
            return self.applied_notes
        notes = [n for model in self.transformers for n in configure_transformer(model, **wanted)]
        self.applied, self.applied_notes = wanted, sorted(set(notes))
        return self.applied_notes

    def stages(self, *, decode: str = "auto", decode_params: dict | None = None) -> list[Stage]:
        if decode not in STRATEGIES:
            raise ValueError(f"unknown decode mode {decode!r}; accepted: {', '.join(STRATEGIES)}")
        decode_stage = functools.partial(self.decode, mode=decode, params=dict(decode_params or {}))
        decode_kind = P.MAIN_RANK_ONLY if decode in SERIAL else P.REPLICATED  # serial modes: rank 0 alone
        return [Stage("encode_prompt", self.encode_prompt, P.REPLICATED), *self.extra_stages(),
                Stage("prepare_latents", self.prepare_latents, P.REPLICATED),
                Stage("denoise", self.denoise, P.CFG_PARALLEL), Stage("decode", decode_stage, decode_kind)]

    def extra_stages(self) -> list[Stage]:
        return []

    def check(self, request) -> None:
        """Raise ValueError naming the parameter if the request does not fit this pipeline."""
        if request.pipeline != self.spec.name:
            raise ValueError(f"request for {request.pipeline!r} given to the {self.spec.name!r} pipeline")
        if request.steps < 1:
            raise ValueError(f"steps must be >= 1, got {request.steps}")
        C.latent_grid(self.spec, request.height, request.width, request.frames)

    # ---------------------------------------------------------------------------------- stages

    @torch.inference_mode()
    def encode_prompt(self, batch: Batch, ctx) -> Batch:
        r = batch.request
        embeds, mask = self.text.encode([self.prompt_text(r.prompt)])
        neg, neg_mask = self.text.encode([self.prompt_text(r.negative_prompt)])
        return dataclasses.replace(batch, prompt_embeds=embeds.to(self.dtype), prompt_mask=_or_none(mask),
                                   negative_embeds=neg.to(self.dtype), negative_mask=_or_none(neg_mask))

    def prompt_text(self, text: str) -> str:
        return text

    def prepare_latents(self, batch: Batch, ctx) -> Batch:
        return dataclasses.replace(batch, latents=self.initial_latents(batch.request))

    @torch.inference_mode()
    def denoise(self, batch: Batch, ctx) -> Batch:
        r = batch.request
        if ctx.dims.cfg > 1 and r.guidance_scale <= 1:
            raise ValueError(f"CFG parallel (cfg=2) needs guidance_scale > 1, got {r.guidance_scale}")
        scheduler = self.scheduler(r)
        latents, step_times = batch.latents, []
        steps = tqdm(scheduler.timesteps, desc=f"{self.spec.name} denoise", disable=not ctx.progress, leave=False)
        for t in steps:
            start = time.perf_counter()
            pred = guided(lambda branch: self.predict(latents, t, batch, branch), scale=r.guidance_scale, ctx=ctx,
                          renorm=self.renorm)
            latents = scheduler.step(pred, t, latents, return_dict=False)[0]
            ctx.sync()
            step_times.append(time.perf_counter() - start)
        return dataclasses.replace(batch, latents=latents, extras={**batch.extras, "step_times_s": step_times})

    @torch.inference_mode()
    def decode(self, batch: Batch, ctx, *, mode: str = "auto", params: dict | None = None) -> Batch:
        z = self.vae_latents(batch)  # (B, C, [T,] h, w), the VAE's scale
        serial = mode in SERIAL  # rank 0 alone: no group, no stats gathering
        result = decode(self.vae, z, mode, group=None if serial else ctx.groups.decode, progress=ctx.progress,
                        model=self.spec.vae, gather_stats=not serial, **(params or {}))
        output, result.output = result.output, None
        return dataclasses.replace(batch, output=output if ctx.is_main else None,
                                   extras={**batch.extras, "decode": result})

    # ------------------------------------------------------------------------- model specifics

    def scheduler(self, request):
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(**C.scheduler_config(self.spec, request.height))

    def initial_latents(self, request) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, latents, t, batch: Batch, branch: str) -> torch.Tensor:
        raise NotImplementedError

    def vae_latents(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def embeds(self, batch: Batch, branch: str):
        if branch == "cond":
            return batch.prompt_embeds, batch.prompt_mask
        return batch.negative_embeds, batch.negative_mask

    def _denormalize(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = _stats(get_preset(self.spec.vae), z.dim(), z.device, z.dtype)
        return z * std + mean

    def _normalize(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = _stats(get_preset(self.spec.vae), z.dim(), z.device, z.dtype)
        return (z - mean) / std


def _or_none(mask: torch.Tensor):
    """None when every token counts (attention then needs no mask: faster kernels)."""
    return None if bool(mask.all()) else mask


# ------------------------------------------------------------------------------------------ Qwen-Image


def pack(z: torch.Tensor) -> torch.Tensor:
    """(B, C, 1, h, w) -> (B, h/2 * w/2, 4C): Qwen-Image's 2x2 latent patches as tokens."""
    b, c, _, h, w = z.shape
    return z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, h/2 * w/2, 4C) -> (B, C, 1, h, w)."""
    b, _, c4 = x.shape
    return x.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c4 // 4, 1, h, w)


class QwenImagePipeline(Pipeline):
    renorm = True

    def check(self, request) -> None:
        super().check(request)
        if request.steps < 2:  # its schedule is stretched to end at shift_terminal: one sigma divides 0 by 0
            raise ValueError(f"{self.spec.name} needs steps >= 2, got {request.steps}")

    def latent_hw(self, request) -> tuple[int, int]:
        _, h, w = C.latent_grid(self.spec, request.height, request.width)
        return h, w

    def initial_latents(self, request) -> torch.Tensor:
        h, w = self.latent_hw(request)
        return pack(_noise((1, 16, 1, h, w), request.seed, self.device, self.dtype))  # (1, S, 64)

    def scheduler(self, request):
        scheduler = super().scheduler(request)
        h, w = self.latent_hw(request)
        sigmas = np.linspace(1.0, 1 / request.steps, request.steps)
        scheduler.set_timesteps(sigmas=sigmas, mu=C.mu_for(self.spec, (h // 2) * (w // 2)), device=self.device)
        return scheduler

    def img_shapes(self, batch: Batch) -> list:
        h, w = self.latent_hw(batch.request)
        return [[(1, h // 2, w // 2)]]

    def model_input(self, latents, batch: Batch):
        return latents

    def predict(self, latents, t, batch: Batch, branch: str) -> torch.Tensor:
        embeds, mask = self.embeds(batch, branch)
        x = self.model_input(latents, batch)  # (B, S [+ S_ref], 64)
        out = self.transformers[0](hidden_states=x, timestep=t.expand(x.shape[0]).to(x.dtype) / 1000,
                                   encoder_hidden_states=embeds, encoder_hidden_states_mask=mask,
                                   img_shapes=self.img_shapes(batch), return_dict=False)[0]
        return out[:, : latents.shape[1]]

    def vae_latents(self, batch: Batch) -> torch.Tensor:
        h, w = self.latent_hw(batch.request)
        return self._denormalize(unpack(batch.latents, h, w).to(self.vae.dtype))


class QwenImageEditPipeline(QwenImagePipeline):
    """Qwen-Image-Edit: the reference image's latent tokens follow the noisy ones; zero_cond_t modulates
    them at t = 0 (the transformer builds modulate_index from img_shapes)."""

    def extra_stages(self) -> list[Stage]:
        return [Stage("encode_image", self.encode_image, P.MAIN_RANK_ONLY_AND_SEND_TO_OTHERS)]

    @torch.inference_mode()
    def encode_image(self, batch: Batch, ctx) -> Batch:
        r = batch.request
        pixels = reference_image(r.image, r.height, r.width, r.seed).to(self.device, self.vae.dtype)  # (1, 3, H, W)
        z = self.vae.encode(pixels.unsqueeze(2)).latent_dist.mode()  # (1, 16, 1, h, w)
        return dataclasses.replace(batch, image_latents=pack(self._normalize(z)).to(self.dtype))

    def img_shapes(self, batch: Batch) -> list:
        h, w = self.latent_hw(batch.request)
        return [[(1, h // 2, w // 2), (1, h // 2, w // 2)]]

    def model_input(self, latents, batch: Batch):
        return torch.cat([latents, batch.image_latents], dim=1)  # (B, 2S, 64)


def reference_image(path: str | None, height: int, width: int, seed: int) -> torch.Tensor:
    """(1, 3, H, W) in [-1, 1]: the file at `path` resized, or a seeded synthetic picture."""
    if path is not None:
        from PIL import Image

        img = Image.open(path).convert("RGB").resize((width, height))
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    g = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, height).view(1, height, 1)
    x = torch.linspace(0, 1, width).view(1, 1, width)
    phase = torch.rand(3, 1, 1, generator=g) * 6.28
    freq = 2 + torch.rand(3, 1, 1, generator=g) * 4
    return torch.sin(freq * (x + 0.7 * y) * 3.14 + phase).unsqueeze(0) * 0.8


# --------------------------------------------------------------------------------------------------- Wan


class WanPipeline(Pipeline):
    def initial_latents(self, request) -> torch.Tensor:
        t, h, w = C.latent_grid(self.spec, request.height, request.width, request.frames)
        return _noise((1, 16, t, h, w), request.seed, self.device, self.dtype)  # (1, 16, T, h, w)

    def scheduler(self, request):
        scheduler = super().scheduler(request)
        scheduler.set_timesteps(request.steps, device=self.device)
        return scheduler

    def expert(self, t) -> torch.nn.Module:
        """Wan2.2 A14B: the high-noise expert while t >= boundary, then the low-noise one."""
        if len(self.transformers) == 1 or float(t) >= self.spec.boundary_ratio * 1000:
            return self.transformers[0]
        return self.transformers[1]

    def predict(self, latents, t, batch: Batch, branch: str) -> torch.Tensor:
        embeds, _ = self.embeds(batch, branch)
        return self.expert(t)(hidden_states=latents, timestep=t.expand(latents.shape[0]),
                              encoder_hidden_states=embeds, return_dict=False)[0]

    def vae_latents(self, batch: Batch) -> torch.Tensor:
        return self._denormalize(batch.latents.to(self.vae.dtype))


# --------------------------------------------------------------------------------------------- GLM-Image


class GlmImagePipeline(Pipeline):
    """GLM-Image: an AR model samples image tokens on rank 0 (broadcast, so ranks cannot diverge); the DiT
    denoises conditioned on them and on glyph embeddings of the prompt's quoted text."""

    def __init__(self, spec, **kw):
        super().__init__(spec, **kw)
        kw.pop("seed", None)
        self.ar = C.build_ar_model(**kw)

    def extra_stages(self) -> list[Stage]:
        return [Stage("ar_tokens", self.ar_tokens, P.MAIN_RANK_ONLY_AND_SEND_TO_OTHERS)]

    def check(self, request) -> None:
        super().check(request)
        C.glm_token_grid(request.height, request.width)

    def prompt_text(self, text: str) -> str:
        """The glyph encoder reads the quoted text (GlmImagePipeline.get_glyph_texts)."""
        return " ".join(a or b for a, b in re.findall(r'"([^"]*)"|“([^”]*)”', text))

    @torch.inference_mode()
    def ar_tokens(self, batch: Batch, ctx) -> Batch:
        r = batch.request
        gh, gw = C.glm_token_grid(r.height, r.width)
        ar = self.ar
        text_ids = [ar.text_offset + b for b in r.prompt.encode()[:256]]
        ids = torch.tensor([text_ids + [ar.image_start]], device=ar.device)
        vocab = ar.model.config.text_config.vision_vocab_size
        torch.manual_seed(r.seed)  # transformers' sampling draws from the global generator
        out = ar.model.generate(input_ids=ids, image_grid_thw=torch.tensor([[1, gh, gw]], device=ar.device),
                                do_sample=True, max_new_tokens=gh * gw, min_new_tokens=gh * gw,
                                suppress_tokens=list(range(ar.codebook_size, vocab)))
        tokens = out[:, ids.shape[1]:].view(1, 1, gh, gw).float()  # the AR grid: 1/32 of the pixels
        tokens = torch.nn.functional.interpolate(tokens, scale_factor=2, mode="nearest").long()  # the DiT grid
        return dataclasses.replace(batch, prior_token_ids=tokens.view(1, -1).to(self.device))

    def initial_latents(self, request) -> torch.Tensor:
        _, h, w = C.latent_grid(self.spec, request.height, request.width)
        return _noise((1, 16, h, w), request.seed, self.device, self.dtype)  # (1, 16, h, w)

    def scheduler(self, request):
        scheduler = super().scheduler(request)
        _, h, w = C.latent_grid(self.spec, request.height, request.width)
        timesteps = np.linspace(1000, 1.0, request.steps + 1)[:-1].astype(np.int64).astype(np.float32)
        scheduler.set_timesteps(sigmas=timesteps / 1000, mu=C.mu_for(self.spec, (h // 2) * (w // 2)),
                                device=self.device)
        return scheduler

    def predict(self, latents, t, batch: Batch, branch: str) -> torch.Tensor:
        embeds, _ = self.embeds(batch, branch)
        r, b = batch.request, latents.shape[0]
        ids = batch.prior_token_ids
        drop = torch.full_like(ids, branch == "uncond", dtype=torch.bool)
        size = torch.tensor([[r.height, r.width]] * b, dtype=self.dtype, device=self.device)
        return self.transformers[0](hidden_states=latents, encoder_hidden_states=embeds, prior_token_id=ids,
                                    prior_token_drop=drop, timestep=t.expand(b) - 1, target_size=size,
                                    crop_coords=torch.zeros_like(size), return_dict=False)[0]

    def vae_latents(self, batch: Batch) -> torch.Tensor:
        return self._denormalize(batch.latents.to(self.vae.dtype))


# ----------------------------------------------------------------------------------------------- build

PIPELINES = {"qwen-image": QwenImagePipeline, "qwen-image-edit": QwenImageEditPipeline, "wan2.1": WanPipeline,
             "wan2.2": WanPipeline, "glm-image": GlmImagePipeline}


def build_pipeline(name: str, *, tiny: bool = True, weights=None, dtype="float32", device="cpu",
                   seed: int = 0) -> Pipeline:
    """The named pipeline with its components built (seeded random weights, or `weights`: a local folder)."""
    spec = C.get_spec(name)
    return PIPELINES[spec.name](spec, tiny=tiny, weights=weights, dtype=dtype, device=device, seed=seed)


# --------------------------------------------------------------------------------- fused ops, compile


def set_fused(model, fused: bool) -> list[str]:
    """Use workbench.ops' fused LayerNorm + modulation (Qwen-Image blocks) or diffusers' own; notes on what
    happened. A no-op with a note where the ops are not installed or the model has no fused path."""
    if type(model).__name__ != "QwenImageTransformer2DModel":
        return [f"fused ops: none for {type(model).__name__} (Qwen-Image only)"] if fused else []
    try:
        from ..ops.qwen import fuse_modulation, unfuse_modulation
    except ImportError as e:
        return [f"fused ops requested but workbench.ops is not available ({e}); running diffusers' blocks"] if fused \
            else []
    if fused:
        fuse_modulation(model)
        return ["fused ops: workbench.ops LayerNorm+scale/shift/gate (select01 for zero_cond_t)"]
    unfuse_modulation(model)
    return []


def configure_transformer(model, *, sp_group=None, attention: str = "ulysses", fused: bool = False,
                          compile: bool = False) -> list[str]:
    """Fused ops, then sequence parallelism over `sp_group`, then compiled blocks, from a clean start
    (whatever was applied before is undone first). Collective when `sp_group` has several ranks."""
    uncompile_blocks(model)
    unparallelize_dit(model)
    notes = set_fused(model, fused)
    parallelize_dit(model, group=sp_group, attention=attention)
    if compile:
        compile_blocks(model)
    return notes


def _blocks(model):
    return getattr(model, "transformer_blocks", None) or getattr(model, "blocks")


def compile_blocks(model) -> None:
    """torch.compile each transformer block's forward (hooks, and so the sequence sharding, stay eager)."""
    for block in _blocks(model):
        if "forward" not in block.__dict__:
            block.forward = torch.compile(block.forward, dynamic=False)


def uncompile_blocks(model) -> None:
    for block in _blocks(model):
        block.__dict__.pop("forward", None)
