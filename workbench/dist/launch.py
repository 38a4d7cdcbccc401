"""Starting a rank: under torchrun (SPMD, scales to several nodes) or as a notebook pool worker.

    ctx = init_spmd()          # torchrun --nproc-per-node 4 -m workbench decode --mode shard ...
    ...
    ctx.close()
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from .groups import Groups, ParallelDims, build_groups
from .platform import backend_for, detect_platform, rank_device

__all__ = ["RankContext", "init_spmd", "init_rank"]


@dataclass
class RankContext:
    """One rank: its device, backend and process groups (`group` is the world)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    groups: Groups = field(default=None)

    @property
    def group(self):
        return None  # the default group is the world

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def set_dims(self, dims: ParallelDims) -> Groups:
        """(Re)build the sp/cfg/decode groups; collective."""
        if dims.world_size != self.world_size:
            raise ValueError(f"ParallelDims.world_size={dims.world_size} but this run has {self.world_size} ranks")
        self.groups = build_groups(dims, self.rank)
        return self.groups

    def barrier(self) -> None:
        if dist.is_initialized() and self.world_size > 1:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def init_rank(rank: int, world_size: int, init_method: str, device_kind: str, *, local_rank: int | None = None,
              timeout_s: float = 1800) -> RankContext:
    """Join a process group of `world_size` ranks and pick this rank's device."""
    local_rank = rank if local_rank is None else local_rank
    device = rank_device(device_kind, local_rank)
    backend = backend_for(device)
    if world_size > 1:
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s), **kwargs)
    ctx = RankContext(rank, world_size, local_rank, device, backend)
    ctx.groups = build_groups(ParallelDims(world_size), rank)
    return ctx


def init_spmd(device_kind: str | None = None, *, timeout_s: float = 1800) -> RankContext:
    """This process's rank under torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT from the env)."""
    kind = torch.device(device_kind).type if device_kind else detect_platform()
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    return init_rank(rank, world_size, "env://", kind, local_rank=local_rank, timeout_s=timeout_s)
