"""The panels' logic without a browser: validation beside the controls, one-line failures, labels."""

from __future__ import annotations

import pytest

pytest.importorskip("ipywidgets")


def test_decode_explorer_validates_before_running():
    from workbench.ui import DecodeExplorer

    e = DecodeExplorer(model="wan2.1", size="64x64x5", modes="full,tiled,shard", tile_px=32, stride_px=24)
    assert e.validate() == {}
    e.size.value = "65x64"
    assert "multiples of 8" in e.validate()["size"]
    assert "multiples of 8" in e.fields["size"].message.value
    assert e.run() is None and "invalid input" in e.status.line.value and not e.button.disabled
    e.size.value, e.stride.value = "64x64x5", 48
    assert "must be <= tile" in e.validate()["stride"]
    e.stride.value, e.sp.value, e.grid.value = 24, 2, "1x3"
    assert "needs SP degree 3" in e.validate()["grid"]
    e.grid.value, e.sp.value = "auto", 64  # an 8x8 latent over 64 ranks: runs, with a note
    assert "sp" not in e.validate() and "leaves blocks of 1" in e.fields["sp"].message.value
    e.size.value, e.sp.value = "16x16x5", 3  # a 2x2 latent cannot be split over 3 ranks
    assert "cannot be split" in e.validate()["sp"]
    e.device.options = [*e.device.options, "npu"]
    e.sp.value, e.device.value = 1, "npu"
    assert "not available" in e.validate()["device"]


def test_failure_is_one_line_with_details_and_a_red_bar(monkeypatch):
    from workbench.ui import DecodeExplorer

    e = DecodeExplorer(model="qwen-image", size="64x64", modes="full")

    def boom(*a, **k):
        raise RuntimeError("first line\nsecond line")

    monkeypatch.setattr("workbench.ui.decode.compare_stepwise", boom)
    assert e.run() is None
    assert e.status.bar.bar_style == "danger" and not e.button.disabled
    assert "RuntimeError: first line" in e.status.line.value and "second line" not in e.status.line.value
    assert e.status.details.selected_index is None and e.status.details.layout.display == ""


def test_explorer_runs_and_memory_is_never_negative(tmp_path, monkeypatch):
    from workbench.report import peak_bytes
    from workbench.ui import DecodeExplorer

    monkeypatch.setenv("WORKBENCH_PROGRESS_LOG", str(tmp_path / "progress.log"))

    e = DecodeExplorer(model="wan2.1", size="64x64x5", modes="full,tiled", tile_px=32, stride_px=24)
    c = e.run(raise_errors=True)
    assert set(c.results) == {"full", "tiled"} and "tiled" in c.quality
    assert all(peak_bytes(r) >= 0 for r in c.results.values())
    assert "done in" in e.status.line.value and e.status.bar.bar_style == "success"
    assert e.frame.max == 4 and e.frame.layout.display == ""
    assert "seam/int: mean |error| within a band" in c.table()
    log = (tmp_path / "progress.log").read_text().splitlines()  # what a headless run leaves to read
    assert any(": full (1/2)" in line for line in log) and any(": tiled (2/2)" in line for line in log)
    assert log[-1].endswith(": done"), log


def test_generation_labels(monkeypatch):
    from workbench.ui import GenerationPanel

    p = GenerationPanel("qwen-image", sp=1, steps=2)
    assert p.validate() == {}
    p.cfg.value, p.sp.value = 2, 1
    assert p.world_size == 2 and p.validate() == {}
    p.size.value = "100x100"
    assert "multiples" in p.validate()["size"]
    p.size.value, p.cfg.value = "", 1
    result = p.run(raise_errors=True)
    text = result.table()
    assert "cfg_parallel" not in text and "cfg 1: both branches" in text
    from workbench.ui import decode_line

    assert "None" not in decode_line(result)
