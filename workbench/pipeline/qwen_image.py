"""Qwen-Image and Qwen-Image-Edit (zero_cond_t: the reference image's tokens modulated at t = 0)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from . import components as C
from .base import P, Pipeline, noise
from .stages import Batch, Stage

__all__ = ['QwenImagePipeline', 'QwenImageEditPipeline', 'pack', 'unpack', 'reference_image']


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
        return pack(noise((1, 16, 1, h, w), request.seed, self.device, self.dtype))  # (1, S, 64)

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
