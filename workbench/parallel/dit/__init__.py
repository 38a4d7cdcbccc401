"""Parallel DiTs: the one place that changes a transformer, from outside, in a fixed order.

    notes = parallelize_dit(transformer, group=ctx.groups.sp, attention="ulysses", fused=False, compile=False)
    unparallelize_dit(transformer)        # the unmodified single-device model again

Fused modulation ops (`workbench.ops`, Qwen-Image blocks), then sequence parallelism (Ulysses or ring
attention, `sequence.py`), then torch.compile of each block.
"""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_map_only

from ..comm import group_size
from .attention import SeqShard, attention_lse, merge_lse, ring_attention, ulysses_attention
from .sequence import ATTENTION_METHODS, is_parallelized, sequence_parallel, undo_sequence_parallel
from .sequence import _plan as plan_for

__all__ = ["parallelize_dit", "unparallelize_dit", "sequence_parallel", "undo_sequence_parallel", "is_parallelized",
           "ATTENTION_METHODS", "SeqShard", "ulysses_attention", "ring_attention", "attention_lse", "merge_lse",
           "set_fused", "compile_blocks", "uncompile_blocks", "FUSED_CHOICES", "COMPILE_MODES"]

FUSED_CHOICES = (False, True, "always")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
# Why fused=True declines at SP > 1: there the step is bound by the host launching kernels, not by the GPU
# (Qwen-Image 1024x1024, SP=4, 4 H200s, 2026-11-22: 48 ms of GPU time in a 134 ms compiled step,
# data/bench/profiles/pipeline_qwen-image_1024x1024_sp4_compile_fused.txt), and each fused op is a Triton
# kernel launched from Python, dearer to launch than the aten kernels it replaces: the compiled SP=4 step
# took 203 ms fused against 94 ms unfused. At SP=1 the GPU is the bound and the fused ops pay (eager 168 vs
# 179 ms) or tie (compiled 138 vs 139 ms). fused="always" keeps them, for measuring.
DECLINED_AT_SP = ("fused ops declined at SP > 1: the step is bound by kernel launches there and the Python-launched "
                  "fused kernels slowed it (203 vs 94 ms, Qwen-Image 1024x1024, SP=4, H200); fused='always' keeps them")


def set_fused(model, fused: bool) -> list[str]:
    """Use workbench.ops' fused LayerNorm + modulation (Qwen-Image blocks) or diffusers' own; notes on what
    happened. A no-op with a note where the ops are not installed or the model has no fused path."""
    if type(model).__name__ != "QwenImageTransformer2DModel":
        return [f"fused ops: none for {type(model).__name__} (Qwen-Image only)"] if fused else []
    try:
        from ...ops.qwen import fuse_modulation, unfuse_modulation
    except ImportError as e:
        return [f"fused ops requested but workbench.ops is not available ({e}); running diffusers' blocks"] if fused \
            else []
    if fused:
        fuse_modulation(model)
        return ["fused ops: workbench.ops LayerNorm+scale/shift/gate (select01 for zero_cond_t)"]
    unfuse_modulation(model)
    return []


def parallelize_dit(model, *, group=None, attention: str = "ulysses", fused: bool | str = False,
                    compile: bool | str = False) -> list[str]:
    """Fused ops, then sequence parallelism over `group`, then compiled blocks, from a clean start (whatever
    was applied before is undone first). In place; returns notes on what was done. Collective when
    `group` has several ranks. `fused`: False, True (where they pay: declined at SP > 1, with a note), or
    "always". `compile`: False, True (torch.compile's default mode) or a mode name, e.g. "reduce-overhead"
    (CUDA graphs: what a launch-bound step at SP > 1 needs)."""
    if attention not in ATTENTION_METHODS:
        raise ValueError(f"unknown attention {attention!r}; accepted: {', '.join(ATTENTION_METHODS)}")
    if fused not in FUSED_CHOICES:
        raise ValueError(f"fused must be one of {', '.join(map(repr, FUSED_CHOICES))}, got {fused!r}")
    if not isinstance(compile, bool) and compile not in COMPILE_MODES:
        raise ValueError(f"compile must be True, False or a torch.compile mode ({', '.join(COMPILE_MODES)}), "
                         f"got {compile!r}")
    plan_for(model)  # a TypeError naming the supported models, before anything changes
    unparallelize_dit(model)
    declined = fused != "always" and fused and group_size(group) > 1 and type(model).__name__ == "QwenImageTransformer2DModel"
    notes = [DECLINED_AT_SP] if declined else set_fused(model, bool(fused))
    sequence_parallel(model, group=group, attention=attention)
    if compile:
        compile_blocks(model, mode=None if compile is True else compile)
    return notes


def unparallelize_dit(model) -> torch.nn.Module:
    """The single-device model again: no compiled blocks, no sequence parallelism, diffusers' own blocks."""
    uncompile_blocks(model)
    undo_sequence_parallel(model)
    set_fused(model, False)
    return model


def _blocks(model):
    return getattr(model, "transformer_blocks", None) or getattr(model, "blocks")


# Modes whose compiled graphs replay as CUDA graphs (on CUDA; inductor alone elsewhere).
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def compile_blocks(model, mode: str | None = None) -> None:
    """torch.compile each transformer block's forward (hooks, and so the sequence sharding, stay eager)."""
    for block in _blocks(model):
        if "forward" not in block.__dict__:
            compiled = torch.compile(block.forward, dynamic=False, mode=mode)
            block.forward = _cloning_outputs(compiled) if mode in CUDA_GRAPH_MODES else compiled


def _cloning_outputs(forward):
    """Each block is its own compiled call, so CUDA graph trees start a new generation at every block and the
    next block's replay may overwrite this one's outputs while they are its inputs (seen on an H100:
    "accessing tensor output of CUDAGraphs that has been overwritten"). A copy of the block's outputs,
    outside the graph, is what torch asks for; it is one activation-sized copy per block."""
    def run(*args, **kwargs):
        return tree_map_only(torch.Tensor, torch.clone, forward(*args, **kwargs))
    return run


def uncompile_blocks(model) -> None:
    for block in _blocks(model):
        block.__dict__.pop("forward", None)
