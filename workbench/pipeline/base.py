"""A generation pipeline as stages: what every model shares (the model-specific parts are in qwen_image.py,
wan.py and glm_image.py).

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
    decode             REPLICATED: the runner's decode (serial modes on rank 0 alone, others over the decode group)
"""

from __future__ import annotations

import dataclasses
import functools
import time

import torch
from tqdm.auto import tqdm

from ..models import latent_stats, parse_dtype
from ..models.specs import PipelineSpec
from ..parallel.dit import ATTENTION_METHODS, parallelize_dit
from ..parallel.vae import STRATEGIES
from . import components as C
from .cfg import guided
from .stages import Batch, Parallelism, Stage

__all__ = ["Pipeline", "noise", "P"]

P = Parallelism


def noise(shape, seed: int, device, dtype) -> torch.Tensor:
    """Seeded float32 noise drawn on the CPU (the same on every rank and platform), then moved."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device=device, dtype=dtype)


class Pipeline:
    """Components of one model and its stage functions; subclasses give the model-specific parts."""

    renorm = False  # Qwen-Image's true CFG rescales the guided prediction to the conditional one's norm

    def __init__(self, spec: PipelineSpec, *, tiny: bool = True, weights=None, dtype="float32", device="cpu",
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
        notes = [n for model in self.transformers
                 for n in parallelize_dit(model, group=sp_group, attention=attention, fused=fused, compile=compile)]
        self.applied, self.applied_notes = wanted, sorted(set(notes))
        return self.applied_notes

    def stages(self, *, decode: str = "auto", decode_params: dict | None = None) -> list[Stage]:
        if decode not in STRATEGIES:
            raise ValueError(f"unknown decode mode {decode!r}; accepted: {', '.join(STRATEGIES)}")
        decode_stage = functools.partial(self.decode, mode=decode, params=dict(decode_params or {}))
        return [Stage("encode_prompt", self.encode_prompt, P.REPLICATED), *self.extra_stages(),
                Stage("prepare_latents", self.prepare_latents, P.REPLICATED),
                Stage("denoise", self.denoise, P.CFG_PARALLEL), Stage("decode", decode_stage, P.REPLICATED)]

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
        """The runner's decode: a serial mode on rank 0 alone, a parallel one over the decode group."""
        from ..runner import run_decode

        z = self.vae_latents(batch)  # (B, C, [T,] h, w), the VAE's scale
        result = run_decode(ctx.runtime, self.vae, z, mode, params, progress=ctx.progress, model=self.spec.vae)
        output = None
        if result is not None:
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
        mean, std = latent_stats(self.spec.vae, z.dim(), device=z.device, dtype=z.dtype)
        return z * std + mean

    def _normalize(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = latent_stats(self.spec.vae, z.dim(), device=z.device, dtype=z.dtype)
        return (z - mean) / std


def _or_none(mask: torch.Tensor):
    """None when every token counts (attention then needs no mask: faster kernels)."""
    return None if bool(mask.all()) else mask
