"""The cost model against allocator peaks measured on GPUs (data/bench), and its own properties.

The estimates are traced on the meta device (no GPU needed) for the exact configurations of the
committed GPU runs. The requirement: every measured peak lies within 0.7-1.1x of its estimate, so `auto`
and the runner's memory guard neither run out of memory nor refuse what would have fit.
"""

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path

import pytest
import torch

from workbench.models import PRESETS, build_vae, get_preset, latent_shape
from workbench.parallel.vae.cost import estimate_bytes, meta_twin, traced_bytes

BENCH = Path(__file__).resolve().parents[1] / "data" / "bench"
RUNS = sorted(BENCH.glob("decode_memory_*.json"))  # recorded by benchmarks/gpu_cost.sh with this code
LOW, HIGH = 0.7, 1.1  # measured / estimate


def measured_rows():
    """(file, row) per measured configuration; where several runs measured one, the newest (a re-measure after
    a change to what a strategy holds replaces the old record)."""
    newest = {}
    for path in RUNS:
        doc = json.loads(path.read_text())
        for row in doc["rows"]:
            peaks = row.get("peak_allocated_bytes")
            if peaks and peaks[0] is not None and row["mode"] != "auto" and not row.get("tiny"):
                config = (row["model"], tuple(row["size"]), row["mode"], row["world_size"], row["dtype"])
                if config not in newest or doc["date"] > newest[config][0]:
                    newest[config] = (doc["date"], path.name, row)
    return [(name, row) for _, name, row in newest.values()]


def _meta_vae(name: str, dtype: str):
    import diffusers

    preset = get_preset(name)
    with torch.device("meta"):
        vae = getattr(diffusers, preset.vae_class)(**preset.config)
    return torch.nn.Module.to(vae, getattr(torch, dtype))


_meta_vae_cached = lru_cache(maxsize=None)(_meta_vae)


def _estimate(model: str, dtype: str, shape: tuple, mode: str, world_size: int, params: dict) -> int:
    return estimate_bytes(_meta_vae_cached(model, dtype), shape, mode, world_size, **params)


@pytest.mark.skipif(not RUNS, reason="no recorded GPU runs")
def test_measured_peaks_lie_within_0_7_to_1_1_of_the_estimates():
    configs, rows = {}, []
    for source, row in measured_rows():
        params = {k: v for k, v in row["params"].items() if k in ("tile_px", "stride_px", "halo_latent", "merge",
                                                                  "output", "grid", "tile_frames", "mid_block")}
        if row["mode"] in ("tiled", "parallel_tiled"):
            params.setdefault("mid_block", "tile")  # a run recorded before the global stem: each tile ran the stem
        shape = latent_shape(row["model"], *row["size"])
        config = (get_preset(row["model"]).vae_class, str(get_preset(row["model"]).config), row["dtype"])
        twin = (config, shape, row["mode"], row["world_size"], str(sorted(params.items())))  # twin presets: once
        configs.setdefault(twin, (row["model"], row["dtype"], shape, row["mode"], row["world_size"], params))
        rows.append((twin, source, row))
    # The traces are single-threaded Python on the meta device (about 30 s in all): every other configuration
    # goes to a second process, which traces while this one does (spawned: this process holds OpenMP threads).
    twins = sorted(configs, key=str)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as other:
        theirs = {t: other.submit(_estimate, *configs[t]) for t in twins[1::2]}
        estimates = {t: _estimate(*configs[t]) for t in twins[::2]}
        estimates |= {t: f.result() for t, f in theirs.items()}
    ratios = [(max(row["peak_allocated_bytes"]) / estimates[twin], row["model"], row["size"], row["mode"],
               row["world_size"], source) for twin, source, row in rows]
    assert len(ratios) >= 60 and {r[1] for r in ratios} == set(PRESETS)
    print("\n" + "\n".join(f"{r[0]:.2f}  {r[1:]}" for r in sorted(ratios)))
    worst, best = max(ratios), min(ratios)
    assert worst[0] <= HIGH, f"measured more than {HIGH}x the estimate: {worst}"
    assert best[0] >= LOW, f"measured less than {LOW}x the estimate: {best}"


def test_the_trace_runs_the_strategy_itself():
    """shard's trace holds its halo buffers and float32 GroupNorm statistics: more than the unpatched
    decoder's share of the same rows (the defect of the first cost model, 2.4x under on GLM-Image)."""
    vae = _meta_vae("glm-image", "bfloat16")
    shape = latent_shape("glm-image", 2048, 2048)
    shard = traced_bytes(vae, shape, "shard", rank=1, world_size=4, output="sharded")
    band = traced_bytes(vae, (1, 16, 64, 256), "full")  # one rank's band, decoded alone
    assert shard > 1.5 * band


def test_the_trace_holds_the_whole_frame_attention_of_all_queries():
    """shard's attention="all_queries" gathers the mid-block input and attends the whole frame on every rank: the
    trace must hold that frame. Where the mid-block is the peak (2048 px over 64 ranks: each band is small, the
    gathered 256 x 256 x 384 frame is not), the estimate grows by at least that frame (measured: 217 -> 387 MiB)."""
    vae = _meta_vae("qwen-image", "bfloat16")
    shape = latent_shape("qwen-image", 2048, 2048)
    local = traced_bytes(vae, shape, "shard", rank=1, world_size=64, output="sharded")
    exact = traced_bytes(vae, shape, "shard", rank=1, world_size=64, output="sharded", attention="all_queries")
    frame = 256 * 256 * 384 * 2  # the gathered mid-block input, bf16
    assert exact >= local + frame, (local, exact)


def test_twins_are_cached_by_config_not_by_object():
    qwen = build_vae("qwen-image", tiny=True, weights="random")
    glm = build_vae("glm-image", tiny=True, weights="random")
    assert type(meta_twin(qwen)) is type(qwen) and type(meta_twin(glm)) is type(glm)
    del qwen
    again = build_vae("wan2.1", tiny=True, weights="random")  # may reuse the freed object's id
    assert type(meta_twin(again)).__name__ == "AutoencoderKLWan"


def test_video_extrapolation_matches_a_full_trace():
    vae = build_vae("wan2.1", tiny=True, weights="random")
    shape = latent_shape("wan2.1", 64, 64, 29)  # 8 latent frames
    from workbench.parallel.vae import cost

    extrapolated = traced_bytes(vae, shape, "full")
    original = cost.traced_bytes
    assert extrapolated == original(vae, shape, "full")  # deterministic
    # trace every frame for real: temporarily make the threshold unreachable
    direct = _trace_all_frames(vae, shape)
    assert abs(extrapolated - direct) <= 0.02 * direct


def _trace_all_frames(vae, shape):
    from workbench.parallel.comm import Comm
    from workbench.parallel.vae import DecodeContext
    from workbench.parallel.vae.cost import LiveBytes, _fused_attention, _ReplayDecoder, _Untimed
    from workbench.parallel.vae.full import decode_full

    with torch.no_grad(), _fused_attention(), LiveBytes() as live:
        fd = _ReplayDecoder(meta_twin(vae), live)
        z = torch.empty(shape, device="meta")
        live.peak = live.live = 0
        out = decode_full(DecodeContext(fd, _Untimed(), Comm.trace(0, 1)), z)
        del out
    return live.peak
