"""notebooks/03_pipeline.ipynb runs headless under papermill: tiny configs on two ranks (one on a one-GPU machine)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import DEVICE, NOTEBOOK_RANKS, notebook_outputs, papermill_engine

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "03_pipeline.ipynb"


@pytest.mark.slow
def test_notebook_runs_under_papermill(tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    import nbformat

    # the kernel (and the ranks it spawns) import this checkout's workbench
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("MPLBACKEND", "Agg")  # as CI sets it: the notebook must still show its figures inline
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel's pool keeps its rendezvous folder here (see below)
    params = dict(pipeline="glm-image", world_size=NOTEBOOK_RANKS, steps=2, tiny=True, device=DEVICE)
    out = tmp_path / "03_pipeline.out.ipynb"
    # shutdown_kernel="immediate": the kernel is killed once every cell has replied (its workers die with it), not
    # given up to 5 s to stop (2-3 s of waiting per run); the pool's folder, then never removed, is in tmp_path
    papermill.execute_notebook(str(NOTEBOOK), str(out), parameters=params, kernel_name="python3",
                               cwd=str(tmp_path), progress_bar=False, engine_name=papermill_engine(),
                               shutdown_kernel="immediate")
    nb = nbformat.read(out, as_version=4)
    outputs = notebook_outputs(nb)  # the cells' and the panel's Output widgets'
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/html", "") for o in outputs)
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    assert f"rank {NOTEBOOK_RANKS - 1} s" in text and "denoise" in text and "median denoising step" in text
    assert "decode: " in text and "None" not in text.split("decode: ")[1].splitlines()[0]
    assert images >= 3  # output, Gantt chart, memory timeline


def test_notebook_is_committed_without_outputs():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
