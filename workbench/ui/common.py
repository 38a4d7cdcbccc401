"""What every panel shares: figures shown as PNG, the status line with elapsed time, failures shown in one
line with the traceback in a collapsed box, validation messages next to their controls, worker pools kept
per (SP degree, device), and the comparison run one strategy at a time (so each shows in the status).

Nothing here needs a browser: a panel's `validate()` and `run()` work from a plain Python process (the
widgets are ipywidgets objects whatever shows them), which is how the tests drive them.
"""

from __future__ import annotations

import io
import os
import threading
import time
import traceback
from dataclasses import dataclass, field

__all__ = ["show", "figure_png", "Status", "Field", "Pools", "release_memory_task", "build_model_task",
           "memory_info_task", "compare_stepwise", "IMAGE_SIZES", "VIDEO_SIZES", "size_options", "check_size",
           "check_device", "check_tiles", "check_ranks", "size_text"]

IMAGE_SIZES = ["64x64", "64x96", "128x128", "256x256", "512x512", "768x768", "1024x1024", "480x832", "720x1280"]
VIDEO_SIZES = ["64x64x5", "64x64x9", "128x128x9", "256x256x17", "480x832x33", "480x832x81", "720x1280x81"]


def _display(*objs):
    from IPython.display import display

    display(*objs)


def figure_png(fig, dpi: int = 90) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def show(fig) -> None:
    """Display a Figure as PNG whatever the matplotlib backend (Agg in CI shows no figure by itself)."""
    from IPython.display import Image

    _display(Image(data=figure_png(fig)))


def size_text(size) -> str:
    h, w, f = size
    return f"{h}x{w}" + (f"x{f}" if f > 1 else "")


def size_options(video: bool) -> list[str]:
    return VIDEO_SIZES + IMAGE_SIZES if video else IMAGE_SIZES


# ------------------------------------------------------------------------------------------ validation


def check_size(preset, text: str):
    """(height, width, frames) for `text` on `preset`, or a ValueError with the reason (ModelError included)."""
    from ..models import latent_shape, parse_size

    size = parse_size(text.strip())
    latent_shape(preset, *size)
    return size


def check_device(device: str) -> None:
    from ..runtime import available_platforms

    have = available_platforms()
    if device not in have:
        raise ValueError(f"{device} is not available on this machine (it has {', '.join(have)})")


def check_tiles(scale: int, tile_px: int, stride_px: int) -> None:
    """stride <= tile and both multiples of the spatial ratio (what plan_tiles checks), before any decode."""
    if stride_px > tile_px:
        raise ValueError(f"stride ({stride_px} px) must be <= tile ({tile_px} px)")
    from ..parallel.vae.plan import plan_tiles

    plan_tiles((1, 1, 1), scale=scale, tile_px=tile_px, stride_px=stride_px)


def check_ranks(latent, world: int, modes, grid=None) -> str:
    """'' or a note on idle ranks; raises PlanError where a parallel mode cannot split the latent over `world`."""
    from ..parallel.vae.plan import grid_shape, plan_shards

    rows, cols = latent[-2], latent[-1]
    frames = latent[2] if len(latent) == 5 else 1
    if world > 1 and any(m in ("patch", "shard") for m in modes):
        plan = plan_shards((frames, rows, cols), scale=1, world_size=world, grid=grid)
        smallest = min(min(s.rows.size, s.cols.size) for s in plan.items)
        r, c = grid or grid_shape(world, rows, cols)
        if smallest < 2:
            return f"grid {r}x{c} over a {rows}x{cols} latent leaves blocks of {smallest} latent row(s)"
    return ""


def run_panel(panel, work, phases: int, pool: tuple | None, raise_errors: bool = False) -> bool:
    """What Run does in every panel: validate (invalid input runs nothing: the messages are beside the
    controls), disable the button, run `work()` with the status ticking through `phases`, show a failure as
    one line with the traceback collapsed and drop the pool `(world, device)` it ran on (None: `work` looks
    after its pool), and enable the button again. False when the input was refused."""
    if refused(panel, raise_errors):
        return False
    panel.button.disabled = True
    panel.error = None
    try:
        panel.status.start(phases)
        work()
        panel.status.done()
    except Exception as e:  # shown in the panel; the user fixes the input and runs again
        panel.error = e
        panel.status.fail(e)
        if pool is not None:
            panel._pools.drop(*pool)
        if raise_errors:
            raise
    finally:
        panel.button.disabled = False
    return True


