"""Notebook 03's panel: a whole generation across ranks, its stage table, Gantt chart and memory.

    panel = GenerationPanel(pipeline="wan2.1", sp=2, steps=2)
    panel           # the panel
    panel.run()     # what Run does: make_runner(sp * cfg, device).generate(pipeline, ...)
"""

from __future__ import annotations

from ..models import SPECS, get_preset, get_spec, latent_shape
from ..parallel.vae import STRATEGIES
from .common import (
    Field,
    Pools,
    Status,
    check_device,
    check_ranks,
    check_size,
    run_panel,
    show,
    size_options,
    size_text,
)

__all__ = ["GenerationPanel", "decode_line"]


def decode_line(result) -> str:
    """'decode: auto -> shard (why)', 'decode: shard', or 'decode: not run': never 'None'."""
    d = result.decode
    if d is None:
        return f"decode: {result.options.decode} (no decode result recorded)"
    text = f"decode: {d.strategy}"
    if d.choice:
        text += f" -> {d.choice}"
    if d.reason:
        text += f" ({d.reason})"
    if d.time_s is not None:
        text += f", {d.time_s:.3f} s on {d.world_size} rank{'s' if d.world_size > 1 else ''}"
    return text


class GenerationPanel:
    """Pipeline, resolution, SP degree, CFG degree, attention, decode strategy, steps, dtype, device, Run."""

    panel_class = "wb-generate"

    def __init__(self, pipeline: str = "qwen-image", size: str = "", *, sp: int = 2, cfg: int = 1,
                 attention: str = "ulysses", decode: str = "auto", steps: int = 4, tiny: bool = True,
                 prompt: str = 'a lighthouse on a cliff at sunset, "HELLO" painted on its wall', seed: int = 0,
                 dtype: str = "float32", device: str | None = None, fused: bool = False):
        import ipywidgets as w

        from ..parallel.dit import ATTENTION_METHODS
        from ..runtime import available_platforms

        spec = get_spec(pipeline)
        self._pools = Pools()
        self.result = None
        self.error: BaseException | None = None
        style = {"description_width": "96px"}
        wide, small = w.Layout(width="300px"), w.Layout(width="230px")
        self.pipeline = w.Dropdown(options=list(SPECS), value=spec.name, description="pipeline", style=style,
                                   layout=wide)
        self.size = w.Combobox(value=size or size_text(spec.tiny_size if tiny else spec.default_size),
                               options=size_options(spec.is_video), ensure_option=False, description="resolution",
                               placeholder="HxW or HxWxF", style=style, layout=wide)
        self.tiny = w.Checkbox(value=tiny, description="tiny configs (CPU friendly)", style=style)
        self.prompt = w.Text(value=prompt, description="prompt", style=style, layout=w.Layout(width="460px"))
        self.steps = w.BoundedIntText(value=steps, min=1, max=200, description="steps", style=style, layout=small)
        self.seed = w.IntText(value=seed, description="seed", style=style, layout=small)
        self.sp = w.BoundedIntText(value=sp, min=1, max=64, description="SP degree", style=style, layout=small)
        self.cfg = w.ToggleButtons(options=[1, 2], value=cfg, description="CFG degree", style={**style,
                                   "button_width": "48px"}, tooltips=["both branches on every rank",
                                                                      "branches on two rank groups"])
        self.attention = w.Dropdown(options=list(ATTENTION_METHODS), value=attention, description="attention",
                                    style=style, layout=small)
        self.decode = w.Dropdown(options=list(STRATEGIES), value=decode, description="decode", style=style,
                                 layout=small)
        self.dtype = w.Dropdown(options=["float32", "bfloat16", "float16"], value=dtype, description="dtype",
                                style=style, layout=small)
        devices = available_platforms()
        device = device or devices[0]
        self.device = w.Dropdown(options=devices if device in devices else [*devices, device], value=device,
                                 description="device", style=style, layout=small)
        self.fused = w.Checkbox(value=fused, description="fused modulation kernels", style=style)
        self.world = w.HTML()
        self.button = w.Button(description="Run", button_style="primary", icon="play", tooltip="generate")
        self.button.add_class("wb-run")
        self.status = Status()
        self.out_table, self.out_image, self.out_timeline = w.Output(), w.Output(), w.Output()
        self.out_table.add_class("wb-table")
        self.fields = {n: Field(getattr(self, n)) for n in ("pipeline", "size", "sp", "cfg", "decode", "device")}
        self.button.on_click(lambda _b: self.run())
        self.pipeline.observe(self._on_pipeline, names="value")
        for name in ("pipeline", "size", "sp", "cfg", "decode", "device", "tiny"):
            getattr(self, name).observe(lambda change: self.validate(), names="value")
        f = self.fields
        column = w.Layout(flex="1 1 460px", min_width="360px")
        left = w.VBox([f["pipeline"].box, self.tiny, f["size"].box, self.prompt, self.steps, self.seed],
                      layout=column)
        right = w.VBox([f["sp"].box, f["cfg"].box, self.world, self.attention, f["decode"].box, self.dtype,
                        f["device"].box, self.fused], layout=w.Layout(flex="1 1 360px", min_width="300px"))
        run = w.HBox([self.button, self.status.box], layout=w.Layout(align_items="flex-start", flex_flow="row wrap"))
        self.panel = w.VBox([w.HBox([left, right], layout=w.Layout(flex_flow="row wrap", width="100%")), run,
                             self.out_table, self.out_image, self.out_timeline], layout=w.Layout(width="100%"))
        self.panel.add_class(self.panel_class)
        self.validate()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.panel)

    def _on_pipeline(self, change) -> None:
        spec = get_spec(change["new"])
        self.size.options = size_options(spec.is_video)
        self.size.value = size_text(spec.tiny_size if self.tiny.value else spec.default_size)

    @property
    def world_size(self) -> int:
        return self.sp.value * self.cfg.value

    def kwargs(self) -> dict:
        """The keywords of `runner.generate(pipeline, **kwargs)` (workbench.pipeline.make_job's)."""
        return dict(tiny=self.tiny.value, steps=self.steps.value, size=self.size.value.strip() or None,
                    decode=self.decode.value, prompt=self.prompt.value, seed=self.seed.value,
                    device=self.device.value, dtype=self.dtype.value, attention=self.attention.value,
                    fused=self.fused.value, sp=self.sp.value, cfg=self.cfg.value)

    def validate(self) -> dict[str, str]:
        from ..parallel.dims import ParallelDims
        from ..pipeline.run import make_job

        errors, notes = {}, {}
        spec = get_spec(self.pipeline.value)
        world = self.world_size
        self.world.value = (f"<span style='margin-left:100px'>{world} rank{'s' if world > 1 else ''} "
                            f"(SP {self.sp.value} x CFG {self.cfg.value})</span>")
        latent = None
        try:
            size = check_size(spec.vae, self.size.value) if self.size.value.strip() else spec.tiny_size
            latent = latent_shape(get_preset(spec.vae), *size)
        except ValueError as e:
            errors["size"] = str(e)
        try:
            ParallelDims(world, sp=self.sp.value, cfg=self.cfg.value)
        except ValueError as e:
            errors["sp"] = str(e)
        if self.cfg.value == 2 and spec.guidance_scale <= 1:
            errors["cfg"] = f"{spec.name} has guidance {spec.guidance_scale}: CFG parallel needs > 1"
        if latent is not None and world > 1:
            try:
                note = check_ranks(latent, world, [self.decode.value])
                if note:
                    notes["decode"] = note
            except ValueError as e:
                errors["decode"] = str(e)
        try:
            check_device(self.device.value)
        except ValueError as e:
            errors["device"] = str(e)
        if not errors:
            try:
                make_job(spec.name, **self.kwargs())
            except ValueError as e:
                errors["pipeline"] = str(e)
        for name, f in self.fields.items():
            f.set(errors.get(name, ""), notes.get(name, ""))
        return errors

    def run(self, raise_errors: bool = False):
        """What Run does: validate, generate on SP x CFG ranks, then draw the table, the output, the Gantt chart
        and the memory. A failure shows one line, the traceback in the collapsed details, and closes the pool."""
        if not run_panel(self, self._run, 4, None, raise_errors):  # _run drops its pool only if generating fails
            return None
        return self.result

    def _run(self) -> None:
        world, device = self.world_size, self.device.value
        for out in (self.out_table, self.out_image, self.out_timeline):
            out.clear_output()
        runner = self._pools.get(world, device, self.status)
        self.status.phase(f"building the pipeline and generating ({self.steps.value} steps) on {world} "
                          f"rank{'s' if world > 1 else ''}")
        try:
            self.result = runner.generate(self.pipeline.value, **self.kwargs())
        except BaseException:
            self._pools.drop(world, device)  # no worker outlives a failed run
            raise
        self.status.phase("drawing the figures")
        self._draw()

    def _draw(self) -> None:
        import html

        from IPython.display import HTML, display

        from ..pipeline import viz as pviz

        r = self.result
        lines = [r.table(), "", decode_line(r)]
        if r.step_time_s is not None:
            lines.append(f"median denoising step: {r.step_time_s:.3f} s")
        lines += [f"note: {n}" for n in r.notes]
        with self.out_table:
            display(HTML(f"<pre>{html.escape(chr(10).join(lines))}</pre>"))
        with self.out_image:
            show(pviz.show_output(r))
        with self.out_timeline:
            show(pviz.plot_stage_timeline(r))
            show(pviz.plot_memory(r))

    def close(self) -> None:
        self._pools.close()
