"""The generic runtime: platform and backend, torchrun launch, the notebook worker pool.

Nothing here imports the application: tasks are module-level functions `fn(ctx, *args)` handed in.
"""

from .launch import RankContext, RankFailure, init_rank, init_spmd, local_context
from .platform import (
    PLATFORMS,
    available_platforms,
    backend_for,
    default_device,
    detect_platform,
    load_platform,
    rank_device,
)
from .pool import ClusterError, RankError, WorkerPool

__all__ = [
    "WorkerPool", "ClusterError", "RankError", "RankContext", "RankFailure", "init_rank", "init_spmd", "local_context",
    "PLATFORMS", "available_platforms", "backend_for", "default_device", "detect_platform", "load_platform", "rank_device",
]
