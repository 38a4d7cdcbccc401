"""Sequence parallelism reproduces the single-device diffusers transformers (tiny configs, float32, gloo).

SP=2 and SP=4 on four CPU ranks (SP=2 as two groups of two), Ulysses and ring, against the unmodified
model on the same inputs. Image token counts are chosen not to divide by 2 or 4, so padding and the
last rank's short shard are exercised; Qwen-Image gets a text mask with masked tokens.

Tolerance: float32, `SP_TOL = 1e-5` relative to the output scale (values of order 1). The parallel model
computes the same sums in another order: the ring splits each softmax into per-block softmaxes merged by
log-sum-exp, and GEMMs see fewer rows, which can change their blocking; each is a float32 rounding
difference (~1e-7 relative). Measured here: Ulysses 0 (bitwise equal: every head still sees the whole
sequence in one attention call), ring <= 5e-7. Counting the text keys twice gives 2e-2.
"""

from __future__ import annotations

import pytest
import torch
from helpers import DEVICE, ranks_available

from workbench.models import get_spec
from workbench.parallel.dims import ParallelDims, use_dims
from workbench.parallel.dit import SeqShard, attention_lse, merge_lse, parallelize_dit, unparallelize_dit
from workbench.pipeline.components import build_transformer
from workbench.runner import Cluster

SP_TOL = 1e-5


def _inputs(name: str):
    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    if name == "wan2.1":  # 3 x 3 x 5 = 45 tokens
        return dict(hidden_states=r(2, 16, 3, 6, 10), timestep=torch.tensor([700.0, 300.0]),
                    encoder_hidden_states=r(2, 9, 32), return_dict=False)
    if name == "wan2.1-per-token":  # Wan2.2 TI2V's layout: a timestep per token, (B, S)
        return dict(hidden_states=r(2, 16, 3, 6, 10), timestep=torch.rand(2, 45, generator=g) * 1000,
                    encoder_hidden_states=r(2, 9, 32), return_dict=False)
    if name == "glm-image":  # 3 x 5 = 15 tokens
        return dict(hidden_states=r(2, 16, 6, 10), encoder_hidden_states=r(2, 5, 32),
                    prior_token_id=torch.randint(0, 64, (2, 15), generator=g),
                    prior_token_drop=torch.tensor([[False] * 15, [True] * 15]), timestep=torch.tensor([600.0, 100.0]),
                    target_size=torch.tensor([[48.0, 80.0]] * 2), crop_coords=torch.zeros(2, 2), return_dict=False)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    shapes = [[(1, 3, 5)]] * 2 if name == "qwen-image" else [[(1, 3, 5), (1, 2, 3)]] * 2  # 15 / 15 + 6 tokens
    tokens = sum(a * b * c for a, b, c in shapes[0])
    return dict(hidden_states=r(2, tokens, 64), encoder_hidden_states=r(2, 7, 32), encoder_hidden_states_mask=mask,
                timestep=torch.tensor([0.7, 0.2]), img_shapes=shapes, return_dict=False)


