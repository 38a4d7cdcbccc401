"""Pictures: decoded images, plan overlays (who decodes which pixels), seam heat maps, memory timelines.

Every function draws on a matplotlib Axes it is given (or a new `matplotlib.figure.Figure`) and returns
the figure, so notebooks show them inline and the CLI saves them as PNG. pyplot is never used: its global
state breaks figures drawn inside widget callbacks, and Figure objects are freed like any other object.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["to_image", "save_png", "plot_plan", "plot_error_map", "plot_seam_profile", "plot_memory_timeline",
           "plot_strategy", "rank_colours"]


def new_figure(figsize=(6, 6)):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def to_image(x: torch.Tensor, frame: int = 0, batch: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 from a decoded tensor in [-1, 1]: (B, C, H, W) or (B, C, T, H, W)."""
    if x.dim() == 5:
        x = x[:, :, frame]
    img = ((x[batch].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return img.permute(1, 2, 0).cpu().numpy()


def save_png(x: torch.Tensor, path, frame: int = 0) -> None:
    from PIL import Image

    Image.fromarray(to_image(x, frame)).save(path)


def rank_colours(n: int):
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _axes(ax, figsize=(6, 6)):
    if ax is None:
        fig = new_figure(figsize)
        return fig, fig.subplots()
    return ax.figure, ax


def plot_plan(plan, image: torch.Tensor | np.ndarray | None = None, ax=None, title: str | None = None, labels: bool = True):
    """The plan drawn over the image: each item's pixel rectangle in its rank's colour.

    Tiles: outlines plus the shaded overlap zones where blending happens. Patches: the decoded halo
    dashed around each core. Shards: filled bands, one colour per rank.
    """
    from matplotlib.patches import Rectangle

    from .parallel.vae.plan import Patch, Shard, Tile

    fig, ax = _axes(ax)
    height, width = plan.pixel_size
    if image is not None:
        ax.imshow(to_image(image) if isinstance(image, torch.Tensor) else image, extent=(0, width, height, 0))
    else:
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
    by_rank = plan.world_size > 1 or isinstance(plan.items[0], Shard)
    colours = rank_colours(plan.world_size if by_rank else len(plan.items))
    for item in plan.items:
        c = colours[item.rank if by_rank else item.index]
        y0, y1, x0, x1 = item.rows_px.start, item.rows_px.stop, item.cols_px.start, item.cols_px.stop
        if isinstance(item, Shard):
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, facecolor=c, alpha=0.25, edgecolor=c, lw=2))
        else:
            inset = 1.5 * (item.index % 2)  # keep neighbouring outlines of overlapping tiles apart
            ax.add_patch(Rectangle((x0 + inset, y0 + inset), x1 - x0 - 2 * inset, y1 - y0 - 2 * inset,
                                   fill=False, edgecolor=c, lw=1.5))
        if isinstance(item, Patch) and plan.halo_latent:
            s = plan.scale
            ax.add_patch(Rectangle((item.halo_cols.start * s, item.halo_rows.start * s), item.halo_cols.size * s,
                                   item.halo_rows.size * s, fill=False, edgecolor=c, lw=1, ls="--"))
        if labels:
            text = f"{item.index}" + (f"\nr{item.rank}" if plan.world_size > 1 else "")
            ax.text((x0 + x1) / 2, (y0 + y1) / 2, text, color="white", ha="center", va="center", fontsize=8,
                    bbox=dict(facecolor=c, alpha=0.7, lw=0, pad=1))
    if plan.items and isinstance(plan.items[0], Tile):
        _shade_overlaps(ax, plan)
    ax.set_title(title or f"{plan.kind}: grid {plan.grid[0]}x{plan.grid[1]}, {len(plan.items)} items")
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    return fig


def _shade_overlaps(ax, plan):
    """Hatch the pixels where more than one tile contributes (the blend zones)."""
    height, width = plan.pixel_size
    cover = np.zeros((height, width), dtype=np.int16)
    for t in plan.items:
        cover[t.rows_px.slice(), t.cols_px.slice()] += 1
    overlay = np.zeros((height, width, 4))
    overlay[cover > 1] = (1, 1, 1, 0.25)
    ax.imshow(overlay, extent=(0, width, height, 0))


def plot_error_map(err: torch.Tensor, plan=None, ax=None, title: str = "|output - reference|", vmax=None):
    """Seam heat map: per-pixel error on a log colour scale, with the plan's boundaries drawn."""
    from matplotlib.colors import LogNorm

    from .metrics import boundary_lines

    fig, ax = _axes(ax)
    e = err.float().cpu().numpy()
    positive = e[e > 0]
    if positive.size:
        lo = max(float(np.percentile(positive, 1)), 1e-9)
        hi = vmax or max(float(e.max()), lo * 10)
        im = ax.imshow(np.maximum(e, lo), norm=LogNorm(vmin=lo, vmax=hi), cmap="magma")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    else:
        ax.imshow(e, cmap="magma")
        ax.text(0.5, 0.5, "identical", transform=ax.transAxes, ha="center", color="white")
    if plan is not None:
        rows, cols = boundary_lines(plan)
        for r in rows:
            ax.axhline(r, color="cyan", lw=0.5, alpha=0.6)
        for c in cols:
            ax.axvline(c, color="cyan", lw=0.5, alpha=0.6)
    ax.set_title(title)
    return fig


