"""Starting a rank: under torchrun (SPMD, scales to several nodes), as a notebook pool worker, or alone.

    ctx = init_spmd()          # torchrun --nproc-per-node 4 -m workbench decode --mode shard ...
    ctx = local_context("cpu") # one process, no torch.distributed
    ...
    ctx.close()

Every multi-rank context also holds `control`, a gloo group over all ranks for status messages (who
failed, with what), so a status never pairs with a queued data collective on the NCCL/HCCL group.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .platform import backend_for, detect_platform, rank_device

__all__ = ["RankContext", "RankFailure", "init_spmd", "init_rank", "local_context", "AGREE_TIMEOUT_S"]

# How long a failed rank waits for the others' statuses. Longer means its peers are stuck in a data
# collective it will never join: it then raises at once and its pool (or torchrun) stops them.
AGREE_TIMEOUT_S = 5.0


class RankFailure(RuntimeError):
    """Raised on every rank when one or more ranks failed in a step they run together; names them."""

    what = "step"

    def __init__(self, step: str, failures: dict[int, str]):
        self.step = step
        self.failures = dict(sorted(failures.items()))
        if len(self.failures) == 1:
            (rank, text), = self.failures.items()
            message = f"{self.what} {step!r} failed on rank {rank}: {text}"
        else:
            detail = "; ".join(f"rank {r}: {text}" for r, text in self.failures.items())
            message = f"{self.what} {step!r} failed on ranks {', '.join(map(str, self.failures))}: {detail}"
        super().__init__(message)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


@dataclass
class RankContext:
    """One rank: its device, backend, control group and (set by the application) its process groups."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    control: object = None  # gloo group over all ranks, for status (None on one rank)
    groups: object = None  # the application's process groups (workbench.parallel.dims.Groups)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and dist.is_initialized()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self.control)

    def gather_objects(self, obj) -> list:
        """Every rank's picklable `obj`, in rank order, over the control group."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.control)
        return out

    def broadcast_object(self, obj, src: int = 0):
        """Rank `src`'s picklable `obj` on every rank, over the control group."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src, group=self.control)
        return box[0]

    def agree(self, step: str, error: BaseException | None, exc: type = RankFailure) -> None:
        """Every rank reports how `step` ended (control group); if any failed, every rank raises `exc` naming
        them. A failed rank waits at most AGREE_TIMEOUT_S for the others, then raises naming itself: never
        a hang. One rank alone raises its own error as it is."""
        if error is not None and not self.distributed and exc is RankFailure:
            raise error
        mine = None if error is None else _describe(error)
        if error is None:
            statuses = self.gather_objects(mine)
        else:
            box: dict = {}
            waiter = threading.Thread(target=lambda: box.update(statuses=self.gather_objects(mine)), daemon=True)
            waiter.start()
            waiter.join(AGREE_TIMEOUT_S)
            statuses = box.get("statuses") or [mine if r == self.rank else None for r in range(self.world_size)]
        failures = {r: s for r, s in enumerate(statuses) if s is not None}
        if failures:
            raise exc(step, failures) from error

    def main_status(self, step: str, error: BaseException | None, exc: type = RankFailure) -> None:
        """Rank 0 tells every rank how `step` ended there; on a failure every rank raises `exc` naming it. One
        rank alone raises its own error as it is."""
        if error is not None and not self.distributed and exc is RankFailure:
            raise error
        status = self.broadcast_object(None if error is None else _describe(error))
        if status is not None:
            raise exc(step, {0: status}) from error

    def on_main(self, step: str, fn, *args, **kwargs):
        """Rank 0 runs `fn`; the others wait for its status and get None. A failure raises on every rank."""
        value, error = None, None
        if self.is_main:
            try:
                value = fn(*args, **kwargs)
            except Exception as e:
                error = e
        self.main_status(step, error)
        return value

    def close(self) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def init_rank(rank: int, world_size: int, init_method: str, device_kind: str, *, local_rank: int | None = None,
              timeout_s: float = 1800) -> RankContext:
    """Join a process group of `world_size` ranks, pick this rank's device and build the control group."""
    local_rank = rank if local_rank is None else local_rank
    device = rank_device(device_kind, local_rank)
    backend = backend_for(device)
    control = None
    if world_size > 1:
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s), **kwargs)
        control = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
    return RankContext(rank, world_size, local_rank, device, backend, control)


def init_spmd(device_kind: str | None = None, *, timeout_s: float = 1800) -> RankContext:
    """This process's rank under torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT from the env)."""
    kind = torch.device(device_kind).type if device_kind else detect_platform()
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    return init_rank(rank, world_size, "env://", kind, local_rank=local_rank, timeout_s=timeout_s)


def local_context(device="cpu") -> RankContext:
    """A one-rank context without torch.distributed (a notebook, a test, a CLI run without --world)."""
    device = torch.device(device)
    if device.type != "cpu":
        device = rank_device(device.type, device.index or 0)  # torch_npu on Ascend; an error if none is visible
    return RankContext(rank=0, world_size=1, local_rank=0, device=device, backend=backend_for(device))
