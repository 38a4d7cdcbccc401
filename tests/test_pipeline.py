"""Each pipeline end to end with tiny configs: one process, and two gloo ranks (SP=2, CFG parallel, ring).

Tolerance for two ranks against one: `PIPE_TOL = 1e-4` absolute on latents (order 1) and decoded pixels
(in [-1, 1]). Each transformer call differs from the single-device one by float32 reduction order
(<= 1e-6, see test_sp.py); two denoising steps and a decode by another exact strategy (auto picks
`shard` on two ranks) add a few of these. Measured: <= 7e-6. A pipeline bug (a branch combined wrongly,
a rank on other tokens or noise) moves values by 1e-2 or more.
"""

from __future__ import annotations

import pytest
import torch
from helpers import DEVICE, ranks_available

from workbench.cli import main
from workbench.models import ModelError
from workbench.pipeline import Parallelism, generate, make_job
from workbench.runner import Cluster, generate_task

PIPES = ["qwen-image", "qwen-image-edit", "wan2.1", "wan2.2", "glm-image"]
PIPE_TOL = 1e-4
STAGES = {"qwen-image-edit": "encode_image", "glm-image": "ar_tokens"}  # the main-rank-and-send stage


def _run(name, **kw):
    """One rank in this process on the test device; the result on the CPU, where every comparison happens."""
    return generate(name, tiny=True, steps=2, progress=False, device=DEVICE, **kw).cpu()


@pytest.fixture(scope="module")
def references():
    return {name: _run(name, decode="full") for name in PIPES}


@pytest.mark.parametrize("name", PIPES)
def test_one_rank_end_to_end(references, name):
    r = references[name]
    video = name.startswith("wan")
    assert r.output.shape == ((1, 3, 5, 64, 64) if video else (1, 3, 1, 128, 128) if "qwen" in name else (1, 3, 128, 128))
    assert torch.isfinite(r.output).all() and r.output.std() > 0.01
    stages = ["encode_prompt", *([STAGES[name]] if name in STAGES else []), "prepare_latents", "denoise", "decode"]
    assert [s.stage for s in r.spans] == stages
    assert len(r.step_times_s) == 2 and r.dims.world_size == 1
    extra = [s for s in r.spans if s.stage in STAGES.values()]
    assert all(s.parallelism == Parallelism.MAIN_RANK_ONLY_AND_SEND_TO_OTHERS.value for s in extra)


@pytest.mark.parametrize("name", ["qwen-image", "glm-image"])
def test_seeds_make_runs_reproducible(references, name):
    again = _run(name, decode="full")
    other = _run(name, decode="full", seed=1)
    assert torch.equal(again.output, references[name].output)
    assert (other.output - again.output).abs().max() > 1e-2
    if name == "glm-image":
        assert torch.equal(again.prior_token_ids, references[name].prior_token_ids)


def test_bad_input_names_the_parameter():
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) stepz; accepted: size, attention"):
        make_job("qwen-image", stepz=2)
    with pytest.raises(ValueError, match="unknown pipeline 'flux'; accepted: qwen-image, qwen-image-edit"):
        make_job("flux")
    with pytest.raises(ValueError, match="cfg .* must be 1 or 2, got 3"):
        make_job("wan2.1", cfg=3)
    with pytest.raises(ValueError, match="cfg=2 .* needs guidance_scale > 1"):
        make_job("glm-image", cfg=2, guidance_scale=1.0)
    with pytest.raises(ValueError, match="unknown decode mode 'fast'; accepted: full, tiled"):
        make_job("wan2.1", decode="fast")
    with pytest.raises(ValueError, match="attention must be one of ulysses, ring"):
        make_job("wan2.1", attention="tree")
    with pytest.raises(ValueError, match="multiples of 16 pixels, got 100x100"):
        _run("qwen-image", size="100x100")
    with pytest.raises(ValueError, match="qwen-image needs steps >= 2"):
        generate("qwen-image", tiny=True, steps=1)
    with pytest.raises(ValueError, match=r"frames must be 1 \+ 4k"):
        _run("wan2.1", size=(64, 64, 4))


def test_cli_generate_writes_files(tmp_path, capsys):
    assert main(["generate", "--pipeline", "wan2.1", "--tiny", "--steps", "1", "--decode", "full", "--no-progress",
                 "--out", str(tmp_path)]) == 0
    assert "denoise" in capsys.readouterr().out
    names = {p.name for p in tmp_path.iterdir()}
    assert {"generation.json", "timeline.png", "memory.png", "wan2.1_f000.png"} <= names
    assert main(["generate", "--pipeline", "wan2.1", "--tiny", "--size", "60x60"]) == 2
    assert "multiples of 16" in capsys.readouterr().err


