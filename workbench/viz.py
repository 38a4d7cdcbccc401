"""Pictures: decoded images, plan overlays (who decodes which pixels), seam heat maps, memory timelines.

Every function draws on a matplotlib Axes it is given (or a new `matplotlib.figure.Figure`) and returns
the figure, so notebooks show them inline and the CLI saves them as PNG. pyplot is never used: its global
state breaks figures drawn inside widget callbacks, and Figure objects are freed like any other object.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["to_image", "save_png", "plot_plan", "plot_error_map", "plot_seam_profile", "plot_memory_timeline",
           "plot_strategy", "rank_colours", "plan_label", "ERROR_RANGE", "plot_sweep"]


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


def plot_input(job, frame: int = 0):
    """The picture a job encodes (its `image` at the job's size), the input every strategy's output is judged by."""
    picture = job.picture()[None]  # (1, 3, [F,] H, W)
    frame = min(frame, picture.shape[2] - 1) if picture.dim() == 5 else 0
    h, w, _ = job.size
    fig = new_figure((5, 5 * h / w + 0.6))
    ax = fig.add_subplot()
    ax.imshow(to_image(picture, frame), extent=(0, w, h, 0))
    ax.set_title(f"input: {job.image}, {h}x{w}" + (f", frame {frame}" if picture.dim() == 5 else ""))
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    fig.tight_layout()
    return fig


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
    ax.set_title(title or plan_label(plan), fontsize=10)
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    return fig


def plan_label(plan) -> str:
    """'tiles: grid 3x3, 9 items, tile 32 px, effective stride 24 px (overlap >= 8 px)' and the like."""
    text = f"{plan.kind}: grid {plan.grid[0]}x{plan.grid[1]}, {len(plan.items)} items"
    if getattr(plan, "tile_latent", 0):
        text += (f", tile {plan.tile_latent * plan.scale} px, effective stride {plan.stride_latent * plan.scale} px"
                 f" (overlap >= {plan.overlap_px} px)")
    if getattr(plan, "halo_latent", 0):
        text += f", halo {plan.halo_latent} latent = {plan.halo_latent * plan.scale} px"
    return text


def _shade_overlaps(ax, plan):
    """Hatch the pixels where more than one tile contributes (the blend zones)."""
    height, width = plan.pixel_size
    cover = np.zeros((height, width), dtype=np.int16)
    for t in plan.items:
        cover[t.rows_px.slice(), t.cols_px.slice()] += 1
    overlay = np.zeros((height, width, 4))
    overlay[cover > 1] = (1, 1, 1, 0.25)
    ax.imshow(overlay, extent=(0, width, height, 0))


ERROR_RANGE = (1e-7, 1.0)  # one colour scale for every heat map: exact shards (~1e-7) to seams (~1e-1)


def plot_error_map(err: torch.Tensor, plan=None, ax=None, title: str = "|output - reference|", vrange=ERROR_RANGE):
    """Seam heat map: per-pixel error on one fixed log colour scale (`vrange`, the same for every heat map,
    so two maps compare by colour), with a labelled colour bar and the plan's boundaries drawn."""
    from matplotlib.colors import LogNorm

    from .metrics import boundary_lines

    fig, ax = _axes(ax)
    e = err.float().cpu().numpy()
    lo, hi = vrange
    im = ax.imshow(np.clip(e, lo, hi), norm=LogNorm(vmin=lo, vmax=hi), cmap="magma", interpolation="nearest")
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, extend="both")
    bar.set_label(f"|error| per pixel (log; < {lo:.0e} shown as {lo:.0e})", fontsize=8)
    if not (e > 0).any():
        ax.text(0.5, 0.5, "identical (error 0)", transform=ax.transAxes, ha="center", color="white")
    if plan is not None:
        rows, cols = boundary_lines(plan)
        for r in rows:
            ax.axhline(r, color="cyan", lw=0.5, alpha=0.6)
        for c in cols:
            ax.axvline(c, color="cyan", lw=0.5, alpha=0.6)
    ax.set_title(f"{title}\nmax {e.max():.1e}, mean {e.mean():.1e}", fontsize=10)
    return fig


