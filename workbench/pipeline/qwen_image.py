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
        pixels = reference_image(r.image, r.height, r.width).to(self.device, self.vae.dtype)  # (1, 3, H, W)
        z = self.vae.encode(pixels.unsqueeze(2)).latent_dist.mode()  # (1, 16, 1, h, w)
        return dataclasses.replace(batch, image_latents=pack(self._normalize(z)).to(self.dtype))

    def img_shapes(self, batch: Batch) -> list:
        h, w = self.latent_hw(batch.request)
        return [[(1, h // 2, w // 2), (1, h // 2, w // 2)]]

    def model_input(self, latents, batch: Batch):
        return torch.cat([latents, batch.image_latents], dim=1)  # (B, 2S, 64)


def reference_image(source: str | None, height: int, width: int) -> torch.Tensor:
    """(1, 3, H, W) in [-1, 1]: a bundled photo's name or an image file, resized to cover and centre-cropped;
    None: the held-out photo chelsea. Through the trained tiny VAE (the default of tiny pipelines) it is a real
    picture's latent."""
    from ..models.photos import photo_to_size
    from ..models.trained import load_picture

    picture = load_picture(source or "chelsea")
    if picture.dim() == 4:  # a video file: its first frame
        picture = picture[:, 0]
    return photo_to_size(picture, height, width)[None]
