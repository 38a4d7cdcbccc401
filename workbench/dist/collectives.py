"""Tensor collectives the strategies use. Every call takes the process group explicitly.

Shapes are never exchanged: every rank computes what it will receive from the plan, so nothing is
pickled and nothing waits on a host sync. Uneven pieces are padded to the largest one, because gloo
and NCCL both want equal sizes for gathers.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["exchange_halo", "gather_padded", "all_gather_padded", "broadcast", "all_reduce_sum", "group_size",
           "group_rank", "global_rank"]


def group_size(group) -> int:
    return dist.get_world_size(group) if dist.is_initialized() else 1


def group_rank(group) -> int:
    return dist.get_rank(group) if dist.is_initialized() else 0


def global_rank(group, rank: int) -> int:
    """The world rank of `rank` in `group` (point-to-point calls address world ranks)."""
    return rank if group is None else dist.get_global_rank(group, rank)


def exchange_halo(x: torch.Tensor, dim: int, width: int, before: int | None, after: int | None, group) -> torch.Tensor:
    """x extended by `width` slices along `dim` from the neighbours (zeros at the image border).

    `before`/`after` are the group ranks of the neighbours that hold the preceding/following slices
    along `dim`, or None at the border. Each neighbour receives this rank's edge slices in return,
    so every rank of a row or column must call this together.
    """
    if width == 0:
        return x
    if x.shape[dim] < width:
        raise ValueError(f"a shard holds {x.shape[dim]} rows/cols along dim {dim} but a halo of {width} is needed; "
                         "use fewer ranks or a larger size")
    ops, received = [], {}
    for side, peer in (("before", before), ("after", after)):
        if peer is None:
            continue
        start = 0 if side == "before" else x.shape[dim] - width
        send = x.narrow(dim, start, width).contiguous()
        received[side] = torch.empty_like(send)
        peer = global_rank(group, peer)
        ops += [dist.P2POp(dist.isend, send, peer, group), dist.P2POp(dist.irecv, received[side], peer, group)]
    if ops:
        for req in dist.batch_isend_irecv(ops):
            req.wait()
    if len(received) < 2:
        edge_shape = list(x.shape)
        edge_shape[dim] = width
        zeros = x.new_zeros(edge_shape)  # the image border: the conv's own zero padding
        received = {"before": zeros, "after": zeros, **received}
    return torch.cat([received["before"], x, received["after"]], dim=dim)


def _padded(x: torch.Tensor, max_numel: int) -> torch.Tensor:
    flat = x.reshape(-1)
    if flat.numel() == max_numel:
        return flat.contiguous()
    out = flat.new_empty(max_numel)
    out[: flat.numel()] = flat
    return out


def all_gather_padded(x: torch.Tensor, numels: list[int], group) -> list[torch.Tensor]:
    """Every rank's flattened `x`; `numels[r]` is rank r's element count (known to all ranks)."""
    world = len(numels)
    if world == 1:
        return [x.reshape(-1)]
    longest = max(numels)
    buffers = [x.new_empty(longest) for _ in range(world)]
    dist.all_gather(buffers, _padded(x, longest), group=group)
    return [b[:n] for b, n in zip(buffers, numels)]


def gather_padded(x: torch.Tensor, numels: list[int], group, dst: int = 0) -> list[torch.Tensor] | None:
    """Rank `dst` gets every rank's flattened `x`; the others get None."""
    world = len(numels)
    if world == 1:
        return [x.reshape(-1)]
    longest = max(numels)
    me = dist.get_rank(group)
    buffers = [x.new_empty(longest) for _ in range(world)] if me == dst else None
    dist.gather(_padded(x, longest), gather_list=buffers, dst=global_rank(group, dst), group=group)
    return [b[:n] for b, n in zip(buffers, numels)] if me == dst else None


def broadcast(x: torch.Tensor, group, src: int = 0) -> torch.Tensor:
    if group_size(group) > 1:
        dist.broadcast(x, src=global_rank(group, src), group=group)
    return x


def all_reduce_sum(x: torch.Tensor, group) -> torch.Tensor:
    if group_size(group) > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
    return x
