"""Shipped trained weights of the tiny presets, and an encode path from pictures to latents.

One file per architecture family under ``data/weights/`` (or the folder named by the environment
variable ``WORKBENCH_WEIGHTS``): the whole VAE state dict (encoder and decoder) in fp16 safetensors.

    >>> vae = build_vae("qwen-image", tiny=True)           # loads the trained tiny weights (load_trained)
    >>> z = encode(vae, "chelsea", height=256, width=256)  # (1, 16, 1, 32, 32)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

# family -> (the preset whose tiny architecture it trains, the presets it serves).
# AutoencoderKLWan and AutoencoderKLQwenImage share one architecture: their tiny state dicts have the
# same keys and shapes, and the same weights give the same outputs (tests/test_trained.py checks it).
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "wan": ("wan2.1", ("wan2.1", "wan2.2-a14b", "qwen-image", "qwen-image-edit")),
    "wan22": ("wan2.2-ti2v-5b", ("wan2.2-ti2v-5b",)),
    "glm": ("glm-image", ("glm-image",)),
}

_REPO_WEIGHTS = Path(__file__).resolve().parents[2] / "data" / "weights"


def weights_dir() -> Path:
    """Where the shipped weights are: $WORKBENCH_WEIGHTS, else the repository's data/weights."""
    env = os.environ.get("WORKBENCH_WEIGHTS")
    return Path(env) if env else _REPO_WEIGHTS


def family_of(preset_name: str) -> str | None:
    """The training family that serves a preset ('wan', 'wan22', 'glm'), or None."""
    from .presets import get_preset

    name = get_preset(preset_name).name
    for family, (_, served) in FAMILIES.items():
        if name in served:
            return family
    return None


def trained_weights_path(preset_name: str) -> Path | None:
    """The fp16 safetensors file that holds the preset's trained tiny weights, or None if absent."""
    family = family_of(preset_name)
    if family is None:
        return None
    path = weights_dir() / f"{family}.safetensors"
    return path if path.is_file() else None


def load_trained(vae, preset_name: str, path: str | Path | None = None):
    """Load the preset's trained tiny weights into a built tiny VAE (in place; cast to its dtype and device).

    Returns the VAE. Raises ModelError when no weights are shipped, or when the VAE's architecture
    differs from the one trained (for example the narrow test config)."""
    from safetensors.torch import load_file

    from .presets import ModelError

    path = Path(path) if path is not None else trained_weights_path(preset_name)
    if path is None or not Path(path).is_file():
        raise ModelError(f"{preset_name}: no trained tiny weights in {weights_dir()} (expected "
                         f"{family_of(preset_name)}.safetensors; set WORKBENCH_WEIGHTS to their folder), "
                         "or pass weights='random'")
    state = load_file(str(path))
    own = vae.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    wrong = sorted(k for k in own if k in state and own[k].shape != state[k].shape)
    if missing or extra or wrong:
        detail = "; ".join(f"{what}: {keys[:3]}{' ...' if len(keys) > 3 else ''}"
                           for what, keys in (("missing", missing), ("unexpected", extra), ("shape", wrong)) if keys)
        raise ModelError(f"{preset_name}: the weights in {path} do not fit this VAE ({detail}); "
                         "they were trained for the preset's trained_config in presets.py")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(state[k].to(dtype=v.dtype, device=v.device))
    return vae


def weights_card(preset_name: str) -> dict | None:
    """The training card (JSON) of the preset's weights, or None."""
    family = family_of(preset_name)
    path = weights_dir() / f"{family}.json"
    return json.loads(path.read_text()) if family and path.is_file() else None


# ------------------------------------------------------------------------------------------ encode


def _layout(vae) -> tuple[int, int, int | None]:
    """(latent ndim, spatial ratio, temporal ratio or None) of a diffusers VAE."""
    name = type(vae).__name__
    cfg = vae.config
    if name == "AutoencoderKL":
        return 4, 2 ** (len(cfg.block_out_channels) - 1), None
    spatial = getattr(cfg, "scale_factor_spatial", None) or 2 ** len(cfg.temperal_downsample)
    temporal = getattr(cfg, "scale_factor_temporal", None) or 2 ** sum(cfg.temperal_downsample)
    return 5, int(spatial), int(temporal)


