"""Parallel degrees, validated once, and the process groups they imply, built once per rank.

Ranks are laid out CFG-major: rank = cfg_rank * sp + sp_rank, so a sequence-parallel group is a
run of consecutive ranks (on one node when sp <= GPUs per node) and a CFG group pairs the ranks
with the same sp_rank. The decode group is every rank by default.

    dims = ParallelDims(world_size=4, cfg=2)        # sp = 2
    groups = use_dims(ctx, dims)                    # collective; ctx.groups.sp, .cfg, .decode
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist

__all__ = ["ParallelDims", "Groups", "build_groups", "use_dims"]


@dataclass(frozen=True)
class ParallelDims:
    """Validated parallel degrees: `sp * cfg == world_size`, decode over `decode` ranks (default all)."""

    world_size: int
    sp: int = 0  # 0: world_size // cfg
    cfg: int = 1
    decode: int = 0  # 0: world_size

    def __post_init__(self):
        w = self.world_size
        if w < 1:
            raise ValueError(f"world_size must be >= 1, got {w}")
        if self.cfg not in (1, 2):
            raise ValueError(f"cfg (CFG-parallel degree) must be 1 or 2, got {self.cfg}")
        if w % self.cfg:
            raise ValueError(f"cfg={self.cfg} does not divide world_size={w}")
        object.__setattr__(self, "sp", self.sp or w // self.cfg)
        object.__setattr__(self, "decode", self.decode or w)
        if self.sp * self.cfg != w:
            raise ValueError(f"sp * cfg must equal world_size: sp={self.sp} * cfg={self.cfg} != {w}; "
                             f"accepted sp for cfg={self.cfg}: {w // self.cfg}")
        if not 1 <= self.decode <= w or w % self.decode:
            raise ValueError(f"decode degree must divide world_size={w}, got {self.decode}")

    def sp_rank(self, rank: int) -> int:
        return rank % self.sp

    def cfg_rank(self, rank: int) -> int:
        return rank // self.sp

    def sp_ranks(self, rank: int) -> list[int]:
        start = self.cfg_rank(rank) * self.sp
        return list(range(start, start + self.sp))

    def cfg_ranks(self, rank: int) -> list[int]:
        return [c * self.sp + self.sp_rank(rank) for c in range(self.cfg)]

    def decode_ranks(self, rank: int) -> list[int]:
        start = rank // self.decode * self.decode
        return list(range(start, start + self.decode))


@dataclass
class Groups:
    """This rank's process groups. None means the default (world) group; a group of one rank is a real
    group of size 1, so collectives on it are no-ops rather than world-wide."""

    dims: ParallelDims
    decode: object = None
    sp: object = None
    cfg: object = None


def _subgroup(rank_sets: list[list[int]], mine: list[int]):
    """Create every group of the partition (all ranks must call new_group for each) and keep ours."""
    chosen = None
    for ranks in rank_sets:
        g = dist.new_group(ranks)
        if ranks == mine:
            chosen = g
    return chosen


def build_groups(dims: ParallelDims, rank: int) -> Groups:
    """Create the sp, cfg and decode groups; collective: every rank calls it with the same dims."""
    w = dims.world_size
    if not dist.is_initialized() or w == 1:
        return Groups(dims)

    def partition(ranks_of):
        seen, sets = set(), []
        for r in range(w):
            rs = ranks_of(r)
            if rs[0] not in seen:
                seen.add(rs[0])
                sets.append(rs)
        return sets

    def group(size: int, ranks_of):
        return None if size == w else _subgroup(partition(ranks_of), ranks_of(rank))

    return Groups(dims, sp=group(dims.sp, dims.sp_ranks), cfg=group(dims.cfg, dims.cfg_ranks),
                  decode=group(dims.decode, dims.decode_ranks))


def use_dims(ctx, dims: ParallelDims) -> Groups:
    """Give `ctx` (a runtime RankContext) the groups of `dims`, building them only when the degrees change;
    collective when they do."""
    if dims.world_size != ctx.world_size:
        raise ValueError(f"ParallelDims.world_size={dims.world_size} but this run has {ctx.world_size} ranks")
    if ctx.groups is None or ctx.groups.dims != dims:
        ctx.groups = build_groups(dims, ctx.rank)
    return ctx.groups
