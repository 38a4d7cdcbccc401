"""Decode plans: pure geometry, no torch, no torch.distributed.

One planner turns a latent shape and the strategy's parameters into tiles, patches or shards with
latent and pixel coordinates, crop windows and blend weights. The serial tiled decode, every parallel
strategy and the notebook overlays draw from the same plan objects, so what a picture shows is what
the decode did.

Coordinates are half-open spans. Latent spans are in latent rows/columns; pixel spans are in output
pixels (latent * spatial ratio). Time is planned separately (`frame_windows`) because the Wan decoder
is causal in time: windows need no overlap, only the decoder's frame cache carried across them.

    >>> plan = plan_tiles((1, 64, 96), scale=8, tile_px=256, stride_px=192)
    >>> plan.grid, len(plan.items)
    ((3, 4), 12)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property

__all__ = [
    "Span",
    "Region",
    "Tile",
    "TilePlan",
    "Patch",
    "PatchPlan",
    "Shard",
    "ShardPlan",
    "FrameWindow",
    "PlanError",
    "axis_tiles",
    "axis_blend_weights",
    "split_even",
    "grid_shape",
    "plan_tiles",
    "plan_patches",
    "sglang_halo_latent",
    "plan_shards",
    "frame_windows",
    "balance",
    "pixel_frames",
]


class PlanError(ValueError):
    """A plan cannot be made from these parameters; the message names the parameter and what is accepted."""


@dataclass(frozen=True)
class Span:
    """A half-open interval [start, stop)."""

    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    def scaled(self, factor: int) -> Span:
        return Span(self.start * factor, self.stop * factor)

    def shifted(self, offset: int) -> Span:
        return Span(self.start + offset, self.stop + offset)

    def slice(self) -> slice:
        return slice(self.start, self.stop)

    def intersect(self, other: Span) -> Span | None:
        lo, hi = max(self.start, other.start), min(self.stop, other.stop)
        return Span(lo, hi) if lo < hi else None

    def __contains__(self, i: int) -> bool:
        return self.start <= i < self.stop


@dataclass(frozen=True)
class Region:
    """A rectangle in latent space and the matching rectangle in pixel space."""

    rows: Span  # latent rows
    cols: Span  # latent columns
    scale: int  # pixels per latent row/column

    @property
    def rows_px(self) -> Span:
        return self.rows.scaled(self.scale)

    @property
    def cols_px(self) -> Span:
        return self.cols.scaled(self.scale)

    @property
    def area(self) -> int:
        return self.rows.size * self.cols.size


@dataclass(frozen=True)
class Tile(Region):
    """One overlapping tile of a serial or parallel tiled decode.

    `row_weights`/`col_weights` are the 1-D blend weights over the tile's pixel rows/columns; the
    2-D weight is their outer product, and the weights of all tiles covering a pixel sum to one.
    """

    index: int = 0
    grid_pos: tuple[int, int] = (0, 0)
    row_weights: tuple[float, ...] = ()
    col_weights: tuple[float, ...] = ()
    rank: int = 0  # owner in a parallel decode; 0 in a serial one


@dataclass(frozen=True)
class Patch(Region):
    """One patch of a patch decode: the core it owns plus a halo it decodes and throws away."""

    index: int = 0
    grid_pos: tuple[int, int] = (0, 0)
    halo_rows: Span = Span(0, 0)  # latent rows decoded (core plus halo, clipped to the latent)
    halo_cols: Span = Span(0, 0)
    rank: int = 0

    @property
    def crop_px(self) -> tuple[slice, slice]:
        """Where the core sits inside the decoded (core + halo) pixels."""
        top = (self.rows.start - self.halo_rows.start) * self.scale
        left = (self.cols.start - self.halo_cols.start) * self.scale
        return slice(top, top + self.rows.size * self.scale), slice(left, left + self.cols.size * self.scale)


@dataclass(frozen=True)
class Shard(Region):
    """One rank's band or block of an exact spatial-shard decode."""

    rank: int = 0
    grid_pos: tuple[int, int] = (0, 0)

    @property
    def index(self) -> int:
        return self.rank


@dataclass(frozen=True)
class _GridPlan:
    latent_shape: tuple[int, int, int]  # (frames, rows, cols) in latent units
    scale: int
    grid: tuple[int, int]  # (rows, cols) of items
    items: tuple = ()

    @property
    def pixel_size(self) -> tuple[int, int]:
        return self.latent_shape[1] * self.scale, self.latent_shape[2] * self.scale

    @property
    def world_size(self) -> int:
        return max(item.rank for item in self.items) + 1

    def owned_by(self, rank: int) -> list:
        return [item for item in self.items if item.rank == rank]

    def work_by_rank(self, world_size: int) -> list[int]:
        """Latent area each rank decodes (halos included for patches)."""
        work = [0] * world_size
        for item in self.items:
            work[item.rank] += _work(item)
        return work


