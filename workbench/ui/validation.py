"""Notebook 04: the validation table. One row per model, its decode with parallel decode off (`full` on one
rank) and on (`shard` at the chosen SP degree): decode time, peak memory, peak allocated memory, the memory
remaining at the peak, and the relative change.

    table = validation_table(sp=2, device="cpu", image_size="64x64", video_size="64x64x5")
    print(table.text())
    ValidationPanel(sp=2)       # the panel with a Run button

Memory, per rank and then the largest rank: on accelerators, the allocator's peak reserved ("peak memory") and
peak allocated bytes, and remaining = device total - peak reserved (the smallest over the ranks); on CPUs, the
resident-set increase over the start of the decode ("peak memory"; allocated is not measured) and remaining =
the machine's available RAM just before the decode - the increase summed over the ranks (they share the RAM).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .common import (
    Field,
    Pools,
    Status,
    build_model_task,
    check_device,
    check_ranks,
    check_size,
    memory_info_task,
    on_ranks,
    release_memory_task,
    run_panel,
    show,
)

__all__ = ["VALIDATION_MODELS", "validation_table", "ValidationTable", "ValidationPanel", "plot_validation"]

# row label -> preset
VALIDATION_MODELS = {"wan2.1": "wan2.1", "wan2.2": "wan2.2-a14b", "qwen-image": "qwen-image",
                     "qwen-image-edit": "qwen-image-edit", "glm-image": "glm-image"}


@dataclass
class Measured:
    """One decode of one model: seconds and bytes (None where the device does not measure it)."""

    mode: str
    world: int
    time_s: float
    peak_bytes: int
    peak_allocated_bytes: int | None
    remaining_bytes: int | None


@dataclass
class ValidationTable:
    device: str
    sp: int
    rows: list[dict] = field(default_factory=list)  # {"model", "preset", "size", "off": Measured, "on": Measured}

    @property
    def accelerator(self) -> bool:
        return any(r["off"].peak_allocated_bytes is not None for r in self.rows)

    def columns(self) -> list[str]:
        peak = "peak reserved" if self.accelerator else "peak RSS increase"
        return ["model", "preset", "size", "time off s", "time on s", "time change", f"{peak} off MiB",
                f"{peak} on MiB", "peak change", "peak allocated off MiB", "peak allocated on MiB",
                "remaining at peak off MiB", "remaining at peak on MiB", "remaining change"]

    def records(self) -> list[list[str]]:
        def mib(v):
            return "-" if v is None else f"{v / 2**20:.1f}"

        def change(off, on):
            return "-" if off in (None, 0) or on is None else f"{(on - off) / off:+.0%}"

        out = []
        for r in self.rows:
            off, on = r["off"], r["on"]
            out.append([r["model"], r["preset"], r["size"], f"{off.time_s:.3f}", f"{on.time_s:.3f}",
                        change(off.time_s, on.time_s), mib(off.peak_bytes), mib(on.peak_bytes),
                        change(off.peak_bytes, on.peak_bytes), mib(off.peak_allocated_bytes),
                        mib(on.peak_allocated_bytes), mib(off.remaining_bytes), mib(on.remaining_bytes),
                        change(off.remaining_bytes, on.remaining_bytes)])
        return out

    def caption(self) -> str:
        where = "accelerator: allocator peaks" if self.accelerator else \
            "CPU: resident-set increase over the start of each decode (allocated: not measured)"
        return (f"parallel decode off: full on one rank; on: shard over {self.sp} ranks; device {self.device} "
                f"({where}); change: on relative to off")

    def text(self) -> str:
        head, recs = self.columns(), self.records()
        widths = [max(len(h), *(len(x[i]) for x in recs)) if recs else len(h) for i, h in enumerate(head)]
        fmt = "  ".join(f"{{:{'<' if i < 3 else '>'}{w}}}" for i, w in enumerate(widths))
        return "\n".join([self.caption(), fmt.format(*head), fmt.format(*["-" * w for w in widths])]
                         + [fmt.format(*x) for x in recs])

    def html(self) -> str:
        import html

        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.columns())
        body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in rec) + "</tr>" for rec in self.records())
        return (f"<p>{html.escape(self.caption())}</p><table class='wb-validation'><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table>")

    def _repr_html_(self) -> str:
        return self.html()


def _measured(comparison, mode: str, available: list[tuple[int, int]]) -> Measured:
    r = comparison.results[mode]
    accel = r.ranks[0].peak_allocated_bytes is not None
    if accel:
        reserved = [s.peak_reserved_bytes or s.peak_allocated_bytes for s in r.ranks]
        totals = [total for total, _ in available]
        remaining = min(totals[s.rank] - res for s, res in zip(r.ranks, reserved))
        return Measured(mode, r.world_size, r.time_s, max(reserved), max(s.peak_allocated_bytes for s in r.ranks),
                        remaining)
    increases = [max(s.peak_bytes - s.baseline_bytes, 0) for s in r.ranks]
    return Measured(mode, r.world_size, r.time_s, max(increases), None, available[0][1] - sum(increases))


def validation_table(models=None, *, sp: int = 2, device: str = "cpu", image_size: str = "1024x1024",
                     video_size: str = "480x832x81", tiny: bool = True, dtype: str = "float32", seed: int = 0,
                     pools: Pools | None = None, status: Status | None = None) -> ValidationTable:
    """Decode each model with `full` on one rank (parallel decode off) and `shard` over `sp` ranks (on), in one
    worker pool of `sp` ranks (full runs on its rank 0), each decode after the ranks released freed memory."""
    from ..models import get_preset
    from ..runner import DecodeJob

    own = pools is None
    pools = pools or Pools()
    table = ValidationTable(device=device, sp=sp)
    try:
        runner = pools.get(sp, device, status)
        for label in models or list(VALIDATION_MODELS):
            preset = VALIDATION_MODELS.get(label, label)
            size = video_size if get_preset(preset).is_video else image_size
            job = DecodeJob(model=preset, size=check_size(preset, size), tiny=tiny, dtype=dtype, device=device,
                            seed=seed)
            measured = {}
            if status is not None:
                status.phase(f"{label}: building the model on {sp} rank{'s' if sp > 1 else ''}")
            on_ranks(runner, build_model_task, job)
            for key, mode, where in (("off", "full", "one rank"), ("on", "shard", f"{sp} ranks")):
                if status is not None:
                    status.phase(f"{label}: {mode} on {where}")
                on_ranks(runner, release_memory_task)
                available = on_ranks(runner, memory_info_task)
                c = runner.compare(job, [mode], reference=False)
                if mode not in c.results:
                    raise RuntimeError(f"{label}: {mode} did not run: {c.skipped.get(mode, 'unknown reason')}")
                measured[key] = _measured(c, mode, available)
            table.rows.append({"model": label, "preset": preset, "size": size, **measured})
    finally:
        if own:
            pools.close()
    return table


def plot_validation(table: ValidationTable):
    """Bars per model, off and on: decode time, peak memory, remaining memory at the peak."""
    import numpy as np

    from ..viz import new_figure

    fig = new_figure((14, 3.8))
    axes = fig.subplots(1, 3)
    names = [r["model"] for r in table.rows]
    x = np.arange(len(names))
    peak = "peak reserved" if table.accelerator else "peak RSS increase"
    for ax, (title, get) in zip(axes, [("decode time (s)", lambda m: m.time_s),
                                       (f"{peak} (MiB)", lambda m: m.peak_bytes / 2**20),
                                       ("remaining at peak (MiB)", lambda m: (m.remaining_bytes or 0) / 2**20)]):
        for i, (key, label) in enumerate([("off", "off: full, 1 rank"), ("on", f"on: shard, {table.sp} ranks")]):
            ax.bar(x + (i - 0.5) * 0.38, [get(r[key]) for r in table.rows], 0.38, label=label, color=f"C{i}")
        ax.set_xticks(x, names, rotation=20)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    axes[2].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    fig.tight_layout()
    return fig


class ValidationPanel:
    """Models, SP degree, image and video resolutions, dtype, device, Run: the table and its plots."""

    panel_class = "wb-validation-panel"

    def __init__(self, models=None, *, sp: int = 2, device: str | None = None, image_size: str = "1024x1024",
                 video_size: str = "480x832x81", tiny: bool = True, dtype: str = "float32"):
        import ipywidgets as w

        from ..runtime import available_platforms
        from .common import IMAGE_SIZES, VIDEO_SIZES

        style = {"description_width": "110px"}
        self._pools = Pools()
        self.table: ValidationTable | None = None
        self.error: BaseException | None = None
        self.models = w.SelectMultiple(options=list(VALIDATION_MODELS), value=tuple(models or VALIDATION_MODELS),
                                       rows=5, description="models", style=style)
        self.sp = w.BoundedIntText(value=sp, min=1, max=64, description="SP degree", style=style,
                                   layout=w.Layout(width="180px"))
        self.image_size = w.Combobox(value=image_size, options=IMAGE_SIZES, ensure_option=False,
                                     description="image resolution", placeholder="HxW", style=style)
        self.video_size = w.Combobox(value=video_size, options=VIDEO_SIZES, ensure_option=False,
                                     description="video resolution", placeholder="HxWxF", style=style)
        self.tiny = w.Checkbox(value=tiny, description="tiny configs (CPU friendly)", style=style)
        self.dtype = w.Dropdown(options=["float32", "bfloat16", "float16"], value=dtype, description="dtype",
                                style=style, layout=w.Layout(width="240px"))
        devices = available_platforms()
        device = device or devices[0]
        self.device = w.Dropdown(options=devices if device in devices else [*devices, device], value=device,
                                 description="device", style=style, layout=w.Layout(width="240px"))
        self.button = w.Button(description="Run", button_style="primary", icon="play", tooltip="validate")
        self.button.add_class("wb-run")
        self.status = Status()
        self.out_table, self.out_plots = w.Output(), w.Output()
        self.out_table.add_class("wb-table")
        self.fields = {n: Field(getattr(self, n)) for n in ("models", "sp", "image_size", "video_size", "device")}
        self.button.on_click(lambda _b: self.run())
        for n in ("models", "sp", "image_size", "video_size", "device"):
            getattr(self, n).observe(lambda change: self.validate(), names="value")
        f = self.fields
        left = w.VBox([f["models"].box, f["image_size"].box, f["video_size"].box],
                      layout=w.Layout(flex="1 1 460px", min_width="360px"))
        right = w.VBox([f["sp"].box, self.tiny, self.dtype, f["device"].box],
                       layout=w.Layout(flex="1 1 360px", min_width="300px"))
        run = w.HBox([self.button, self.status.box], layout=w.Layout(align_items="flex-start", flex_flow="row wrap"))
        self.panel = w.VBox([w.HBox([left, right], layout=w.Layout(flex_flow="row wrap", width="100%")), run,
                             self.out_table, self.out_plots], layout=w.Layout(width="100%"))
        self.panel.add_class(self.panel_class)
        self.validate()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.panel)

    def validate(self) -> dict[str, str]:
        from ..models import get_preset, latent_shape

        errors = {}
        if not self.models.value:
            errors["models"] = "select at least one model"
        for name, video in (("image_size", False), ("video_size", True)):
            for label in self.models.value:
                preset = VALIDATION_MODELS[label]
                if get_preset(preset).is_video != video:
                    continue
                try:
                    latent = latent_shape(preset, *check_size(preset, getattr(self, name).value))
                    check_ranks(latent, self.sp.value, ["shard"])
                except ValueError as e:
                    errors[name] = f"{label}: {e}"
                    break
        try:
            check_device(self.device.value)
        except ValueError as e:
            errors["device"] = str(e)
        for n, f in self.fields.items():
            f.set(errors.get(n, ""))
        return errors

    def run(self, raise_errors: bool = False):
        phases = 3 * len(self.models.value) + 2
        if not run_panel(self, self._run, phases, (self.sp.value, self.device.value), raise_errors):
            return None
        return self.table

    def _run(self) -> None:
        from IPython.display import HTML, display

        for out in (self.out_table, self.out_plots):
            out.clear_output()
        self.table = validation_table(list(self.models.value), sp=self.sp.value, device=self.device.value,
                                      image_size=self.image_size.value, video_size=self.video_size.value,
                                      tiny=self.tiny.value, dtype=self.dtype.value, pools=self._pools,
                                      status=self.status)
        self.status.phase("drawing the figures")
        with self.out_table:
            display(HTML(self.table.html()))
        with self.out_plots:
            show(plot_validation(self.table))

    def close(self) -> None:
        self._pools.close()
