"""Every notebook runs headless under papermill with tiny presets; sources are committed clean."""

import json
import os
from pathlib import Path

import pytest
from helpers import DEVICE, NOTEBOOK_RANKS, notebook_outputs, papermill_engine

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

pytestmark = pytest.mark.slow
# A cell running longer is interrupted (SIGINT), so the failure shows the kernel's traceback: where it was. A
# cell whose reply papermill's plain engine did not see until this limit (its work done in 21-43 s, H100 and
# H200 hosts) is why the notebooks run on the `workbench` engine, as the README's commands do.
CELL_TIMEOUT_S = 170


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_sources_have_parameters_and_no_outputs(path):
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in cells), "papermill needs a parameters cell"
    assert not any(c.get("outputs") for c in cells if c["cell_type"] == "code"), "commit notebooks without outputs"


def run(name, tmp_path, cell_timeout_s=CELL_TIMEOUT_S, **parameters):
    import nbformat
    import papermill

    out = tmp_path / name
    progress = tmp_path / "progress.log"  # the panel's phases, timestamped (the kernel inherits the variable)
    os.environ["WORKBENCH_PROGRESS_LOG"] = str(progress)
    tmpdir = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp_path)  # the kernel's pool keeps its rendezvous folder here (see below)
    try:
        # shutdown_kernel="immediate": once every cell has replied, the kernel is killed instead of given up to
        # 5 s to stop (its pool's workers follow it: they die with their parent). What is checked is the
        # executed notebook; a graceful stop cost 2-3 s of each run, waiting. The pool's folder, never
        # removed then, is in tmp_path.
        papermill.execute_notebook(str(NOTEBOOKS / name), str(out), parameters=parameters, kernel_name="python3",
                                   progress_bar=False, cwd=str(tmp_path), execution_timeout=cell_timeout_s,
                                   interrupt_on_timeout=True, engine_name=papermill_engine(), shutdown_kernel="immediate")
    except papermill.PapermillExecutionError as e:  # the kernel's own traceback, not papermill's
        phases = progress.read_text() if progress.exists() else "(no phase logged)\n"
        pytest.fail(f"{name}: cell {e.exec_count}: {e.ename}: {e.evalue}\nthe panel's phases:\n{phases}"
                    + "\n".join(e.traceback)[-6000:], pytrace=False)
    finally:
        os.environ.pop("WORKBENCH_PROGRESS_LOG", None)
        if tmpdir is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = tmpdir
        if (trace := os.environ.get("WORKBENCH_TEST_TRACE")) and progress.exists():  # where a slow run went
            with open(trace, "a") as f:
                f.write(f"{name} {parameters}: the panel's phases\n{progress.read_text()}")
    nb = nbformat.read(out, as_version=4)
    # a cell interrupted at the limit may still have replied "ok": its duration says it waited
    waited = [i for i, c in enumerate(nb.cells) if c.get("metadata", {}).get("papermill", {}).get("duration", 0)
              >= cell_timeout_s]
    assert not waited, f"{name}: cell(s) {waited} ran into the {cell_timeout_s} s limit; the panel's phases:\n" \
                       + (progress.read_text() if progress.exists() else "(none)")
    outputs = notebook_outputs(nb)  # the cells' and the panel's Output widgets'
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert not any("Traceback" in str(o) for o in outputs)
    return outputs


def images(outputs):
    return sum("image/png" in o.get("data", {}) for o in outputs)


def test_decode_explorer_runs_headless(tmp_path):
    outputs = run("01_decode_explorer.ipynb", tmp_path, model="wan2.1", size="64x64x5", modes="full,tiled,shard",
                  sp=NOTEBOOK_RANKS, tile_px=32, stride_px=24, device=DEVICE)
    tables = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("wan2.1 (tiny) 64x64x5" in t and "shard" in t for t in tables)
    assert images(outputs) >= 5  # three strategies' pictures and seam maps, time and memory plots


def test_strategies_notebook_runs_headless(tmp_path):
    outputs = run("02_strategies.ipynb", tmp_path, model="glm-image", size="64x96", world_size=NOTEBOOK_RANKS, tile_px=32,
                  stride_px=24, device=DEVICE)
    table = next(o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {}))
    for mode in ["full", "tiled", "parallel_tiled", "patch", "shard", "auto->"]:
        assert mode in table
    assert images(outputs) >= 10


def test_strategies_notebook_sweeps_the_sp_degree(tmp_path):
    outputs = run("02_strategies.ipynb", tmp_path, model="qwen-image", size="64x64", world_size=NOTEBOOK_RANKS,
                  tile_px=32, stride_px=24, strategies="full,tiled,shard", sweep="SP degree",
                  sweep_values=",".join(map(str, range(1, NOTEBOOK_RANKS + 1))), device=DEVICE)
    tables = "".join(o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {}))
    assert all(f"SP degree = {sp}" in tables for sp in range(1, NOTEBOOK_RANKS + 1))
    assert images(outputs) >= 6  # three pictures, the sweep plot, time and memory


def test_validation_notebook_runs_headless(tmp_path):
    outputs = run("04_validation.ipynb", tmp_path, sp=NOTEBOOK_RANKS, image_size="64x64", video_size="64x64x5", device=DEVICE)
    text = "".join(o.get("text", "") for o in outputs)
    for model in ["wan2.1", "wan2.2-a14b", "qwen-image", "qwen-image-edit", "glm-image"]:
        assert model in text
    assert "remaining at peak" in text and "time change" in text
    assert images(outputs) >= 1