@dataclass(frozen=True)
class TilePlan(_GridPlan):
    kind: str = "tiles"
    tile_latent: int = 0
    stride_latent: int = 0

    def assign(self, world_size: int) -> TilePlan:
        """Spread the tiles over `world_size` ranks, balanced by work (see `balance`)."""
        owners = balance([_work(t) for t in self.items], world_size)
        return replace(self, items=tuple(replace(t, rank=r) for t, r in zip(self.items, owners)))

    @property
    def overlap_px(self) -> int:
        return (self.tile_latent - self.stride_latent) * self.scale


@dataclass(frozen=True)
class PatchPlan(_GridPlan):
    kind: str = "patches"
    halo_latent: int = 0


@dataclass(frozen=True)
class ShardPlan(_GridPlan):
    kind: str = "shards"

    def shard(self, rank: int) -> Shard:
        return self.items[rank]

    def neighbour(self, rank: int, d_row: int, d_col: int) -> int | None:
        """Rank of the shard at grid offset (d_row, d_col) from `rank`, or None at the border."""
        r, c = self.items[rank].grid_pos
        r, c = r + d_row, c + d_col
        if 0 <= r < self.grid[0] and 0 <= c < self.grid[1]:
            return r * self.grid[1] + c
        return None

    @cached_property
    def row_sizes(self) -> tuple[int, ...]:
        return tuple(self.items[r * self.grid[1]].rows.size for r in range(self.grid[0]))

    @cached_property
    def col_sizes(self) -> tuple[int, ...]:
        return tuple(self.items[c].cols.size for c in range(self.grid[1]))


@dataclass(frozen=True)
class FrameWindow:
    """A run of latent frames decoded together, and the output frames it produces."""

    latent: Span
    pixel: Span
    first: bool  # holds frame 0, which the Wan decoder treats specially (first_chunk)


def _work(item) -> int:
    if isinstance(item, Patch):
        return item.halo_rows.size * item.halo_cols.size
    return item.area


# --------------------------------------------------------------------------------------------- axes


def axis_tiles(length: int, tile: int, stride: int) -> list[Span]:
    """Overlapping tiles along one axis, in latent units, of one size, spread evenly from edge to edge.

    Count: 1 if length <= tile, else ceil((length - tile) / stride) + 1, as many as tiles every
    `stride` need. The tiles are then shrunk to the smallest size that still covers the axis with
    overlaps of at least tile - stride, and spaced evenly: so `stride` is the largest stride used, every
    overlap is at least tile - stride, and no pixel is decoded more often than the overlaps need
    (diffusers starts a full tile every stride to the end, which leaves a last sliver of a few rows
    with little context; full-size tiles spread evenly decode up to 25% more area than that).
    """
    if length <= tile:
        return [Span(0, length)]
    gaps = math.ceil((length - tile) / stride)
    size = math.ceil((length + gaps * (tile - stride)) / (gaps + 1))  # <= tile
    starts = [round(i * (length - size) / gaps) for i in range(gaps + 1)]
    return [Span(s, s + size) for s in starts]


def axis_blend_weights(spans_px: list[Span]) -> list[tuple[float, ...]]:
    """1-D blend weights of overlapping spans (pixels): linear ramps across every overlap.

    Across the overlap of two neighbours the incoming span ramps up as (x + 0.5) / overlap and the
    outgoing one down as its complement, so both edges get the same small weight (diffusers ramps
    x / overlap, giving the incoming edge row weight 0). Weights are normalised per pixel, so they
    sum to one even where an end-aligned last tile overlaps more than one neighbour.
    """
    raw = []
    for i, span in enumerate(spans_px):
        w = [1.0] * span.size
        if i > 0 and spans_px[i - 1].stop > span.start:  # ramp up over the overlap with the previous span
            overlap = spans_px[i - 1].stop - span.start
            for x in range(min(overlap, span.size)):
                w[x] *= (x + 0.5) / overlap
        if i + 1 < len(spans_px) and span.stop > spans_px[i + 1].start:  # ramp down into the next span
            overlap = span.stop - spans_px[i + 1].start
            for x in range(min(overlap, span.size)):
                w[span.size - 1 - x] *= (x + 0.5) / overlap
        raw.append(w)
    total = [0.0] * (max(s.stop for s in spans_px))
    for span, w in zip(spans_px, raw):
        for x, v in enumerate(w):
            total[span.start + x] += v
    return [tuple(v / total[span.start + x] for x, v in enumerate(w)) for span, w in zip(spans_px, raw)]


