"""VAE decode strategies over one pure planner, applied from outside to an unmodified diffusers VAE.

    from workbench.parallel.vae import decode
    result = decode(vae, latents, mode="tiled", tile_px=256, stride_px=192)
    result.output, result.plan, result.ranks[0].timings_s

Modes: full, tiled (one process); parallel_tiled, patch, shard (every rank of `group` calls decode with
the same latents); auto picks one. Each strategy is one file holding `decode_<mode>(ctx, z, **params)`;
the cost model (`cost.py`) runs that same function on meta tensors to estimate its peak memory. The
names and the planner (`plan.py`) need no torch; `decode` and the rest are imported on first use.
"""

STRATEGIES = ("full", "tiled", "parallel_tiled", "patch", "shard", "auto")
SERIAL = ("full", "tiled")
PARALLEL = ("parallel_tiled", "patch", "shard")
MERGES = ("allgather", "rank0", "rank0-only")  # parallel_tiled
SHARD_OUTPUTS = ("rank0", "all", "sharded")
SHARD_ATTENTIONS = ("local_queries", "all_queries")  # shard's mid-block attention
PATCH_OUTPUTS = ("all", "rank0")
NORM_STATS = ("sampled", "tile")  # tiled, parallel_tiled: a GroupNorm decoder's tile statistics (tile_stats.py)
MID_BLOCKS = ("auto", "global", "tile")  # tiled, parallel_tiled: the decoder's stem once or per tile (stem.py)
LEVERS = ("channels_last", "causal_conv", "fused_norm", "conv_buffers", "compile")  # full and tiled: workbench.ops.vae.optimized
SHARD_LEVERS = ("causal_conv", "fused_norm")  # shard: in its own halo convs; fused norms of RMS decoders only
MODE_LEVERS = {"full": LEVERS, "tiled": LEVERS, "shard": SHARD_LEVERS}  # the `levers` each mode takes

_LAZY = ("decode", "DecodeContext", "FrameDecoder", "PlanError", "strategy", "strategy_params", "check_params")

__all__ = ["STRATEGIES", "SERIAL", "PARALLEL", "MERGES", "SHARD_OUTPUTS", "SHARD_ATTENTIONS", "PATCH_OUTPUTS", "NORM_STATS", "MID_BLOCKS", "LEVERS", "SHARD_LEVERS", "MODE_LEVERS", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'workbench.parallel.vae' has no attribute {name!r}")
