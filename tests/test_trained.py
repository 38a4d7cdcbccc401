"""The shipped tiny weights load and reconstruct a held-out photo; the photos and the encode path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("skimage")

from workbench.metrics import psnr  # noqa: E402
from workbench.models import ModelError, build_vae  # noqa: E402
from workbench.models.photos import (  # noqa: E402
    HELD_OUT,
    TrainingPhotos,
    load_photo,
    photo_names,
    photo_to_size,
    synthetic_clip,
)
from workbench.models.trained import (  # noqa: E402
    FAMILIES,
    encode,
    load_trained,
    reconstruct,
    trained_weights_path,
)
from workbench.runner import DecodeJob, LocalRunner  # noqa: E402

_CACHE: dict = {}


def _trained(family: str, preset: str | None = None):
    """The family's tiny VAE with the shipped weights (built once per test session; do not modify it)."""
    preset = preset or FAMILIES[family][0]
    if preset not in _CACHE:
        _CACHE[preset] = build_vae(preset, tiny=True)  # the trained weights: the default for tiny presets
    return _CACHE[preset]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_shipped_weights_reconstruct_chelsea(family):
    """Issue 11's CPU check: >= 24 dB on the held-out photo at its own size (288x448); the cards give 28.1-33.1 dB
    there, and 26.1-31.5 dB at 256x256."""
    vae = _trained(family)
    x = photo_to_size(load_photo("chelsea"), 288, 448)
    with torch.no_grad():
        rec = reconstruct(vae, "chelsea", height=288, width=448)
    rec = rec[0, :, 0] if rec.dim() == 5 else rec[0]
    assert rec.shape == x.shape and psnr(rec, x) >= 24.0


def test_random_weights_are_one_argument_away():
    trained, random = build_vae("glm-image", tiny=True), build_vae("glm-image", tiny=True, weights="random")
    assert trained.config.block_out_channels[0] == 16 and random.config.block_out_channels[0] == 8
    x = photo_to_size(load_photo("chelsea"), 64, 64)[None]
    with torch.no_grad():
        assert psnr(random.decode(random.encode(x).latent_dist.mode()).sample.clamp(-1, 1), x) < 15
    with pytest.raises(ModelError, match="tiny presets only"):
        build_vae("glm-image", weights="trained")


def test_missing_weights_say_where_they_were_looked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_WEIGHTS", str(tmp_path))
    with pytest.raises(ModelError, match=f"no trained tiny weights in {tmp_path}.*weights='random'"):
        build_vae("wan2.1", tiny=True)


def test_a_job_decodes_a_photo_and_tiled_seams_stay_small():
    job = DecodeJob(model="qwen-image", size=(128, 128, 1), image="chelsea")
    comparison = LocalRunner("cpu").compare(job, ["full", "tiled"], tile_px=64, stride_px=48)
    full = comparison.results["full"].output[0, :, 0]
    assert psnr(full, job.picture()) >= 22.0  # the photo comes back (128x128: smaller than the cards' 256)
    assert comparison.quality["tiled"].psnr_db >= 35.0  # tiles agree on a real picture, overlap blended


def test_a_video_job_encodes_a_camera_motion_clip():
    job = DecodeJob(model="wan2.1", size=(64, 64, 9), image="coffee")
    picture = job.picture()
    assert picture.shape == (3, 9, 64, 64) and not torch.equal(picture[:, 0], picture[:, -1])
    z = job.latents(vae=_trained("wan"))
    assert tuple(z.shape) == job.latent_shape()
    with pytest.raises(ValueError, match="neither a bundled photo nor a file"):
        DecodeJob(image="no-such-photo")


def test_every_preset_has_weights():
    from workbench.models.presets import PRESETS

    for name in PRESETS:
        path = trained_weights_path(name)
        assert path is not None and path.stat().st_size < 10e6, name
    total = sum(p.stat().st_size for p in {trained_weights_path(n) for n in PRESETS})
    assert total <= 20e6


def test_wan_and_qwen_share_the_state_dict():
    import diffusers

    from workbench.models.presets import get_preset

    wan = _trained("wan", "wan2.1")
    preset = get_preset("qwen-image")
    qwen = load_trained(diffusers.AutoencoderKLQwenImage(**preset.trained_config).eval(), "qwen-image")
    x = photo_to_size(load_photo("chelsea"), 32, 32)[None, :, None]
    with torch.no_grad():
        a = wan.decode(wan.encode(x).latent_dist.mode()).sample
        b = qwen.decode(qwen.encode(x).latent_dist.mode()).sample
    torch.testing.assert_close(a, b)


def test_load_trained_refuses_another_width():
    import diffusers

    from workbench.models.presets import get_preset

    cfg = get_preset("glm-image").tiny_config  # the narrow test width
    with pytest.raises(ModelError, match="do not fit"):
        load_trained(diffusers.AutoencoderKL(**cfg), "glm-image")


