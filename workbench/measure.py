"""Per-phase timings (device-synchronised), peak memory and a memory timeline sampled during a run.

CUDA/NPU: allocator statistics (peak allocated and reserved; the timeline samples `memory_allocated`).
CPU: resident set size sampled by a thread (the peak is the largest sample, so a spike shorter than
the sampling interval can be missed; the interval is recorded).

    with Measure("cuda:0") as m:
        with m.phase("decode"):
            ...
    stats = m.stats(rank=0)
"""

from __future__ import annotations

import platform
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields

import psutil
import torch

__all__ = ["Measure", "RankStats", "RankSummary", "Result", "versions", "device_kind", "synchronize"]


def device_kind(device) -> str:
    return torch.device(device).type


def synchronize(device) -> None:
    kind = device_kind(device)
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "npu":
        torch.npu.synchronize(device)  # torch_npu is imported by whoever chose an npu device


def _accelerator_module(device):
    kind = device_kind(device)
    return {"cuda": getattr(torch, "cuda", None), "npu": getattr(torch, "npu", None)}.get(kind)


@dataclass
class RankStats:
    """What one rank measured: phase times, peak memory and a memory timeline."""

    rank: int
    device: str
    timings_s: dict[str, float] = field(default_factory=dict)
    phases: list[tuple[str, float, float]] = field(default_factory=list)  # (name, start_s, end_s)
    peak_allocated_bytes: int | None = None  # accelerators: allocator peak
    peak_reserved_bytes: int | None = None
    peak_rss_bytes: int | None = None  # CPU: largest resident-set sample
    baseline_bytes: int = 0  # allocated (or RSS) when the measurement started
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, bytes)
    sample_interval_s: float = 0.0

    @property
    def peak_bytes(self) -> int:
        for value in (self.peak_allocated_bytes, self.peak_rss_bytes):
            if value is not None:
                return value
        return 0

    @property
    def total_s(self) -> float:
        return self.timings_s.get("total", sum(self.timings_s.values()))


class Measure:
    """Context manager measuring one rank's run; `phase(name)` times a synchronised section."""

    def __init__(self, device="cpu", *, sample_interval_s: float | None = None, sync: bool = True):
        """`sync`: synchronise around every phase (per-phase device times); the start and the end
        of the measurement are synchronised either way."""
        self.device = torch.device(device)
        self.accel = _accelerator_module(self.device)
        # 10 ms: each sample takes the GIL, which the Python-driven decoders need to launch kernels
        self.interval = sample_interval_s or 0.01
        self.sync = sync
        self.timings: dict[str, float] = {}
        self.phases: list[tuple[str, float, float]] = []
        self.timeline: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = None
        self._proc = psutil.Process()

    def _memory_now(self) -> int:
        if self.accel is not None:
            return self.accel.memory_allocated(self.device)
        return self._proc.memory_info().rss

    def _sample(self):
        while not self._stop.is_set():
            self.timeline.append((time.perf_counter() - self.t0, self._memory_now()))
            self._stop.wait(self.interval)

    def __enter__(self):
        if self.accel is not None:
            synchronize(self.device)
            self.accel.reset_peak_memory_stats(self.device)
        self.baseline = self._memory_now()
        self.t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            synchronize(self.device)  # always: the total is the device's time, phases or not
        self.elapsed = time.perf_counter() - self.t0
        self._stop.set()
        self._thread.join()
        self.timeline.append((self.elapsed, self._memory_now()))
        return False

    @contextmanager
    def phase(self, name: str):
        """Time a section; the device is synchronised at both ends so the time is the device's."""
        if self.sync:
            synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                synchronize(self.device)
            end = time.perf_counter()
            self.timings[name] = self.timings.get(name, 0.0) + (end - start)
            self.phases.append((name, start - self.t0, end - self.t0))

    def stats(self, rank: int = 0) -> RankStats:
        s = RankStats(rank=rank, device=str(self.device), timings_s={**self.timings, "total": self.elapsed},
                      phases=list(self.phases), baseline_bytes=self.baseline, timeline=list(self.timeline),
                      sample_interval_s=self.interval)
        if self.accel is not None:
            s.peak_allocated_bytes = self.accel.max_memory_allocated(self.device)
            s.peak_reserved_bytes = self.accel.max_memory_reserved(self.device)
        else:
            s.peak_rss_bytes = max(b for _, b in self.timeline)
        return s


def versions() -> dict:
    """Versions and machine, for the provenance of every Result and benchmark."""
    import diffusers

    out = {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
           "platform": platform.platform(), "cpu_count": psutil.cpu_count()}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.version.cuda
        out["gpu"] = torch.cuda.get_device_name()
    return out


class RankSummary:
    """`time_s` and `peak_bytes` of anything that holds per-rank `ranks: list[RankStats]`."""

    ranks: list[RankStats]

    @property
    def time_s(self) -> float:
        """Wall time of the slowest rank."""
        return max(r.total_s for r in self.ranks)

    @property
    def peak_bytes(self) -> int:
        """Largest per-rank peak memory."""
        return max(r.peak_bytes for r in self.ranks)


@dataclass
class Result(RankSummary):
    """One decode: the output (rank 0's, or this rank's shard), the plan, and what every rank measured.

    JSON-serialisable without the tensor: `result.to_dict()` / `result.save(path)`.
    """

    strategy: str
    output: torch.Tensor | None
    plan: object | None
    ranks: list[RankStats]
    dtype: str
    device: str
    world_size: int = 1
    backend: str | None = None
    model: str | None = None
    params: dict = field(default_factory=dict)
    choice: str | None = None  # auto: the strategy it ran
    reason: str | None = None  # auto: why
    times_s: list[float] = field(default_factory=list)  # every timed run of a repeated measurement
    versions: dict = field(default_factory=versions)

    def to_dict(self) -> dict:
        from .parallel.vae.plan import describe

        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("output", "plan", "ranks")}
        d["ranks"] = [asdict(r) for r in self.ranks]
        d["plan"] = describe(self.plan) if self.plan is not None else None
        d["output_shape"] = list(self.output.shape) if self.output is not None else None
        d["time_s"], d["peak_bytes"] = self.time_s, self.peak_bytes
        return d

    def save(self, path) -> None:
        import json
        from pathlib import Path

        Path(path).write_text(json.dumps(self.to_dict(), indent=1))
