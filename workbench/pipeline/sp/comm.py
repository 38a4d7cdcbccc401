"""The collectives of sequence parallelism, each over an explicit process group.

    all_to_all(x, scatter_dim=2, gather_dim=1, group=g)   # Ulysses: (B, S/P, H, D) -> (B, S, H/P, D)
    all_gather_cat(x, dim=2, group=g)                     # every rank's x, concatenated along dim
    ring_shift(x, group=g)                                # send x to the next rank, receive the previous one's

`all_to_all` uses the backend's own all-to-all (NCCL, HCCL and recent gloo have one). A backend without
it gets the same result built from all_gather (every rank receives every rank's whole tensor and keeps
its own chunks: P times the traffic, fine for CPU tests); `probe_all_to_all` decides once, collectively.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ...dist.collectives import global_rank, group_rank, group_size

__all__ = ["all_to_all", "all_gather_cat", "all_gather_list", "ring_shift", "probe_all_to_all"]


def probe_all_to_all(group) -> bool:
    """Whether the group's backend has a working all_to_all_single; collective (every rank of `group` calls it)."""
    if group_size(group) == 1:
        return True
    x = torch.zeros(group_size(group), device=_device_of(group))
    try:
        dist.all_to_all_single(torch.empty_like(x), x, group=group)
        return True
    except (RuntimeError, NotImplementedError):  # e.g. "gloo does not support all_to_all" on older builds
        return False


def _device_of(group) -> torch.device:
    backend = str(dist.get_backend(group))
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    if backend == "hccl":
        return torch.device("npu", torch.npu.current_device())
    return torch.device("cpu")


def all_to_all(x: torch.Tensor, scatter_dim: int, gather_dim: int, group, *, native: bool = True) -> torch.Tensor:
    """Chunk j of `x` along `scatter_dim` goes to rank j; the chunks received are concatenated along `gather_dim`
    in rank order. `scatter_dim`'s size must divide by the group size."""
    world = group_size(group)
    if world == 1:
        return x
    if x.shape[scatter_dim] % world:
        raise ValueError(f"all_to_all: dim {scatter_dim} of size {x.shape[scatter_dim]} does not split over {world} ranks")
    if not native:
        mine = group_rank(group)
        return torch.cat([t.chunk(world, dim=scatter_dim)[mine] for t in _all_gather(x, group)], dim=gather_dim)
    send = torch.stack(x.chunk(world, dim=scatter_dim)).contiguous()  # (P, *chunk)
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group)
    return torch.cat(received.unbind(0), dim=gather_dim)


def _all_gather(x: torch.Tensor, group) -> list[torch.Tensor]:
    x = x.contiguous()
    out = [torch.empty_like(x) for _ in range(group_size(group))]
    dist.all_gather(out, x, group=group)
    return out


def all_gather_cat(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    """Every rank's `x` (same shape on all ranks) concatenated along `dim` in rank order."""
    if group_size(group) == 1:
        return x
    return torch.cat(_all_gather(x, group), dim=dim)


def all_gather_list(x: torch.Tensor, group) -> list[torch.Tensor]:
    """Every rank's `x` (same shape on all ranks), in rank order."""
    return [x] if group_size(group) == 1 else _all_gather(x, group)


def ring_shift(x: torch.Tensor, group):
    """Start sending `x` to the next rank of the ring and receiving the previous rank's tensor (same shape).

    Returns (received, wait): call wait() before reading `received`. Point-to-point, so the caller can
    compute on the block it holds while the next one travels.
    """
    world, me = group_size(group), group_rank(group)
    x = x.contiguous()
    received = torch.empty_like(x)
    ops = [dist.P2POp(dist.isend, x, global_rank(group, (me + 1) % world), group),
           dist.P2POp(dist.irecv, received, global_rank(group, (me - 1) % world), group)]
    requests = dist.batch_isend_irecv(ops)

    def wait():
        for r in requests:
            r.wait()

    return received, wait
