"""Fused VAE normalisation + SiLU as workbench custom ops, and the adapter that puts them in diffusers' decoders.

    torch.ops.workbench.rms_norm_silu(x, gamma, bias, eps, silu) -> y                  (WanRMS_norm [+ SiLU])
    torch.ops.workbench.rms_norm_silu_out(x, x_bias, gamma, bias, eps, silu, out)   (of x + x_bias, into `out`)
    torch.ops.workbench.group_norm_silu(x, num_groups, weight, bias, eps, silu) -> y    (GroupNorm [+ SiLU])
    torch.ops.workbench.group_norm_silu_stats(x, num_groups, mean, rstd, weight, bias, silu) -> y
                                                              (the same with given statistics, (B, G) float32)

x (B, C, *spatial), channel-first; gamma/weight/bias (C,) or (C, 1, ...), bias and weight may be None; y has
x's shape and dtype. Semantics: `kernels/vae_norm_ref.py`. native and npu: the PyTorch reference (float32
statistics, one rounding); cuda: the Triton kernels of `kernels/vae_norm.py`.

    from workbench.ops.vae_norm import fuse_norm_silu, unfuse_norm_silu
    fused = fuse_norm_silu(vae)      # in place -> how many norms now apply the SiLU after them
    unfuse_norm_silu(vae)            # back to diffusers' own modules

fuse_norm_silu rewrites, inside an unmodified diffusers model, each norm that diffusers 0.42 follows by a
SiLU module used nowhere else (checked in the sources; the table is `_diffusers_tables`):

    WanResidualBlock, QwenImageResidualBlock     norm1 -> nonlinearity, norm2 -> nonlinearity
    WanDecoder3d/Encoder3d, QwenImage*3d         norm_out -> nonlinearity (the head)
    ResnetBlock2D (AutoencoderKL, GLM-Image)     norm1 -> nonlinearity, norm2 -> nonlinearity
    vae.Decoder / vae.Encoder                    conv_norm_out -> conv_act (the head)

Each such norm is replaced by FusedRMSNormSiLU / FusedGroupNormSiLU, which holds the norm's own parameters
under the same names (state_dict keys unchanged), and the SiLU module by `SiLUInNorm`, an Identity. That is
only right when the SiLU module runs nowhere but after those norms: a residual block's `nonlinearity` runs
twice, after norm1 and after norm2, so both are fused together or neither. ResnetBlock2D also applies it to
its time embedding, and with time_embedding_norm="scale_shift" puts a scale/shift between norm2 and the
SiLU: such blocks are left alone (a VAE has neither). Only the exact diffusers classes are rewritten (a
subclass may have its own forward). Reversible: unfuse_norm_silu puts the original norm modules back (with
the fused modules' current parameters) and a fresh nn.SiLU. Hooks on a replaced norm or SiLU do not run
while fused.

Two differences to diffusers beyond rounding: the fused norm's output has x's dtype, where diffusers' has
promote(x, parameters) (different only when the parameters' dtype is not the activations'); and the fused
modules are not instances of the norm classes, on purpose (see _FusedNorm).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from workbench.kernels import vae_norm_ref as ref

from .custom_op import KernelOp

__all__ = [
    "rms_norm_silu",
    "rms_norm_silu_out",
    "group_norm_silu",
    "group_norm_silu_stats",
    "FusedRMSNormSiLU",
    "FusedGroupNormSiLU",
    "SiLUInNorm",
    "fuse_norm_silu",
    "unfuse_norm_silu",
]

F_NORMALIZE_EPS = 1e-12  # WanRMS_norm calls F.normalize with its default eps


# --- the ops --------------------------------------------------------------------------------------------------

class VAENormOp(KernelOp):
    """`name` is both the op's and the Triton launcher's; `name`_reference is the native implementation."""

    kernels = "vae_norm"

    def __init__(self, name: str, schema: str, mutates_args: tuple[str, ...] = ()):
        super().__init__(name, schema, ref)
        self.mutates_args = mutates_args


_rms_norm_silu = VAENormOp(
    "rms_norm_silu", "(Tensor x, Tensor gamma, Tensor? bias, float eps, bool silu) -> Tensor").register()
_rms_norm_silu_out = VAENormOp(
    "rms_norm_silu_out",
    "(Tensor x, Tensor? x_bias, Tensor gamma, Tensor? bias, float eps, bool silu, Tensor(a!) out) -> ()",
    mutates_args=("out",)).register()
_group_norm_silu = VAENormOp(
    "group_norm_silu",
    "(Tensor x, int num_groups, Tensor? weight, Tensor? bias, float eps, bool silu) -> Tensor").register()
_group_norm_silu_stats = VAENormOp(
    "group_norm_silu_stats",
    "(Tensor x, int num_groups, Tensor mean, Tensor rstd, Tensor? weight, Tensor? bias, bool silu) -> Tensor").register()


def rms_norm_silu(x, gamma, bias, eps, silu):
    """(B, C, *spatial) -> x / max(||x||_C, eps) * sqrt(C) * gamma (+ bias), then SiLU if `silu`."""
    return _rms_norm_silu(x, gamma, bias, eps, silu)


def rms_norm_silu_out(x, x_bias, gamma, bias, eps, silu, out) -> None:
    """rms_norm_silu of x + x_bias (per channel, in float32; None: x) written into `out` (x's shape and dtype),
    which may be a view: a slice of a larger tensor along its first spatial dim, in either layout."""
    _rms_norm_silu_out(x, x_bias, gamma, bias, eps, silu, out)


def group_norm_silu(x, num_groups, weight, bias, eps, silu):
    """(B, C, *spatial) -> GroupNorm(num_groups, eps) with optional affine, then SiLU if `silu`."""
    return _group_norm_silu(x, num_groups, weight, bias, eps, silu)


def group_norm_silu_stats(x, num_groups, mean, rstd, weight, bias, silu):
    """(B, C, *spatial) -> GroupNorm with the given statistics mean, rstd (B, G) float32 and optional affine,
    then SiLU if `silu` (tiled decodes normalise every tile with whole-image statistics)."""
    return _group_norm_silu_stats(x, num_groups, mean, rstd, weight, bias, silu)


# --- the fused modules ----------------------------------------------------------------------------------------

class _FusedNorm(nn.Module):
    """A norm and the SiLU after it as one op. It holds the norm's parameters under their own names (the
    state dict keys do not change) and keeps the norm itself, outside the module tree, for unfuse().

    Deliberately not a subclass of the norm's class: code that re-implements a norm by its class (as
    workbench's shard strategy does for nn.GroupNorm) must not take this for a plain norm and drop the SiLU.
    """

    def __init__(self, norm: nn.Module, params: tuple[str, ...]):
        super().__init__()
        for name in params:
            value = getattr(norm, name)
            self.register_parameter(name, value if isinstance(value, nn.Parameter) else None)
        object.__setattr__(self, "_norm", norm)  # not a submodule: its parameters are registered here
        self._params = params

    def unfuse(self) -> nn.Module:
        """The norm this module replaced, holding this module's current parameters (a load_state_dict or a
        device move may have replaced them)."""
        for name in self._params:
            if getattr(self, name) is not None:
                setattr(self._norm, name, getattr(self, name))
        return self._norm


class FusedRMSNormSiLU(_FusedNorm):
    """WanRMS_norm or QwenImageRMS_norm (channel_first) followed by SiLU: rms_norm_silu(silu=True)."""

    def __init__(self, norm: nn.Module):
        super().__init__(norm, ("gamma", "bias"))  # bias: None where diffusers holds 0.0

    def forward(self, x):
        return rms_norm_silu(x, self.gamma, self.bias, F_NORMALIZE_EPS, True)

    def forward_into(self, x, out, x_bias=None) -> None:
        """forward(x + x_bias) written into `out` (see rms_norm_silu_out)."""
        rms_norm_silu_out(x, x_bias, self.gamma, self.bias, F_NORMALIZE_EPS, True, out)


class FusedGroupNormSiLU(_FusedNorm):
    """nn.GroupNorm followed by SiLU: group_norm_silu(silu=True)."""

    def __init__(self, norm: nn.GroupNorm):
        super().__init__(norm, ("weight", "bias"))  # None without affine
        self.num_groups, self.eps = norm.num_groups, norm.eps

    def forward(self, x):
        return group_norm_silu(x, self.num_groups, self.weight, self.bias, self.eps, True)


class SiLUInNorm(nn.Identity):
    """Where a SiLU was: the fused norm before it applies it."""


# --- where they go --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Site:
    """In the owner's forward, each of `norms` is followed by `act`, and `act` runs nowhere else when `when`."""

    norms: tuple[str, ...]
    act: str
    when: Callable[[nn.Module], bool] = lambda owner: True


