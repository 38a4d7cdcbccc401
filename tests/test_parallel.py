"""Parallel strategies on real gloo process groups, checked against the single-process decode."""

import pytest
import torch

from workbench.compare import DecodeJob, run_local
from workbench.dist.tasks import rank_outputs_task
from workbench.metrics import compare
from workbench.models import PRESETS, get_preset

pytestmark = pytest.mark.slow

# Sizes whose latents split unevenly over 3 and 4 ranks (13 x 11 latent cells for the 8x models).
SIZES = {name: ((104, 88, 5) if get_preset(name).is_video else (104, 88, 1)) for name in PRESETS}
SIZES["wan2.2-ti2v-5b"] = (208, 176, 5)

# float32: a halo conv sums the same products as the full conv but the library may block the sum
# differently, and GroupNorm adds per-rank partial sums; both are reduction-order effects, which at
# these depths stay near 1e-6 of the output scale. 2e-5 of the largest |output| leaves margin.
SHARD_FP32_REL = 2e-5
# bfloat16: every layer rounds to 8 significant bits, so the decode itself is only bf16-accurate.
# "Within bf16 rounding" means: the sharded bf16 decode is as close to the float32 decode as the
# single-device bf16 decode is (mean error within 25%, max error within 50% of it).
BF16_MEAN_SLACK, BF16_MAX_SLACK = 1.25, 1.5

def rel_error(out, ref):
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


@pytest.mark.parametrize("model", list(PRESETS))
def test_shard_equals_full_at_world_1_2_3_4(model, clusters):
    job = DecodeJob(model=model, size=SIZES[model])
    full = run_local(job, "full").output
    assert rel_error(run_local(job, "shard").output, full) <= SHARD_FP32_REL  # world 1: no collectives
    for world in (2, 3, 4):
        result = clusters(world).decode(job, "shard")
        err = rel_error(result.output, full)
        assert err <= SHARD_FP32_REL, f"world {world} grid {result.plan.grid}: relative error {err:.2e}"
        assert len(result.ranks) == world and all(r.timeline for r in result.ranks)


@pytest.mark.parametrize("model", ["qwen-image", "wan2.1", "glm-image"])
def test_shard_in_bfloat16_stays_within_bf16_rounding(model, clusters):
    exact = run_local(DecodeJob(model=model, size=SIZES[model]), "full").output.double()
    job = DecodeJob(model=model, size=SIZES[model], dtype="bfloat16")
    single = (run_local(job, "full").output.double() - exact).abs()
    result = clusters(4).decode(job, "shard")
    assert result.output.dtype == torch.bfloat16
    sharded = (result.output.double() - exact).abs()
    assert sharded.mean() <= BF16_MEAN_SLACK * single.mean(), (sharded.mean(), single.mean())
    assert sharded.max() <= BF16_MAX_SLACK * single.max(), (sharded.max(), single.max())


def test_shard_output_modes_and_batches(clusters):
    job = DecodeJob(model="glm-image", size=(64, 96, 1), batch=2)
    full = run_local(job, "full").output
    cluster = clusters(2)
    outs = cluster.run(rank_outputs_task, job, "shard", {"output": "rank0"})
    assert outs[1] is None and rel_error(outs[0], full) <= SHARD_FP32_REL
    outs = cluster.run(rank_outputs_task, job, "shard", {"output": "all"})
    assert torch.equal(outs[0], outs[1]) and rel_error(outs[0], full) <= SHARD_FP32_REL
    outs = cluster.run(rank_outputs_task, job, "shard", {"output": "sharded", "grid": (1, 2)})
    assert outs[0].shape == (2, 3, 64, 48)  # each rank keeps only its own columns
    assert rel_error(torch.cat(outs, dim=-1), full) <= SHARD_FP32_REL


def test_shard_refuses_latents_smaller_than_the_world(clusters):
    from workbench.dist import RankError

    job = DecodeJob(model="qwen-image", size=(8, 16, 1))  # a 1 x 2 latent cannot be split 4 ways
    with pytest.raises(RankError, match="cannot be split over world_size=4.*mode='full'"):
        clusters(4).decode(job, "shard")


@pytest.mark.parametrize("merge", ["allgather", "rank0", "rank0-only"])
def test_parallel_tiled_equals_serial_tiled_exactly(merge, clusters):
    torch.set_num_threads(1)  # the workers run one thread each; keep the reference's kernels the same
    job = DecodeJob(model="wan2.1", size=(104, 88, 9))
    params = {"tile_px": 48, "stride_px": 32, "merge": merge}
    serial = run_local(job, "tiled", params).output
    for world in (2, 3):
        outs = clusters(world).run(rank_outputs_task, job, "parallel_tiled", params)
        assert torch.equal(outs[0], serial), f"world {world}"
        for rank_out in outs[1:]:
            if merge == "rank0-only":
                assert rank_out is None
            else:
                assert torch.equal(rank_out, serial)
    windows = clusters(2).decode(job, "parallel_tiled", **params, tile_frames=1)
    assert torch.equal(windows.output, serial), "temporal windows gather per window, same output"


def test_parallel_tiled_balances_work(clusters):
    job = DecodeJob(model="qwen-image", size=(200, 136, 1))  # 25 x 17 latent: edge tiles differ in size
    result = clusters(3).decode(job, "parallel_tiled", tile_px=64, stride_px=48)
    work = result.plan.work_by_rank(3)
    assert max(work) - min(work) <= max(t.area for t in result.plan.items)
    assert result.params["imbalance"] < 1.2


def test_patch_shows_its_seams(clusters, record_property):
    job = DecodeJob(model="qwen-image", size=(128, 128, 1))
    full = run_local(job, "full").output
    errors = {}
    for halo in (0, 2):
        result = clusters(4).decode(job, "patch", halo_latent=halo)
        q = compare(result.output, full, result.plan)
        errors[halo] = q
        record_property(f"patch_halo{halo}", str(q.to_dict()))
        print(f"\npatch halo={halo}: {q.to_dict()}")
        assert result.plan.grid == (2, 2)
        assert q.seam_ratio > 1.5, "patch edges must stand out in the error map"
    assert errors[2].mean_abs < errors[0].mean_abs, "a halo helps, but does not remove the seams"


def test_auto_explains_its_choice(clusters):
    # Estimated peaks of this tiny 256 x 256 decode: full ~58 MiB, shard over 2 ranks ~38 MiB per rank,
    # 128 px tiles ~20 MiB. A 30 MiB budget therefore leaves only tiles.
    job = DecodeJob(model="qwen-image", size=(256, 256, 1))
    full = run_local(job, "full").output
    roomy = clusters(2).decode(job, "auto", memory_budget_gib=64)
    assert roomy.choice == "shard" and "splits the whole decode exactly" in roomy.reason
    assert rel_error(roomy.output, full) <= SHARD_FP32_REL
    tight = clusters(2).decode(job, "auto", memory_budget_gib=0.03)
    assert tight.choice == "parallel_tiled" and "do not fit" in tight.reason and tight.params["tile_px"] < 256
    one = run_local(job, "auto", {"memory_budget_gib": 64})
    assert one.choice == "full" and torch.equal(one.output, full)
    squeezed = run_local(job, "auto", {"memory_budget_gib": 0.03})
    assert squeezed.choice == "tiled" and squeezed.params["tile_px"] < 256
    with pytest.raises(MemoryError, match="no strategy fits"):
        run_local(job, "auto", {"memory_budget_gib": 1e-6})
