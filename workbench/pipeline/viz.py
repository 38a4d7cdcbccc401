"""Pictures of a generation: the per-rank stage timeline (a Gantt chart), the memory timeline with the
stages shaded, and the output image or frames. Stage colours are the same in every plot."""

from __future__ import annotations

import numpy as np

from ..viz import _axes, new_figure, rank_colours, to_image

__all__ = ["plot_stage_timeline", "plot_memory", "show_output", "stage_colours"]


def stage_colours(result) -> dict:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(dict.fromkeys(s.stage for s in result.spans))}


def plot_stage_timeline(result, ax=None):
    """Time on x, one row per rank, one bar per stage (hatched where the rank only waited for rank 0)."""
    fig, ax = _axes(ax, figsize=(10, 1.4 + 0.55 * result.dims.world_size))
    colours = stage_colours(result)
    for s in result.spans:
        ax.barh(s.rank, s.duration_s, left=s.start_s, height=0.6, color=colours[s.stage],
                alpha=1.0 if s.active else 0.35, hatch=None if s.active else "//", edgecolor="black", lw=0.4)
    for name, colour in colours.items():
        ax.barh(np.nan, 0, color=colour, label=name)
    ax.set_yticks(range(result.dims.world_size))
    ax.set_yticklabels([f"rank {r}" for r in range(result.dims.world_size)])
    ax.invert_yaxis()
    ax.set_xlim(left=0)
    ax.set_xlabel("time since start (s)")
    ax.set_title(f"{result.strategy}: stages per rank (hatched: waiting for rank 0)")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_memory(result, ax=None, above_start: bool = True):
    """Memory of every rank over the whole run (GiB; accelerators: allocated, CPU: resident set), with rank 0's
    stages shaded in their timeline colours."""
    fig, ax = _axes(ax, figsize=(10, 3.2))
    for stats, colour in zip(result.ranks, rank_colours(len(result.ranks))):
        t = np.array([s for s, _ in stats.timeline])
        b = np.array([v for _, v in stats.timeline], dtype=np.float64) - (stats.baseline_bytes if above_start else 0)
        b = np.maximum(b, 0)  # a resident set can drop below its start: never drawn negative
        ax.plot(t, b / 2**30, color=colour, lw=1.2, label=f"rank {stats.rank}")
    colours = stage_colours(result)
    total = max(s.end_s for s in result.spans)
    for s in result.spans:
        if s.rank != 0:
            continue
        ax.axvspan(s.start_s, s.end_s, color=colours[s.stage], alpha=0.12, lw=0)
        if s.duration_s > 0.08 * total:  # name the stages wide enough to hold it (the Gantt has them all)
            ax.text((s.start_s + s.end_s) / 2, 1.0, s.stage, transform=ax.get_xaxis_transform(), ha="center",
                    va="bottom", fontsize=7, color=colours[s.stage])
    kind = "allocated" if result.ranks[0].peak_allocated_bytes is not None else "resident set"
    ax.set_xlim(left=0)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel(f"{kind}{' above start' if above_start else ''} (GiB)")
    ax.set_title(f"{result.strategy}: memory per rank", pad=14)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    return fig


def show_output(result, frames: int = 4, ax=None):
    """The image, or `frames` evenly spaced frames of the video side by side."""
    out = result.output
    if out is None:
        raise ValueError("this result holds no output (only rank 0's does)")
    count = out.shape[2] if out.dim() == 5 else 1
    picks = sorted({round(i * (count - 1) / max(frames - 1, 1)) for i in range(min(frames, count))})
    fig = new_figure((3.2 * len(picks), 3.4))
    axes = fig.subplots(1, len(picks), squeeze=False)
    for a, f in zip(axes[0], picks):
        a.imshow(to_image(out, frame=f))
        a.set_title(f"frame {f}" if count > 1 else result.request.pipeline, fontsize=9)
        a.axis("off")
    fig.tight_layout()
    return fig
