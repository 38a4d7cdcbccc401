"""Model presets: which diffusers VAE class, its real architecture, a tiny config, the latent layout.

The tiny configs keep every structural feature of the real model (the same up stages, causal 3-D
convs, mid-block attention where the real one has it, the same norm types, patchify) with few
channels, so every decode strategy runs the same code paths on a laptop CPU as on the real model.
Two tiny widths: `tiny_config` is the narrow one the strategy tests run with seeded random weights;
`trained_config` widens it to the architecture of the trained weights in data/weights/
(workbench.models.trained), which `build_vae(name, tiny=True)` loads by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

# The Wan2.1 VAE latents statistics (also the diffusers defaults of AutoencoderKLWan and AutoencoderKLQwenImage).
_WAN21_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
_WAN21_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)

# Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/config.json.
_WAN22_MEAN = (-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
               -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
               -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
               -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
               -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
               0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667)
_WAN22_STD = (0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
              0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
              0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
              0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
              0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
              0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744)

# zai-org/GLM-Image vae/config.json (AutoencoderKL).
_GLM_MEAN = (-0.2080078125, 1.875, -0.470703125, -1.265625, -1.421875, 0.77734375, -0.3671875, -0.9453125,
             0.318359375, 0.7734375, -0.1884765625, -0.022216796875, -0.220703125, -1.59375, -0.81640625,
             -0.255859375)
_GLM_STD = (3.0625, 2.203125, 2.265625, 4.84375, 2.5, 3.9375, 2.203125, 3.03125,
            2.1875, 2.046875, 2.71875, 2.390625, 2.390625, 2.453125, 2.25, 2.15625)


WEIGHT_KINDS = ("trained", "random")  # what a `weights` value may name beside a local diffusers folder


def is_local_folder(weights) -> bool:
    """Whether a `weights` value names a local diffusers folder (rather than None, "trained" or "random")."""
    return weights is not None and weights not in WEIGHT_KINDS


class ModelError(ValueError):
    """A model cannot be built or loaded as asked; the message names the preset, path or shape."""


@dataclass(frozen=True)
class Preset:
    """A model's VAE: class, real and tiny configs, latent layout and statistics."""

    name: str
    vae_class: str  # a diffusers class name
    config: dict  # the real architecture (diffusers config kwargs)
    tiny_config: dict  # same structure, few channels
    latent_channels: int
    spatial_ratio: int  # output pixels per latent row/column
    temporal_ratio: int | None  # output frames per latent frame after the first; None for image models
    latents_mean: tuple[float, ...]
    latents_std: tuple[float, ...]
    default_size: tuple[int, int, int]  # (height, width, frames) in pixels of a typical output
    source: str  # where the real config was checked
    pipeline: str = ""  # diffusers pipeline the VAE belongs to
    notes: str = ""
    trained_widths: dict = field(default_factory=dict)  # tiny_config keys the trained weights widen

    @property
    def trained_config(self) -> dict:
        """The tiny architecture of the trained weights in data/weights/: tiny_config, wider."""
        return {**self.tiny_config, **self.trained_widths}

    @property
    def is_video(self) -> bool:
        return self.temporal_ratio is not None and self.default_size[2] > 1

    @property
    def latent_ndim(self) -> int:
        """4 for (B, C, H, W) image VAEs, 5 for (B, C, T, H, W) causal 3-D VAEs."""
        return 4 if self.vae_class == "AutoencoderKL" else 5


