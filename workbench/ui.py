"""ipywidgets panels for the notebooks. The notebooks only create these and call `run()`.

    explorer = DecodeExplorer(model="qwen-image", size="512x512", modes="full,tiled", tiny=True)
    explorer            # the panel: model, mode, resolution, tile and stride, SP degree, Run
    explorer.run()      # what the Run button does; figures appear below the cell

A decode is slow, so nothing runs until Run is pressed (or `run()` is called). Runners (a worker pool
for SP > 1, this process otherwise) are kept per (SP degree, device) and reused across runs; `close()`
stops them. Figures are `matplotlib.figure.Figure` objects shown as PNG: pyplot is never used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .models import PRESETS, get_preset, parse_size
from .parallel.vae import STRATEGIES
from .report import Comparison
from .runner import DecodeJob, make_runner

__all__ = ["DecodeExplorer", "show", "show_comparison", "show_strategies"]


def _display(*objs):
    from IPython.display import display

    display(*objs)


def show(fig) -> None:
    """Display a Figure as PNG whatever the matplotlib backend (Agg in CI shows no figure by itself)."""
    import io

    from IPython.display import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    _display(Image(data=buffer.getvalue()))


def show_comparison(comparison: Comparison, frame: int = 0) -> None:
    """The table, then per strategy its picture with the plan and its seam heat map against full."""
    from IPython.display import HTML

    from . import viz

    _display(HTML(f"<pre>{comparison.table()}</pre>"))
    ref = comparison.reference.output if comparison.reference is not None else None
    for mode, result in comparison.results.items():
        if result.output is None:
            continue
        show(viz.plot_strategy(result, reference=ref if mode != "full" else None, frame=frame))


def show_strategies(comparison: Comparison) -> None:
    """Cost side by side: time per phase, peak memory per rank, the seam signature, memory timelines."""
    from . import viz
    from .metrics import error_map, seam_profile

    figs = [viz.plot_times(comparison.results), viz.plot_rank_peaks(comparison.results)]
    ref = comparison.reference
    profiles = {m: seam_profile(error_map(r.output, ref.output), r.plan)
                for m, r in comparison.results.items()
                if ref is not None and m != "full" and r.plan is not None and r.output is not None
                and r.output.shape == ref.output.shape}
    if profiles:
        figs.append(viz.plot_seam_profile(profiles))
    for result in comparison.results.values():
        if result.world_size > 1:
            figs.append(viz.plot_memory_timeline(result))
    for fig in figs:
        show(fig)


@dataclass
class _Pools:
    """Runners by (world size, device), made on first use and kept (a Cluster for world > 1)."""

    pools: dict = field(default_factory=dict)

    def get(self, world: int, device: str):
        key = (world, device)
        if key not in self.pools:
            self.pools[key] = make_runner(world, device)
        return self.pools[key]

    def close(self):
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()


class DecodeExplorer:
    """Model, mode(s), resolution, tile/stride, SP degree, Run: decode and show what it cost."""

    def __init__(self, model: str = "qwen-image", size: str = "512x512", modes="full,tiled", *, tiny: bool = True,
                 weights: str | None = None, tile_px: int = 256, stride_px: int = 192, sp: int = 1,
                 halo_latent: int = 1, dtype: str = "float32", device: str | None = None, seed: int = 0):
        import ipywidgets as w

        from .runtime import available_platforms

        get_preset(model)
        modes = modes.split(",") if isinstance(modes, str) else list(modes)
        self.weights = weights
        self.seed = seed
        self._pools = _Pools()
        self.comparison: Comparison | None = None
        style = {"description_width": "110px"}
        self.model = w.Dropdown(options=list(PRESETS), value=model, description="model", style=style)
        self.tiny = w.Checkbox(value=tiny, description="tiny config (CPU)", style=style)
        self.size = w.Text(value=size, description="size HxW[xF]", style=style)
        self.modes = w.SelectMultiple(options=list(STRATEGIES), value=tuple(modes), description="modes", rows=6,
                                      style=style)
        self.tile = w.IntSlider(value=tile_px, min=64, max=1024, step=32, description="tile px", style=style)
        self.stride = w.IntSlider(value=stride_px, min=32, max=1024, step=32, description="stride px", style=style)
        self.sp = w.IntSlider(value=sp, min=1, max=8, description="SP degree", style=style)
        self.halo = w.IntSlider(value=halo_latent, min=0, max=8, description="patch halo", style=style)
        self.dtype = w.Dropdown(options=["float32", "bfloat16", "float16"], value=dtype, description="dtype",
                                style=style)
        devices = available_platforms()  # only what this machine has, accelerator first
        self.device = w.Dropdown(options=devices, value=device or devices[0], description="device", style=style)
        self.button = w.Button(description="Run", button_style="primary", icon="play")
        self.progress = w.IntProgress(value=0, min=0, max=1, description="idle", style=style)
        self.output = w.Output()
        self.button.on_click(self._on_click)
        controls = w.VBox([self.model, self.tiny, self.size, self.modes, self.dtype, self.device])
        params = w.VBox([self.tile, self.stride, self.sp, self.halo, w.HBox([self.button, self.progress])])
        self.panel = w.VBox([w.HBox([controls, params]), self.output])

    def _ipython_display_(self):
        _display(self.panel)

    def job(self) -> DecodeJob:
        h, wd, f = parse_size(self.size.value)
        return DecodeJob(model=self.model.value, size=(h, wd, f), tiny=self.tiny.value, weights=self.weights,
                         dtype=self.dtype.value, device=self.device.value, seed=self.seed)

    def params(self) -> dict:
        return {"tile_px": self.tile.value, "stride_px": self.stride.value, "halo_latent": self.halo.value}

    def run(self, into=None) -> Comparison:
        """Decode with every selected mode and show the results (in `into`, an Output widget, or below)."""
        if into is None:
            return self._run()
        into.clear_output()
        with into:
            return self._run()

    def _on_click(self, _button) -> None:
        """The Run button: disabled while it runs; errors are shown in the panel, not raised into the widgets."""
        self.button.disabled = True
        try:
            self.run(into=self.output)
        except Exception as e:  # shown to the user, who fixes the input and runs again
            self.progress.bar_style, self.progress.description = "danger", "failed"
            with self.output:
                print(f"{type(e).__name__}: {e}")
        finally:
            self.button.disabled = False

    def _run(self) -> Comparison:
        modes = list(self.modes.value) or ["full"]
        job = self.job()
        world = self.sp.value
        self.progress.max, self.progress.value, self.progress.bar_style = 1, 0, "info"
        self.progress.description = f"{world} rank{'s' if world > 1 else ''}"
        runner = self._pools.get(world, self.device.value)
        self.comparison = runner.compare(job, modes, **self.params())
        self.progress.value = 1
        self.progress.bar_style, self.progress.description = "success", "done"
        show_comparison(self.comparison)
        show_strategies(self.comparison)
        return self.comparison

    def close(self) -> None:
        self._pools.close()
