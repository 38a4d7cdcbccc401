"""The one-GPU speed levers (workbench.ops.vae.optimized) against the unmodified decode, over every tiny preset.

Tolerance LEVER_FP32_REL of the largest |output|, float32, and why:
- causal_conv: the skipped products are exact zeros and the H/W zero padding is the conv's own, so only the
  convolution algorithm's summation order changes (a 2-D conv for a lone frame, a padded conv elsewhere);
- fused_norm: float32 statistics and arithmetic as diffusers' float32 path, one rounding; the Triton kernel
  on CUDA sums the channels in another order;
- channels_last: the convolution library picks other kernels for the other memory format;
- conv_buffers: the convolution reads the values torch.cat would have put together; conv1's bias is added in
  float32 inside norm2's kernel, not rounded to the activations' dtype first (float32 here: ~1e-7).
Each measured ~1e-6 relative on the CPU; 2e-5 leaves room for GPU kernels. After the block the model is
the unmodified one again: its own forwards, modules and state_dict, and the same output bit for bit.
"""

import pytest
import torch
from helpers import DEVICE

from workbench.models import PRESETS, get_preset
from workbench.ops.vae import optimized
from workbench.parallel.vae import decode
from workbench.runner import DecodeJob, LocalRunner, load_model

LEVER_FP32_REL = 2e-5
SIZES = {name: ((64, 96, 9) if get_preset(name).is_video else (64, 96, 1)) for name in PRESETS}
SIZES["wan2.2-ti2v-5b"] = (128, 96, 9)
EAGER_LEVERS = [["causal_conv"], ["fused_norm"], ["channels_last"], ["causal_conv", "fused_norm"],
                ["channels_last", "causal_conv", "fused_norm"], ["channels_last", "causal_conv", "fused_norm", "conv_buffers"]]
VIDEO_PRESETS = [name for name in PRESETS if get_preset(name).is_video]


def setup(name):
    job = DecodeJob(model=name, size=SIZES[name], weights="random", device=DEVICE)
    vae = load_model(job, DEVICE)
    return vae, job.latents(DEVICE, vae)


def rel_error(out, ref):
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


class TestLeversMatchTheModel:
    @pytest.mark.parametrize("levers", EAGER_LEVERS, ids="+".join)
    @pytest.mark.parametrize("name", list(PRESETS))
    def test_full_with_levers_matches_full(self, name, levers):
        vae, z = setup(name)
        ref = decode(vae, z, "full", profile=False).output
        with optimized(vae, levers):
            out = decode(vae, z, "full", profile=False).output
        assert rel_error(out, ref) <= LEVER_FP32_REL

    @pytest.mark.parametrize("name", ["wan2.1", "glm-image"])
    def test_tiled_with_levers_matches_tiled(self, name):
        vae, z = setup(name)
        ref = decode(vae, z, "tiled", profile=False, tile_px=32, stride_px=24).output
        with optimized(vae, ["causal_conv", "fused_norm"]):
            out = decode(vae, z, "tiled", profile=False, tile_px=32, stride_px=24).output
        assert rel_error(out, ref) <= LEVER_FP32_REL


