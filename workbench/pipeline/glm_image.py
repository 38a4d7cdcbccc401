"""GLM-Image: AR image tokens sampled on rank 0 and broadcast, then the DiT."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import torch

from . import components as C
from .base import P, Pipeline, noise
from .stages import Batch, Stage

__all__ = ['GlmImagePipeline']


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
        return noise((1, 16, h, w), request.seed, self.device, self.dtype)  # (1, 16, h, w)

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
