"""Sequence parallelism reproduces the single-device diffusers transformers (tiny configs, float32, gloo).

SP=2 and SP=4 on four CPU ranks (SP=2 as two groups of two), SP=3 on three (with 6 heads, so Ulysses can
split them), Ulysses and ring, against the unmodified model on the same inputs. Image token counts (15;
15 + 4 for Qwen-Image-Edit) and text lengths (Qwen-Image 7, GLM-Image 5) are chosen so that padding of
both streams and the last ranks' short shards are exercised (no text length divides by 2, 3 or 4; at SP=4
GLM-Image's last rank holds no real text token); Qwen-Image gets a text mask with masked tokens (at SP=3
and 4 one rank's whole text piece is masked in one sample). The text stream of Qwen-Image and GLM-Image
is sharded too: each rank's text-stream layers see ceil(T/SP) tokens, not T (checked by forward hooks on
them in every parallel run).

Tolerance: float32, `SP_TOL = 1e-5` relative to the output scale (values of order 1). The parallel model
computes the same sums in another order: the ring splits each softmax into per-block softmaxes merged by
log-sum-exp, and GEMMs see fewer rows (image and now text pieces), which can change their blocking; each
is a float32 rounding difference (~1e-7 relative). Measured here (max abs error over ranks): Wan Ulysses 0
(bitwise: every head still sees the whole sequence in one attention call), Qwen-Image and GLM-Image
Ulysses <= 6e-7 (the text layers' GEMMs now see ceil(T/SP) rows), ring <= 7.2e-7 on every
model. A padded text token used as a key, or the text mask ignored, gives 1e-2 to 2e-2.
"""

from __future__ import annotations

from dataclasses import replace

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
    shapes = [[(1, 3, 5)]] * 2 if name == "qwen-image" else [[(1, 3, 5), (1, 2, 2)]] * 2  # 15 / 15 + 4 tokens
    tokens = sum(a * b * c for a, b, c in shapes[0])
    return dict(hidden_states=r(2, tokens, 64), encoder_hidden_states=r(2, 7, 32), encoder_hidden_states_mask=mask,
                timestep=torch.tensor([0.7, 0.2]), img_shapes=shapes, return_dict=False)


# the per-token layers of the text stream in each block: (B, tokens, C) in, tokens counted
TEXT_LAYERS = {"QwenImageTransformer2DModel": ("txt_norm1", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
                                               "attn.to_add_out", "txt_norm2", "txt_mlp"),
               "GlmImageTransformer2DModel": ("norm1.norm_context", "norm2_context")}


def _count_text_tokens(model) -> tuple[list[int], list]:
    """Forward hooks recording the token count of every call of a text-stream layer: (counts, handles)."""
    counts, handles = [], []
    for block in getattr(model, "transformer_blocks", []):
        for path in TEXT_LAYERS.get(type(model).__name__, ()):
            layer = block.get_submodule(path)
            handles.append(layer.register_forward_hook(lambda m, args, out: counts.append(args[0].shape[1])))
    return counts, handles


