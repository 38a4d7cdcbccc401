"""Every collective of the workbench, each over an explicit process group.

Decode strategies talk through a `Comm`: halo exchange, padded gathers, broadcast, all-reduce. Shapes
are never exchanged: every rank computes what it will receive from the plan, so nothing is pickled and
nothing waits on a host sync. Uneven pieces are padded to the largest one, because gloo and NCCL both
want equal sizes for gathers.

`Comm.trace(rank, world_size)` makes the same calls allocate the same buffers without talking to anyone:
the cost model runs a strategy's own code on meta tensors through it (`parallel.vae.cost`).

Sequence parallelism uses the plain functions below (`all_to_all`, `all_gather_cat`, `ring_shift`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["Comm", "group_size", "group_rank", "global_rank", "all_to_all", "all_gather_cat", "all_gather_list",
           "ring_shift", "probe_all_to_all"]


def group_size(group) -> int:
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def group_rank(group) -> int:
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


def global_rank(group, rank: int) -> int:
    """The world rank of `rank` in `group` (point-to-point calls address world ranks)."""
    return rank if group is None else dist.get_global_rank(group, rank)


def _padded(x: torch.Tensor, max_numel: int) -> torch.Tensor:
    flat = x.reshape(-1)
    if flat.numel() == max_numel:
        return flat.contiguous()
    out = flat.new_empty(max_numel)
    out[: flat.numel()] = flat
    return out


class Comm:
    """One rank's collectives over `group` (None: the world), or their buffers alone (`Comm.trace`)."""

    def __init__(self, group=None):
        self.group = group
        self.rank, self.world_size = group_rank(group), group_size(group)
        self.live = True

    @classmethod
    def alone(cls) -> Comm:
        """This process by itself, whatever process group exists (the serial strategies)."""
        return cls.trace(0, 1)

    @classmethod
    def trace(cls, rank: int, world_size: int) -> Comm:
        """Rank `rank` of `world_size` with no process group: every call allocates what the real one
        allocates (sends, receive buffers, results) and moves no data."""
        comm = cls.__new__(cls)
        comm.group, comm.rank, comm.world_size, comm.live = None, rank, world_size, False
        return comm

    def exchange_halo(self, x: torch.Tensor, dim: int, width: int, before: int | None, after: int | None):
        """x extended by `width` slices along `dim` from the neighbours (zeros at the image border).

        `before`/`after` are the group ranks holding the preceding/following slices along `dim`, or None
        at the border. Each neighbour receives this rank's edge slices in return, so every rank of a row
        or column calls this together.
        """
        if width == 0:
            return x
        if x.shape[dim] < width:
            raise ValueError(f"a shard holds {x.shape[dim]} rows/cols along dim {dim} but a halo of {width} is "
                             "needed; use fewer ranks or a larger size")
        ops, received = [], {}
        for side, peer in (("before", before), ("after", after)):
            if peer is None:
                continue
            start = 0 if side == "before" else x.shape[dim] - width
            send = x.narrow(dim, start, width).contiguous()
            received[side] = torch.empty_like(send)
            if self.live:
                peer = global_rank(self.group, peer)
                ops += [dist.P2POp(dist.isend, send, peer, self.group),
                        dist.P2POp(dist.irecv, received[side], peer, self.group)]
        if ops:
            for req in dist.batch_isend_irecv(ops):
                req.wait()
        if len(received) < 2:
            edge_shape = list(x.shape)
            edge_shape[dim] = width
            zeros = x.new_zeros(edge_shape)  # the image border: the conv's own zero padding
            received = {"before": zeros, "after": zeros, **received}
        return torch.cat([received["before"], x, received["after"]], dim=dim)

    def all_gather_padded(self, x: torch.Tensor, numels: list[int]) -> list[torch.Tensor]:
        """Every rank's flattened `x`; `numels[r]` is rank r's element count (known to all ranks)."""
        if len(numels) == 1:
            return [x.reshape(-1)]
        longest = max(numels)
        buffers = [x.new_empty(longest) for _ in numels]
        padded = _padded(x, longest)
        if self.live:
            dist.all_gather(buffers, padded, group=self.group)
        return [b[:n] for b, n in zip(buffers, numels)]

    def gather_padded(self, x: torch.Tensor, numels: list[int], dst: int = 0) -> list[torch.Tensor] | None:
        """Rank `dst` gets every rank's flattened `x`; the others get None."""
        if len(numels) == 1:
            return [x.reshape(-1)]
        longest = max(numels)
        mine = self.rank == dst
        buffers = [x.new_empty(longest) for _ in numels] if mine else None
        padded = _padded(x, longest)
        if self.live:
            dist.gather(padded, gather_list=buffers, dst=global_rank(self.group, dst), group=self.group)
        return [b[:n] for b, n in zip(buffers, numels)] if mine else None

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        if self.live and self.world_size > 1:
            dist.broadcast(x, src=global_rank(self.group, src), group=self.group)
        return x

    def all_reduce(self, x: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if self.live and self.world_size > 1:
            dist.all_reduce(x, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN}[op], group=self.group)
        return x


# ----------------------------------------------------------------------------- sequence parallelism


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
    """Chunk j of `x` along `scatter_dim` goes to rank j; the chunks received are concatenated along
    `gather_dim` in rank order (Ulysses: (B, S/P, H, D) -> (B, S, H/P, D)). `scatter_dim` must divide by
    the group size. Without a native all-to-all (old gloo) it is built from all_gather: P times the
    traffic, fine for CPU tests; `probe_all_to_all` decides once, collectively."""
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
