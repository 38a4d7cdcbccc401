"""Build a preset's VAE (seeded random weights or a local diffusers folder) and make latents for it."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .presets import Preset, get_preset

# Config keys that fix the architecture; a local folder whose config differs in any of them is refused.
_ARCH_KEYS = {
    "AutoencoderKLWan": ("base_dim", "decoder_base_dim", "z_dim", "dim_mult", "num_res_blocks", "is_residual",
                         "patch_size", "in_channels", "out_channels", "scale_factor_spatial"),
    "AutoencoderKLQwenImage": ("base_dim", "z_dim", "dim_mult", "num_res_blocks"),
    "AutoencoderKL": ("latent_channels", "block_out_channels", "layers_per_block", "norm_num_groups",
                      "mid_block_add_attention", "use_post_quant_conv"),
}

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


class ModelError(ValueError):
    """A model cannot be built or loaded as asked; the message names the preset, path or shape."""


def parse_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; accepted: float32, bfloat16, float16") from None


def vae_class(preset: Preset):
    import diffusers

    return getattr(diffusers, preset.vae_class)


def vae_config(preset: Preset, tiny: bool) -> dict:
    """The full constructor config of the preset's VAE: the class defaults, then the preset's values."""
    import inspect

    cls = vae_class(preset)
    defaults = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return {**defaults, **(preset.tiny_config if tiny else preset.config)}


def check_local_config(preset: Preset, found: dict, where: str) -> None:
    """Refuse a config.json whose architecture differs from the preset's real (or tiny) config."""
    if found.get("_class_name", preset.vae_class) != preset.vae_class:
        raise ModelError(f"{preset.name}: {where} holds a {found['_class_name']}, the preset needs a {preset.vae_class}")
    keys = [k for k in _ARCH_KEYS[preset.vae_class] if k in found]
    for tiny in (False, True):
        expected = vae_config(preset, tiny=tiny)
        if all(_norm(found[k]) == _norm(expected.get(k)) for k in keys):
            return
    expected = vae_config(preset, tiny=False)
    detail = ", ".join(f"{k}={found[k]!r} (preset: {expected.get(k)!r})" for k in keys
                       if _norm(found[k]) != _norm(expected.get(k)))
    raise ModelError(f"{preset.name}: the config at {where} does not match the preset: {detail}")


def build_vae(preset: Preset | str, *, tiny: bool = False, weights: str | Path | None = None,
              dtype="float32", device="cpu", seed: int = 0):
    """The preset's VAE in eval mode: seeded random weights, or real weights from a local folder.

    `weights` is a diffusers-format folder: the VAE folder itself (config.json + safetensors) or a
    pipeline folder with a `vae/` subfolder. Nothing is downloaded.

        >>> vae = build_vae("qwen-image", tiny=True)
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    dtype = parse_dtype(dtype)
    if weights is not None:
        return _load_local(preset, Path(weights), dtype, device)
    cls = vae_class(preset)
    config = preset.tiny_config if tiny else preset.config
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        vae = cls(**config)
    # nn.Module.to, not ModelMixin.to, which warns about casting: weights are drawn in float32 and
    # rounded, so the bf16 model is the fp32 model rounded and the two decodes can be compared.
    return torch.nn.Module.to(vae, dtype=dtype).eval().requires_grad_(False)


def _load_local(preset: Preset, path: Path, dtype, device):
    folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{preset.name}: no diffusers VAE at {path} (looked for {path}/config.json and "
                         f"{path}/vae/config.json); pass a local folder saved with save_pretrained")
    check_local_config(preset, json.loads(config_file.read_text()), str(config_file))
    vae = vae_class(preset).from_pretrained(str(folder), local_files_only=True, torch_dtype=dtype)
    return torch.nn.Module.to(vae, device).eval().requires_grad_(False)


def _norm(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def count_parameters(preset: Preset | str, *, tiny: bool = False) -> int:
    """Parameter count of the whole VAE (encoder and decoder), built on the meta device."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    cls = vae_class(preset)
    with torch.device("meta"):
        vae = cls(**(preset.tiny_config if tiny else preset.config))
    return sum(p.numel() for p in vae.parameters())


def count_decoder_parameters(preset: Preset | str, *, tiny: bool = False) -> int:
    preset = get_preset(preset) if isinstance(preset, str) else preset
    with torch.device("meta"):
        vae = vae_class(preset)(**(preset.tiny_config if tiny else preset.config))
    modules = [vae.decoder, getattr(vae, "post_quant_conv", None)]
    return sum(p.numel() for m in modules if m is not None for p in m.parameters())


# ----------------------------------------------------------------------------------------------- latents


def parse_size(size: str) -> tuple[int, int, int]:
    """'HxW' or 'HxWxF' (pixels, frames) -> (height, width, frames)."""
    parts = str(size).lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (2, 3) or any(v < 1 for v in values):
        raise ValueError(f"size must be HxW or HxWxF in pixels (e.g. 512x512 or 480x832x81), got {size!r}")
    return (values[0], values[1], values[2] if len(values) == 3 else 1)


def latent_shape(preset: Preset | str, height: int, width: int, frames: int = 1, batch: int = 1) -> tuple[int, ...]:
    """Latent shape that decodes to (height, width, frames); errors name what the preset accepts."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    s = preset.spatial_ratio
    if height % s or width % s:
        raise ModelError(f"{preset.name}: height and width must be multiples of {s} pixels, got {height}x{width}")
    if not preset.is_video:
        if frames != 1:
            raise ModelError(f"{preset.name} is an image model: frames must be 1, got {frames}")
    elif (frames - 1) % preset.temporal_ratio:
        raise ModelError(f"{preset.name}: frames must be 1 + {preset.temporal_ratio}k (1, 5, ..., 81), got {frames}")
    t = 1 + (frames - 1) // preset.temporal_ratio if preset.temporal_ratio else 1
    if preset.latent_ndim == 4:
        return (batch, preset.latent_channels, height // s, width // s)
    return (batch, preset.latent_channels, t, height // s, width // s)


def check_latents(preset: Preset | str, z: torch.Tensor) -> None:
    """Raise a ModelError naming the expected layout if `z` cannot be this preset's latent."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    layout = "(B, C, H, W)" if preset.latent_ndim == 4 else "(B, C, T, H, W)"
    if z.dim() != preset.latent_ndim or z.shape[1] != preset.latent_channels:
        raise ModelError(f"{preset.name}: latents must be {layout} with C={preset.latent_channels}, got {tuple(z.shape)}")
    if preset.latent_ndim == 5 and not preset.is_video and z.shape[2] != 1:
        raise ModelError(f"{preset.name} is an image model: latents must have T=1, got {tuple(z.shape)}")


def random_latents(preset: Preset | str, shape, *, seed: int = 0, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Seeded latents with the preset's per-channel statistics (what a denoiser hands the VAE)."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=gen, dtype=torch.float32)
    view = (1, -1) + (1,) * (len(shape) - 2)
    mean = torch.tensor(preset.latents_mean).view(view)
    std = torch.tensor(preset.latents_std).view(view)
    return (z * std + mean).to(device=device, dtype=parse_dtype(dtype))
