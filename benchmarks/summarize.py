"""Markdown summary of the GPU benchmark JSONs in data/bench, next to the issues' targets.

    python benchmarks/summarize.py            # prints the tables
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "data" / "bench"


def load(name):
    path = BENCH / name
    return json.loads(path.read_text()) if path.is_file() else None


def decode_table(gpu: str = "h200") -> str:
    runs = {sp: load(f"decode_{gpu}_sp{sp}.json") for sp in (1, 2, 4)}
    if not runs[1]:
        return ""
    rows = {(r["model"], tuple(r["size"]), r["mode"], r["world_size"]): r for d in runs.values() if d for r in d["rows"]}
    out = ["| model | size | mode | GPUs | median s | speed-up vs full | peak alloc GiB (max rank) | vs full | PSNR dB vs full |",
           "|---|---|---|---|---|---|---|---|---|"]
    for (model, size, mode, world), r in rows.items():
        full = rows.get((model, size, "full", 1))
        if "median_s" not in r:
            continue
        peak = max(r["peak_allocated_bytes"]) / 2**30
        full_peak = max(full["peak_allocated_bytes"]) / 2**30 if full else None
        psnr = r.get("quality", {}).get("psnr_db")
        psnr = "exact" if psnr == float("inf") or mode == "full" else (f"{psnr:.1f}" if psnr else "-")
        size_s = "x".join(map(str, size if size[2] > 1 else size[:2]))
        out.append(f"| {model} | {size_s} | {mode} | {world} | {r['median_s']:.3f} | "
                   f"{full['median_s'] / r['median_s']:.2f}x | {peak:.2f} | {peak / full_peak:.3f} | {psnr} |"
                   if full else f"| {model} | {size_s} | {mode} | {world} | {r['median_s']:.3f} | - | {peak:.2f} | - | {psnr} |")
    return "\n".join(out)


def pipeline_table(gpu: str = "nvidia-h200") -> str:
    runs = {sp: load(f"pipeline_{gpu}_sp{sp}.json") for sp in (1, 2, 4)}
    if not runs[1]:
        return ""
    base = {(r["model"], r["variant"]): r for r in runs[1]["rows"] if r.get("step_s")}
    out = ["| model | variant | SP | step ms | vs SP=1 same variant | vs SP=1 eager |", "|---|---|---|---|---|---|"]
    for sp, d in runs.items():
        for r in (d or {}).get("rows", []):
            if not r.get("step_s"):
                continue
            same = base.get((r["model"], r["variant"]))
            eager = base.get((r["model"], "eager"))
            out.append(f"| {r['model']} | {r['variant']} | {sp} | {1e3 * r['step_s']:.1f} | "
                       f"{r['step_s'] / same['step_s']:.2f}x | {r['step_s'] / eager['step_s']:.2f}x |")
    return "\n".join(out)


if __name__ == "__main__":
    print(decode_table(*sys.argv[1:2]))
    print()
    print(pipeline_table())