@pytest.fixture(scope="module")
def cluster():
    if not ranks_available(2):
        pytest.skip("2 ranks need 2 GPUs")
    with Cluster(world_size=2, device=DEVICE, timeout_s=300) as c:
        yield c


def _on_two_ranks(cluster, name, **kw):
    request, options = make_job(name, tiny=True, steps=2, progress=False, **kw)
    return cluster.run(generate_task, request, options)


LAYOUTS = {"sp2": dict(sp=2), "cfg2": dict(cfg=2), "sp2-ring": dict(sp=2, attention="ring", decode="shard")}
CASES = [(name, layout) for layout in LAYOUTS for name in PIPES
         if layout != "sp2-ring" or name in ("qwen-image", "wan2.1", "glm-image")]  # ring: also in test_sp.py


@pytest.mark.slow
@pytest.mark.parametrize("name,layout", CASES, ids=[f"{n}-{lay}" for n, lay in CASES])
def test_two_ranks_match_one(cluster, references, name, layout):
    layout = LAYOUTS[layout]
    r0, r1 = _on_two_ranks(cluster, name, **layout)
    ref = references[name]
    assert torch.equal(r0.latents, r1.latents), "every rank ends with the same latents"
    torch.testing.assert_close(r0.latents, ref.latents, rtol=0, atol=PIPE_TOL)
    torch.testing.assert_close(r0.output, ref.output, rtol=0, atol=PIPE_TOL)
    assert r1.output is None
    assert {(s.rank, s.stage) for s in r0.spans} == {(r, s.stage) for s in ref.spans for r in (0, 1)}
    assert r0.dims.sp == layout.get("sp", 1) and r0.dims.cfg == layout.get("cfg", 1)


@pytest.mark.slow
def test_glm_tokens_identical_on_all_ranks(cluster, references):
    replies = _on_two_ranks(cluster, "glm-image", sp=2)
    tokens = [r.prior_token_ids for r in replies]
    assert tokens[0].shape == (1, 64) and tokens[0].dtype == torch.long
    assert all(torch.equal(tokens[0], t) for t in tokens[1:])
    assert torch.equal(tokens[0], references["glm-image"].prior_token_ids)  # the seed decides, not the rank count
    waiting = [s for s in replies[0].spans if s.stage == "ar_tokens" and s.rank == 1]
    assert len(waiting) == 1 and not waiting[0].active  # rank 1 waited for rank 0's tokens


@pytest.mark.slow
def test_cluster_generate_returns_rank0_result(cluster):
    result = cluster.generate("qwen-image", tiny=True, steps=2, progress=False, sp=2)
    assert result.rank == 0 and result.output is not None and result.output.device.type == "cpu"
    assert "rank 1 s" in result.table()


@pytest.mark.parametrize("name", ["wan2.1", "glm-image"])
def test_plots_draw_from_a_result(references, name):
    from workbench.pipeline import viz as pviz

    r = references[name]
    for draw in (pviz.show_output, pviz.plot_stage_timeline, pviz.plot_memory):
        fig = draw(r)
        assert fig.axes
        fig.clf()
    assert len(pviz.show_output(r).axes) == (4 if name == "wan2.1" else 1)


def test_local_weights_folder(tmp_path):
    """A diffusers-style folder (transformer/, vae/, text_encoder/, tokenizer/) is loaded instead of random
    weights: save the tiny Wan2.1 components, load them back as a 'real' pipeline, compare."""
    from workbench.pipeline import build_pipeline

    ours = build_pipeline("wan2.1", tiny=True)
    ours.transformers[0].save_pretrained(tmp_path / "transformer")
    ours.vae.save_pretrained(tmp_path / "vae")
    ours.text.model.save_pretrained(tmp_path / "text_encoder")
    ours.text.tokenizer.save_pretrained(tmp_path / "tokenizer")
    loaded = build_pipeline("wan2.1", tiny=False, weights=str(tmp_path))
    for a, b in ((ours.transformers[0], loaded.transformers[0]), (ours.vae, loaded.vae)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    mine, theirs = ours.text.encode(["a fox"])[0], loaded.text.encode(["a fox"])[0]
    assert theirs.shape[1] == 512 and torch.equal(theirs[:, :16], mine)  # the real pipeline pads to 512 tokens
    result = generate("wan2.1", tiny=False, weights=str(tmp_path), size=(64, 64, 5), steps=2, progress=False)
    assert result.output.shape == (1, 3, 5, 64, 64) and torch.isfinite(result.output).all()
    with pytest.raises(ModelError, match="no transformer/config.json under"):
        build_pipeline("qwen-image", tiny=False, weights=str(tmp_path / "vae"))
