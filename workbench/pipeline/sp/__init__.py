"""Sequence-parallel DiTs: Ulysses and ring attention applied from outside to unmodified diffusers models.

    from workbench.pipeline.sp import parallelize_dit
    parallelize_dit(transformer, group=ctx.groups.sp, attention="ulysses")
"""

from .attention import SeqShard, attention_lse, merge_lse, ring_attention, ulysses_attention
from .models import ATTENTION_METHODS, is_parallelized, parallelize_dit, unparallelize_dit

__all__ = ["parallelize_dit", "unparallelize_dit", "is_parallelized", "ATTENTION_METHODS", "SeqShard",
           "ulysses_attention", "ring_attention", "attention_lse", "merge_lse"]