def split_even(length: int, parts: int) -> list[Span]:
    """Split [0, length) into `parts` contiguous spans whose sizes differ by at most one (larger first)."""
    base, extra = divmod(length, parts)
    spans, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        spans.append(Span(start, start + size))
        start += size
    return spans


def grid_shape(world_size: int, rows: int, cols: int) -> tuple[int, int]:
    """A rows x cols factorisation of `world_size` whose cells are as square as the latent allows.

    Among the factor pairs, pick the one whose cells (rows/r by cols/c) have the aspect ratio closest
    to 1; ties go to more grid rows (bands are contiguous in memory). A 480x832 video on 2 ranks is
    split 1x2, a square image on 4 ranks 2x2, anything on 3 ranks into three bands along its long side.
    """
    if world_size < 1:
        raise PlanError(f"world_size must be >= 1, got {world_size}")
    best = None
    for r in range(world_size, 0, -1):
        if world_size % r:
            continue
        c = world_size // r
        if r > rows or c > cols:
            continue
        badness = abs(math.log((rows / r) / (cols / c)))
        if best is None or badness < best[0] - 1e-12:
            best = (badness, (r, c))
    if best is None:
        raise PlanError(
            f"a latent of {rows}x{cols} (rows x cols) cannot be split over world_size={world_size}: "
            f"no grid r x c = {world_size} with r <= {rows} and c <= {cols}; use fewer ranks or a larger size"
        )
    return best[1]


