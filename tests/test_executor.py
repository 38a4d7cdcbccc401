"""Executor semantics for each Parallelism, on one process and on two gloo ranks (a Cluster).

Worker functions are module-level so that the spawned ranks can unpickle them.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.distributed as dist

from workbench.parallel.dims import ParallelDims, use_dims
from workbench.pipeline.cfg import combine, guided
from workbench.pipeline.executor import Executor, StageContext
from workbench.pipeline.stages import Batch, Parallelism, Request, Stage, StageError
from workbench.runner import Cluster
from workbench.runtime import local_context

P = Parallelism


def _mark(name):
    def fn(batch, ctx):
        return dataclasses.replace(batch, extras={**batch.extras, name: ctx.rank})
    return fn


def _fail(batch, ctx):
    if ctx.rank == 0:
        raise ValueError("boom on purpose")
    return batch


def _fail_on_rank_1(batch, ctx):
    if ctx.rank == 1:
        raise KeyError("rank one is unhappy")
    return batch


def _random_state(batch, ctx):
    """Different on every rank unless broadcast: a rank-dependent seed."""
    g = torch.Generator().manual_seed(1234 + 97 * ctx.rank)
    extras = {
        "bf16": torch.randn(3, 5, generator=g).bfloat16(),
        "bool": torch.rand(7, generator=g) > 0.5,  # 7 bytes: misaligns whatever follows in the byte buffer
        "complex": torch.randn(4, 2, generator=g, dtype=torch.complex64),
        "int": torch.randint(0, 1000, (2, 3), generator=g),
        "scalar": torch.tensor(float(ctx.rank) + 0.5),
        "nested": [torch.randn(2, generator=g), {"deep": torch.arange(3) * (ctx.rank + 1)}],
        "meta": f"made on rank {ctx.rank}",
    }
    return dataclasses.replace(batch, latents=torch.randn(1, 4, 3, generator=g), extras={**batch.extras, **extras})


def _batch():
    return Batch(Request(prompt="test"))


# --------------------------------------------------------------------------------------------- tasks


def semantics_task(ctx):
    """Run one stage of each kind; return what this rank ends with."""
    stages = [Stage("send", _random_state, P.MAIN_RANK_ONLY_AND_SEND_TO_OTHERS),
              Stage("everyone", _mark("everyone"), P.REPLICATED),
              Stage("main", _mark("main"), P.MAIN_RANK_ONLY),
              Stage("cfg", _mark("cfg"), P.CFG_PARALLEL)]
    run = Executor(stages, ctx).run(_batch())
    return run.batch, run.spans


def failure_task(ctx, stage_fn, parallelism: str):
    """Every rank reports the StageError it got, then proves the group still works (nothing hangs)."""
    stages = [Stage("ok", _mark("ok"), P.REPLICATED), Stage("bad", stage_fn, P[parallelism])]
    try:
        Executor(stages, ctx).run(_batch())
        message = None
    except StageError as e:
        message = (str(e), sorted(e.failures))
    t = torch.ones(1)
    dist.all_reduce(t)
    return message, float(t)


def cfg_task(ctx, scale: float, renorm: bool):
    """CFG-parallel guidance with cfg=2 against the serial formula."""
    use_dims(ctx, ParallelDims(ctx.world_size, cfg=2))
    sctx = StageContext(ctx.rank, ctx.world_size, ctx.device, ctx.backend, ctx.groups, ctx)
    preds = {"cond": torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(1)),
             "uncond": torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(2))}
    calls = []

    def predict(branch):
        calls.append(branch)
        return preds[branch]

    out = guided(predict, scale=scale, ctx=sctx, renorm=renorm)
    use_dims(ctx, ParallelDims(ctx.world_size))
    return out, calls, combine(preds["cond"], preds["uncond"], scale, renorm=renorm)


# --------------------------------------------------------------------------------------------- tests


def test_single_process_semantics_and_spans():
    ctx = local_context("cpu")
    stages = [Stage("a", _mark("a")), Stage("b", _mark("b"), P.MAIN_RANK_ONLY),
              Stage("c", _random_state, P.MAIN_RANK_ONLY_AND_SEND_TO_OTHERS)]
    run = Executor(stages, ctx).run(_batch())
    assert run.batch.extras["meta"] == "made on rank 0"
    assert [s.stage for s in run.spans] == ["a", "b", "c"]
    assert all(s.end_s >= s.start_s >= 0 and s.peak_bytes > 0 for s in run.spans)
    assert len(run.stats) == 1 and [p[0] for p in run.stats[0].phases] == ["a", "b", "c"]


def test_single_process_failure_names_rank_0():
    with pytest.raises(StageError, match=r"stage 'bad' failed on rank 0: ValueError: boom on purpose") as info:
        Executor([Stage("bad", _fail, P.MAIN_RANK_ONLY_AND_SEND_TO_OTHERS)], local_context()).run(_batch())
    assert isinstance(info.value.__cause__, ValueError)


def test_stage_rejects_a_bad_parallelism():
    with pytest.raises(ValueError, match="parallelism must be a Parallelism"):
        Stage("x", _mark("x"), "replicated")


@pytest.fixture(scope="module")
def cluster():
    with Cluster(world_size=2, device="cpu", timeout_s=120) as c:
        yield c


@pytest.mark.slow
def test_each_parallelism_on_two_ranks(cluster):
    (b0, spans), (b1, _) = cluster.run(semantics_task)
    assert b0.extras["everyone"] == 0 and b1.extras["everyone"] == 1  # replicated: each rank ran it
    assert b0.extras["cfg"] == 0 and b1.extras["cfg"] == 1
    assert b0.extras["main"] == 0 and "main" not in b1.extras  # main-rank-only: rank 0 ran it, rank 1 waited
    # broadcast: bitwise identical state, rank 0's
    assert b1.extras["meta"] == "made on rank 0"
    assert torch.equal(b0.latents, b1.latents)
    for key in ("bf16", "bool", "complex", "int", "scalar"):
        assert b0.extras[key].dtype == b1.extras[key].dtype and torch.equal(b0.extras[key], b1.extras[key]), key
    assert torch.equal(b0.extras["nested"][0], b1.extras["nested"][0])
    assert torch.equal(b0.extras["nested"][1]["deep"], b1.extras["nested"][1]["deep"])
    by_rank = {(s.rank, s.stage): s for s in spans}  # every rank's spans, gathered
    assert {r for r, _ in by_rank} == {0, 1}
    assert by_rank[(0, "main")].active and not by_rank[(1, "main")].active
    assert by_rank[(1, "everyone")].active


@pytest.mark.slow
@pytest.mark.parametrize("parallelism", ["MAIN_RANK_ONLY", "MAIN_RANK_ONLY_AND_SEND_TO_OTHERS"])
def test_rank0_failure_raises_on_every_rank(cluster, parallelism):
    replies = cluster.run(failure_task, _fail, parallelism)
    for (message, failed), total in replies:
        assert "stage 'bad' failed on rank 0: ValueError: boom on purpose" in message
        assert failed == [0] and total == 2.0  # the group still works afterwards


@pytest.mark.slow
def test_replicated_failure_on_rank_1_raises_on_every_rank(cluster):
    for (message, failed), total in cluster.run(failure_task, _fail_on_rank_1, "REPLICATED"):
        assert "failed on rank 1: KeyError" in message and failed == [1] and total == 2.0


@pytest.mark.slow
@pytest.mark.parametrize("renorm", [False, True])
def test_cfg_parallel_matches_serial(cluster, renorm):
    (out0, calls0, serial), (out1, calls1, _) = cluster.run(cfg_task, 3.5, renorm)
    assert calls0 == ["cond"] and calls1 == ["uncond"]  # one branch per rank group
    assert torch.equal(out0, out1)  # both groups continue from the same state
    torch.testing.assert_close(out0, serial, rtol=0, atol=0)  # same formula, same inputs: exact