def test_training_photos_never_held_out():
    train = photo_names("train")
    assert train and not set(train) & set(HELD_OUT)
    assert set(HELD_OUT) <= set(photo_names("all"))
    data = TrainingPhotos(seed=0)
    assert not set(data.names) & set(HELD_OUT)
    with pytest.raises(ValueError, match="held-out"):
        TrainingPhotos(names=("astronaut", "chelsea"))
    x = data.images_batch(2, 32)
    assert x.shape == (2, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert data.clips_batch(1, 5, 32).shape == (1, 3, 5, 32, 32)


def test_photos_and_clips():
    img = load_photo("coffee")
    assert img.shape == (3, 400, 600) and img.min() >= -1 and img.max() <= 1
    assert photo_to_size(img, 64, 96).shape == (3, 64, 96)
    a = synthetic_clip(img, 5, 32, 48, seed=3)
    assert a.shape == (3, 5, 32, 48)
    assert torch.equal(a, synthetic_clip(img, 5, 32, 48, seed=3))
    assert not torch.equal(a[:, 0], a[:, -1])  # the camera moves


def test_encode_accepts_name_array_and_file(tmp_path):
    from PIL import Image

    vae = _trained("glm")
    z_name = encode(vae, "chelsea", height=32, width=32)
    assert z_name.shape == (1, 16, 4, 4)
    arr = ((photo_to_size(load_photo("chelsea"), 32, 32).permute(1, 2, 0).numpy() + 1) * 127.5).round()
    arr = arr.astype(np.uint8)
    z_arr = encode(vae, arr)
    Image.fromarray(arr).save(tmp_path / "cat.png")
    z_file = encode(vae, tmp_path / "cat.png")
    z_str = encode(vae, str(tmp_path / "cat.png"))
    assert z_arr.shape == z_file.shape == (1, 16, 4, 4)
    torch.testing.assert_close(z_arr, z_file)
    torch.testing.assert_close(z_file, z_str)
    torch.testing.assert_close(z_name, z_arr, atol=0.1, rtol=0.05)  # uint8 rounding only
    with pytest.raises(FileNotFoundError):
        encode(vae, "no-such-photo")


def test_encode_video_layout():
    vae = _trained("wan22")
    clip = synthetic_clip(load_photo("chelsea"), 6, 32, 32, seed=0)  # 6 frames: cut to 5
    z = encode(vae, clip)
    assert z.shape == (1, 48, 2, 2, 2)
    z1 = encode(vae, load_photo("chelsea"), height=32, width=32)
    assert z1.shape == (1, 48, 1, 2, 2)


@pytest.mark.parametrize("graphs", [False, pytest.param(True, marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA graphs need a GPU"))])
def test_train_step_reads_its_lr(graphs):
    """A training step at LR 0 leaves the weights as they were (AdamW's decay scales with the LR); at the
    training LR it moves them and lowers the loss on a repeated batch. With graphs, the captured AdamW must read
    the LR from its tensor, not from the value at capture."""
    from workbench.models.train import TrainStep, _set_lr, build_tiny, make_optimizer

    device = torch.device("cuda" if graphs else "cpu")
    vae = build_tiny("glm")[0].to(device).train()
    opt = make_optimizer(vae, 1e-3, device)
    step = TrainStep(vae, opt, 1e-5, device, graphs=graphs)
    x = TrainingPhotos(device=device, seed=1).images_batch(2, 32)
    losses = [float(step(x)[0]) for _ in range(step.warmup + 3)]  # eager warm-up, capture, replays
    before = [p.detach().clone() for p in vae.parameters()]
    _set_lr(opt, 0.0)
    step(x)
    assert all(torch.equal(a, p) for a, p in zip(before, vae.parameters()))
    _set_lr(opt, 1e-3)
    losses.append(float(step(x)[0]))
    assert any(not torch.equal(a, p) for a, p in zip(before, vae.parameters()))
    assert losses[-1] < losses[0]
    assert step.captured if graphs else not step.captured


def test_train_writes_weights_and_card(tmp_path):
    """Two steps of the glm family on the CPU: the weights, the card and the picture, and the card's numbers."""
    import json

    from workbench.models.train import train

    card = train("glm", seconds=None, steps=2, batch=2, size=64, out=tmp_path, log_every=1)
    assert card["training"]["steps"] == 2 and json.loads((tmp_path / "glm.json").read_text()) == card
    assert {"glm.safetensors", "glm.md", "glm.json", "glm_chelsea.png"} <= {p.name for p in tmp_path.iterdir()}
    assert set(card["psnr_db"]) >= {"chelsea_256", "coffee_full"} and "--steps 2" in card["reproduce"]
    from workbench.models.train import build_tiny

    vae = load_trained(build_tiny("glm", seed=1)[0], "glm-image", tmp_path / "glm.safetensors")
    shipped = load_trained(build_tiny("glm", seed=1)[0], "glm-image")
    assert not torch.equal(vae.decoder.conv_out.weight, shipped.decoder.conv_out.weight)