def refused(panel, raise_errors: bool = False) -> bool:
    """Validate a panel: with errors, mark them beside their controls, say so in the status and run nothing
    (or raise, for scripted runs that asked to)."""
    errors = panel.validate()
    if not errors:
        return False
    panel.status.invalid(len(errors))
    if raise_errors:
        raise ValueError("; ".join(f"{k}: {v}" for k, v in errors.items()))
    return True


@dataclass
class Field:
    """A control with its message shown beside it (red when the value is invalid)."""

    control: object
    message: object = None

    def __post_init__(self):
        import ipywidgets as w

        self.message = w.HTML(value="", layout=w.Layout(margin="0 0 0 8px", max_width="420px"))
        self.message.add_class("wb-msg")
        self.box = w.HBox([self.control, self.message], layout=w.Layout(align_items="center", flex_flow="row wrap"))

    def set(self, error: str = "", note: str = "") -> None:
        import html

        if error:
            self.message.value = f"<span style='color:#c62828'>&#9888; {html.escape(error)}</span>"
        elif note:
            self.message.value = f"<span style='color:#8a6d00'>{html.escape(note)}</span>"
        else:
            self.message.value = ""


# ------------------------------------------------------------------------------------------------ status


class Status:
    """The progress bar and one status line: 'run 3 · starting 2 workers · 4 s', ticking once a second.

    `phase(text)` starts a phase; `done()` turns the bar green; `fail(exc)` red, with one line here and the
    traceback in the collapsed `details` box. A headless run (papermill) shows no widget: with
    WORKBENCH_PROGRESS_LOG=<file> set, every phase and the outcome are appended to that file, timestamped."""

    def __init__(self):
        import ipywidgets as w

        self.bar = w.IntProgress(value=0, min=0, max=1, layout=w.Layout(width="160px"))
        self.line = w.HTML(value="idle", layout=w.Layout(margin="0 0 0 8px"))
        self.line.add_class("wb-status")
        self.trace = w.Output()
        self.details = w.Accordion(children=[self.trace], selected_index=None, layout=w.Layout(display="none"))
        self.details.set_title(0, "details (traceback)")
        self.details.add_class("wb-details")
        self.box = w.VBox([w.HBox([self.bar, self.line], layout=w.Layout(align_items="center")), self.details])
        self.runs = 0
        self._t0 = self._p0 = 0.0
        self._text = "idle"
        self._stop = threading.Event()
        self._ticker = None

    def start(self, phases: int) -> None:
        self.runs += 1
        self.bar.max, self.bar.value, self.bar.bar_style = max(phases, 1), 0, "info"
        self.details.layout.display = "none"
        self.details.selected_index = None
        self.trace.clear_output()
        self._t0 = time.perf_counter()
        self._stop.clear()
        self._ticker = threading.Thread(target=self._tick, daemon=True)
        self._ticker.start()

    def phase(self, text: str, step: bool = True) -> None:
        if step and self._text != "idle" and self.bar.value < self.bar.max:
            self.bar.value += 1
        self._text, self._p0 = text, time.perf_counter()
        self._log(text)
        self._render()

    def _log(self, text: str) -> None:
        path = os.environ.get("WORKBENCH_PROGRESS_LOG")
        if path:
            with open(path, "a") as f:
                f.write(f"{time.strftime('%H:%M:%S')} run {self.runs} +{time.perf_counter() - self._t0:.1f} s: {text}\n")

    def _render(self, final: str | None = None) -> None:
        import html

        now = time.perf_counter()
        if final is not None:
            self.line.value = f"run {self.runs}: {final}"
        else:
            self.line.value = (f"run {self.runs}: {html.escape(self._text)} &middot; {now - self._p0:.0f} s "
                               f"(total {now - self._t0:.0f} s)")

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            self._render()

    def _finish(self):
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        self._text = "idle"
        return time.perf_counter() - self._t0

    def done(self, what: str = "done") -> None:
        elapsed = self._finish()
        self.bar.value, self.bar.bar_style = self.bar.max, "success"
        self._log(what)
        self._render(f"{what} in {elapsed:.1f} s")

    def invalid(self, n: int) -> None:
        self.runs += 1
        self.bar.value, self.bar.bar_style = 0, "warning"
        self.line.value = (f"run {self.runs}: <span style='color:#c62828'>invalid input: {n} field"
                           f"{'s' if n > 1 else ''} marked above; nothing ran</span>")

    def fail(self, error: BaseException) -> None:
        import html

        elapsed = self._finish()
        self.bar.bar_style = "danger"
        first = (str(error).strip().splitlines() or [""])[0]
        self._log(f"failed: {type(error).__name__}: {first}")
        what = html.escape(f"{type(error).__name__}: {first}"[:300])
        self.line.value = f"run {self.runs}: <span style='color:#c62828'>failed after {elapsed:.1f} s: {what}</span>"
        with self.trace:
            print("".join(traceback.format_exception(type(error), error, error.__traceback__)))
        self.details.layout.display = ""


