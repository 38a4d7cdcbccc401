"""What a comparison reports: the table, the pictures, strict JSON, and the benchmark record.

    comparison = runner.compare(job, ["tiled", "shard"])
    print(comparison.table())
    comparison.save("runs/x")                           # PNGs, overlays, seam maps, JSON
    write_bench("data/bench/x.json", [comparison], command=..., machine=machine(device))

JSON is strict (no NaN or Infinity: an exact match's PSNR is written as null with "exact": true), and the
parameters recorded are the ones the strategy used (the plan's stride, not the requested one).
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .measure import Result, versions
from .metrics import Quality
from .metrics import compare as compare_outputs

__all__ = ["Comparison", "peak_bytes", "strict_json", "write_json", "machine", "write_bench", "bench_rows", "bench_table"]


@dataclass
class Comparison:
    """Results of several strategies on one job, with their errors against the reference (`full`)."""

    job: object  # a workbench.runner.DecodeJob
    world_size: int = 1
    budget_bytes: int | None = None
    results: dict[str, Result] = field(default_factory=dict)
    quality: dict[str, Quality] = field(default_factory=dict)
    estimates: dict[str, int | None] = field(default_factory=dict)  # cost model, bytes per rank
    skipped: dict[str, str] = field(default_factory=dict)  # mode -> why it did not run

    @property
    def reference(self) -> Result | None:
        return self.results.get("full")

    def add(self, mode: str, result: Result) -> None:
        """Record a result (output on the CPU) and its errors against the reference, if there is one."""
        self.results[mode] = result
        ref = self.reference
        if ref is not None and ref.output is not None and result.output is not None \
                and result.output.shape == ref.output.shape:
            self.quality[mode] = compare_outputs(result.output, ref.output, result.plan)

    def rows(self) -> list[dict]:
        out = []
        for mode, r in self.results.items():
            q = self.quality.get(mode)
            out.append({
                "mode": mode + (f"->{r.choice}" if r.choice else ""),
                "world": r.world_size,
                "items": len(r.plan.items) if r.plan is not None else 1,
                "time_s": statistics.median(r.times_s) if r.times_s else r.time_s,
                "peak_MiB": peak_bytes(r) / 2**20,
                "estimate_MiB": None if self.estimates.get(mode) is None else self.estimates[mode] / 2**20,
                "max_abs": q.max_abs if q else None,
                "mean_abs": q.mean_abs if q else None,
                "psnr_db": q.psnr_db if q else None,
                "seam_x": q.seam_ratio if q else None,
            })
        return out

    def table(self) -> str:
        """A fixed-width table: one row per strategy, errors against the full decode; then what was skipped."""
        rows = self.rows()
        accel = any(r.ranks[0].peak_allocated_bytes is not None for r in self.results.values())
        head = ["mode", "world", "items", "time s", "peak MiB" if accel else "RSS+ MiB", "est MiB", "max|err|",
                "mean|err|", "PSNR dB", "seam/int"]
        lines = [[r["mode"], str(r["world"]), str(r["items"]), f"{r['time_s']:.3f}", f"{r['peak_MiB']:.1f}",
                  _fmt(r["estimate_MiB"], "{:.1f}"), _fmt(r["max_abs"], "{:.2e}"), _fmt(r["mean_abs"], "{:.2e}"),
                  _fmt(r["psnr_db"], "{:.1f}", "exact"), _fmt(r["seam_x"], "{:.1f}x")] for r in rows]
        widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(head)]
        fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
        title = f"{self.job.label()}, errors against full"
        out = [title, fmt.format(*head), fmt.format(*["-" * w for w in widths])] + [fmt.format(*x) for x in lines]
        out += [f"skipped {mode}: {why}" for mode, why in self.skipped.items()]
        if "full" not in self.results:
            out.append("no reference: errors are not measured")
        if not accel:
            out.append("RSS+ MiB: the largest rank's resident-set increase over the start of this strategy (CPU; "
                       "never negative)")
        out.append("seam/int: mean |error| within a band around the plan's boundaries (tile overlaps, patch and "
                   "shard edges) divided by the mean |error| away from them; 1.0x: no seam")
        return "\n".join(out)

    def summary(self) -> dict:
        return {"job": asdict(self.job), "world_size": self.world_size, "budget_bytes": self.budget_bytes,
                "rows": self.rows(), "quality": {m: q.to_dict() for m, q in self.quality.items()},
                "estimates_bytes": self.estimates, "skipped": self.skipped}

    def save(self, out_dir) -> list[Path]:
        """Write each strategy's image, overlay and seam map (PNG), its JSON and a summary JSON."""
        from . import viz

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        ref = self.reference.output if self.reference is not None else None
        for mode, r in self.results.items():
            if r.output is None:
                continue
            viz.save_png(r.output, out / f"{mode}.png")
            written.append(out / f"{mode}.png")
            if r.plan is not None or (ref is not None and mode != "full"):
                fig = viz.plot_strategy(r, reference=ref if mode != "full" else None)
                fig.savefig(out / f"{mode}_overlay.png", dpi=100)
                written.append(out / f"{mode}_overlay.png")
            write_json(out / f"{mode}.json", r.to_dict())
            written.append(out / f"{mode}.json")
        write_json(out / "summary.json", self.summary())
        return written + [out / "summary.json"]


