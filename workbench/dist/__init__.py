"""Distributed runtime: platform and backend, process groups, torchrun SPMD launch, notebook worker pool."""

from .cluster import Cluster, ClusterError, RankError
from .groups import Groups, ParallelDims, build_groups
from .launch import RankContext, init_rank, init_spmd
from .platform import backend_for, default_device, detect_platform, load_platform, rank_device

__all__ = [
    "Cluster", "ClusterError", "RankError", "Groups", "ParallelDims", "build_groups", "RankContext", "init_rank",
    "init_spmd", "backend_for", "default_device", "detect_platform", "load_platform", "rank_device",
]
