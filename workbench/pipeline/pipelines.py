"""The pipelines by name.

    pipe = build_pipeline("qwen-image", tiny=True, device="cpu")
"""

from __future__ import annotations

from ..models.specs import get_spec
from .base import Pipeline
from .glm_image import GlmImagePipeline
from .qwen_image import QwenImageEditPipeline, QwenImagePipeline
from .wan import WanPipeline

__all__ = ["PIPELINES", "Pipeline", "build_pipeline", "QwenImagePipeline", "QwenImageEditPipeline", "WanPipeline",
           "GlmImagePipeline"]

PIPELINES = {"qwen-image": QwenImagePipeline, "qwen-image-edit": QwenImageEditPipeline, "wan2.1": WanPipeline,
             "wan2.2": WanPipeline, "glm-image": GlmImagePipeline}


def build_pipeline(name: str, *, tiny: bool = True, weights=None, dtype="float32", device="cpu",
                   seed: int = 0) -> Pipeline:
    """The named pipeline with its components built (seeded random weights, or `weights`: a local folder)."""
    spec = get_spec(name)
    return PIPELINES[spec.name](spec, tiny=tiny, weights=weights, dtype=dtype, device=device, seed=seed)
