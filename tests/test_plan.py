"""Planner properties: coverage, partition of unity, counts, odd sizes, owners, errors."""

import math

import numpy as np
import pytest

from workbench.parallel.vae.plan import (
    PlanError,
    Span,
    axis_tiles,
    balance,
    frame_windows,
    grid_shape,
    plan_patches,
    plan_shards,
    plan_tiles,
    sglang_halo_latent,
    split_even,
)

# (rows, cols) latent sizes: square, wide, tall, primes, tiny, one row, larger than a tile.
SIZES = [(64, 64), (60, 104), (13, 7), (1, 1), (1, 37), (33, 32), (97, 61), (128, 90)]
TILINGS = [(256, 192), (256, 128), (128, 96), (64, 64), (512, 448)]  # (tile_px, stride_px) at scale 8


def coverage(plan) -> np.ndarray:
    h, w = plan.pixel_size
    cover = np.zeros((h, w), dtype=np.int32)
    for item in plan.items:
        cover[item.rows_px.slice(), item.cols_px.slice()] += 1
    return cover


@pytest.mark.parametrize("rows,cols", SIZES)
@pytest.mark.parametrize("tile_px,stride_px", TILINGS)
def test_tiles_cover_every_pixel_and_weights_sum_to_one(rows, cols, tile_px, stride_px):
    plan = plan_tiles((3, rows, cols), scale=8, tile_px=tile_px, stride_px=stride_px)
    assert coverage(plan).min() >= 1
    h, w = plan.pixel_size
    total = np.zeros((h, w))
    for t in plan.items:
        weight = np.outer(t.row_weights, t.col_weights)
        assert weight.shape == (t.rows_px.size, t.cols_px.size)
        assert weight.min() > 0, "a covered pixel must get some weight from each tile covering it"
        total[t.rows_px.slice(), t.cols_px.slice()] += weight
    np.testing.assert_allclose(total, 1.0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("rows,cols", SIZES)
@pytest.mark.parametrize("tile_px,stride_px", TILINGS)
def test_tile_count_matches_formula(rows, cols, tile_px, stride_px):
    tile, stride = tile_px // 8, stride_px // 8

    def expected(n):
        return 1 if n <= tile else math.ceil((n - tile) / stride) + 1

    plan = plan_tiles((1, rows, cols), scale=8, tile_px=tile_px, stride_px=stride_px)
    assert plan.grid == (expected(rows), expected(cols))
    assert len(plan.items) == expected(rows) * expected(cols)
    first = plan.items[0]
    for t in plan.items:  # one size for every tile (they decode as one batch), at most the requested one
        assert (t.rows.size, t.cols.size) == (first.rows.size, first.cols.size)
        assert t.rows.size <= min(tile, rows) and t.cols.size <= min(tile, cols)
        assert 0 <= t.rows.start and t.rows.stop <= rows and 0 <= t.cols.start and t.cols.stop <= cols


def test_tiles_are_no_larger_than_the_overlaps_need():
    """Fewer wasted pixels: the smallest equal tiles with the requested count and overlap, so shrinking them by
    one row would leave an overlap below tile - stride."""
    for length in range(33, 300):
        spans = axis_tiles(length, 32, 24)
        size = spans[0].stop - spans[0].start
        overlaps = [a.stop - b.start for a, b in zip(spans, spans[1:])]
        assert min(overlaps) >= 8, (length, spans)
        gaps = len(spans) - 1
        assert (size - 1) * len(spans) - gaps * 8 < length, f"tiles of {size - 1} rows would do at length {length}"


def test_tile_strides_never_exceed_the_requested_stride():
    for length in range(33, 300):
        spans = axis_tiles(length, 32, 24)
        steps = [b.start - a.start for a, b in zip(spans, spans[1:])]
        assert max(steps) <= 24 and min(steps) >= 1
        assert spans[0].start == 0 and spans[-1].stop == length


def test_interior_pixels_get_weight_one_and_overlaps_ramp():
    plan = plan_tiles((1, 64, 64), scale=8, tile_px=256, stride_px=192)
    first = plan.items[0]
    assert first.row_weights[0] == 1.0  # the image border is not blended
    overlap = plan.items[plan.grid[1]].rows_px.start  # where the second tile row starts
    assert all(w == 1.0 for w in first.row_weights[:overlap])
    ramp = first.row_weights[overlap:]
    assert all(a > b for a, b in zip(ramp, ramp[1:])), "weights fall monotonically across the overlap"


@pytest.mark.parametrize("scale,tile_px,stride_px,halo", [(8, 256, 192, 4), (16, 256, 192, 2), (8, 512, 384, 8),
                                                         (8, 64, 48, 1), (8, 256, 256, 0)])
def test_the_default_patch_halo_is_sglangs(scale, tile_px, stride_px, halo):
    """SGLang's parallel_patch_decode: halo = (tile_latent - stride_latent) // 2, from its 256/192 px tiling."""
    assert sglang_halo_latent(scale=scale, tile_px=tile_px, stride_px=stride_px) == halo
    plan = plan_patches((1, 64, 64), scale=scale, world_size=4, tile_px=tile_px, stride_px=stride_px)
    assert plan.halo_latent == halo
    assert plan_patches((1, 64, 64), scale=8, world_size=4).halo_latent == 4, "256/192 px by default"
    assert plan_patches((1, 64, 64), scale=8, world_size=4, halo_latent=1).halo_latent == 1


@pytest.mark.parametrize("rows,cols", SIZES)
@pytest.mark.parametrize("world", [1, 2, 3, 4, 6])
@pytest.mark.parametrize("halo", [0, 1, 3])
def test_patches_partition_the_image_and_crop_back_to_their_core(rows, cols, world, halo):
    try:
        plan = plan_patches((1, rows, cols), scale=8, world_size=world, halo_latent=halo)
    except PlanError:
        assert rows * cols < world or not any(r <= rows and world // r <= cols for r in range(1, world + 1) if world % r == 0)
        return
    assert (coverage(plan) == 1).all()
    assert sorted(p.rank for p in plan.items) == list(range(world))
    for p in plan.items:
        assert p.halo_rows.start == max(0, p.rows.start - halo) and p.halo_rows.stop == min(rows, p.rows.stop + halo)
        r, c = p.crop_px
        assert r.stop - r.start == p.rows.size * 8 and c.stop - c.start == p.cols.size * 8
        assert r.stop <= p.halo_rows.size * 8 and c.stop <= p.halo_cols.size * 8


@pytest.mark.parametrize("rows,cols", [(64, 64), (60, 104), (13, 7), (97, 61), (5, 3)])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_partition_the_latent_and_know_their_neighbours(rows, cols, world):
    plan = plan_shards((2, rows, cols), scale=8, world_size=world)
    assert (coverage(plan) == 1).all()
    gr, gc = plan.grid
    sizes = [s.rows.size for s in plan.items]
    assert max(sizes) - min(sizes) <= 1
    for s in plan.items:
        r, c = s.grid_pos
        assert s.rank == r * gc + c
        for dr, dc in [(-1, 0), (1, 0), (0, -1), (0, 1)]:
            n = plan.neighbour(s.rank, dr, dc)
            if n is None:
                assert not (0 <= r + dr < gr and 0 <= c + dc < gc)
            else:
                assert plan.neighbour(n, -dr, -dc) == s.rank
                if dr:  # vertical neighbours share columns, horizontal ones share rows
                    assert plan.items[n].cols == s.cols and plan.items[n].rows.stop in (s.rows.start, s.rows.stop + plan.items[n].rows.size)
                else:
                    assert plan.items[n].rows == s.rows


def test_grid_shape_prefers_square_cells():
    assert grid_shape(4, 64, 64) == (2, 2)
    assert grid_shape(2, 60, 104) == (1, 2)  # wide video: split the width
    assert grid_shape(2, 104, 60) == (2, 1)
    assert grid_shape(3, 64, 64) == (3, 1)  # a tie goes to row bands (contiguous in memory)
    assert grid_shape(8, 128, 128) in ((2, 4), (4, 2))
    with pytest.raises(PlanError, match="world_size=4"):
        grid_shape(4, 1, 3)


def test_split_even_and_balance():
    assert split_even(10, 4) == [Span(0, 3), Span(3, 6), Span(6, 8), Span(8, 10)]
    work = [1024, 1024, 512, 512, 256, 1024, 128]
    owners = balance(work, 3)
    loads = [sum(w for w, o in zip(work, owners) if o == r) for r in range(3)]
    assert max(loads) - min(loads) <= max(work)
    assert owners == balance(work, 3), "every rank must compute the same assignment"
    plan = plan_tiles((1, 97, 61), scale=8, tile_px=256, stride_px=192).assign(4)
    loads = plan.work_by_rank(4)
    assert sum(loads) == sum(t.area for t in plan.items)
    assert max(loads) - min(loads) <= max(t.area for t in plan.items)


def test_frame_windows_cover_the_video_causally():
    for frames, window in [(21, None), (21, 1), (21, 4), (1, 3), (7, 7)]:
        wins = frame_windows(frames, window, 4)
        assert wins[0].latent.start == 0 and wins[-1].latent.stop == frames and wins[0].first
        assert not any(w.first for w in wins[1:])
        assert all(a.latent.stop == b.latent.start and a.pixel.stop == b.pixel.start for a, b in zip(wins, wins[1:]))
        assert wins[-1].pixel.stop == 1 + 4 * (frames - 1)


@pytest.mark.parametrize("kwargs,match", [
    (dict(tile_px=256, stride_px=100), "stride_px"),
    (dict(tile_px=250, stride_px=192), "tile_px"),
    (dict(tile_px=256, stride_px=300), "stride_px"),
])
def test_bad_tiling_parameters_are_named(kwargs, match):
    with pytest.raises(PlanError, match=match):
        plan_tiles((1, 64, 64), scale=8, **kwargs)


def test_bad_shapes_and_grids_are_named():
    with pytest.raises(PlanError, match="latent_shape"):
        plan_tiles((64, 64), scale=8)
    with pytest.raises(PlanError, match="grid"):
        plan_shards((1, 64, 64), scale=8, world_size=4, grid=(3, 1))
    with pytest.raises(PlanError, match="halo_latent"):
        plan_patches((1, 64, 64), scale=8, world_size=2, halo_latent=-1)