def _read_file(path: Path) -> torch.Tensor:
    """An image file -> (3, H, W); an animated GIF or video (through imageio) -> (3, F, H, W); in [-1, 1]."""
    import numpy as np

    from .photos import to_tensor

    if path.suffix.lower() in (".gif", ".mp4", ".webm", ".avi", ".mov", ".mkv"):
        import imageio.v3 as iio

        frames = np.asarray(iio.imread(path))
        if frames.ndim == 4:
            return torch.stack([to_tensor(f) for f in frames], dim=1)
        return to_tensor(frames)
    from PIL import Image

    with Image.open(path) as im:
        return to_tensor(np.asarray(im.convert("RGBA") if im.mode in ("RGBA", "LA", "P") else im.convert("RGB")))


def load_picture(source) -> torch.Tensor:
    """A picture from a bundled photo's name, a file, an array or a tensor -> (3, H, W) or (3, F, H, W) in [-1, 1].

    Arrays: (H, W), (H, W, C) images, (F, H, W, C) videos; uint8 or float in [0, 1]. Tensors:
    (3, H, W) or (3, F, H, W) float in [-1, 1] (a leading batch of 1 is dropped)."""
    import numpy as np

    from .photos import FILES, load_photo, to_tensor

    if isinstance(source, str) and source in FILES:
        return load_photo(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{source!r} is neither a bundled photo's name nor a file")
        return _read_file(path)
    if isinstance(source, torch.Tensor):
        t = source.detach()
        if t.dim() == 5 and t.shape[0] == 1 or t.dim() == 4 and t.shape[0] == 1 and t.shape[1] in (1, 3):
            t = t[0]
        if t.is_floating_point() and t.shape[0] in (1, 3) and t.dim() in (3, 4):
            return t.float().expand(3, *t.shape[1:]).clone()
        source = t.cpu().numpy()
    a = np.asarray(source)
    if a.ndim == 4:  # (F, H, W, C) video
        return torch.stack([to_tensor(f) for f in a], dim=1)
    return to_tensor(a)


@torch.no_grad()
def encode(vae, source, *, height: int | None = None, width: int | None = None, frames: int | None = None,
           sample: bool = False, seed: int = 0) -> torch.Tensor:
    """An image or a video through the VAE's encoder -> a latent in the layout its decoder takes.

    `source`: a bundled photo's name ('chelsea'), an image or video file, a numpy array or a tensor
    (see `load_picture`). With `height` and `width` the picture is resized to cover them and
    centre-cropped; without, it is centre-cropped to multiples of the VAE's spatial ratio. Video
    frames are cut to 1 + 4k. Returns (1, C, T, h, w) for Wan/Qwen-Image, (1, C, h, w) for
    AutoencoderKL, on the VAE's device and in its dtype: the posterior mean, or a seeded sample.
    """
    from .photos import photo_to_size

    x = load_picture(source)
    ndim, s, t = _layout(vae)
    H, W = x.shape[-2:]
    height = height or H // s * s
    width = width or W // s * s
    if height % s or width % s or height < s or width < s:
        raise ValueError(f"height and width must be positive multiples of {s}, got {height}x{width}")
    x = photo_to_size(x, height, width)
    if x.dim() == 4:  # a video (3, F, H, W)
        if ndim == 4:
            raise ValueError(f"{type(vae).__name__} encodes images; got a video of {x.shape[1]} frames")
        n = x.shape[1] if frames is None else min(frames, x.shape[1])
        n = 1 + (n - 1) // t * t
        x = x[:, :n]
    elif ndim == 5:
        x = x[:, None]
    param = next(vae.parameters())
    x = x[None].to(device=param.device, dtype=param.dtype)
    dist = vae.encode(x).latent_dist
    if not sample:
        return dist.mode()
    gen = torch.Generator(device=param.device).manual_seed(seed)
    return dist.sample(generator=gen)


@torch.no_grad()
def reconstruct(vae, source, **kwargs) -> torch.Tensor:
    """encode, then decode: (1, 3, [F,] H, W) in [-1, 1], float32 on the CPU."""
    z = encode(vae, source, **kwargs)
    return vae.decode(z).sample.float().clamp(-1, 1).cpu()

