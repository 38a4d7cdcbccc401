"""Notebook 01's panel: decode one seeded latent with the chosen strategies and look at each result.

    explorer = DecodeExplorer(model="wan2.1", size="64x64x5", modes="full,tiled,shard", sp=2)
    explorer            # the panel; Run decodes
    explorer.run()      # what Run does (results appear in the panel)
"""

from __future__ import annotations

from ..models import PRESETS, get_preset, latent_shape
from ..models.bundled import PHOTOS
from ..models.presets import is_local_folder
from ..parallel.vae import PARALLEL, STRATEGIES
from ..report import Comparison
from .common import (
    Field,
    Pools,
    Status,
    check_device,
    check_ranks,
    check_size,
    check_tiles,
    compare_stepwise,
    run_panel,
    show,
    size_options,
)

__all__ = ["DecodeExplorer", "show_comparison", "show_strategies", "WEIGHT_SOURCES"]

# Where the VAE's weights come from: name -> function(panel) giving DecodeJob.weights.
WEIGHT_SOURCES = {
    "trained (tiny)": lambda panel: "trained",
    "random (seeded)": lambda panel: "random",
    "local folder": lambda panel: panel.weights_path.value.strip() or None,
}
RANDOM_LATENTS = "(random latents)"  # the picture dropdown's entry for seeded random latents

TILED = ("tiled", "parallel_tiled", "auto")


def show_comparison(comparison: Comparison, frame: int = 0) -> None:
    """The table, the input picture (if any), then per strategy its picture with the plan and its seam heat map."""
    from IPython.display import HTML, display

    from .. import viz

    display(HTML(f"<pre>{comparison.table()}</pre>"))
    if comparison.job.image is not None:
        show(viz.plot_input(comparison.job, frame))
    ref = comparison.reference.output if comparison.reference is not None else None
    for mode, result in comparison.results.items():
        if result.output is None:
            continue
        show(viz.plot_strategy(result, reference=ref if mode != "full" else None, frame=frame))


def cost_figures(comparison: Comparison) -> list:
    """Time per phase, peak memory per rank, the seam signature, the memory timelines of parallel modes."""
    from .. import viz
    from ..metrics import error_map, seam_profile

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
    return figs


def show_strategies(comparison: Comparison) -> None:
    """Cost side by side: time per phase, peak memory per rank, the seam signature, memory timelines."""
    for fig in cost_figures(comparison):
        show(fig)


def parse_halo(text: str) -> int | None:
    """None for 'auto' (SGLang's halo: half the tile overlap), else latent rows >= 0."""
    text = (text or "").strip().lower()
    if text in ("", "auto"):
        return None
    if not text.isdigit():
        raise ValueError(f"patch halo must be 'auto' or latent rows >= 0, got {text!r}")
    return int(text)


def parse_grid(text: str, world: int):
    """None for 'auto', else (rows, cols) from 'RxC' with rows * cols == world."""
    text = (text or "").strip().lower()
    if text in ("", "auto"):
        return None
    try:
        r, c = (int(v) for v in text.split("x"))
    except ValueError:
        raise ValueError(f"grid must be 'auto' or RxC (e.g. 1x2), got {text!r}") from None
    if r * c != world:
        raise ValueError(f"grid {r}x{c} needs SP degree {r * c}, not {world}")
    return r, c


