"""Run a generation's stages on every rank with the semantics of their `Parallelism`, and record spans.

    ctx = init_spmd()                          # or a Cluster worker's context, or local_context("cpu")
    run = Executor(stages, ctx).run(batch)     # run.batch, run.spans (every rank's), run.stats

- REPLICATED / CFG_PARALLEL: every rank runs the stage (a CFG-parallel stage reads its branch from the
  context); then the ranks exchange a status, so a failure on any rank raises on all of them.
- MAIN_RANK_ONLY: rank 0 runs it while the others wait for its status.
- MAIN_RANK_ONLY_AND_SEND_TO_OTHERS: rank 0 runs it, then broadcasts a status and the batch it produced
  (structure pickled, tensors as one byte buffer), so every rank continues from bitwise identical state.

When rank 0 fails in a main-rank stage it sends its exception instead of the payload and every rank
raises `StageError` naming rank 0 and that exception: nothing waits for a broadcast that never comes.
(A rank that dies inside a collective of its own stage cannot be helped this way; the process group's
timeout, or a Cluster's bounded wait, ends that.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..measure import Measure, RankStats, synchronize
from ..runtime.tree import map_leaves
from .stages import Parallelism, Stage, StageError

__all__ = ["Executor", "StageContext", "Span", "Run", "broadcast_batch"]


@dataclass
class StageContext:
    """What a stage function sees: its rank, device, process groups and whether to show progress."""

    rank: int
    world_size: int
    device: torch.device
    backend: str
    groups: object  # workbench.parallel.dims.Groups
    runtime: object  # the workbench.runtime.RankContext (control group, status helpers)
    progress: bool = False

    @property
    def dims(self):
        return self.groups.dims

    @property
    def cfg_rank(self) -> int:
        return self.dims.cfg_rank(self.rank)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sync(self) -> None:
        synchronize(self.device)


@dataclass
class Span:
    """One stage on one rank: seconds since the (barrier-aligned) start, and its peak memory."""

    stage: str
    rank: int
    start_s: float
    end_s: float
    peak_bytes: int  # accelerators: allocator peak during the stage; CPU: largest resident-set sample
    parallelism: str
    active: bool = True  # False: the rank only waited (a main-rank stage on a rank other than 0)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class Run:
    """What `Executor.run` returns: this rank's final batch, and every rank's spans and RankStats."""

    batch: object
    spans: list[Span]
    stats: list[RankStats]


def _multi(ctx) -> bool:
    return ctx.world_size > 1 and dist.is_initialized()


class Executor:
    """Runs `stages` in order on this rank; every rank of the world runs the same Executor together."""

    def __init__(self, stages: list[Stage], ctx, *, progress: bool = False):
        from ..parallel.dims import ParallelDims, use_dims

        self.stages = list(stages)
        self.ctx = ctx
        if ctx.groups is None:
            use_dims(ctx, ParallelDims(ctx.world_size))  # collective: every rank builds its Executor together
        self.stage_ctx = StageContext(ctx.rank, ctx.world_size, torch.device(ctx.device), ctx.backend, ctx.groups, ctx,
                                      progress=progress and ctx.rank == 0)

    def run(self, batch) -> Run:
        if _multi(self.ctx):
            self.ctx.barrier()  # a common time origin for every rank's spans
        spans = []
        with Measure(self.ctx.device) as measure:
            for stage in self.stages:
                batch, span = self._timed(stage, batch, measure)
                spans.append(span)
        stats = measure.stats(self.ctx.rank)
        if stats.peak_allocated_bytes is not None:  # peaks were reset per stage: the run's peak is the largest
            stats.peak_allocated_bytes = max([s.peak_bytes for s in spans] + [stats.peak_allocated_bytes])
        gathered = self.ctx.gather_objects((spans, stats))
        return Run(batch, [s for rank_spans, _ in gathered for s in rank_spans], [st for _, st in gathered])

    def _timed(self, stage: Stage, batch, measure: Measure):
        """Run one stage inside a measured phase; (batch, this rank's Span)."""
        accel = measure.accel
        if accel is not None:
            synchronize(measure.device)
            accel.reset_peak_memory_stats(measure.device)
        with measure.phase(stage.name):
            batch = self._run_stage(stage, batch)
        name, start, end = measure.phases[-1]
        if accel is not None:
            peak = accel.max_memory_allocated(measure.device)
        else:
            inside = [b for t, b in measure.timeline if start <= t <= end]
            peak = max(inside) if inside else measure._memory_now()
        waited = self.ctx.rank != 0 and stage.parallelism in (Parallelism.MAIN_RANK_ONLY,
                                                              Parallelism.MAIN_RANK_ONLY_AND_SEND_TO_OTHERS)
        return batch, Span(name, self.ctx.rank, start, end, int(peak), stage.parallelism.value, not waited)

    # --------------------------------------------------------------------------------- semantics

    def _attempt(self, stage: Stage, batch):
        try:
            return stage(batch, self.stage_ctx), None
        except Exception as error:  # reported to every rank below, then raised
            return batch, error

    def _run_stage(self, stage: Stage, batch):
        main = self.ctx.rank == 0
        if stage.parallelism in (Parallelism.REPLICATED, Parallelism.CFG_PARALLEL):
            out, error = self._attempt(stage, batch)
            self._agree(stage, error)
            return out
        out, error = self._attempt(stage, batch) if main else (batch, None)
        if stage.parallelism is Parallelism.MAIN_RANK_ONLY:
            self._main_status(stage, error)
            return out
        return broadcast_batch(out, self.ctx, error=error, stage=stage.name)

    def _agree(self, stage: Stage, error) -> None:
        """Every rank learns every rank's status (control group); any failure raises everywhere."""
        self.ctx.agree(stage.name, error, StageError)

    def _main_status(self, stage: Stage, error) -> None:
        self.ctx.main_status(stage.name, error, StageError)


# --------------------------------------------------------------------------------- batch broadcast


@dataclass(frozen=True)
class _TensorSlot:
    """A tensor of the batch: its place in the broadcast byte buffer, shape and dtype."""

    index: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    on_cpu: bool


def _split(obj, tensors: list):
    """`obj` with every tensor appended to `tensors` and replaced by a _TensorSlot (dataclasses, dicts, lists)."""

    def slot(t: torch.Tensor) -> _TensorSlot:
        tensors.append(t)
        return _TensorSlot(len(tensors) - 1, tuple(t.shape), t.dtype, t.device.type == "cpu")

    return map_leaves(obj, slot, lambda x: isinstance(x, torch.Tensor))


def _fill(skeleton, pieces: list[torch.Tensor]):
    """The skeleton with each _TensorSlot replaced by its tensor."""

    def tensor(s: _TensorSlot) -> torch.Tensor:
        t = pieces[s.index].clone().view(s.dtype).reshape(s.shape)  # clone: aligned storage
        return t.cpu() if s.on_cpu else t

    return map_leaves(skeleton, tensor, lambda x: isinstance(x, _TensorSlot))


def _bytes(t: torch.Tensor, device) -> torch.Tensor:
    return t.detach().to(device).contiguous().reshape(-1).view(torch.uint8)


def broadcast_batch(batch, ctx, *, error: BaseException | None = None, stage: str = "broadcast"):
    """Rank 0's `batch` on every rank of the world, bitwise (collective). Rank 0 sends a status first:
    if `error` is set there, every rank raises StageError naming rank 0 and the error instead."""
    if not _multi(ctx):
        ctx.main_status(stage, error, StageError)
        return batch
    device = torch.device(ctx.device)
    tensors: list = []
    header = [None, None, []]  # status, structure, byte size of each tensor
    ctx.main_status(stage, error, StageError)  # over the control group, before any data moves
    if ctx.rank == 0:
        header[1] = _split(batch, tensors)
        header[2] = [t.numel() * t.element_size() for t in tensors]
    _, skeleton, sizes = ctx.broadcast_object(header)
    if not sizes:
        return batch if ctx.rank == 0 else skeleton
    if ctx.rank == 0:
        buffer = torch.cat([_bytes(t, device) for t in tensors])
    else:
        buffer = torch.empty(sum(sizes), dtype=torch.uint8, device=device)
    dist.broadcast(buffer, src=0)
    if ctx.rank == 0:
        return batch
    return _fill(skeleton, list(buffer.split(sizes)))
