"""The notebooks in a real browser: JupyterLab on 127.0.0.1, headless Chromium through Playwright.

Each notebook (a copy with tiny parameters) is opened, all its cells run, then its panel's Run button is clicked
(a real click in the page) with two or three settings: among them a video preset at SP 2 and one invalid input
(the SP sweep and GLM-Image run headless in tests/test_notebooks.py). After
each: the status says done (or, for the invalid input, the message is beside the control and nothing ran), the
button is enabled again, no output holds a traceback, and the panel's PNGs are decoded and not blank. Screenshots
of every run are kept under the test's tmp dir (its path is printed on failure).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.slow

# notebook -> (the panel's variable, its CSS class, the parameters the copy runs with, the settings to Run)
NOTEBOOKS = {
    "01_decode_explorer.ipynb": ("explorer", "wb-decode", dict(model="qwen-image", size="64x64", modes="full,tiled",
                                                               tile_px=32, stride_px=24, sp=1, device="cpu"), [
        ("video preset at SP 2", "explorer.model.value = 'wan2.1'; explorer.size.value = '64x64x5'; "
                                 "explorer.modes.value = ('full', 'tiled', 'shard'); explorer.sp.value = 2", None),
        ("invalid size", "explorer.size.value = '65x64'", "multiples of 8"),
    ]),
    "02_strategies.ipynb": ("comparer", "wb-compare", dict(model="qwen-image", size="64x64", world_size=2,
                                                           strategies="full,tiled,shard", tile_px=32, stride_px=24,
                                                           device="cpu"), [
        ("video preset at SP 2", "comparer.model.value = 'wan2.1'; comparer.size.value = '64x64x5'; "
                                 "comparer.modes.value = ('full', 'parallel_tiled', 'shard')", None),
        ("invalid stride", "comparer.stride.value = 48", "must be <= tile"),
    ]),
    "03_pipeline.ipynb": ("panel", "wb-generate", dict(pipeline="qwen-image", world_size=2, steps=2, size="64x64",
                                                       decode="shard", device="cpu"), [
        ("video pipeline at SP 2", "panel.pipeline.value = 'wan2.1'; panel.size.value = '64x64x5'; "
                                   "panel.sp.value = 2; panel.cfg.value = 1; panel.decode.value = 'shard'", None),
        ("CFG parallel", "panel.pipeline.value = 'qwen-image'; panel.size.value = '64x64'; panel.sp.value = 1; "
                         "panel.cfg.value = 2; panel.decode.value = 'tiled'", None),
        ("invalid size", "panel.size.value = '100x100'", "multiples of"),
    ]),
    "04_validation.ipynb": ("panel", "wb-validation-panel", dict(sp=2, image_size="64x64", video_size="64x64x5",
                                                                 device="cpu"), [
        ("two models", "panel.models.value = ('wan2.1', 'qwen-image')", None),
        ("glm-image at 64x96", "panel.models.value = ('glm-image',); panel.image_size.value = '64x96'", None),
        ("invalid size", "panel.image_size.value = '65x65'", "multiples of 8"),
    ]),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parameterized_copy(src: Path, dst: Path, parameters: dict) -> None:
    """The notebook with its parameters overridden as papermill does (a cell after the parameters cell)."""
    nb = json.loads(src.read_text())
    i = next(i for i, c in enumerate(nb["cells"]) if "parameters" in c.get("metadata", {}).get("tags", []))
    source = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
    nb["cells"].insert(i + 1, {"cell_type": "code", "execution_count": None, "metadata": {"tags": ["injected"]},
                               "outputs": [], "source": source})
    dst.write_text(json.dumps(nb))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium chromium-driver)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    pytest.importorskip("jupyterlab", reason="jupyterlab is not installed")
    pytest.importorskip("ipywidgets", reason="ipywidgets is not installed")
    base = tmp_path_factory.mktemp("lab")
    root, settings, workspaces = base / "root", base / "settings", base / "workspaces"
    for d in (root, workspaces, settings / "@jupyterlab" / "notebook-extension"):
        d.mkdir(parents=True)
    # every cell stays in the DOM (no windowing), so the panels' images can be read from the page
    (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none"}))
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    for name, (_, _, params, _) in NOTEBOOKS.items():
        parameterized_copy(ROOT / "notebooks" / name, root / name, params)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "MPLBACKEND": "Agg"}
    log = open(base / "jupyter.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         "--IdentityProvider.token=", "--ServerApp.password=", f"--ServerApp.root_dir={root}",
         f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={workspaces}",
         "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=", "--ServerApp.disable_check_xsrf=True"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"jupyter lab exited: {(base / 'jupyter.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield url, base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


KERNEL = "window.jupyterapp.shell.currentWidget.sessionContext.session.kernel"

EXECUTE = f"""async (code) => {{
    const future = {KERNEL}.requestExecute({{code, silent: false, store_history: false}});
    const reply = await future.done;
    return reply.content.status;
}}"""

STATUS = """(sel) => { const e = document.querySelector(sel + ' .wb-status'); return e ? e.textContent : ''; }"""

PAGE_TEXT = """() => {
    const nb = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
    const copy = nb.cloneNode(true);
    copy.querySelectorAll('.wb-details').forEach(e => e.remove());   // the collapsed traceback box
    return copy.textContent;
}"""


def pngs(page, panel: str) -> list:
    """The panel's images, decoded from their data URLs, as numpy arrays."""
    import numpy as np
    from PIL import Image

    out = []
    for src in page.eval_on_selector_all(f".{panel} img", "els => els.map(e => e.src)"):
        assert src.startswith("data:image/png;base64,"), src[:60]
        out.append(np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB")))
    return out


def wait_run(page, panel: str, n: int, timeout_s: float = 150) -> str:
    """Wait until the panel's status reports the end of run `n`; return the status line."""
    page.wait_for_function(
        f"""() => {{ const e = document.querySelector('.{panel} .wb-status');
            if (!e) return false; const t = e.textContent;
            return t.startsWith('run {n}:') && /done in|failed after|invalid input/.test(t); }}""",
        timeout=timeout_s * 1000)
    return page.evaluate(STATUS, f".{panel}")


def check_page(page, panel: str, shots: Path, tag: str, expect_images: bool = True) -> None:
    """No traceback, Run enabled, and the panel's images not blank (decoded pictures, where the panel shows
    any, with thousands of colours: the validation panel draws bar charts only)."""
    import numpy as np

    page.locator(f".{panel}").screenshot(path=str(shots / f"{tag}.png"))
    text = page.evaluate(PAGE_TEXT)
    assert "Traceback" not in text, f"{tag}: an output holds a traceback"
    assert page.locator(f".{panel} .wb-run").is_enabled(), f"{tag}: the Run button stayed disabled"
    if expect_images:
        images = pngs(page, panel)
        assert images, f"{tag}: no image in the panel"
        for img in images:
            assert img.std() > 5, f"{tag}: a blank image ({img.shape})"
        # the decoded pictures are random texture: thousands of colours (a blank axes has a few dozen)
        colours = max(len(np.unique(img.reshape(-1, 3), axis=0)) for img in images)
        assert colours > 1000 or panel == "wb-validation-panel", f"{tag}: no picture with content ({colours} colours at most)"


@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_notebook_in_chromium(lab, browser, name, tmp_path):
    url, base = lab
    var, panel, _, settings = NOTEBOOKS[name]
    shots = base / "screenshots"
    shots.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1500, "height": 2200})
    stem = name.split(".")[0]
    try:
        page.goto(f"{url}/lab/tree/{name}?reset", wait_until="domcontentloaded", timeout=90_000)
        page.wait_for_function(f"() => {{ try {{ return {KERNEL}.connectionStatus === 'connected' && "
                               f"{KERNEL}.status === 'idle'; }} catch (e) {{ return false; }} }}", timeout=90_000)
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        page.wait_for_selector(f".{panel} .wb-run", timeout=90_000)
        line = wait_run(page, panel, 1, timeout_s=240)
        assert "done in" in line, line
        page.wait_for_function(f"() => {KERNEL}.status === 'idle'", timeout=60_000)
        check_page(page, panel, shots, f"{stem}-0-parameters")
        for i, (what, code, invalid) in enumerate(settings, start=2):
            assert page.evaluate(EXECUTE, code) == "ok", f"{what}: setting the widgets failed"
            button = page.locator(f".{panel} .wb-run")
            button.click()  # a real click on the button in the page
            line = wait_run(page, panel, i)
            tag = f"{stem}-{i - 1}-{what.replace(' ', '_')}"
            if invalid:
                assert "invalid input" in line, f"{what}: {line}"
                messages = page.eval_on_selector_all(f".{panel} .wb-msg", "els => els.map(e => e.textContent)")
                assert any(invalid in m for m in messages), f"{what}: no message {invalid!r} in {messages}"
                check_page(page, panel, shots, tag, expect_images=False)
            else:
                assert "done in" in line, f"{what}: {line}"
                check_page(page, panel, shots, tag)
        page.evaluate(EXECUTE, f"{var}.close()")
        # The kernel, idle now, is left to the server, which shuts every kernel down at once when the module's
        # tests are done (`lab`): one by one here, each shutdown cost 2.6 s of waiting.
    except BaseException:
        path = shots / f"{stem}-FAILED.png"
        page.screenshot(path=str(path), full_page=True)
        print(f"screenshots kept in {shots} (failure: {path})")
        raise
    finally:
        page.close()
