"""Wan2.1 and Wan2.2 (two experts split by the timestep boundary)."""

from __future__ import annotations

import torch

from . import components as C
from .base import Pipeline, noise
from .stages import Batch

__all__ = ['WanPipeline']


class WanPipeline(Pipeline):
    def initial_latents(self, request) -> torch.Tensor:
        t, h, w = C.latent_grid(self.spec, request.height, request.width, request.frames)
        return noise((1, 16, t, h, w), request.seed, self.device, self.dtype)  # (1, 16, T, h, w)

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
