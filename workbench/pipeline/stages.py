"""A generation as a list of stages, each declaring how it runs across the ranks.

    Stage("encode_prompt", pipeline.encode_prompt, Parallelism.REPLICATED)

A stage is a function `fn(batch, ctx) -> batch` with a name and a `Parallelism`; the `Executor` applies
the semantics. The `Batch` is the state passed from stage to stage: the `Request` (what the user asked
for: plain picklable metadata) and the tensors the stages produce.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import torch

from ..runtime import RankFailure

__all__ = ["Parallelism", "Stage", "Request", "Batch", "StageError"]


class Parallelism(Enum):
    """How a stage runs across the ranks of a generation."""

    REPLICATED = "replicated"  # every rank runs it on its own (identical) batch
    MAIN_RANK_ONLY = "main_rank_only"  # rank 0 runs it; the others wait and keep their batch
    MAIN_RANK_ONLY_AND_SEND_TO_OTHERS = "main_rank_only_and_send_to_others"  # rank 0 runs it, its batch is broadcast
    CFG_PARALLEL = "cfg_parallel"  # every rank runs it; conditional and unconditional branches on different rank groups


class StageError(RankFailure):
    """A stage failed on some rank; raised on every rank, naming the rank(s) and their exceptions."""

    what = "stage"

    @property
    def stage(self) -> str:
        return self.step


@dataclass
class Stage:
    """One step of a generation: `fn(batch, ctx) -> batch`, run with `parallelism` by the Executor."""

    name: str
    fn: Callable
    parallelism: Parallelism = Parallelism.REPLICATED

    def __post_init__(self):
        if not isinstance(self.parallelism, Parallelism):
            accepted = ", ".join(p.name for p in Parallelism)
            raise ValueError(f"stage {self.name!r}: parallelism must be a Parallelism ({accepted}), got {self.parallelism!r}")

    def __call__(self, batch, ctx):
        return self.fn(batch, ctx)


@dataclass(frozen=True)
class Request:
    """What to generate. Sizes are in pixels; `frames` is 1 for images."""

    pipeline: str = "qwen-image"
    prompt: str = "a lighthouse on a cliff at sunset, \"HELLO\" painted on its wall"
    negative_prompt: str = ""
    height: int = 1024
    width: int = 1024
    frames: int = 1
    steps: int = 4
    guidance_scale: float = 4.0
    seed: int = 0
    image: str | None = None  # qwen-image-edit: a reference image file (default: a seeded synthetic picture)

    @property
    def size(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.frames)

    def label(self) -> str:
        size = f"{self.height}x{self.width}" + (f"x{self.frames}" if self.frames > 1 else "")
        return f"{self.pipeline} {size}, {self.steps} steps, guidance {self.guidance_scale:g}, seed {self.seed}"


@dataclass
class Batch:
    """The state of one generation between stages (tensors on the rank's device)."""

    request: Request
    prompt_embeds: torch.Tensor | None = None  # (B, T, C_text)
    prompt_mask: torch.Tensor | None = None  # (B, T) bool, or None when every token counts
    negative_embeds: torch.Tensor | None = None
    negative_mask: torch.Tensor | None = None
    image_latents: torch.Tensor | None = None  # qwen-image-edit: the reference image, packed (B, S_ref, 64)
    prior_token_ids: torch.Tensor | None = None  # glm-image: AR image tokens at the DiT grid (B, S)
    latents: torch.Tensor | None = None  # the model's latent layout (packed for Qwen-Image)
    output: torch.Tensor | None = None  # decoded pixels, about [-1, 1] (rank 0)
    extras: dict = field(default_factory=dict)  # small values the stages record (step times, decode Result, ...)