def sp_task(ctx, name: str, sp: int, attention: str, native_a2a: bool = True):
    """(max |parallel - reference|, max |reference|) for one model on this rank."""
    use_dims(ctx, ParallelDims(ctx.world_size, sp=sp, cfg=ctx.world_size // sp))
    model = build_transformer(get_spec(name.removesuffix("-per-token")), tiny=True, device=ctx.device)
    inputs = {k: v.to(ctx.device) if isinstance(v, torch.Tensor) else v for k, v in _inputs(name).items()}
    with torch.inference_mode():
        reference = model(**inputs)[0]
        parallelize_dit(model, group=ctx.groups.sp, attention=attention)
        model._workbench_sp.native_a2a = native_a2a
        out = model(**inputs)[0]
        again = model(**inputs)[0]  # hooks leave no state behind between calls
        unparallelize_dit(model)
        restored = model(**inputs)[0]
    use_dims(ctx, ParallelDims(ctx.world_size))
    return ((out - reference).abs().max().item(), reference.abs().max().item(), torch.equal(out, again),
            torch.equal(restored, reference), out)


@pytest.fixture(scope="module")
def cluster():
    """Four ranks on the test device: gloo on the CPU, NCCL on four GPUs."""
    if not ranks_available(4):
        pytest.skip("4 ranks need 4 GPUs")
    with Cluster(world_size=4, device=DEVICE, timeout_s=300, threads_per_rank=1) as c:
        yield c


MODELS = ["qwen-image", "qwen-image-edit", "wan2.1", "wan2.1-per-token", "glm-image"]


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["ulysses", "ring"])
@pytest.mark.parametrize("sp", [2, 4])
@pytest.mark.parametrize("name", MODELS)
def test_sp_matches_single_device(cluster, name, sp, attention):
    replies = cluster.run(sp_task, name, sp, attention)
    for rank, (err, scale, repeatable, restored, _) in enumerate(replies):
        assert scale > 0.1, "a degenerate reference would hide errors"
        assert err <= SP_TOL * max(1.0, scale), f"{name} sp={sp} {attention} rank {rank}: max error {err:.2e}"
        assert repeatable and restored
    outs = [r[-1] for r in replies]
    assert all(torch.equal(outs[0], o) for o in outs[1:]), "every rank returns the same gathered output"


@pytest.mark.slow
def test_ulysses_all_to_all_built_from_all_gather(cluster):
    """The fallback for backends without all_to_all gives the same answer."""
    native = cluster.run(sp_task, "qwen-image", 4, "ulysses", True)
    gathered = cluster.run(sp_task, "qwen-image", 4, "ulysses", False)
    for a, b in zip(native, gathered):
        assert torch.equal(a[-1], b[-1])


def test_seq_shard_pads_and_cuts():
    shards = [SeqShard(10, 4, r) for r in range(4)]
    assert [s.local for s in shards] == [3] * 4 and [s.valid() for s in shards] == [3, 3, 3, 1]
    x = torch.arange(10.0).view(1, 10)
    pieces = [s.shard(x, 1) for s in shards]
    assert torch.equal(torch.cat(pieces, 1)[:, :10], x) and pieces[3].tolist() == [[9.0, 0.0, 0.0]]
    assert SeqShard(3, 4, 3).valid() == 0
    with pytest.raises(ValueError, match="expected 10 tokens"):
        shards[0].shard(x[:, :9], 1)


def test_lse_merge_equals_full_softmax():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g) for _ in range(3))
    k2, v2 = torch.randn(2, 3, 7, 8, generator=g), torch.randn(2, 3, 7, 8, generator=g)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 4:] = False
    full = torch.nn.functional.scaled_dot_product_attention(
        q, torch.cat([k, k2], 2), torch.cat([v, v2], 2), attn_mask=torch.cat([torch.ones(2, 5, dtype=torch.bool), mask],
                                                                              1)[:, None, None, :])
    out, _ = merge_lse(*attention_lse(q, k, v), *attention_lse(q, k2, v2, mask))
    torch.testing.assert_close(out, full, rtol=SP_TOL, atol=SP_TOL)
    # two blocks whose keys are all masked (a rank's text piece of masked tokens): (0, -inf), not NaN
    none = torch.zeros(2, 7, dtype=torch.bool)
    empty = merge_lse(*attention_lse(q, k2, v2, none), *attention_lse(q, k2, v2, none))
    assert torch.equal(empty[0], torch.zeros_like(q)) and bool(torch.isneginf(empty[1]).all())
    again, _ = merge_lse(*empty, *merge_lse(*attention_lse(q, k, v), *attention_lse(q, k2, v2, mask)))
    torch.testing.assert_close(again, full, rtol=SP_TOL, atol=SP_TOL)


def test_unknown_model_and_method_are_refused():
    with pytest.raises(TypeError, match="no sequence-parallel plan for Linear"):
        parallelize_dit(torch.nn.Linear(2, 2), group=None)
    with pytest.raises(ValueError, match="accepted: ulysses, ring"):
        parallelize_dit(torch.nn.Linear(2, 2), group=None, attention="tree")
