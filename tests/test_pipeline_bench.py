"""benchmarks/bench_pipeline.py in its CPU smoke mode (one rank, tiny configs, eager): it runs and writes JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_pipeline.py"


def test_bench_smoke_writes_json(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    spec = importlib.util.spec_from_file_location("bench_pipeline", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--smoke", "--variants", "eager,eager+fused", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "pipeline_cpu-smoke_sp1.json").read_text())
    assert record["command"].startswith("python benchmarks/bench_pipeline.py --smoke")
    assert {"python", "torch", "diffusers"} <= set(record["versions"])
    rows = {(r["model"], r["variant"]): r for r in record["rows"]}
    assert rows[("qwen-image", "eager")]["step_s"] > 0 and rows[("wan2.1", "eager")]["image_tokens"] == 32
    assert "error" in rows[("wan2.1", "eager+fused")]  # no fused path for Wan: recorded, not fatal
    assert "step ms" in capsys.readouterr().out


def test_bench_launches_fill_one_file(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    spec = importlib.util.spec_from_file_location("bench_pipeline", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for model in ("wan2.1", "qwen-image"):
        assert bench.main(["--smoke", "--models", model, "--variants", "eager", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "pipeline_cpu-smoke_sp1.json").read_text())
    assert [r["model"] for r in record["rows"]] == ["wan2.1", "qwen-image"] and len(record["commands"]) == 2