def plot_seam_profile(profiles: dict, ax=None):
    """Mean error against distance to the nearest boundary, one line per strategy."""
    fig, ax = _axes(ax, figsize=(6, 3.5))
    for name, prof in profiles.items():
        p = prof.numpy()
        ax.semilogy(np.arange(len(p)), np.where(np.isnan(p), np.nan, np.maximum(p, 1e-12)), label=name)
    ax.set_xlabel("distance to nearest boundary (px)")
    ax.set_ylabel("mean |error|")
    ax.set_title("seam signature")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_memory_timeline(result, ax=None, above_baseline: bool = True):
    """Memory of every rank over the run, with its phases shaded (GiB; CPU: resident set)."""
    fig, ax = _axes(ax, figsize=(7, 3.5))
    colours = rank_colours(len(result.ranks))
    for stats in result.ranks:
        if not stats.timeline:
            continue
        t = np.array([s for s, _ in stats.timeline])
        b = np.array([v for _, v in stats.timeline], dtype=np.float64)
        if above_baseline:
            b = b - stats.baseline_bytes
        ax.plot(t, b / 2**30, color=colours[stats.rank], label=f"rank {stats.rank}", lw=1.2)
    phase_colours = {}
    for name, start, end in result.ranks[0].phases:
        c = phase_colours.setdefault(name, f"C{len(phase_colours) + 2}")
        ax.axvspan(start, end, color=c, alpha=0.08, lw=0)
    kind = "allocated" if result.ranks[0].peak_allocated_bytes is not None else "resident set"
    ax.set_xlabel("time (s)")
    ax.set_ylabel(f"{kind} {'above start ' if above_baseline else ''}(GiB)")
    ax.set_title(f"{result.strategy}: memory per rank ({', '.join(phase_colours) or 'no phases'} shaded)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_strategy(result, reference=None, frame: int = 0):
    """Image with its plan, and (given a reference) the seam heat map beside it."""
    from .metrics import error_map

    cols = 2 if reference is not None else 1
    fig = new_figure((6 * cols, 5.5))
    axes = fig.subplots(1, cols, squeeze=False)
    title = result.strategy + (f" -> {result.choice}" if result.choice else "")
    if result.plan is not None:
        plot_plan(result.plan, to_image(result.output, frame), ax=axes[0, 0], title=title)
    else:
        axes[0, 0].imshow(to_image(result.output, frame))
        axes[0, 0].set_title(title)
    if reference is not None:
        plot_error_map(error_map(result.output, reference), result.plan, ax=axes[0, 1],
                       title=f"{result.strategy}: |output - full|")
    fig.tight_layout()
    return fig


def plot_rank_peaks(results: dict, ax=None, above_baseline: bool = True):
    """Peak memory of every rank, grouped by strategy (GiB; CPU: resident set above the start)."""
    fig, ax = _axes(ax, figsize=(7, 3.5))
    names = list(results)
    world = max(len(r.ranks) for r in results.values())
    colours = rank_colours(world)
    width = 0.8 / world
    for rank in range(world):
        peaks = []
        for name in names:
            ranks = results[name].ranks
            s = ranks[rank] if rank < len(ranks) else None
            base = s.baseline_bytes if s is not None and above_baseline and s.peak_allocated_bytes is None else 0
            peaks.append((s.peak_bytes - base) / 2**30 if s is not None else 0)
        ax.bar(np.arange(len(names)) + (rank - (world - 1) / 2) * width, peaks, width, color=colours[rank],
               label=f"rank {rank}")
    ax.set_xticks(np.arange(len(names)), names, rotation=20)
    ax.set_ylabel("peak GiB")
    ax.set_title("peak memory per rank")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return fig


def plot_times(results: dict, ax=None):
    """Wall time of each strategy (slowest rank), split into its phases on rank 0."""
    fig, ax = _axes(ax, figsize=(7, 3.5))
    names = list(results)
    phase_names = []
    for r in results.values():
        for p in r.ranks[0].timings_s:
            if p != "total" and p not in phase_names:
                phase_names.append(p)
    bottom = np.zeros(len(names))
    for i, phase in enumerate(phase_names):
        vals = np.array([results[n].ranks[0].timings_s.get(phase, 0.0) for n in names])
        ax.bar(names, vals, bottom=bottom, label=phase, color=f"C{i}")
        bottom += vals
    ax.scatter(names, [results[n].time_s for n in names], color="black", marker="_", s=400, label="total (slowest rank)")
    ax.set_ylabel("seconds")
    ax.set_title("time per strategy")
    ax.tick_params(axis="x", rotation=20)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return fig
