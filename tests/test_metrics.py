"""Metrics on inputs whose answers are known."""

import math

import pytest
import torch

from workbench.metrics import boundary_distance, compare, error_map, psnr, seam_profile
from workbench.parallel.vae.plan import plan_shards, plan_tiles


def test_identical_outputs_are_exact():
    x = torch.rand(1, 3, 2, 16, 16) * 2 - 1
    q = compare(x, x.clone())
    assert q.max_abs == 0 and q.mean_abs == 0 and math.isinf(q.psnr_db)


def test_constant_offset_gives_known_errors_and_psnr():
    x = torch.zeros(2, 3, 32, 32)
    q = compare(x + 0.1, x)
    assert q.max_abs == pytest.approx(0.1) and q.mean_abs == pytest.approx(0.1)
    assert q.psnr_db == pytest.approx(10 * math.log10(4 / 0.01))  # range 2 (outputs in [-1, 1])
    assert psnr(x + 1.0, x) == pytest.approx(10 * math.log10(4))


def test_error_map_averages_batch_channels_and_frames():
    ref = torch.zeros(2, 3, 4, 8, 8)
    out = ref.clone()
    out[0, 0, 0, 2, 3] = 1.0
    e = error_map(out, ref)
    assert e.shape == (8, 8) and e[2, 3].item() == pytest.approx(1 / 24) and e.sum().item() == pytest.approx(1 / 24)
    with pytest.raises(ValueError, match="shape"):
        error_map(out[:, :, :2], ref)


def test_seam_signature_of_an_error_on_the_shard_boundary():
    plan = plan_shards((1, 8, 8), scale=8, world_size=2)  # two bands meeting at pixel row 32
    dist = boundary_distance(plan)
    assert dist[31, 0] == 0.5 and dist[32, 5] == 0.5 and dist[0, 0] == 31.5
    err = torch.zeros(64, 64, dtype=torch.float64)
    err[31:33] = 1.0  # an error exactly along the seam
    profile = seam_profile(err, plan, max_px=32)
    assert len(profile) == 32 and profile[0] == 1.0 and profile[1:].sum() == 0
    ref = torch.zeros(1, 3, 64, 64)
    out = ref.clone()
    out[:, :, 31:33] = 1.0
    q = compare(out, ref, plan, band_px=2)
    assert q.seam_mean_abs == pytest.approx(0.5) and q.interior_mean_abs == 0 and math.isinf(q.seam_ratio)


def test_a_single_tile_has_no_boundaries():
    plan = plan_tiles((1, 4, 4), scale=8, tile_px=256, stride_px=192)
    assert torch.isinf(boundary_distance(plan)).all()
    q = compare(torch.ones(1, 3, 32, 32), torch.zeros(1, 3, 32, 32), plan)
    assert q.seam_mean_abs is None and q.seam_ratio is None
