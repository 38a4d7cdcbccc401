"""The bad-input battery: a user's mistake gets one line naming the parameter, the value and what is
accepted, exit status 2, nothing written, and it is caught before torch, a model or a worker is started
(so it answers in well under 2 s on an idle machine; the bound here leaves room for a busy CI core)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from workbench.runner import Cluster, DecodeJob, LocalRunner

ROOT = Path(__file__).resolve().parents[1]
FAST_S = 4.0  # measured 0.16-0.22 s on an idle 2-core machine

D = ["decode", "--model", "qwen-image", "--tiny", "--weights", "random"]
G = ["generate", "--tiny"]
CLI_CASES = [
    (D + ["--size", "16x16", "--mode", "shard", "--world", "2", "--grid", "3x3"], "grid must be (rows, cols) with rows * cols == world_size=2"),
    (D + ["--size", "16x16", "--mode", "shard", "--world", "2", "--grid", "1x2x3"], "--grid must be RxC"),
    (D + ["--size", "8x16", "--mode", "shard", "--world", "2", "--grid", "2x1"], "has more rows/cols than the latent"),
    (D + ["--mode", "parallel_tiled", "--world", "2", "--merge", "bogus"], "--merge 'bogus' is not a merge mode; accepted: allgather"),
    (D + ["--mode", "shard", "--world", "2", "--gather", "bogus"], "--gather 'bogus' is not a shard output; accepted: rank0"),
    (D + ["--mode", "full,shard", "--world", "2", "--gather", "sharded"], "--gather sharded leaves each rank its block"),
    (D + ["--mode", "shard", "--world", "2", "--shard-attention", "bogus"],
     "--shard-attention 'bogus' is not a shard attention; accepted: local_queries, all_queries"),
    (D + ["--mode", "shard", "--world", "100000"], "--world 100000 exceeds the"),
    (D + ["--world", "0"], "--world must be >= 1"),
    (D + ["--world", "-1"], "--world must be >= 1"),
    (D + ["--mode", "all"], "runs over several ranks: add --world N"),
    (D + ["--mode", "shard"], "runs over several ranks: add --world N"),
    (D + ["--mode", "tiles"], "--mode: unknown mode tiles; accepted: full, tiled"),
    (D + ["--device", "tpu"], "--device 'tpu' is not a device type here; accepted: cpu, cuda, npu"),
    (D + ["--dtype", "int8"], "--dtype: unknown dtype 'int8'; accepted: float32, bfloat16, float16"),
    (D + ["--batch", "0"], "--batch must be int >= 1, got 0"),
    (D + ["--mode", "auto", "--budget-gib", "-1"], "--budget-gib must be > 0"),
    (D + ["--levers", "causal_conv,warp"], "--levers: unknown lever warp; accepted: channels_last, causal_conv"),
    (D + ["--mode", "patch", "--world", "2", "--levers", "fused_norm"], "--levers applies to full, tiled and shard"),
    (D + ["--mode", "shard", "--world", "2", "--levers", "channels_last"], "--levers channels_last: shard takes causal_conv"),
    (["decode", "--model", "glm-image", "--tiny", "--weights", "random", "--mode", "shard", "--world", "2", "--levers",
      "fused_norm"], "--levers fused_norm: glm-image's GroupNorm needs every rank's statistics under shard"),
    (D + ["--size", "13x13"], "--size: qwen-image: height and width must be multiples of 8 pixels, got 13x13"),
    (D + ["--size", "512"], "size must be HxW or HxWxF"),
    (D + ["--size", "0x0"], "size must be HxW or HxWxF"),
    (D + ["--size", "64x64x5"], "qwen-image is an image model: frames must be 1"),
    (["decode", "--model", "wan2.1", "--tiny", "--size", "64x64x6"], "frames must be 1 + 4k"),
    (["decode", "--model", "sdxl"], "--model: unknown model 'sdxl'; accepted: wan2.1"),
    (D + ["--tile", "100"], "tile_px must be a positive multiple of the spatial ratio 8, got 100"),
    (D + ["--tile", "256", "--stride", "320"], "stride_px must lie in [tile_px/2, tile_px]"),
    (D + ["--halo", "-1", "--mode", "patch", "--world", "2"], "--halo must be int >= 0"),
    (D + ["--tile-frames", "0"], "--tile-frames must be int >= 1"),
    (D + ["--grid", "2x1"], "--grid applies to patch and shard only"),
    (D + ["--mode", "parallel_tiled", "--world", "2", "--size", "64x64", "--tile", "256"], "ranks would idle"),
    (D + ["--out", "README.md"], "--out 'README.md' is an existing file"),
    (D + ["--out", "README.md/inside"], "is not writable"),
    (D + ["--weights", "/nonexistent/folder"], "--weights '/nonexistent/folder' is not a folder"),
    (D + ["--image", "nope"], "--image: image 'nope' is neither a bundled photo nor a file; bundled photos: astronaut"),
    (["decode", "--model", "qwen-image", "--weights", "trained"], "--weights trained: trained weights exist for the tiny "
                                                                 "presets only; add --tiny"),
    (G + ["--pipeline", "wan2.1", "--weights", "random"], "--weights random: give a local diffusers pipeline folder"),
    (G + ["--pipeline", "sdxl"], "--pipeline: unknown pipeline 'sdxl'; accepted: qwen-image"),
    (G + ["--pipeline", "qwen-image", "--sp", "3", "--world", "2"], "--sp 3 x --cfg 1 must equal the ranks (--world 2)"),
    (G + ["--pipeline", "qwen-image", "--steps", "1"], "--steps: qwen-image needs steps >= 2"),
    (G + ["--pipeline", "wan2.1", "--steps", "0"], "--steps must be int >= 1"),
    (G + ["--pipeline", "wan2.1", "--attention", "tree"], "--attention 'tree'; accepted: ulysses, ring"),
    (G + ["--pipeline", "wan2.1", "--size", "64x64x6"], "--size: wan2.1 needs frames = 1 + 4k"),
    (G + ["--pipeline", "qwen-image", "--size", "40x40"], "--size: qwen-image needs height and width in multiples of 16"),
    (G + ["--pipeline", "qwen-image", "--world", "2", "--cfg", "2", "--guidance", "1.0"], "--cfg 2 (CFG parallel) needs --guidance > 1"),
    (["bench", "--configs", "qwen-image", "--out", "x.json"], "--configs items must be MODEL:HxW[xF]"),
]


@pytest.mark.parametrize("argv,message", CLI_CASES, ids=[" ".join(a[4:] if a[0] == "decode" else a[1:]) for a, _ in CLI_CASES])
def test_cli_refuses_in_one_line(argv, message, tmp_path):
    out = tmp_path / "written"
    if "--out" not in argv and argv[0] != "bench":
        argv = argv + ["--out", str(out)]
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "workbench", *argv], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)
    elapsed = time.monotonic() - t0
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("workbench: error: "), proc.stderr[-2000:]
    assert message in lines[0], lines[0]
    assert not out.exists() and not (ROOT / "x.json").exists(), "nothing is written"
    assert elapsed < FAST_S, f"{elapsed:.2f} s: something heavy was imported before the check"


def test_no_refusal_imports_torch(tmp_path):
    """What the time bound above stands for, checked directly (a loaded machine takes seconds to import
    torch: three refusals that imported it first failed the bound on a busy 4-GPU host, 2026-11-22)."""
    argvs = [argv + (["--out", str(tmp_path / "written")] if "--out" not in argv and argv[0] != "bench" else [])
             for argv, _ in CLI_CASES]
    script = (f"import contextlib, io, sys\nfrom workbench.cli import main\nfor argv in {argvs!r}:\n"
              "    with contextlib.redirect_stderr(io.StringIO()), contextlib.suppress(SystemExit):\n"
              "        main(argv)\n"
              "    if 'torch' in sys.modules:\n        print(' '.join(argv))\n        break\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "", f"this refusal imported torch before refusing: {proc.stdout}"


def test_help_is_fast():
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "workbench", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and "decode" in proc.stdout and time.monotonic() - t0 < FAST_S


def test_a_corrupt_config_names_its_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    proc = subprocess.run([sys.executable, "-m", "workbench", *D, "--weights", str(tmp_path)], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 2 and f"{tmp_path / 'config.json'} is not valid JSON" in proc.stderr


API_CASES = [
    (lambda: DecodeJob(weights="random", size=(0, 0, 1)), ValueError, "size must be (height, width[, frames]) of positive ints"),
    (lambda: DecodeJob(weights="random", model="sdxl"), KeyError, "unknown model 'sdxl'"),
    (lambda: DecodeJob(weights="random", batch=0), ValueError, "batch must be an int >= 1"),
    (lambda: DecodeJob(weights="random", dtype="int8"), ValueError, "unknown dtype 'int8'"),
    (lambda: DecodeJob(weights="random", size=(13, 13, 1)), ValueError, "multiples of 8 pixels"),
    (lambda: LocalRunner("cpu").compare(DecodeJob(weights="random", size=(64, 64, 1)), ["tiled"], tile=32), ValueError,
     "unknown decode parameter(s) tile; accepted:"),
    (lambda: LocalRunner("cpu").compare(DecodeJob(weights="random", size=(64, 64, 1)), ["tiles"]), ValueError, "unknown mode 'tiles'"),
    (lambda: LocalRunner("cpu").decode(DecodeJob(weights="random", size=(64, 64, 1)), "shard", halo=2), ValueError, "unknown decode parameter"),
    (lambda: LocalRunner("cpu").decode(DecodeJob(weights="random", size=(64, 64, 1)), "shard", attention="global"), ValueError,
     "shard: attention='global' is not accepted; accepted: local_queries, all_queries"),
    (lambda: Cluster(world_size=0), ValueError, "world_size must be >= 1"),
    (lambda: Cluster(world_size=2, device="tpu"), ValueError, "unknown device 'tpu'"),
]


@pytest.mark.parametrize("call,error,message", API_CASES, ids=[c[2][:40] for c in API_CASES])
def test_python_api_refuses_by_name(call, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        call()


def test_the_memory_guard_refuses_before_any_decode():
    from workbench.runner import MemoryGuardError

    with pytest.raises(MemoryGuardError, match=r"tiled: estimated .* GiB per rank > budget .*; strategies that fit"):
        LocalRunner("cpu").compare(DecodeJob(weights="random", size=(512, 512, 1)), ["tiled"], memory_budget_gib=0.001)


def test_auto_alone_never_decodes_full_first(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "workbench", *D, "--size", "256x256", "--mode", "auto",
                           "--budget-gib", "0.02", "--no-progress"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith(("full", "auto"))]
    assert rows == ["auto->tiled"] and "no reference" in proc.stdout


def test_a_generation_that_cannot_fit_is_refused_before_building():
    from workbench.pipeline import make_job
    from workbench.pipeline.run import weight_bytes

    need = weight_bytes(*make_job("qwen-image", tiny=False, steps=2))
    assert need > 60 * 2**30  # 20B parameters in float32
    free = psutil.virtual_memory().available
    if need <= free:  # a GPU host with 512 GiB would start a real-size CPU generation
        pytest.skip(f"this machine holds the real-size weights ({free / 2**30:.0f} GiB free)")
    proc = subprocess.run([sys.executable, "-m", "workbench", "generate", "--pipeline", "qwen-image", "--steps", "2",
                           "--device", "cpu"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "weights alone need" in proc.stderr and "GiB per rank" in proc.stderr


def test_the_recorded_stride_is_the_one_the_plan_used():
    result = LocalRunner("cpu").decode(DecodeJob(weights="random", size=(512, 512, 1)), "tiled", tile_px=256, stride_px=192)
    # 64 latent rows, 32-row tiles every <= 24: three tiles, shrunk to 27 rows (overlap >= 8) at 0, 18 (or 19), 37
    assert result.params["stride_px"] == 152 and result.params["stride_px_requested"] == 192
