"""The scoreboard: data/bench/targets.json from the committed benchmark JSONs (issues 12 and 13).

    python benchmarks/targets.py            # rewrites data/bench/targets.json and prints the table

Each entry: {"id", "what", "value", "goal", "better", "met", "source", "note"}. `source` is the committed file
the value comes from. An id with no measurement yet has value null, met false, source null and a note that
says what is missing: the scoreboard lists every id, measured or not.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "data" / "bench"
LEVERS = "causal_conv+fused_norm"  # the lever set of the one-GPU decode (workbench.ops.vae)
ONE_GPU = {"qwen-image_2048x2048": "images", "glm-image_2048x2048": "images",
           "wan2.1_720x1280x81": "videos", "wan2.2-ti2v-5b_704x1280x121": "videos"}
SHIPPED_WARPS = "4"  # kernels/modulation._num_warps at hidden 3072 (BLOCK_D 4096)
FULL_GOALS = {"wan2.1_720x1280x81": 1.5, "qwen-image_2048x2048": 1.5, "glm-image_2048x2048": 1.5,
              "wan2.2-ti2v-5b_704x1280x121": 1.5}


def load(name: str) -> dict:
    return json.loads((BENCH / name).read_text())


def entry(id_, what, value, goal, better="higher", source=None, note="", extra_ok=True):
    met = value is not None and extra_ok and (value >= goal if better == "higher" else value <= goal)
    return {"id": id_, "what": what, "value": None if value is None else round(value, 3), "goal": goal,
            "better": better, "met": bool(met), "source": source, "note": note}


def key(record) -> str:
    h, w, f = record["size"]
    return f"{record['model']}_{h}x{w}" + (f"x{f}" if f > 1 else "")


def one_gpu_records() -> dict:
    """config -> [(variants, file)] over the one-GPU runs; each file measured diffusers in its own launch."""
    out = {}
    for name in ("decode_1gpu_images_h200.json", "decode_1gpu_videos_h200.json", "decode_1gpu_channels_last_h200.json",
                 "decode_1gpu_cudnn_benchmark_h100.json", "decode_1gpu_conv_buffers_h100.json"):
        for r in load(name)["records"]:
            out.setdefault(key(r), []).append((r["variants"], name))
    return out


def best_eager(runs) -> tuple:
    """The fastest eager lever set against diffusers of the same launch that keeps PSNR within the bf16 floor:
    (speed-up, variant, ours, diffusers', file)."""
    best = None
    for variants, source in runs:
        ref = variants["diffusers"]
        for name, ours in variants.items():
            if not name.startswith("full:") or "compile" in name or "median_s" not in ours:
                continue
            if ours["psnr_vs_fp32_db"] < ref["psnr_vs_fp32_db"] - 0.1:
                continue
            speedup = ref["median_s"] / ours["median_s"]
            if best is None or speedup > best[0]:
                best = (speedup, name, ours, ref, source)
    return best


def full_1gpu(records) -> list:
    rows = []
    for cfg, goal in FULL_GOALS.items():
        speedup, name, ours, ref, source = best_eager(records[cfg])
        note = (f"{name}: {ours['median_s']:.3f} s against diffusers' {ref['median_s']:.3f} s in the same launch; "
                f"PSNR vs fp32 {ours['psnr_vs_fp32_db']:.2f} dB vs diffusers' bf16 {ref['psnr_vs_fp32_db']:.2f} dB")
        for variants, _ in records[cfg]:
            compiled = variants.get(f"full:{LEVERS}+compile", {})
            if "median_s" in compiled:
                note += (f"; {LEVERS}+compile: {compiled['median_s']:.3f} s "
                         f"({variants['diffusers']['median_s'] / compiled['median_s']:.2f}x)")
        rows.append(entry(f"decode.full_1gpu.{cfg}.speedup_vs_diffusers",
                          "one-GPU full decode with the fastest eager lever set (workbench.ops.vae) over diffusers' "
                          "vae.decode, bf16, PSNR vs fp32 at least diffusers' bf16 minus 0.1 dB",
                          speedup, goal, source=source, note=note))
    return rows


TILED_RUNS = "decode_tiled_{}_h100.json"  # benchmarks/gpu_tiled.sh: ours against diffusers' tiling, one launch each


def tiled_1gpu() -> list:
    """Our fastest tiled variant that is at least as close to the float32 decode as diffusers' enable_tiling()
    (else the closest), against that tiling measured in the same launch: speed, PSNR gain and peak of one run."""
    rows = []
    for cfg in ONE_GPU:
        source = TILED_RUNS.format(cfg.split("_")[0])
        variants = load(source)["records"][0]["variants"]
        ref = variants["diffusers_tiled"]
        ours = {k: v for k, v in variants.items() if k.startswith("tiled") and "median_s" in v}
        fair = {k: v for k, v in ours.items() if v["psnr_vs_fp32_db"] >= ref["psnr_vs_fp32_db"]}
        name, best = (min(fair.items(), key=lambda kv: kv[1]["median_s"]) if fair
                      else max(ours.items(), key=lambda kv: kv[1]["psnr_vs_fp32_db"]))
        note = (f"diffusers' tiling {ref['median_s']:.3f} s, {ref['peak_gib']:.2f} GiB, {ref['psnr_vs_fp32_db']:.2f} dB; "
                f"ours `{name}` {best['median_s']:.3f} s, {best['peak_gib']:.2f} GiB, {best['psnr_vs_fp32_db']:.2f} dB")
        rows.append(entry(f"decode.tiled_1gpu.{cfg}.speedup_vs_diffusers_tiled",
                          "our tiled decode over diffusers' enable_tiling() decode", ref["median_s"] / best["median_s"],
                          1.2, source=source, note=note))
        rows.append(entry(f"decode.tiled_1gpu.{cfg}.psnr_gain_db", "our tiled PSNR vs fp32 minus diffusers' tiled",
                          best["psnr_vs_fp32_db"] - ref["psnr_vs_fp32_db"], 3.0 if cfg.startswith("glm") else 0.0,
                          source=source, note=note))
    return rows


SHARD_RUNS = ("shard_vs_diffusers_h200_sp4.json", "shard_vs_diffusers_h200_sp4_images.json",
              "shard_causal_conv_vs_diffusers_h200_sp4.json", "shard_levers_vs_diffusers_h200_sp4_rms.json")


def best_shard_rows() -> dict:
    """config -> (row, file): the fastest shard run (lever set included) within the bf16 floor, each against
    diffusers measured in its own launch (benchmarks/shard_vs_diffusers.py)."""
    best = {}
    for source in SHARD_RUNS:
        for r in load(source)["rows"]:
            if "speedup_vs_diffusers" not in r or r.get("psnr_deficit_db", 1.0) > 0.1:
                continue
            cfg = key(r)
            if cfg not in best or r["speedup_vs_diffusers"] > best[cfg][0]["speedup_vs_diffusers"]:
                best[cfg] = (r, source)
    return best


def shard_4gpu() -> list:
    """shard at SP=4 against diffusers' one-GPU decode, both in one launch; speed, peak and PSNR of one run."""
    best = best_shard_rows()
    out = []
    for cfg in ONE_GPU:
        prefix = f"decode.shard_4gpu.{cfg}"
        r, source = best.get(cfg, ({}, None))
        gib = 2**30
        levers = "+".join(r.get("shard_levers") or []) or "no levers"
        speed = (f"diffusers {r['diffusers_s']:.3f} s, shard ({levers}) {r['shard_s']:.3f} s (grid {r.get('grid')})"
                 if r else "not measured")
        peak = (f"largest rank {max(r['shard_peak_bytes']) / gib:.2f} GiB / diffusers {r['diffusers_peak_bytes'] / gib:.2f} GiB, "
                "allocator peaks with the weights resident" if r else "not measured")
        psnr = r.get("psnr_fp32_db", {})
        quality = (f"vs the float32 decode: diffusers bf16 {psnr['diffusers_bf16']:.2f} dB, shard ({levers}) "
                   f"{psnr['shard']:.2f} dB" if len(psnr) == 2 else "not measured")
        out += [entry(f"{prefix}.speedup_vs_diffusers", "shard at SP=4 over diffusers' one-GPU decode, same launch",
                      r.get("speedup_vs_diffusers"), 3.6, source=source, note=speed),
                entry(f"{prefix}.peak_ratio", "largest rank's peak at SP=4 over diffusers' one-GPU decode's, weights "
                      "included", r.get("peak_ratio"), 0.28, "lower", source, peak),
                entry(f"{prefix}.psnr_deficit_db", "diffusers bf16's PSNR vs fp32 minus shard's", r.get("psnr_deficit_db"),
                      0.1, "lower", source, quality)]
    return out


def beyond_memory() -> list:
    """Exact shard decodes on four H200s, output left sharded as blocks on disk, assembled and checked
    (benchmarks/beyond_memory.py). Met where it completed and one GPU could not hold the full decode."""
    source = "beyond_memory_h200_sp4.json"
    rows = {key(r): r for r in load(source)["rows"]}
    out = []
    for cfg in ("qwen-image_16384x16384", "wan2.1_1440x2560x81"):
        r, gib = rows[cfg], 2**30
        beyond = r["full_1gpu_estimate_bytes"] > r["device_bytes"]
        note = (f"shard {r['shard_s']:.1f} s, largest rank {max(r['shard_peak_bytes']) / gib:.1f} GiB of "
                f"{r['device_bytes'] / gib:.0f} GiB; {r['blocks']} blocks assembled to {r['assembled_shape']} "
                f"(finite, in [-1, 1]: {r['finite'] and r['in_clamp_range']}); the full one-GPU decode is estimated "
                f"at {r['full_1gpu_estimate_bytes'] / gib:.1f} GiB")
        if not beyond:
            note += (": it would fit one H200, so this size is not beyond one GPU's memory (met: false); the video "
                     "decode without the frame cache's copies needs about 4x the area, e.g. 2880x5120x81")
        out.append(entry(f"decode.beyond_memory.{cfg}.completed", "an exact decode one GPU cannot hold, on four",
                         r["completed"], 1, source=source, note=note, extra_ok=beyond))
    return out


def dit() -> list:
    sp1, sp4 = load("pipeline_nvidia-h200_sp1.json"), load("pipeline_nvidia-h200_sp4.json")

    def step(doc, model, size, variant):
        for r in doc["rows"]:
            if (r["model"], tuple(r["size"][:2]), r["variant"]) == (model, size, variant) and "step_s" in r:
                return r["step_s"]
        return None

    rows = []
    for model, size, cfg in (("qwen-image", (1024, 1024), "qwen-image_1024x1024"),
                             ("qwen-image", (2048, 2048), "qwen-image_2048x2048"),
                             ("wan2.1", (480, 832), "wan2.1_480x832x81")):
        one, four = step(sp1, model, size, "compile"), step(sp4, model, size, "compile")
        value = four / one if one and four else None
        when = ("both in the launches of 2026-11-22" if size == (2048, 2048) else
                "SP=4 measured 2026-11-22 (after the text tokens were sharded), SP=1 on 2026-11-21 (SP=1 has no "
                "text sharding to change)")
        note = (f"SP=4 {four:.4f} s / SP=1 {one:.4f} s, compiled blocks without CUDA graphs; {when}" if value
                else "not measured")
        rows.append(entry(f"dit.{cfg}.sp4_step_ratio", "compiled denoising step at SP=4 over compiled SP=1", value,
                          0.3, "lower", "pipeline_nvidia-h200_sp4.json" if value else None, note))
    fused, plain = step(sp4, "qwen-image", (1024, 1024), "compile+fused"), step(sp4, "qwen-image", (1024, 1024), "compile")
    rows.append(entry("dit.qwen-image_1024x1024.sp4_fused_over_unfused", "compiled SP=4 step, fused modulation ops "
                      "over diffusers' unfused", fused / plain if fused and plain else None, 1.0, "lower",
                      "pipeline_nvidia-h200_sp4.json", f"{fused:.4f} s / {plain:.4f} s in one launch (2026-11-22); the "
                      "step is bound by the host's kernel launches at SP=4 (profiles/pipeline_qwen-image_1024x1024_sp4_"
                      "compile_fused.txt: 48 ms of GPU time in a 134 ms step), and each fused op is a Python-launched "
                      "Triton kernel"))
    doc = load("modulation_h200_kernels.json")
    copy_gbps = doc["copy_bandwidth"]["GBps"]
    for tokens in (4096, 16384):
        k = next(k for k in doc["kernels"] if k["variant"] == "select01" and k["tokens"] == tokens)
        ms = k["fused_ms_by_num_warps"][SHIPPED_WARPS]  # the shipped launch, timed in the same sweep
        note = (f"fused {ms:.4f} ms at num_warps {SHIPPED_WARPS} (the shipped launch; {k['ms']['fused']:.4f} ms at "
                f"the old 8), compiled {k['ms']['compiled']:.4f} ms, hidden {k['hidden']}, bf16, "
                f"{k['bytes_moved'] / 1e6:.1f} MB moved; time = t0 + bytes / BW fits the two sizes with t0 = 4.4 us and "
                "BW = 83% of a copy's (compiled: 5.7 us, 90%): see data/bench/README.md")
        rows.append(entry(f"kernel.select01_{tokens}.copy_fraction", "fused select01's bandwidth over a copy's",
                          k["bytes_moved"] / (ms * 1e-3) / 1e9 / copy_gbps, 0.8, source="modulation_h200_kernels.json",
                          note=note))
        rows.append(entry(f"kernel.select01_{tokens}.speedup_vs_compiled", "fused select01 over torch.compile of "
                          "the unfused sequence", k["ms"]["compiled"] / ms, 1.0,
                          source="modulation_h200_kernels.json", note=note))
    return rows


def scoreboard() -> list:
    records = one_gpu_records()
    return full_1gpu(records) + shard_4gpu() + beyond_memory() + tiled_1gpu() + dit()


def table(rows) -> str:
    lines = ["| id | value | goal | met | source |", "|---|---|---|---|---|"]
    for r in rows:
        value = "-" if r["value"] is None else r["value"]
        goal = ("≥ " if r["better"] == "higher" else "≤ ") + str(r["goal"])
        lines.append(f"| `{r['id']}` | {value} | {goal} | {'yes' if r['met'] else 'no'} | {r['source'] or '-'} |")
    return "\n".join(lines)


def main() -> int:
    rows = scoreboard()
    (BENCH / "targets.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