def _resnet_silu_only_after_norms(block) -> bool:
    """ResnetBlock2D also runs `nonlinearity` on temb (a time_emb_proj without skip_time_act), and with
    "scale_shift" norm2 is followed by the scale/shift, not by the SiLU (any other value, "default" or the
    VAE decoder's "group", puts the SiLU right after norm2)."""
    return block.time_embedding_norm != "scale_shift" and (block.time_emb_proj is None or block.skip_time_act)


@functools.cache
def _diffusers_tables() -> tuple[dict, dict]:
    """(owner class -> _Site, norm class -> fused class), imported on first use: diffusers' model modules take
    seconds to import, and `workbench.ops` does not need them for the ops."""
    from diffusers.models.autoencoders import autoencoder_kl_qwenimage as qwen
    from diffusers.models.autoencoders import autoencoder_kl_wan as wan
    from diffusers.models.autoencoders import vae
    from diffusers.models.resnet import ResnetBlock2D

    residual, head = _Site(("norm1", "norm2"), "nonlinearity"), _Site(("norm_out",), "nonlinearity")
    sites = {
        wan.WanResidualBlock: residual, qwen.QwenImageResidualBlock: residual,
        wan.WanDecoder3d: head, wan.WanEncoder3d: head, qwen.QwenImageDecoder3d: head, qwen.QwenImageEncoder3d: head,
        ResnetBlock2D: _Site(("norm1", "norm2"), "nonlinearity", _resnet_silu_only_after_norms),
        vae.Decoder: _Site(("conv_norm_out",), "conv_act"), vae.Encoder: _Site(("conv_norm_out",), "conv_act"),
    }
    fused = {wan.WanRMS_norm: FusedRMSNormSiLU, qwen.QwenImageRMS_norm: FusedRMSNormSiLU,
             nn.GroupNorm: FusedGroupNormSiLU}
    return sites, fused


