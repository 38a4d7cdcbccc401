"""ipywidgets panels for the notebooks: each notebook builds one panel and (headless) calls `run()` once.

    DecodeExplorer      01: one latent, the chosen strategies, pictures with plans and seam heat maps
    StrategyComparer    02: every strategy side by side; sweeps of the SP degree or the resolution
    GenerationPanel     03: a whole generation across ranks: stage table, output, Gantt chart, memory
    ValidationPanel     04: the validation table (parallel decode off and on, per model), `validation_table`

Every panel checks its input before anything runs (messages beside the controls), disables Run while it
runs, shows each phase with its elapsed time, and shows a failure as one line with the traceback in a
collapsed box. Figures are `matplotlib.figure.Figure` objects shown as PNG in the panel's Output widgets:
pyplot is never used. Worker pools are kept per (SP degree, device) across runs; a failed run closes its
pool and `close()` stops them all.
"""

from .common import Pools, Status, show
from .compare import StrategyComparer
from .decode import WEIGHT_SOURCES, DecodeExplorer, show_comparison, show_strategies
from .generate import GenerationPanel, decode_line
from .validation import VALIDATION_MODELS, ValidationPanel, ValidationTable, plot_validation, validation_table

__all__ = ["DecodeExplorer", "StrategyComparer", "GenerationPanel", "ValidationPanel", "validation_table",
           "ValidationTable", "plot_validation", "VALIDATION_MODELS", "WEIGHT_SOURCES", "show", "show_comparison",
           "show_strategies", "decode_line", "Pools", "Status"]