def sp_task(ctx, name: str, sp: int, attention: str, native_a2a: bool = True, heads: int | None = None):
    """(max |parallel - reference|, max |reference|, repeatable, restored, text tokens per call of each
    text-stream layer at SP=1 and parallel, output) for one model on this rank."""
    use_dims(ctx, ParallelDims(ctx.world_size, sp=sp, cfg=ctx.world_size // sp))
    spec = get_spec(name.removesuffix("-per-token"))
    if heads:  # the same tiny model with another head count (Ulysses at SP=3)
        spec = replace(spec, tiny_transformer=dict(spec.tiny_transformer, num_attention_heads=heads))
    model = build_transformer(spec, tiny=True, device=ctx.device)
    inputs = {k: v.to(ctx.device) if isinstance(v, torch.Tensor) else v for k, v in _inputs(name).items()}
    counts, handles = _count_text_tokens(model)
    with torch.inference_mode():
        reference = model(**inputs)[0]
        single = sorted(set(counts))
        parallelize_dit(model, group=ctx.groups.sp, attention=attention)
        model._workbench_sp.native_a2a = native_a2a
        counts.clear()
        out = model(**inputs)[0]
        parallel = sorted(set(counts))
        again = model(**inputs)[0]  # hooks leave no state behind between calls
        unparallelize_dit(model)
        restored = model(**inputs)[0]
    for handle in handles:
        handle.remove()
    use_dims(ctx, ParallelDims(ctx.world_size))
    return ((out - reference).abs().max().item(), reference.abs().max().item(), torch.equal(out, again),
            torch.equal(restored, reference), (single, parallel), out)


@pytest.fixture(scope="module")
def cluster():
    """Four ranks on the test device: gloo on the CPU, NCCL on four GPUs."""
    if not ranks_available(4):
        pytest.skip("4 ranks need 4 GPUs")
    with Cluster(world_size=4, device=DEVICE, timeout_s=300, threads_per_rank=1) as c:
        yield c


MODELS = ["qwen-image", "qwen-image-edit", "wan2.1", "wan2.1-per-token", "glm-image"]
TEXT_LEN = {"qwen-image": 7, "qwen-image-edit": 7, "glm-image": 5}  # odd: pads at SP 2, 3 and 4


def _check(replies, name, sp, attention):
    for rank, (err, scale, repeatable, restored, (single, parallel), _) in enumerate(replies):
        assert scale > 0.1, "a degenerate reference would hide errors"
        assert err <= SP_TOL * max(1.0, scale), f"{name} sp={sp} {attention} rank {rank}: max error {err:.2e}"
        assert repeatable and restored
        if name in TEXT_LEN:  # every text-stream layer ran on this rank's ceil(T/SP) tokens, not on T
            assert single == [TEXT_LEN[name]] and parallel == [-(-TEXT_LEN[name] // sp)], (single, parallel)
        else:
            assert single == parallel == []
    outs = [r[-1] for r in replies]
    assert all(torch.equal(outs[0], o) for o in outs[1:]), "every rank returns the same gathered output"


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["ulysses", "ring"])
@pytest.mark.parametrize("sp", [2, 4])
@pytest.mark.parametrize("name", MODELS)
def test_sp_matches_single_device(cluster, name, sp, attention):
    _check(cluster.run(sp_task, name, sp, attention), name, sp, attention)


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["ulysses", "ring"])
@pytest.mark.parametrize("name", ["qwen-image", "qwen-image-edit", "glm-image"])
def test_sp3_uneven_text_matches_single_device(clusters, name, attention):
    """SP=3 on three ranks: the text (7 and 5 tokens) does not divide, nor do Qwen-Image-Edit's 15 + 4 image
    tokens; 6 heads so that Ulysses can split them."""
    _check(clusters(3).run(sp_task, name, 3, attention, True, 6), name, 3, attention)


def fused_choice_task(ctx, fused):
    """(notes, the block classes) after parallelize_dit(fused=...) of the tiny Qwen-Image DiT at SP=world."""
    model = build_transformer(get_spec("qwen-image"), tiny=True, device=ctx.device)
    notes = parallelize_dit(model, group=ctx.groups.sp, fused=fused)
    kinds = sorted({type(b).__name__ for b in model.transformer_blocks})
    unparallelize_dit(model)
    return notes, kinds


@pytest.mark.slow
def test_fused_ops_decline_at_sp_above_1_unless_always(cluster):
    """Where the step is launch-bound (SP > 1) fused=True declines, saying why; "always" keeps the fused blocks."""
    (notes, kinds), *_ = cluster.run(fused_choice_task, True)
    assert kinds == ["QwenImageTransformerBlock"] and notes[0].startswith("fused ops declined at SP > 1"), notes
    (notes, kinds), *_ = cluster.run(fused_choice_task, "always")
    assert kinds == ["FusedQwenImageTransformerBlock"] and notes[0].startswith("fused ops: workbench.ops"), notes
    with pytest.raises(ValueError, match="fused must be one of False, True, 'always', got 'yes'"):
        parallelize_dit(build_transformer(get_spec("qwen-image"), tiny=True), fused="yes")


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
    with pytest.raises(ValueError, match=r"compile must be True, False or a torch.compile mode \(default, reduce-overhead"):
        parallelize_dit(build_transformer(get_spec("wan2.1"), tiny=True), compile="fast")


@pytest.mark.slow
def test_blocks_compiled_in_a_named_mode_match_eager():
    """compile="reduce-overhead" (CUDA graphs on a GPU; on the CPU inductor alone) computes what eager does.
    Tolerance 1e-4 of the output's scale: float32, inductor fuses the blocks' pointwise ops (own summation order)."""
    model = build_transformer(get_spec("qwen-image"), tiny=True, device=DEVICE)
    inputs = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in _inputs("qwen-image").items()}
    with torch.inference_mode():
        eager = model(**inputs)[0]
        parallelize_dit(model, compile="reduce-overhead")
        compiled = [model(**inputs)[0].clone() for _ in range(3)]  # capture, then replays
        unparallelize_dit(model)
    for out in compiled:
        torch.testing.assert_close(out, eager, rtol=0, atol=1e-4 * eager.abs().max().item())
