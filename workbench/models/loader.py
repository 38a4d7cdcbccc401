"""Building models: the trained tiny weights, seeded random weights, or a local diffusers folder.

    vae = build_vae("qwen-image", tiny=True)                    # the trained tiny weights in data/weights/
    vae = build_vae("qwen-image", tiny=True, weights="random")   # seeded random weights, narrow test config
    vae = build_vae("wan2.1", weights="/models/Wan2.1")         # a local folder; nothing is downloaded

`load_local` is the one loader of local folders (VAEs here, transformers in `workbench.pipeline`); `seeded`
is the one way the workbench draws random weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .presets import WEIGHT_KINDS, ModelError, Preset, get_preset, is_local_folder
from .shapes import check_dtype

__all__ = ["ModelError", "WEIGHT_KINDS", "parse_dtype", "build_vae", "load_local", "seeded", "finish", "vae_class", "vae_config",
           "count_parameters", "default_dtype", "keep_in_fp32", "read_config", "DTYPES"]

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


def parse_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    return DTYPES[check_dtype(dtype)]


def vae_class(preset: Preset):
    import diffusers

    return getattr(diffusers, preset.vae_class)


def vae_config(preset: Preset, tiny: bool, trained: bool = False) -> dict:
    """The full constructor config of the preset's VAE: the class defaults, then the preset's values (the real
    config, the narrow tiny one, or with `trained` the tiny width of the trained weights)."""
    import inspect

    cls = vae_class(preset)
    defaults = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return {**defaults, **(preset.config if not tiny else preset.trained_config if trained else preset.tiny_config)}


def seeded(seed: int, device, build):
    """`build()` with torch's global generator seeded, on `device`, leaving the caller's RNG state as it was."""
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        return build()


def finish(module, dtype):
    """Eval mode, no gradients, weights in `dtype`. nn.Module.to, not ModelMixin.to (which warns): weights
    drawn in float32 and then rounded, so the bf16 model is the fp32 model rounded and the two compare."""
    return torch.nn.Module.to(module, dtype=parse_dtype(dtype)).eval().requires_grad_(False)


def build_vae(preset: Preset | str, *, tiny: bool = False, weights: str | Path | None = None,
              dtype="float32", device="cpu", seed: int = 0):
    """The preset's VAE in eval mode.

    `weights`:
      - None: for a tiny preset the trained tiny weights, else seeded random weights of the real size;
      - "trained": the trained tiny weights shipped in data/weights/ (tiny presets only);
      - "random": seeded random weights (tiny: the narrow `tiny_config` the strategy tests use);
      - a path: a diffusers-format folder, the VAE folder itself (config.json + safetensors) or a
        pipeline folder with a `vae/` subfolder. Nothing is downloaded.

        >>> vae = build_vae("qwen-image", tiny=True)
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    dtype = parse_dtype(dtype)
    cls = vae_class(preset)
    if is_local_folder(weights):
        return load_local(cls, _vae_folder(preset, Path(weights)), dtype=dtype, device=device, preset=preset)
    if weights == "trained" or (weights is None and tiny):
        if not tiny:
            raise ModelError(f"{preset.name}: trained weights exist for the tiny presets only; pass tiny=True, "
                             "weights='random' or a local folder")
        from .trained import load_trained

        return finish(load_trained(seeded(seed, device, lambda: cls(**preset.trained_config)), preset.name), dtype)
    config = preset.tiny_config if tiny else preset.config
    return finish(seeded(seed, device, lambda: cls(**config)), dtype)


def _vae_folder(preset: Preset, path: Path) -> Path:
    for folder in (path / "vae", path):
        if (folder / "config.json").is_file():
            return folder
    raise ModelError(f"{preset.name}: no diffusers VAE at {path} (looked for {path}/config.json and "
                     f"{path}/vae/config.json); pass a local folder saved with save_pretrained")


def read_config(folder: Path) -> dict:
    """config.json of a local model folder; a ModelError naming the file if it is missing or not JSON."""
    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"no config.json in {folder}") from None
    except json.JSONDecodeError as e:
        raise ModelError(f"{path} is not valid JSON: {e}") from None


def check_vae_config(preset: Preset, found: dict, where: str) -> None:
    """Refuse a VAE config whose architecture differs from the preset's real (or one of its tiny) configs."""
    if found.get("_class_name", preset.vae_class) != preset.vae_class:
        raise ModelError(f"{preset.name}: {where} holds a {found['_class_name']}, the preset needs a {preset.vae_class}")
    keys = [k for k in _ARCH_KEYS[preset.vae_class] if k in found]
    for tiny, trained in ((False, False), (True, False), (True, True)):
        expected = vae_config(preset, tiny=tiny, trained=trained)
        if all(_norm(found[k]) == _norm(expected.get(k)) for k in keys):
            return
    expected = vae_config(preset, tiny=False)
    detail = ", ".join(f"{k}={found[k]!r} (preset: {expected.get(k)!r})" for k in keys
                       if _norm(found[k]) != _norm(expected.get(k)))
    raise ModelError(f"{preset.name}: the config at {where} does not match the preset: {detail}")


def _norm(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def load_local(cls, folder: Path, *, dtype="float32", device="cpu", preset: Preset | None = None):
    """A diffusers model from a local folder (config.json + safetensors), loaded file by file into a model
    built on `device` (peak: the model plus one file). With a VAE `preset`, the folder's config is first
    checked against it. Needs no `accelerate`, and the modules diffusers keeps in float32 receive the
    checkpoint's values before any rounding."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config = read_config(folder)
    if preset is not None:
        check_vae_config(preset, config, str(folder / "config.json"))
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError(f"no *.safetensors weights in {folder}")
    with default_dtype(parse_dtype(dtype)), torch.device(device):
        model = keep_in_fp32(finish(cls.from_config(config), dtype))
    missing = set(model.state_dict())
    for f in files:
        shard = load_file(str(f), device=str(device))
        unexpected = sorted(set(shard) - missing)
        if unexpected:
            raise ModelError(f"{f}: tensors the {cls.__name__} config does not have, e.g. {unexpected[:3]}")
        model.load_state_dict(shard, strict=False)
        missing -= set(shard)
    if missing:
        raise ModelError(f"{folder}: no weights for {len(missing)} tensors of {cls.__name__}, e.g. {sorted(missing)[:3]}")
    return model


def keep_in_fp32(model):
    """Put the modules diffusers keeps in float32 when loading in half precision (`_keep_in_fp32_modules`:
    Wan's rope, time embedder, norms and modulation tables) back in float32, as from_pretrained would."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, module in model.named_modules():
        if any(k in name.split(".") for k in keep):
            torch.nn.Module.to(module, dtype=torch.float32)
    return model


class default_dtype:
    """Create parameters in `dtype` (a real-size model drawn in float32 first would need twice the memory)."""

    def __init__(self, dtype):
        self.dtype = dtype

    def __enter__(self):
        self.saved = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc):
        torch.set_default_dtype(self.saved)


def count_parameters(preset: Preset | str, *, tiny: bool = False) -> int:
    """Parameter count of the whole VAE (encoder and decoder), built on the meta device."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    with torch.device("meta"):
        vae = vae_class(preset)(**(preset.tiny_config if tiny else preset.config))
    return sum(p.numel() for p in vae.parameters())