_WAN_TINY = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True])

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            name="wan2.1",
            vae_class="AutoencoderKLWan",
            config={},  # diffusers defaults are the Wan2.1 VAE
            tiny_config=dict(_WAN_TINY),
            trained_widths=dict(base_dim=16),
            latent_channels=16, spatial_ratio=8, temporal_ratio=4,
            latents_mean=_WAN21_MEAN, latents_std=_WAN21_STD,
            default_size=(480, 832, 81),
            source="Wan-AI/Wan2.1-T2V-1.3B-Diffusers vae/config.json (= AutoencoderKLWan defaults)",
            pipeline="WanPipeline",
        ),
        Preset(
            name="wan2.2-ti2v-5b",
            vae_class="AutoencoderKLWan",
            config=dict(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, patch_size=2,
                        in_channels=12, out_channels=12, scale_factor_spatial=16, scale_factor_temporal=4,
                        latents_mean=list(_WAN22_MEAN), latents_std=list(_WAN22_STD)),
            tiny_config=dict(base_dim=8, decoder_base_dim=16, z_dim=48, is_residual=True, patch_size=2,
                             in_channels=12, out_channels=12, scale_factor_spatial=16, scale_factor_temporal=4,
                             num_res_blocks=2, latents_mean=list(_WAN22_MEAN), latents_std=list(_WAN22_STD)),
            trained_widths=dict(base_dim=16),
            latent_channels=48, spatial_ratio=16, temporal_ratio=4,
            latents_mean=_WAN22_MEAN, latents_std=_WAN22_STD,
            default_size=(704, 1280, 121),
            source="Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/config.json",
            pipeline="WanPipeline",
            notes="Residual up blocks (DupUp3D shortcut) and 2x2 patchified output: 12 decoder channels, 16x spatial.",
        ),
        Preset(
            name="qwen-image",
            vae_class="AutoencoderKLQwenImage",
            config={},
            tiny_config=dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2),
            trained_widths=dict(base_dim=16),
            latent_channels=16, spatial_ratio=8, temporal_ratio=4,
            latents_mean=_WAN21_MEAN, latents_std=_WAN21_STD,
            default_size=(1024, 1024, 1),
            source="Qwen/Qwen-Image vae/config.json (= AutoencoderKLQwenImage defaults)",
            pipeline="QwenImagePipeline",
            notes="One frame of a Wan-style causal 3-D VAE; latents are (B, 16, 1, H/8, W/8).",
        ),
        Preset(
            name="glm-image",
            vae_class="AutoencoderKL",
            config=dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=[128, 512, 1024, 1024],
                        layers_per_block=3, norm_num_groups=32, act_fn="silu",
                        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                        mid_block_add_attention=False, use_quant_conv=False, use_post_quant_conv=False,
                        force_upcast=True, sample_size=1024, scaling_factor=0.18215,
                        latents_mean=list(_GLM_MEAN), latents_std=list(_GLM_STD)),
            tiny_config=dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=[8, 16, 32, 32],
                             layers_per_block=3, norm_num_groups=4, act_fn="silu",
                             down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                             mid_block_add_attention=False, use_quant_conv=False, use_post_quant_conv=False,
                             latents_mean=list(_GLM_MEAN), latents_std=list(_GLM_STD)),
            trained_widths=dict(block_out_channels=[16, 32, 64, 64]),
            latent_channels=16, spatial_ratio=8, temporal_ratio=None,
            latents_mean=_GLM_MEAN, latents_std=_GLM_STD,
            default_size=(1024, 1024, 1),
            source="zai-org/GLM-Image vae/config.json: 16 latent channels, widths 128/512/1024/1024, "
                   "3 layers per block, GroupNorm(32), no mid-block attention, no (post-)quant conv",
            pipeline="GlmImagePipeline",
        ),
    ]
}


# Models that reuse another's VAE: the same preset under another name, typical size and pipeline.
PRESETS["wan2.2-a14b"] = replace(
    PRESETS["wan2.1"], name="wan2.2-a14b", default_size=(720, 1280, 81),
    source="Wan-AI/Wan2.2-T2V-A14B-Diffusers vae/config.json: the Wan2.1 VAE",
    notes="The A14B text/image-to-video models reuse the Wan2.1 VAE.")
PRESETS["qwen-image-edit"] = replace(
    PRESETS["qwen-image"], name="qwen-image-edit", pipeline="QwenImageEditPipeline",
    source="Qwen/Qwen-Image-Edit vae/config.json (the Qwen-Image VAE)")
PRESETS = {name: PRESETS[name] for name in
           ("wan2.1", "wan2.2-a14b", "wan2.2-ti2v-5b", "qwen-image", "qwen-image-edit", "glm-image")}


def get_preset(name: str) -> Preset:
    """The preset called `name`; a KeyError naming the accepted values otherwise."""
    preset = PRESETS.get(str(name).lower())
    if preset is not None:
        return preset
    raise KeyError(f"unknown model {name!r}; accepted: {', '.join(PRESETS)}")
