"""What the tests share: the one test device, and a one-process decode whose output is on the CPU.

The device is chosen once, from WORKBENCH_TEST_DEVICE (default cpu): WORKBENCH_TEST_DEVICE=cuda runs every
single-process decode and every worker pool on CUDA. Outputs are moved to the CPU before they are compared,
so a reference and a pool's result always meet on one device.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

DEVICE = os.environ.get("WORKBENCH_TEST_DEVICE", "cpu")
if DEVICE.startswith("cuda"):
    # fp32 means fp32: TF32 convolutions and matmuls would put 1e-3 relative noise between any two
    # decodes that sum in different orders. The variable reaches the pool's workers too.
    os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def gpus() -> int:
    return torch.cuda.device_count() if DEVICE.startswith("cuda") else 0


def ranks_available(world: int) -> bool:
    """A pool of `world` ranks can run here: any number on the CPU, one rank per GPU on CUDA."""
    return not DEVICE.startswith("cuda") or world <= gpus()


# The notebooks run on two ranks where they can, else on one (one GPU): every notebook runs on every machine.
NOTEBOOK_RANKS = 2 if ranks_available(2) else 1


def run_local(job, mode: str, params: dict | None = None):
    """Decode `job` with `mode` in this process on the test device; the Result's output on the CPU. `params`
    may hold other modes' parameters too (one set serves a comparison): `mode` gets those it takes."""
    from workbench.runner import LocalRunner, split_params

    result = LocalRunner(DEVICE).decode(job, mode, **split_params(mode, params or {}))
    if result.output is not None:
        result.output = result.output.cpu()
    return result


def notebook_outputs(nb) -> list[dict]:
    """Every output of an executed notebook: the cells' own and those the panels drew into their Output
    widgets (kept in the notebook's widget state by nbclient)."""
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    for model in state.values():
        if model.get("model_name") == "OutputModel":
            outputs += model.get("state", {}).get("outputs", [])
    return outputs


def gone(pids, within_s: float = 10.0) -> bool:
    """Every process in `pids` has exited (zombies count as gone) within `within_s` seconds."""
    import time

    import psutil

    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids):
            return True
        time.sleep(0.1)
    return False


# script -> (the running child, the file it writes its outputs to, the file of its stdout and stderr)
_TRITON_CHILDREN: dict[str, tuple[subprocess.Popen, Path, Path]] = {}


def start_triton_script(script: str, out_dir: Path) -> None:
    """Start the child of run_triton_script(script) now, without waiting for it: conftest starts the children
    of the selected kernel tests at the session's start, so that these single-threaded interpreter runs (6-8 s
    each) use the second core while the first tests run, instead of being waited for one by one."""
    import importlib.util

    if script in _TRITON_CHILDREN or importlib.util.find_spec("triton") is None:
        return
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    path, log = out_dir / "outputs.pt", out_dir / "child.log"
    with open(log, "w") as f:
        child = subprocess.Popen([sys.executable, script, str(path)], env=env, stdout=f, stderr=subprocess.STDOUT)
    _TRITON_CHILDREN[script] = (child, path, log)


def stop_triton_scripts() -> None:
    """Kill the children that no test collected (a session stopped early)."""
    while _TRITON_CHILDREN:
        child, _, _ = _TRITON_CHILDREN.popitem()[1]
        child.kill()
        child.wait()


def run_triton_script(script: str, tmp_path_factory) -> dict:
    """Run a kernel test file as a script in a child process, which writes its Triton outputs to a file: on a
    GPU as is, elsewhere with TRITON_INTERPRET=1 (it must be set before triton is first imported, whatever this
    process imported already). Returns what the child saved. The child may have been started already
    (start_triton_script); else it starts now."""
    import pytest

    pytest.importorskip("triton")
    if script not in _TRITON_CHILDREN:
        start_triton_script(script, tmp_path_factory.mktemp("triton"))
    child, path, log = _TRITON_CHILDREN.pop(script)
    try:
        child.wait(timeout=600)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, log.read_text()[-4000:]
    return torch.load(path)


def papermill_engine() -> str:
    """The `workbench` papermill engine (workbench/runtime/papermill_engine.py), the one the README's commands
    name: registered here too, for runs where the package is on PYTHONPATH, not pip-installed."""
    from workbench.runtime.papermill_engine import register

    return register()