# ------------------------------------------------------------------------------------------ pools, tasks


def release_memory_task(ctx=None) -> None:
    """Cluster task (or a local call): free what Python and the C allocator hold, so a CPU strategy's
    resident-set baseline does not carry the previous strategy's freed memory."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def build_model_task(ctx, job) -> None:
    """Cluster task: build (and cache) the job's VAE on every rank, so that phase shows on its own."""
    from ..runner import load_model

    load_model(job.on(ctx.device), ctx.device)


def memory_info_task(ctx) -> tuple[int, int]:
    """(total, available) bytes of this rank's device memory (CPU: the machine's RAM)."""
    import psutil
    import torch

    device = torch.device(ctx.device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return total, free
    if device.type == "npu":
        free, total = torch.npu.mem_get_info(device)
        return total, free
    vm = psutil.virtual_memory()
    return vm.total, vm.available


def on_ranks(runner, fn, *args) -> list:
    """`fn(ctx, *args)` on every rank of a Cluster, or once here for a LocalRunner."""
    from ..runner import Cluster

    if isinstance(runner, Cluster):
        return runner.run(fn, *args)
    return [fn(runner.ctx, *args)]


@dataclass
class Pools:
    """Runners by (world size, device), made on first use and kept: a Cluster, so that the notebook process
    never initialises an accelerator (one rank on a GPU is one worker too), and this process only for one
    rank on the CPU. A run that fails closes its pool (`drop`), so no worker outlives a failure."""

    pools: dict = field(default_factory=dict)

    def get(self, world: int, device: str, status: Status | None = None):
        from ..runner import Cluster, LocalRunner

        key = (world, device)
        if key not in self.pools:
            kind = device.split(":")[0]
            self.pools[key] = LocalRunner(device) if world == 1 and kind == "cpu" else Cluster(world, device=kind)
        runner = self.pools[key]
        if isinstance(runner, Cluster) and not runner.alive:
            if status is not None:
                status.phase(f"starting {world} workers on {device}")
            runner.start()
        return runner

    def drop(self, world: int, device: str) -> None:
        runner = self.pools.pop((world, device), None)
        if runner is not None:
            runner.close()

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()


def compare_stepwise(runner, job, modes, params: dict, status: Status | None = None):
    """`runner.compare(job, modes, **params)` one strategy at a time, the reference (`full`) first, each
    after the ranks released their freed memory: each strategy shows in the status with its elapsed time,
    and a CPU strategy's memory is its increase over the start of that strategy, whatever ran before."""
    phase = status.phase if status is not None else (lambda text, step=True: None)
    world = getattr(runner, "world_size", 1)
    phase(f"building the model on {world} rank{'s' if world > 1 else ''}")
    on_ranks(runner, build_model_task, job)
    merged = None
    order = ["full"] + [m for m in dict.fromkeys(modes) if m != "full"]
    for i, mode in enumerate(order):
        phase(f"{mode} ({i + 1}/{len(order)}){' on ' + str(world) + ' ranks' if world > 1 else ''}")
        on_ranks(runner, release_memory_task)
        c = runner.compare(job, [mode], reference=False, **params)
        if merged is None:
            merged = c
            continue
        merged.estimates.update(c.estimates)
        merged.skipped.update(c.skipped)
        for m, r in c.results.items():
            merged.add(m, r)
    return merged