def _fusable(norm) -> bool:
    if type(norm) not in _diffusers_tables()[1]:  # exact type: a subclass may compute something else
        return False
    if isinstance(norm, nn.GroupNorm):
        return True
    return norm.channel_first and (isinstance(norm.bias, nn.Parameter) or norm.bias == 0)


def _sites(model: nn.Module):
    """(owner, site) for each module of `model` (itself included) whose exact class is in the site table."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    sites = _diffusers_tables()[0]
    for owner in list(model.modules()):  # a list: the loop replaces modules
        site = sites.get(type(owner))
        if site is not None:
            yield owner, site


def fuse_norm_silu(model: nn.Module) -> int:
    """Fuse every norm + SiLU pair of the site table in `model`, in place; returns how many norms were
    fused (0 when there is none, or when the model is fused already). Compile after fusing."""
    fused = 0
    for owner, site in _sites(model):
        norms = [getattr(owner, name) for name in site.norms]
        if type(getattr(owner, site.act)) is not nn.SiLU or not site.when(owner) or not all(map(_fusable, norms)):
            continue
        for name, norm in zip(site.norms, norms):
            setattr(owner, name, _diffusers_tables()[1][type(norm)](norm))
        setattr(owner, site.act, SiLUInNorm())
        fused += len(norms)
    return fused


def unfuse_norm_silu(model: nn.Module) -> int:
    """Undo fuse_norm_silu in `model`, in place: diffusers' norms and an nn.SiLU again; returns how many norms."""
    unfused = 0
    for owner, site in _sites(model):
        if type(getattr(owner, site.act)) is not SiLUInNorm:
            continue
        for name in site.norms:
            setattr(owner, name, getattr(owner, name).unfuse())
        setattr(owner, site.act, nn.SiLU())
        unfused += len(site.norms)
    return unfused