def cat_calls(fn) -> tuple[torch.Tensor, int]:
    """fn()'s result and how many aten.cat ran under it."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        cats = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.cats += func is torch.ops.aten.cat.default
            return func(*args, **(kwargs or {}))

    with Count():
        out = fn()
    return out, Count.cats


class TestConvBuffers:
    """conv_buffers changes where the residual blocks' norms write and where conv1's bias is added, not what the
    convolutions compute: the decode without it, to LEVER_FP32_REL, with fewer concatenations."""

    @pytest.mark.parametrize("layout", [[], ["channels_last"]], ids=["channel_first", "channels_last"])
    @pytest.mark.parametrize("name", VIDEO_PRESETS)
    def test_the_decode_without_it_and_without_the_cats(self, name, layout):
        vae, z = setup(name)
        base = [*layout, "causal_conv", "fused_norm"]
        with optimized(vae, base):
            ref, ref_cats = cat_calls(lambda: decode(vae, z, "full", profile=False).output)
        with optimized(vae, base + ["conv_buffers"]):
            out, cats = cat_calls(lambda: decode(vae, z, "full", profile=False).output)
        assert rel_error(out, ref) <= LEVER_FP32_REL
        blocks = sum(type(m).__name__ == "WanResidualBlock" for m in vae.decoder.modules())
        # each block's two convs stop concatenating, on every latent frame after the first
        assert ref_cats - cats >= 2 * blocks * (z.shape[2] - 1), (ref_cats, cats)

    @pytest.mark.parametrize("name", ["wan2.1", "wan2.2-ti2v-5b"])
    def test_tiled_in_windows_carries_the_same_cache(self, name):
        vae, z = setup(name)
        tile = {"tile_px": 32, "stride_px": 24} if name == "wan2.1" else {"tile_px": 64, "stride_px": 48}
        with optimized(vae, ["causal_conv", "fused_norm"]):
            ref = decode(vae, z, "tiled", profile=False, tile_frames=5, **tile).output
        with optimized(vae, ["causal_conv", "fused_norm", "conv_buffers"]):
            out = decode(vae, z, "tiled", profile=False, tile_frames=5, **tile).output
        assert rel_error(out, ref) <= LEVER_FP32_REL

    def test_a_conv_another_wrapper_owns_keeps_it(self):
        """A conv whose forward someone else replaced (shard's halo convs) is not bypassed: the block runs
        diffusers' forward, through that wrapper."""
        vae, z = setup("wan2.1")
        conv = next(m for m in vae.decoder.modules() if type(m).__name__ == "WanResidualBlock").conv1
        calls = []

        def wrapper(x, cache_x=None):
            calls.append(x.shape)
            return type(conv).forward(conv, x, cache_x)

        conv.forward = wrapper
        try:
            with optimized(vae, ["fused_norm", "conv_buffers"]):
                decode(vae, z, "full", profile=False)
        finally:
            del conv.forward
        assert len(calls) == z.shape[2]


class TestLeversThroughTheRunner:
    def test_compare_passes_levers_to_full_and_tiled_and_records_them(self):
        job = DecodeJob(model="wan2.1", size=SIZES["wan2.1"], weights="random", device=DEVICE)
        vae, z = setup("wan2.1")
        plain = decode(vae, z, "full", profile=False).output.cpu()
        comparison = LocalRunner(DEVICE).compare(job, ["full", "tiled"], tile_px=32, stride_px=24,
                                                 levers=("causal_conv", "fused_norm"))
        full = comparison.results["full"]
        assert full.params["levers"] == ("causal_conv", "fused_norm")
        assert comparison.results["tiled"].params["levers"] == ("causal_conv", "fused_norm")
        assert rel_error(full.output, plain) <= LEVER_FP32_REL
        assert not [m for m in vae.modules() if "forward" in m.__dict__]  # undone after the comparison


class TestLeversAreUndone:
    @pytest.mark.parametrize("name", list(PRESETS))
    def test_model_is_restored_bit_for_bit(self, name):
        vae, z = setup(name)
        before = decode(vae, z, "full", profile=False).output
        state = {k: v.clone() for k, v in vae.state_dict().items()}
        kinds = [type(m).__name__ for m in vae.modules()]
        with optimized(vae, ["channels_last", "causal_conv", "fused_norm", "conv_buffers"]):
            assert any(type(m).__name__.startswith("Fused") for m in vae.modules())
        assert [type(m).__name__ for m in vae.modules()] == kinds
        assert not [m for m in vae.modules() if "forward" in m.__dict__]
        assert all(p.is_contiguous() for p in vae.parameters())
        assert all(torch.equal(v, state[k]) for k, v in vae.state_dict().items())
        assert torch.equal(decode(vae, z, "full", profile=False).output, before)

    def test_a_failing_decode_still_restores_the_model(self):
        vae, z = setup("qwen-image")
        with pytest.raises(RuntimeError):
            with optimized(vae, ["causal_conv", "fused_norm"]):
                decode(vae, z[:, :3], "full", profile=False)  # 3 latent channels: the decoder's conv refuses
        assert not [m for m in vae.modules() if "forward" in m.__dict__]
        assert not [m for m in vae.modules() if type(m).__name__.startswith("Fused")]


class TestLeversRefuse:
    def test_unknown_lever_names_the_accepted_ones(self):
        vae, _ = setup("qwen-image")
        with pytest.raises(ValueError, match="unknown VAE lever.*'warp'.*accepted: channels_last, causal_conv"):
            with optimized(vae, ["warp"]):
                pass

    def test_compile_refuses_wan22_before_compiling(self):
        vae, _ = setup("wan2.2-ti2v-5b")
        with pytest.raises(NotImplementedError, match="Wan2.2-TI2V"):
            with optimized(vae, ["compile"]):
                pass
        assert type(vae.decoder).__name__ == "WanDecoder3d"

    def test_shard_refuses_a_fused_groupnorm_instead_of_normalising_by_one_rank(self):
        vae, z = setup("glm-image")
        with optimized(vae, ["fused_norm"]), pytest.raises(NotImplementedError, match="this rank's statistics alone"):
            decode(vae, z, "shard", profile=False)


RMS_PRESETS = [name for name in PRESETS if get_preset(name).vae_class != "AutoencoderKL"]


class TestShardLevers:
    """shard with the levers inside each rank against shard without: the same tolerance and reasons as above
    (the halo exchange and the grid are the same in both)."""

    @pytest.mark.parametrize("name", RMS_PRESETS)
    def test_shard_with_levers_matches_shard(self, clusters, name):
        cluster = clusters(2)
        job = DecodeJob(model=name, size=SIZES[name], weights="random", device=DEVICE)
        plain = cluster.decode(job, "shard").output
        fast = cluster.decode(job, "shard", levers=("causal_conv", "fused_norm"))
        assert fast.params["levers"] == ["causal_conv", "fused_norm"]
        assert rel_error(fast.output, plain) <= LEVER_FP32_REL

    def test_a_groupnorm_decoder_refuses_the_fused_norm_under_shard(self, clusters):
        job = DecodeJob(model="glm-image", size=SIZES["glm-image"], weights="random", device=DEVICE)
        with pytest.raises(RuntimeError, match="would normalise by this rank's statistics alone"):
            clusters(2).decode(job, "shard", levers=("fused_norm",))
        with pytest.raises(ValueError, match=r"shard: lever\(s\) 'compile' not accepted; accepted: causal_conv, fused_norm"):
            clusters(2).decode(job, "shard", levers=("compile",))
