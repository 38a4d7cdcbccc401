"""Notebook 02's panel: every strategy side by side, and a sweep of the SP degree or the resolution.

    comparer = StrategyComparer(model="glm-image", size="64x96", sp=2, sweep="SP degree", sweep_values="1,2")
    comparer            # the panel
    comparer.run()      # what Run does
"""

from __future__ import annotations

from ..parallel.vae import STRATEGIES
from .common import compare_stepwise, show
from .decode import DecodeExplorer

__all__ = ["StrategyComparer", "SWEEPS"]

SWEEPS = ("off", "SP degree", "resolution")


class StrategyComparer(DecodeExplorer):
    """DecodeExplorer's controls plus a sweep; the strategies' pictures side by side."""

    panel_class = "wb-compare"

    def __init__(self, model: str = "qwen-image", size: str = "256x384", modes=",".join(STRATEGIES), *,
                 sweep: str = "off", sweep_values: str = "", **kwargs):
        import ipywidgets as w

        self.sweep = w.Dropdown(options=list(SWEEPS), value=sweep, description="sweep",
                                style={"description_width": "96px"}, layout=w.Layout(width="250px"))
        self.sweep_values = w.Text(value=sweep_values, description="values", placeholder="1,2,4 or 64x64,128x128",
                                   style={"description_width": "96px"}, layout=w.Layout(width="300px"))
        self.points: list = []
        super().__init__(model=model, size=size, modes=modes, **kwargs)
        self.fields["sweep_values"] = type(self.fields["size"])(self.sweep_values)
        self.panel = self._layout()
        self.panel.add_class(self.panel_class)
        for control in (self.sweep, self.sweep_values):
            control.observe(lambda change: self.validate(), names="value")
        self.validate()

    def _columns(self):
        left, right = super()._columns()
        if "sweep_values" in self.fields:
            right.children = (*right.children, self.sweep, self.fields["sweep_values"].box)
        return left, right

    def sweep_points(self) -> list[tuple[int, str]]:
        """[(SP degree, resolution), ...]: one point without a sweep."""
        values = [v.strip() for v in self.sweep_values.value.split(",") if v.strip()]
        if self.sweep.value == "off":
            return [(self.sp.value, self.size.value)]
        if not values:
            raise ValueError(f"give the {self.sweep.value} values to sweep, comma separated")
        if self.sweep.value == "SP degree":
            try:
                worlds = [int(v) for v in values]
            except ValueError:
                raise ValueError(f"SP degrees must be integers, got {self.sweep_values.value!r}") from None
            if min(worlds) < 1:
                raise ValueError("SP degrees must be >= 1")
            return [(n, self.size.value) for n in worlds]
        return [(self.sp.value, v) for v in values]

    def validate(self) -> dict[str, str]:
        if "sweep_values" not in self.fields:  # still constructing
            return super().validate()
        errors = super().validate()
        try:
            points = self.sweep_points()
        except ValueError as e:
            errors["sweep_values"] = str(e)
            points = []
        if self.sweep.value != "off":
            for world, size in points:
                bad = self._check(world, size)
                bad = {k: v for k, v in bad.items() if k in ("size", "sp", "grid")}
                if bad:
                    errors["sweep_values"] = f"{self.sweep.value} {world if self.sweep.value == 'SP degree' else size}: " \
                                             + "; ".join(bad.values())
                    break
        self.fields["sweep_values"].set(errors.get("sweep_values", ""))
        return errors

    def phases(self) -> int:
        return len(self.sweep_points()) * (len(set(self.selected_modes()) | {"full"}) + 2) + 1

    def result(self):
        return self.points if self.sweep.value != "off" else self.comparison

    def _run(self) -> None:
        from dataclasses import replace

        from .common import check_size

        for out in (self.out_table, self.out_pictures, self.out_costs):
            out.clear_output()
        self.points = []
        job = self.job()
        for world, size in self.sweep_points():
            runner = self._pools.get(world, self.device.value, self.status)
            point_job = replace(job, size=check_size(job.model, size))
            params = {**self.params(), "grid": None if self.sweep.value == "SP degree" else self.params()["grid"]}
            if self.sweep.value != "off":
                self.status.phase(f"{self.sweep.value} = {world if self.sweep.value == 'SP degree' else size}")
            comparison = compare_stepwise(runner, point_job, self.selected_modes(), params, self.status)
            self.points.append((world if self.sweep.value == "SP degree" else size, comparison))
        self.comparison = self.points[-1][1]
        self.status.phase("drawing the figures")
        self._draw()

    def _tables(self) -> list[str]:
        if self.sweep.value == "off":
            return super()._tables()
        return [f"{self.sweep.value} = {x}\n{point.table()}" for x, point in self.points]

    def _cost_figures(self) -> list:
        from .. import viz

        sweep = [viz.plot_sweep(self.points, self.sweep.value)] if self.sweep.value != "off" else []
        return sweep + super()._cost_figures()

    def _draw_pictures(self) -> None:
        """One picture per strategy, side by side (a grid that wraps with the page's width)."""
        import ipywidgets as w

        from .. import viz

        c = self.comparison
        if c is None:
            return
        ref = c.reference.output if c.reference is not None else None
        cells = []
        if c.job.image is not None:
            out = w.Output(layout=w.Layout(min_width="0"))
            with out:
                show(viz.plot_input(c.job, self.frame.value))
            cells.append(out)
        for mode, result in c.results.items():
            if result.output is None:
                continue
            out = w.Output(layout=w.Layout(min_width="0"))
            with out:
                show(viz.plot_strategy(result, reference=ref if mode != "full" else None, frame=self.frame.value))
            cells.append(out)
        grid = w.GridBox(cells, layout=w.Layout(grid_template_columns="repeat(auto-fill, minmax(520px, 1fr))",
                                                width="100%"))
        self.out_pictures.clear_output(wait=True)
        with self.out_pictures:
            from IPython.display import display

            display(grid)