class DecodeExplorer:
    """Preset, resolution, strategies, tile/stride/halo/grid, dtype, device, weights, seed, SP degree, Run."""

    panel_class = "wb-decode"

    def __init__(self, model: str = "qwen-image", size: str = "512x512", modes="full,tiled", *, tiny: bool = True,
                 weights: str | None = None, image: str | None = "chelsea", tile_px: int = 256, stride_px: int = 192,
                 sp: int = 1,
                 halo_latent: int | None = None, grid: str = "auto", dtype: str = "float32", device: str | None = None,
                 seed: int = 0):
        import ipywidgets as w

        from ..runtime import available_platforms

        get_preset(model)
        modes = modes.split(",") if isinstance(modes, str) else list(modes)
        self._pools = Pools()
        self.comparison: Comparison | None = None
        self.error: BaseException | None = None
        style = {"description_width": "96px"}
        wide = w.Layout(width="300px")
        self.model = w.Dropdown(options=list(PRESETS), value=model, description="preset", style=style, layout=wide)
        self.tiny = w.Checkbox(value=tiny, description="tiny config (CPU friendly)", style=style, indent=True)
        self.size = w.Combobox(value=size, options=size_options(get_preset(model).is_video), ensure_option=False,
                               description="resolution", placeholder="HxW or HxWxF", style=style, layout=wide)
        self.modes = w.SelectMultiple(options=list(STRATEGIES), value=tuple(modes), description="strategies",
                                      rows=len(STRATEGIES), style=style, layout=wide)
        self.sp = w.BoundedIntText(value=sp, min=1, max=64, description="SP degree", style=style,
                                   layout=w.Layout(width="230px"))
        small = w.Layout(width="230px")
        self.tile = w.BoundedIntText(value=tile_px, min=8, max=8192, step=8, description="tile px", style=style,
                                     layout=small)
        self.stride = w.BoundedIntText(value=stride_px, min=8, max=8192, step=8, description="stride px",
                                       style=style, layout=small)
        self.halo = w.Text(value="auto" if halo_latent is None else str(halo_latent), description="patch halo",
                           placeholder="auto (SGLang's) or latent rows", style=style, layout=small)
        self.grid = w.Text(value=grid, description="grid RxC", placeholder="auto or 1x2", style=style, layout=small)
        self.dtype = w.Dropdown(options=["float32", "bfloat16", "float16"], value=dtype, description="dtype",
                                style=style, layout=small)
        devices = available_platforms()  # only what this machine has, accelerator first
        device = device or devices[0]
        self.device = w.Dropdown(options=devices if device in devices else [*devices, device], value=device,
                                 description="device", style=style, layout=small)
        source = {None: "trained (tiny)" if tiny else "random (seeded)", "trained": "trained (tiny)",
                  "random": "random (seeded)"}.get(weights, "local folder")
        self.weights = w.Dropdown(options=list(WEIGHT_SOURCES), value=source, description="weights", style=style,
                                  layout=wide)
        folder = weights if source == "local folder" else ""
        self.weights_path = w.Text(value=folder, description="folder", placeholder="/path/to/diffusers/vae",
                                   style=style, layout=wide)
        pictures = [RANDOM_LATENTS, *PHOTOS] + ([image] if image and image not in PHOTOS else [])
        self.image = w.Dropdown(options=pictures, value=image or RANDOM_LATENTS, description="picture", style=style,
                                layout=wide, tooltip="a bundled photo through the encoder, or seeded random latents")
        self.seed = w.IntText(value=seed, description="seed", style=style, layout=small)
        self.frame = w.IntSlider(value=0, min=0, max=0, description="frame", style=style, continuous_update=False,
                                 layout=w.Layout(width="420px", display="none"))
        self.button = w.Button(description="Run", button_style="primary", icon="play", tooltip="decode")
        self.button.add_class("wb-run")
        self.status = Status()
        self.out_table, self.out_pictures, self.out_costs = w.Output(), w.Output(), w.Output()
        self.out_table.add_class("wb-table")
        self.fields = {name: Field(getattr(self, name)) for name in
                       ("model", "size", "modes", "sp", "tile", "stride", "halo", "grid", "device", "weights",
                        "weights_path", "image")}
        self.button.on_click(self._on_click)
        self.frame.observe(lambda change: self._draw_pictures(), names="value")
        self.model.observe(self._on_model, names="value")
        for name in ("model", "tiny", "size", "modes", "sp", "tile", "stride", "halo", "grid", "device",
                     "weights", "weights_path", "image"):
            getattr(self, name).observe(lambda change: self.validate(), names="value")
        self.panel = self._layout()
        self.panel.add_class(self.panel_class)
        self.validate()

    # ------------------------------------------------------------------------------------------ layout

    def _columns(self):
        import ipywidgets as w

        f = self.fields
        left = [f["model"].box, self.tiny, f["size"].box, f["modes"].box, self.dtype, f["device"].box,
                f["weights"].box, f["weights_path"].box, f["image"].box, self.seed]
        right = [f["sp"].box, f["tile"].box, f["stride"].box, f["halo"].box, f["grid"].box]
        return w.VBox(left), w.VBox(right)

    def _layout(self):
        import ipywidgets as w

        column = w.Layout(flex="1 1 460px", min_width="360px")
        left, right = self._columns()
        left.layout, right.layout = column, w.Layout(flex="1 1 360px", min_width="300px")
        controls = w.HBox([left, right], layout=w.Layout(flex_flow="row wrap", width="100%"))
        run = w.HBox([self.button, self.status.box], layout=w.Layout(align_items="flex-start", flex_flow="row wrap"))
        return w.VBox([controls, run, self.out_table, self.frame, self.out_pictures, self.out_costs],
                      layout=w.Layout(width="100%"))

    def _ipython_display_(self):
        from IPython.display import display

        display(self.panel)

    def _on_model(self, change) -> None:
        self.size.options = size_options(get_preset(change["new"]).is_video)

    # -------------------------------------------------------------------------------------- validation

    def job(self):
        from ..runner import DecodeJob
        from .common import check_size

        weights = WEIGHT_SOURCES[self.weights.value](self)
        local = is_local_folder(weights)
        if weights == "trained" and not self.tiny.value:
            raise ValueError("weights: trained weights exist for the tiny presets only; tick 'tiny config' or "
                             "choose random or a local folder")
        image = None if self.image.value == RANDOM_LATENTS else self.image.value
        return DecodeJob(model=self.model.value, size=check_size(self.model.value, self.size.value),
                         tiny=self.tiny.value and not local, weights=weights, dtype=self.dtype.value,
                         device=self.device.value, seed=self.seed.value, image=image)

    def selected_modes(self) -> list[str]:
        return list(self.modes.value)

    def params(self) -> dict:
        return {"tile_px": self.tile.value, "stride_px": self.stride.value, "halo_latent": parse_halo(self.halo.value),
                "grid": parse_grid(self.grid.value, self.sp.value)}

    def _check(self, world: int, size_text: str) -> dict[str, str]:
        """Field name -> message for what is wrong (empty when every input is fine); notes go beside."""
        import os

        errors, notes = {}, {}
        preset = get_preset(self.model.value)
        modes = self.selected_modes()
        if not modes:
            errors["modes"] = "select at least one strategy"
        latent = None
        try:
            size = check_size(preset, size_text)
            latent = latent_shape(preset, *size)
        except ValueError as e:
            errors["size"] = str(e)
        if any(m in TILED for m in modes):
            try:
                check_tiles(preset.spatial_ratio, self.tile.value, self.stride.value)
            except ValueError as e:
                errors["stride" if self.stride.value > self.tile.value else "tile"] = str(e)
        try:
            parse_halo(self.halo.value)
        except ValueError as e:
            errors["halo"] = str(e)
        grid = None
        try:
            grid = parse_grid(self.grid.value, world)
        except ValueError as e:
            errors["grid"] = str(e)
        if latent is not None and "grid" not in errors:
            try:
                note = check_ranks(latent, world, modes, grid)
                if note:
                    notes["sp"] = note
            except ValueError as e:
                errors["sp"] = str(e)
        if world > 1 and not any(m in PARALLEL or m == "auto" for m in modes):
            notes["sp"] = f"no parallel strategy selected: {', '.join(modes)} run on rank 0 alone"
        try:
            check_device(self.device.value)
        except ValueError as e:
            errors["device"] = str(e)
        if self.weights.value == "local folder":
            path = self.weights_path.value.strip()
            if not path:
                errors["weights_path"] = "give the path of a local diffusers VAE folder"
            elif not os.path.isdir(path):
                errors["weights_path"] = f"no folder at {path}"
        if self.weights.value == "trained (tiny)" and not self.tiny.value:
            errors["weights"] = "trained weights exist for the tiny configs only: tick 'tiny config'"
        self._notes = notes
        return errors

    def validate(self) -> dict[str, str]:
        """Check every input before anything runs; each message is shown beside its control."""
        errors = self._check(self.sp.value, self.size.value)
        for name, f in self.fields.items():
            f.set(errors.get(name, ""), self._notes.get(name, ""))
        return errors

    # ---------------------------------------------------------------------------------------------- run

    def _on_click(self, _button) -> None:
        self.run()

    def run(self, raise_errors: bool = False):
        """What Run does: validate, then decode with every selected strategy and draw the results in the
        panel. Invalid input runs nothing (the messages are beside the controls); a failure shows one line,
        the traceback in the collapsed details box, and closes the pool it ran on."""
        if not run_panel(self, self._run, self.phases(), (self.sp.value, self.device.value), raise_errors):
            return None
        return self.result()

    def result(self):
        return self.comparison

    def phases(self) -> int:
        return len(set(self.selected_modes()) | {"full"}) + 3

    def _run(self) -> None:
        world = self.sp.value
        runner = self._pools.get(world, self.device.value, self.status)
        for out in (self.out_table, self.out_pictures, self.out_costs):
            out.clear_output()
        self.comparison = compare_stepwise(runner, self.job(), self.selected_modes(), self.params(), self.status)
        self.status.phase("drawing the figures")
        self._draw()

    def _draw(self) -> None:
        from IPython.display import HTML, display

        c = self.comparison
        with self.out_table:
            for text in self._tables():
                display(HTML(f"<pre>{text}</pre>"))
        frames = max((r.output.shape[2] for r in c.results.values() if r.output is not None and r.output.dim() == 5),
                     default=1)
        self.frame.max = max(frames - 1, 0)
        self.frame.value = min(self.frame.value, self.frame.max)
        self.frame.layout.display = "" if frames > 1 else "none"
        self._draw_pictures()
        with self.out_costs:
            for fig in self._cost_figures():
                show(fig)

    def _tables(self) -> list[str]:
        return [self.comparison.table()]

    def _cost_figures(self) -> list:
        return cost_figures(self.comparison)

    def _draw_pictures(self) -> None:
        from .. import viz

        c = self.comparison
        if c is None:
            return
        self.out_pictures.clear_output(wait=True)
        ref = c.reference.output if c.reference is not None else None
        with self.out_pictures:
            if c.job.image is not None:
                show(viz.plot_input(c.job, self.frame.value))
            for mode, result in c.results.items():
                if result.output is not None:
                    show(viz.plot_strategy(result, reference=ref if mode != "full" else None, frame=self.frame.value))

    def close(self) -> None:
        self._pools.close()