def peak_bytes(r: Result) -> int:
    """The largest per-rank peak: allocator peak on accelerators, resident set above the start on CPUs."""
    return max(max(s.peak_bytes - (s.baseline_bytes if s.peak_allocated_bytes is None else 0), 0) for s in r.ranks)


def _fmt(value, pattern: str, infinite: str = "inf") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return infinite
    return pattern.format(value)


def strict_json(value):
    """`value` with every non-finite float replaced: +inf (an exact PSNR) by None, NaN by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_json(path, value) -> None:
    Path(path).write_text(json.dumps(strict_json(value), indent=1, default=str, allow_nan=False))


# ------------------------------------------------------------------------------------------ benchmarks


def machine(device) -> dict:
    import torch

    device = torch.device(device)
    out = {"hostname": platform.node(), "device_type": device.type}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(gpu=props.name, gpu_count=torch.cuda.device_count(), gpu_memory_bytes=props.total_memory,
                   sm_count=props.multi_processor_count, cuda=torch.version.cuda,
                   nccl=".".join(map(str, torch.cuda.nccl.version())))
    return out


def bench_rows(comparison: Comparison) -> list[dict]:
    """One row per mode: times, per-rank peaks, the cost model's estimate, errors against the reference."""
    job = comparison.job
    rows = []
    for mode, r in comparison.results.items():
        q = comparison.quality.get(mode)
        quality = q.to_dict() if q is not None else None
        if quality is not None:
            quality["exact"] = math.isinf(q.psnr_db)
        rows.append({"model": job.model, "size": list(job.size), "mode": mode, "world_size": r.world_size,
                     "dtype": job.dtype, "params": r.params, "grid": list(r.plan.grid) if r.plan is not None else None,
                     "times_s": r.times_s, "median_s": statistics.median(r.times_s) if r.times_s else r.time_s,
                     "peak_allocated_bytes": [s.peak_allocated_bytes for s in r.ranks],
                     "peak_reserved_bytes": [s.peak_reserved_bytes for s in r.ranks],
                     "peak_rss_bytes": [s.peak_rss_bytes for s in r.ranks],
                     "estimate_bytes": comparison.estimates.get(mode), "choice": r.choice, "reason": r.reason,
                     "quality": quality})
    for mode, why in comparison.skipped.items():
        rows.append({"model": job.model, "size": list(job.size), "mode": mode, "dtype": job.dtype,
                     "estimate_bytes": comparison.estimates.get(mode), "skipped": why})
    return rows


def write_bench(path, rows: list[dict], *, command: str, device, world_size: int) -> None:
    """The benchmark record: machine, versions, command, date and rows (strict JSON)."""
    report = {"machine": machine(device), "versions": versions(), "world_size": world_size, "command": command,
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "rows": rows}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json(path, report)


def bench_table(rows: list[dict]) -> str:
    head = f"{'model':<16}{'size':<14}{'mode':<18}{'world':>5}{'median s':>10}{'peak GiB':>10}{'est GiB':>9}{'PSNR dB':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        size = "x".join(str(v) for v in (r["size"] if r["size"][2] > 1 else r["size"][:2]))
        if r.get("skipped"):
            lines.append(f"{r['model']:<16}{size:<14}{r['mode']:<18}  skipped: {r['skipped']}")
            continue
        peaks = [p for p in (r["peak_allocated_bytes"] if r["peak_allocated_bytes"][0] is not None
                             else r["peak_rss_bytes"]) if p is not None]
        q = r.get("quality") or {}
        psnr = "-" if not q else ("exact" if q.get("exact") else f"{q['psnr_db']:.1f}")
        est = "-" if r.get("estimate_bytes") is None else f"{r['estimate_bytes'] / 2**30:.2f}"
        lines.append(f"{r['model']:<16}{size:<14}{r['mode']:<18}{r['world_size']:>5}{r['median_s']:>10.3f}"
                     f"{max(peaks) / 2**30 if peaks else 0:>10.2f}{est:>9}{psnr:>9}")
    return "\n".join(lines)
