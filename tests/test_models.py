"""Presets: architecture facts, parameter counts, weights loading and latent checks."""

import json

import pytest
import torch

from workbench.models import (
    PRESETS,
    ModelError,
    build_vae,
    check_latents,
    count_parameters,
    get_preset,
    latent_shape,
    random_latents,
)

# Whole-VAE parameter counts of the real architectures (encoder + decoder), from the diffusers classes.
REAL_PARAMETERS = {"wan2.1": 126_892_531, "wan2.2-a14b": 126_892_531, "wan2.2-ti2v-5b": 704_688_668,
                   "qwen-image": 126_892_531, "qwen-image-edit": 126_892_531, "glm-image": 406_100_643}


@pytest.mark.parametrize("name", list(PRESETS))
def test_real_parameter_counts(name):
    assert count_parameters(name) == REAL_PARAMETERS[name]
    assert count_parameters(name, tiny=True) < REAL_PARAMETERS[name] / 40


@pytest.mark.parametrize("name", list(PRESETS))
def test_tiny_keeps_the_structure_of_the_real_model(name):
    """Same module types in the same order (up stages, causal convs, attention, norms), fewer channels."""
    preset = get_preset(name)
    with torch.device("meta"):
        import diffusers

        cls = getattr(diffusers, preset.vae_class)
        real, tiny = cls(**preset.config).decoder, cls(**preset.tiny_config).decoder
    kinds = lambda m: [type(x).__name__ for x in m.modules()]  # noqa: E731
    assert kinds(real) == kinds(tiny)


def test_preset_facts():
    assert get_preset("wan2.2-ti2v-5b").spatial_ratio == 16 and get_preset("wan2.2-ti2v-5b").latent_channels == 48
    glm = get_preset("glm-image").config
    assert glm["block_out_channels"] == [128, 512, 1024, 1024] and glm["layers_per_block"] == 3
    assert glm["mid_block_add_attention"] is False
    assert latent_shape("wan2.1", 480, 832, 81) == (1, 16, 21, 60, 104)
    assert latent_shape("qwen-image", 1024, 1024) == (1, 16, 1, 128, 128)
    assert latent_shape("glm-image", 1024, 512, batch=2) == (2, 16, 128, 64)
    with pytest.raises(KeyError, match="accepted: wan2.1"):
        get_preset("sdxl")


@pytest.mark.parametrize("args,match", [
    (("qwen-image", 500, 512), "multiples of 8"),
    (("wan2.2-ti2v-5b", 488, 832, 5), "multiples of 16"),
    (("qwen-image", 512, 512, 5), "image model"),
    (("wan2.1", 64, 64, 6), r"1 \+ 4k"),
])
def test_latent_shape_errors_name_what_is_accepted(args, match):
    with pytest.raises(ModelError, match=match):
        latent_shape(*args)


def test_check_latents_names_the_expected_layout():
    with pytest.raises(ModelError, match=r"qwen-image: latents must be \(B, C, T, H, W\) with C=16"):
        check_latents("qwen-image", torch.zeros(1, 16, 8, 8))
    with pytest.raises(ModelError, match="C=48"):
        check_latents("wan2.2-ti2v-5b", torch.zeros(1, 16, 1, 8, 8))
    with pytest.raises(ModelError, match="T=1"):
        check_latents("qwen-image", torch.zeros(1, 16, 3, 8, 8))


def test_random_latents_follow_the_preset_statistics():
    z = random_latents("wan2.1", (4, 16, 2, 32, 32), seed=3)
    mean = torch.tensor(get_preset("wan2.1").latents_mean)
    assert torch.allclose(z.mean(dim=(0, 2, 3, 4)), mean, atol=0.25)
    assert torch.equal(z, random_latents("wan2.1", (4, 16, 2, 32, 32), seed=3))


def test_seeded_weights_are_reproducible_and_bf16_is_the_rounded_fp32_model():
    a = build_vae("glm-image", tiny=True, weights="random", seed=1)
    b = build_vae("glm-image", tiny=True, weights="random", seed=1, dtype="bfloat16")
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa.to(torch.bfloat16), pb), n
    assert not torch.equal(a.decoder.conv_in.weight, build_vae("glm-image", tiny=True, weights="random", seed=2).decoder.conv_in.weight)


@pytest.mark.parametrize("name", list(PRESETS))
def test_real_configs_pass_the_folder_check_and_altered_ones_do_not(name):
    from workbench.models.loader import check_vae_config, vae_config

    preset = get_preset(name)
    real = {"_class_name": preset.vae_class, **vae_config(preset, tiny=False)}
    check_vae_config(preset, json.loads(json.dumps(real)), "config.json")  # lists, as a saved config has them
    key = {"AutoencoderKL": "layers_per_block"}.get(preset.vae_class, "num_res_blocks")
    with pytest.raises(ModelError, match=f"{key}=7"):
        check_vae_config(preset, {**real, key: 7}, "config.json")


def test_local_weights_round_trip_and_errors(tmp_path):
    vae = build_vae("qwen-image", tiny=True, weights="random", seed=7)
    vae.save_pretrained(tmp_path / "pipe" / "vae")
    loaded = build_vae("qwen-image", weights=tmp_path / "pipe")  # a pipeline folder with vae/
    for (n, p), (_, q) in zip(vae.named_parameters(), loaded.named_parameters()):
        assert torch.equal(p, q), n
    with pytest.raises(ModelError, match=f"qwen-image: no diffusers VAE at {tmp_path / 'missing'}"):
        build_vae("qwen-image", weights=tmp_path / "missing")
    with pytest.raises(ModelError, match="holds a AutoencoderKLQwenImage, the preset needs a AutoencoderKL"):
        build_vae("glm-image", weights=tmp_path / "pipe")
    other = build_vae("qwen-image", tiny=True, weights="random")
    other.register_to_config(base_dim=12)
    other.save_pretrained(tmp_path / "odd")
    with pytest.raises(ModelError, match="base_dim=12"):
        build_vae("qwen-image", weights=tmp_path / "odd")