def balance(work: list[int], world_size: int) -> list[int]:
    """Owner rank of each item: longest item first onto the least loaded rank (ties: lowest rank).

    Deterministic, so every rank computes the same assignment without talking. SGLang hands out
    contiguous index blocks instead, which leaves the rank with the edge slivers idle.
    """
    load = [0] * world_size
    owners = [0] * len(work)
    for i in sorted(range(len(work)), key=lambda i: (-work[i], i)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        owners[i] = r
        load[r] += work[i]
    return owners


# ---------------------------------------------------------------------------------------------- plans


def _check_latent_shape(latent_shape) -> tuple[int, int, int]:
    if len(latent_shape) != 3 or any(int(n) < 1 for n in latent_shape):
        raise PlanError(f"latent_shape must be (frames, rows, cols) of positive ints, got {tuple(latent_shape)}")
    return tuple(int(n) for n in latent_shape)


def plan_tiles(latent_shape, *, scale: int, tile_px: int = 256, stride_px: int = 192) -> TilePlan:
    """Overlapping tiles with blend weights, every tile owned by rank 0 (see `TilePlan.assign`)."""
    frames, rows, cols = _check_latent_shape(latent_shape)
    tile, stride = _tile_stride_latent(scale, tile_px, stride_px)
    row_spans, col_spans = axis_tiles(rows, tile, stride), axis_tiles(cols, tile, stride)
    row_w = axis_blend_weights([s.scaled(scale) for s in row_spans])
    col_w = axis_blend_weights([s.scaled(scale) for s in col_spans])
    items = tuple(
        Tile(rs, cs, scale, index=i * len(col_spans) + j, grid_pos=(i, j), row_weights=row_w[i], col_weights=col_w[j])
        for i, rs in enumerate(row_spans)
        for j, cs in enumerate(col_spans)
    )
    return TilePlan((frames, rows, cols), scale, (len(row_spans), len(col_spans)), items, tile_latent=tile, stride_latent=stride)


def _tile_stride_latent(scale: int, tile_px: int, stride_px: int) -> tuple[int, int]:
    """(tile, stride) in latent rows, after checking the pixel values a tiled decode accepts."""
    for name, value in (("tile_px", tile_px), ("stride_px", stride_px)):
        if value < scale or value % scale:
            raise PlanError(f"{name} must be a positive multiple of the spatial ratio {scale}, got {value}")
    if not (tile_px / 2 <= stride_px <= tile_px):
        raise PlanError(
            f"stride_px must lie in [tile_px/2, tile_px] = [{tile_px // 2}, {tile_px}] so that at most two "
            f"tiles overlap along an axis, got {stride_px}"
        )
    return tile_px // scale, stride_px // scale


def sglang_halo_latent(*, scale: int, tile_px: int = 256, stride_px: int = 192) -> int:
    """SGLang's patch halo for a tiling: half the tiles' overlap, in latent rows, rounded down.

    SGLang's `parallel_patch_decode` takes its halo from the VAE's tile settings as
    (tile_latent - stride_latent) // 2; its 256/192 px tiles at 8x give (32 - 24) // 2 = 4 latent rows.
    """
    tile, stride = _tile_stride_latent(scale, tile_px, stride_px)
    return (tile - stride) // 2


def plan_patches(latent_shape, *, scale: int, world_size: int, halo_latent: int | None = None, tile_px: int = 256,
                 stride_px: int = 192, grid=None) -> PatchPlan:
    """A rows x cols grid of patches, one per rank, each decoded with `halo_latent` extra rows/cols.

    `halo_latent=None` takes SGLang's halo for the tiling `tile_px`/`stride_px` (`sglang_halo_latent`),
    so a patch decode and a tiled decode with the same settings compare like for like.
    """
    frames, rows, cols = _check_latent_shape(latent_shape)
    if halo_latent is None:
        halo_latent = sglang_halo_latent(scale=scale, tile_px=tile_px, stride_px=stride_px)
    if halo_latent < 0:
        raise PlanError(f"halo_latent must be >= 0, got {halo_latent}")
    grid = _checked_grid(grid, world_size, rows, cols)
    row_spans, col_spans = split_even(rows, grid[0]), split_even(cols, grid[1])
    items = []
    for i, rs in enumerate(row_spans):
        for j, cs in enumerate(col_spans):
            items.append(
                Patch(
                    rs, cs, scale,
                    index=len(items), grid_pos=(i, j), rank=len(items),
                    halo_rows=Span(max(0, rs.start - halo_latent), min(rows, rs.stop + halo_latent)),
                    halo_cols=Span(max(0, cs.start - halo_latent), min(cols, cs.stop + halo_latent)),
                )
            )
    return PatchPlan((frames, rows, cols), scale, grid, tuple(items), halo_latent=halo_latent)


def plan_shards(latent_shape, *, scale: int, world_size: int, grid=None) -> ShardPlan:
    """A rows x cols grid of blocks, one per rank, in row-major rank order. Uneven splits differ by one row."""
    frames, rows, cols = _check_latent_shape(latent_shape)
    grid = _checked_grid(grid, world_size, rows, cols)
    row_spans, col_spans = split_even(rows, grid[0]), split_even(cols, grid[1])
    items = tuple(
        Shard(rs, cs, scale, rank=i * grid[1] + j, grid_pos=(i, j))
        for i, rs in enumerate(row_spans)
        for j, cs in enumerate(col_spans)
    )
    return ShardPlan((frames, rows, cols), scale, grid, items)


def _checked_grid(grid, world_size: int, rows: int, cols: int) -> tuple[int, int]:
    if grid is None:
        return grid_shape(world_size, rows, cols)
    grid = tuple(int(g) for g in grid)
    if len(grid) != 2 or grid[0] * grid[1] != world_size or min(grid) < 1:
        raise PlanError(f"grid must be (rows, cols) with rows * cols == world_size={world_size}, got {grid}")
    if grid[0] > rows or grid[1] > cols:
        raise PlanError(f"grid {grid} has more rows/cols than the latent ({rows}x{cols}); use a smaller grid")
    return grid


def pixel_frames(latent_frame: int, temporal_ratio: int | None) -> int:
    """Index of the first output frame of `latent_frame` (Wan: frame 0 -> 1 frame, later ones -> r frames)."""
    if not temporal_ratio:
        return latent_frame
    return 0 if latent_frame == 0 else 1 + temporal_ratio * (latent_frame - 1)


def frame_windows(frames: int, window: int | None, temporal_ratio: int | None) -> list[FrameWindow]:
    """Latent frames cut into runs of `window` (None: one run), with their output frame spans."""
    if window is not None and window < 1:
        raise PlanError(f"tile_frames must be >= 1 latent frame or None, got {window}")
    window = window or frames
    out = []
    for start in range(0, frames, window):
        stop = min(frames, start + window)
        px = Span(pixel_frames(start, temporal_ratio), pixel_frames(stop, temporal_ratio))
        out.append(FrameWindow(Span(start, stop), px, first=start == 0))
    return out


def describe(plan) -> dict:
    """A JSON-friendly description of a plan (coordinates, owners), without the weight vectors."""
    items = []
    for item in plan.items:
        d = {
            "index": item.index,
            "rank": item.rank,
            "grid_pos": list(item.grid_pos),
            "latent": [item.rows.start, item.rows.stop, item.cols.start, item.cols.stop],
            "pixel": [item.rows_px.start, item.rows_px.stop, item.cols_px.start, item.cols_px.stop],
        }
        if isinstance(item, Patch):
            d["halo_latent"] = [item.halo_rows.start, item.halo_rows.stop, item.halo_cols.start, item.halo_cols.stop]
        items.append(d)
    out = {"kind": plan.kind, "latent_shape": list(plan.latent_shape), "scale": plan.scale, "grid": list(plan.grid), "items": items}
    if isinstance(plan, TilePlan):
        out.update(tile_latent=plan.tile_latent, stride_latent=plan.stride_latent, overlap_px=plan.overlap_px)
    if isinstance(plan, PatchPlan):
        out["halo_latent"] = plan.halo_latent
    return out