def plot_seam_profile(profiles: dict, ax=None, floor: float = 1e-9):
    """Mean error against distance to the nearest boundary, one line per strategy (log y, markers, distinct
    colours, the legend outside the axes). Exact zeros are drawn at `floor` and named in the legend."""
    fig, ax = _axes(ax, figsize=(7.5, 3.5))
    markers = "osD^v<>ph*"
    for i, (name, prof) in enumerate(profiles.items()):
        p = prof.float().numpy()
        x = np.arange(len(p))
        keep = ~np.isnan(p)
        if not keep.any():
            continue
        zero = keep & (p <= floor)
        label = name + (" (error 0)" if zero.all() == keep.all() and zero[keep].all() else "")
        ax.semilogy(x[keep], np.maximum(p[keep], floor), color=f"C{i % 10}", marker=markers[i % len(markers)],
                    markersize=3.5, lw=1.3, label=label, markevery=max(1, int(keep.sum()) // 24))
    ax.set_xlabel("distance to nearest plan boundary (px)")
    ax.set_ylabel("mean |error| vs full")
    ax.set_title("seam signature: error near the boundaries vs away from them")
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    else:
        ax.text(0.5, 0.5, "no errors to show", transform=ax.transAxes, ha="center")
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
            b = np.maximum(b - stats.baseline_bytes, 0)  # RSS can drop below the start: never negative
        ax.plot(t, b / 2**30, color=colours[stats.rank], label=f"rank {stats.rank}", lw=1.2)
    phase_colours = {}
    for name, start, end in result.ranks[0].phases:
        c = phase_colours.setdefault(name, f"C{len(phase_colours) + 2}")
        ax.axvspan(start, end, color=c, alpha=0.08, lw=0)
    accel = result.ranks[0].peak_allocated_bytes is not None
    ax.set_xlabel("time (s)")
    if accel:
        ax.set_ylabel(f"allocated {'above start ' if above_baseline else ''}(GiB)")
    else:
        ax.set_ylabel("RSS increase over the start\nof this strategy (GiB)" if above_baseline else "RSS (GiB)",
                      fontsize=8)
    ax.set_ylim(bottom=0 if above_baseline else None)
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
    if result.output is not None and result.output.dim() == 5:
        title += f", frame {frame}"
    if result.plan is not None:
        plot_plan(result.plan, to_image(result.output, frame), ax=axes[0, 0], title=f"{title}\n{plan_label(result.plan)}")
    else:
        axes[0, 0].imshow(to_image(result.output, frame))
        axes[0, 0].set_title(title)
    if reference is not None:
        err = error_map(result.output, reference)
        if err.dim() == 3:  # (T, H, W): the frame shown
            err = err[min(frame, err.shape[0] - 1)]
        plot_error_map(err, result.plan, ax=axes[0, 1], title=f"{result.strategy}: |output - full|")
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
            peaks.append(max(s.peak_bytes - base, 0) / 2**30 if s is not None else 0)
        ax.bar(np.arange(len(names)) + (rank - (world - 1) / 2) * width, peaks, width, color=colours[rank],
               label=f"rank {rank}")
    ax.set_xticks(np.arange(len(names)), names, rotation=20)
    accel = any(r.ranks[0].peak_allocated_bytes is not None for r in results.values())
    ax.set_ylabel("allocator peak (GiB)" if accel or not above_baseline else
                  "peak RSS increase over the start\nof this strategy (GiB)", fontsize=8 if not accel else None)
    ax.set_title("peak memory per rank" + ("" if accel else " (CPU: resident set, freed memory released before each)"),
                 fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
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


def plot_sweep(points: list, xlabel: str):
    """Time, peak memory and PSNR of each strategy against a swept value (SP degree or resolution).

    `points`: [(x label, Comparison), ...] in sweep order. Memory is the largest rank's allocator peak on
    accelerators, its resident-set increase over the start of the strategy on CPUs; an exact PSNR is drawn at
    the top of the axis and marked."""
    from .report import peak_bytes

    fig = new_figure((13, 3.6))
    axes = fig.subplots(1, 3)
    labels = [str(x) for x, _ in points]
    modes = list(dict.fromkeys(m for _, c in points for m in c.results))
    accel = any(r.ranks[0].peak_allocated_bytes is not None for _, c in points for r in c.results.values())
    finite = [q.psnr_db for _, c in points for q in c.quality.values() if np.isfinite(q.psnr_db)]
    exact_at = (max(finite) + 10) if finite else 100.0
    markers = "osD^v<>ph*"
    for i, mode in enumerate(modes):
        style = dict(color=f"C{i % 10}", marker=markers[i % len(markers)], lw=1.3, label=mode)
        xs = [j for j, (_, c) in enumerate(points) if mode in c.results]
        axes[0].plot(xs, [points[j][1].results[mode].time_s for j in xs], **style)
        axes[1].plot(xs, [peak_bytes(points[j][1].results[mode]) / 2**20 for j in xs], **style)
        qx = [j for j in xs if mode in points[j][1].quality and mode != "full"]
        psnr = [points[j][1].quality[mode].psnr_db for j in qx]
        axes[2].plot(qx, [p if np.isfinite(p) else exact_at for p in psnr], **style)
    axes[0].set_ylabel("time (s, slowest rank)")
    axes[1].set_ylabel("peak MiB (allocator)" if accel else "peak RSS increase over\nthe strategy's start (MiB)")
    axes[2].set_ylabel(f"PSNR vs full (dB; exact drawn at {exact_at:.0f})")
    for ax, title in zip(axes, ("time", "memory", "quality")):
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(xlabel)
        ax.set_title(f"{title} against {xlabel}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    fig.tight_layout()
    return fig
