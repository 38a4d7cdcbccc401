"""The fused VAE norm + SiLU: references, Triton kernels, ops and the diffusers adapter.

- The references (kernels/vae_norm_ref.py, the native ops) against the formula written out in float64: C in
  {16, 48, 96, 160, 384}, spatial (1, 7, 13), (3, 5, 9), (31,), fp32/bf16/fp16, with and without the affine
  parameters, SiLU on and off; and against diffusers' own modules.
- The Triton kernels (kernels/vae_norm.py) against the references, in a child process (this file run as a
  script): on CUDA where there is a GPU, else started with TRITON_INTERPRET=1 (tests/test_kernels.py says
  why a child). Small shapes: the interpreter runs one Python program at a time. And their sm_90
  compilation, ahead of time, without a GPU.
- The ops under torch.library and torch.compile, and fuse_norm_silu on tiny diffusers VAEs (Wan, Qwen-Image,
  AutoencoderKL with GroupNorm), decoding the same latent before and after.

    python -m pytest tests/test_vae_norm.py -q
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import re
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers import run_triton_script
from torch import nn

from workbench import ops
from workbench.kernels import vae_norm_ref as ref
from workbench.ops.vae_norm import (
    FusedGroupNormSiLU,
    FusedRMSNormSiLU,
    SiLUInNorm,
    fuse_norm_silu,
    unfuse_norm_silu,
)

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
EPS = {"rms": 1e-12, "group": 1e-6}  # WanRMS_norm (F.normalize's default), diffusers' VAE GroupNorm
CHANNELS = (16, 48, 96, 160, 384)
SPATIAL = ((1, 7, 13), (3, 5, 9), (31,))
GROUPS = {16: 8, 48: 8, 96: 32, 160: 8, 384: 32}  # 2, 6, 3, 20 and 12 channels per group


@dataclass(frozen=True)
class Case:
    op: str  # "rms" or "group"
    shape: tuple[int, ...]  # (B, C, *spatial)
    dtype: str
    affine: bool  # rms: a bias besides gamma; group: weight and bias
    silu: bool
    groups: int = 0  # group only
    mean: float = 0.5  # x = mean + 2 * randn
    strided: bool = False  # x a non-contiguous view
    channels_last: bool = False  # x stored NHWC / NDHWC (the channels_last lever): rms reads it in place
    out_slice: bool = False  # rms_norm_silu_out into frames 2: of a buffer 2 frames longer (the conv_buffers lever)
    x_bias: bool = False  # out_slice only: a per-channel bias added to x before the norm (a conv's, folded in)
    launch: tuple = ()  # Triton launcher overrides, (name, value) pairs

    @property
    def id(self) -> str:
        parts = [self.op, "x".join(map(str, self.shape)), self.dtype, "affine" if self.affine else "plain",
                 "silu" if self.silu else "nosilu"]
        parts += [f"g{self.groups}"] * bool(self.groups) + [f"mean{self.mean:g}"] * (self.mean != 0.5)
        parts += ["strided"] * self.strided + ["channels_last"] * self.channels_last + ["out_slice"] * self.out_slice
        parts += ["x_bias"] * self.x_bias
        parts += [f"{k}{v}" for k, v in self.launch]
        return "-".join(parts)


def make_args(case: Case, device="cpu") -> dict:
    """The op's arguments by name. Parameters have the input's dtype, as in a model cast to it."""
    gen = torch.Generator().manual_seed(zlib.crc32(case.id.encode()))  # the same inputs in every process
    dtype, channels = DTYPES[case.dtype], case.shape[1]

    def randn(*size, std=1.0, mean=0.0):
        return (torch.randn(*size, generator=gen) * std + mean).to(dtype).to(device)

    x = randn(*case.shape, std=2.0, mean=case.mean)
    if case.strided:  # every other element along the last dim of a twice-as-wide tensor
        wide = torch.zeros(*case.shape[:-1], 2 * case.shape[-1], dtype=dtype, device=device)
        x = wide[..., ::2].copy_(x)
    if case.channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d if x.dim() == 5 else torch.channels_last)
    bias = randn(channels, std=0.5) if case.affine else None
    if case.op == "rms":  # gamma as WanRMS_norm(images=False) holds it, (C, 1, 1, 1)
        return {"x": x, "gamma": randn(channels, 1, 1, 1, std=0.5, mean=1.0),
                "bias": None if bias is None else bias.view(channels, 1, 1, 1), "eps": EPS["rms"], "silu": case.silu}
    weight = randn(channels, std=0.5, mean=1.0) if case.affine else None
    return {"x": x, "num_groups": case.groups, "weight": weight, "bias": bias, "eps": EPS["group"],
            "silu": case.silu}


def float64_truth(case: Case, args: dict) -> torch.Tensor:
    """The formula in float64, independent of kernels/ and of torch's norms."""
    x = args["x"].double()
    batch, channels = x.shape[:2]
    per_channel = (channels,) + (1,) * (x.dim() - 2)
    if case.op == "rms":
        norm = x.pow(2).sum(1, keepdim=True).sqrt().clamp_min(args["eps"])
        y = x / norm * math.sqrt(channels) * args["gamma"].double().reshape(per_channel)
    else:
        grouped = x.reshape(batch, case.groups, -1)
        mean = grouped.mean(-1, keepdim=True)
        var = (grouped - mean).pow(2).mean(-1, keepdim=True)
        y = ((grouped - mean) / (var + args["eps"]).sqrt()).reshape(x.shape)
        if args["weight"] is not None:
            y = y * args["weight"].double().reshape(per_channel)
    if args["bias"] is not None:
        y = y + args["bias"].double().reshape(per_channel)
    return y * torch.sigmoid(y) if case.silu else y


def reference(case: Case, args: dict) -> torch.Tensor:
    return (ref.rms_norm_silu_reference if case.op == "rms" else ref.group_norm_silu_reference)(**args)


def assert_close(case: Case, actual, expected, rtol: float, atol: float):
    """|a - e| <= atol + rtol |e| everywhere, with the worst element in the message."""
    assert actual.shape == expected.shape, f"{case.id}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = (actual.double() - expected.double()).abs()
    excess = (err - (atol + rtol * expected.double().abs())).flatten()
    worst = int(excess.argmax())
    assert excess[worst] <= 0, (f"{case.id}: {int((excess > 0).sum())} of {err.numel()} out of tolerance "
                                f"(rtol={rtol:.3g}, atol={atol:.3g}); worst {actual.flatten()[worst].item()} "
                                f"vs {expected.flatten()[worst].item()}")


# --- the references against float64 -------------------------------------------------------------------------

FLAGS = ((False, False), (True, True), (True, False), (False, True))  # (affine, silu)
REFERENCE_CASES = [Case(op, (2, c, *s), d, affine, silu, GROUPS[c] if op == "group" else 0)
                   for op in ("rms", "group") for c in CHANNELS for s in SPATIAL for d in DTYPES
                   for affine, silu in FLAGS]
REFERENCE_CASES += [Case("group", (2, 16, 3, 5, 9), d, True, True, g) for d in DTYPES for g in (1, 16)]
REFERENCE_CASES += [Case(op, (3, 48), "bf16", True, True, 8 if op == "group" else 0) for op in ("rms", "group")]
REFERENCE_CASES += [Case(op, (2, 48, 3, 5, 9), "fp32", True, True, 8 if op == "group" else 0, strided=True)
                    for op in ("rms", "group")]


def assert_layout(case: Case, out: torch.Tensor) -> None:
    """The output has x's layout: channels-last read in place and written so, else contiguous."""
    if case.channels_last:
        assert out.movedim(1, -1).is_contiguous() and not out.is_contiguous()
    else:
        assert out.is_contiguous()


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=lambda c: c.id)
def test_reference_matches_float64(case):
    # Tolerance: float32 statistics and arithmetic (~1e-6 relative: rtol 1e-5), then ONE rounding to bf16/fp16,
    # at most half a unit in the last place (eps / 2 relative); a second rounding would break this bound.
    args = make_args(case)
    out = reference(case, args)
    dtype = DTYPES[case.dtype]
    assert out.dtype == dtype
    assert_layout(case, out)
    rtol = 1e-5 if dtype == torch.float32 else torch.finfo(dtype).eps / 2 + 1e-5
    assert_close(case, out, float64_truth(case, args), rtol=rtol, atol=1e-5)


def diffusers_sequence(op: str, args: dict) -> torch.Tensor:
    """diffusers' modules, holding the case's parameters, then nn.SiLU: what the fused op replaces."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

    x = args["x"]
    channels = x.shape[1]
    if op == "rms":
        norm = WanRMS_norm(channels, images=False, bias=args["bias"] is not None).to(x.dtype)
        norm.gamma.data = args["gamma"]
        if args["bias"] is not None:
            norm.bias.data = args["bias"]
    else:
        norm = nn.GroupNorm(args["num_groups"], channels, eps=args["eps"]).to(x.dtype)
        norm.weight.data, norm.bias.data = args["weight"], args["bias"]
    with torch.no_grad():
        return nn.SiLU()(norm(x))


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("op", ["rms", "group"])
def test_reference_matches_diffusers(op, dtype):
    """fp32: equal to diffusers' norm + SiLU within float32 rounding. bf16/fp16: diffusers rounds after the
    norm, after each multiply and after the SiLU, the reference once, so it is at least as close to float64."""
    case = Case(op, (2, 96, 3, 5, 9), dtype, True, True, 32 if op == "group" else 0)
    args = make_args(case)
    out, theirs = reference(case, args), diffusers_sequence(op, args)
    assert theirs.dtype == out.dtype
    if dtype == "fp32":
        torch.testing.assert_close(out, theirs, rtol=1e-5, atol=1e-5)
    else:
        truth = float64_truth(case, args)
        ours_err, theirs_err = (out.double() - truth).abs(), (theirs.double() - truth).abs()
        assert ours_err.max() <= theirs_err.max() and ours_err.mean() < theirs_err.mean(), (
            f"ours {ours_err.max():.3g} (mean {ours_err.mean():.3g}), diffusers {theirs_err.max():.3g} "
            f"(mean {theirs_err.mean():.3g})")


@pytest.mark.parametrize("bad, message", [
    (lambda a: a | {"x": a["x"][0, 0]}, "x must be channel-first"),
    (lambda a: a | {"x": a["x"].int()}, "x must be float32, bfloat16 or float16"),
    (lambda a: a | {"num_groups": 5}, "num_groups must be a positive divisor"),
    (lambda a: a | {"weight": torch.ones(47)}, r"weight must have shape \(C,\)"),
    (lambda a: a | {"bias": torch.ones(48, 2)}, r"bias must have shape \(C,\)"),
    (lambda a: a | {"eps": -1.0}, "eps must be a float >= 0"),
    (lambda a: a | {"weight": a["weight"].to("meta")}, "all tensors must be on one device"),
])
def test_bad_arguments_are_named(bad, message):
    args = make_args(Case("group", (2, 48, 7), "fp32", True, True, 8))
    with pytest.raises((ValueError, TypeError), match=message):
        ref.group_norm_silu_reference(**bad(args))


# --- the Triton kernels against the references ----------------------------------------------------------------

def _triton_cases() -> list[Case]:
    """Both RMS paths (one tile for all of C; C-chunks of 16, two passes), GroupNorm split into several chunks
    per group (stats blocks of 32 lanes) and in one, odd C and S, every dtype and flag; a non-contiguous x;
    and a GroupNorm input whose mean is 300 standard deviations (float32 sums of x and x^2 would lose the
    variance there: ~1e-2 relative error where Welford keeps ~1e-6)."""
    chunked = (("block_c", 16), ("block_s", 16))
    small_stats = (("stats_block", 32),)
    flags = itertools.cycle(FLAGS)
    cases = []
    for dtype in DTYPES:
        for shape in ((2, 48, 3, 5, 9), (1, 160, 31)):
            for launch in ((), chunked):
                cases.append(Case("rms", shape, dtype, *next(flags), launch=launch))
        for shape, groups in (((2, 16, 5, 7), 4), ((1, 48, 31), 8), ((1, 24, 1, 3, 5), 8)):
            for splits in (1, 3):
                cases.append(Case("group", shape, dtype, *next(flags), groups,
                                  launch=small_stats + (("splits", splits), ("block_s", 16))))
    cases.append(Case("rms", (2, 48, 3, 5, 9), "bf16", True, True, strided=True))
    cases.append(Case("rms", (2, 48, 3, 5, 9), "bf16", True, True, channels_last=True))
    cases.append(Case("rms", (1, 40, 7, 13), "fp32", False, True, channels_last=True))
    cases.append(Case("rms", (2, 48, 3, 5, 9), "fp32", True, False, channels_last=True, launch=chunked))
    cases.append(Case("rms", (2, 48, 3, 5, 9), "bf16", True, True, out_slice=True))
    cases.append(Case("rms", (2, 40, 1, 5, 7), "bf16", False, True, channels_last=True, out_slice=True, x_bias=True))
    cases.append(Case("rms", (2, 48, 3, 5, 9), "fp32", True, True, channels_last=True, out_slice=True, x_bias=True,
                      launch=chunked))
    cases.append(Case("group", (2, 16, 5, 7), "bf16", True, True, 4, channels_last=True, launch=small_stats))
    cases.append(Case("group", (2, 16, 5, 7), "bf16", True, True, 4, strided=True, launch=small_stats))
    cases.append(Case("group", (2, 16, 5, 7), "fp32", True, False, 4, mean=300.0,
                      launch=small_stats + (("splits", 2),)))
    return cases


TRITON_CASES = _triton_cases()


def run_triton_cases(cases, device: str) -> dict:
    """case id -> the Triton launcher's output (moved to the CPU), or the error it raised as a string."""
    from workbench.kernels import vae_norm

    results = {}
    for case in cases:
        launcher = vae_norm.rms_norm_silu if case.op == "rms" else vae_norm.group_norm_silu
        try:
            args = make_args(case, device)
            if case.out_slice:  # the whole buffer comes back: the test checks the 2 frames before out untouched
                buffer = out_slice_buffer(args["x"])
                vae_norm.rms_norm_silu_out(**args, x_bias=x_bias_of(case, device), out=buffer[:, :, 2:],
                                           **dict(case.launch))
                results[case.id] = buffer.cpu()
            else:
                results[case.id] = launcher(**args, **dict(case.launch)).cpu()
        except Exception as e:  # reported by the test of that case
            results[case.id] = f"{type(e).__name__}: {e}"
    return results


SENTINEL = 7.0  # the frames of an out_slice buffer before `out`: must stay as they were


def x_bias_of(case: Case, device="cpu") -> torch.Tensor | None:
    """The out_slice cases' x_bias (C,), seeded apart from make_args' inputs; None without."""
    if not case.x_bias:
        return None
    gen = torch.Generator().manual_seed(zlib.crc32(case.id.encode()) + 1)
    return (torch.randn(case.shape[1], generator=gen) * 3).to(DTYPES[case.dtype]).to(device)


def out_slice_expected(case: Case, args: dict) -> torch.Tensor:
    """The reference of an out_slice case: what rms_norm_silu_out_reference writes."""
    out = torch.empty_like(args["x"])
    ref.rms_norm_silu_out_reference(**args, x_bias=x_bias_of(case), out=out)
    return out


def out_slice_buffer(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T + 2, *rest) in x's layout, filled with SENTINEL: rms_norm_silu_out writes frames 2: of it."""
    layout = torch.channels_last_3d if x.dim() == 5 and not x.is_contiguous() else torch.contiguous_format
    shape = (*x.shape[:2], x.shape[2] + 2, *x.shape[3:])
    return torch.full(shape, SENTINEL, dtype=x.dtype, device=x.device).contiguous(memory_format=layout)


@pytest.fixture(scope="module")
def triton_outputs(tmp_path_factory):
    return run_triton_script(__file__, tmp_path_factory)


@pytest.mark.parametrize("case", TRITON_CASES, ids=lambda c: c.id)
def test_triton_matches_reference(case, triton_outputs):
    # Tolerance: fp32 1e-5 (float32 statistics, another summation order). bf16/fp16: both round once from
    # float32 values that agree to ~1e-6, so a value may land one step apart, and the CPU interpreter
    # truncates float32 -> bfloat16 where GPUs round to nearest: rtol 2 eps (as tests/test_kernels.py).
    out = triton_outputs[case.id]
    assert not isinstance(out, str), out
    args = make_args(case)
    dtype = DTYPES[case.dtype]
    assert out.dtype == dtype
    assert_layout(case, out)
    if case.out_slice:  # written after 2 untouched frames
        assert torch.all(out[:, :, :2] == SENTINEL)
        out = out[:, :, 2:]
    rtol = 1e-5 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps
    if case.out_slice:
        assert_close(case, out, out_slice_expected(case, args), rtol=rtol, atol=1e-5)
    elif case.mean == 0.5:
        assert_close(case, out, reference(case, args), rtol=rtol, atol=1e-5)
    else:  # mean 300: float32 holds the mean to +-1.5e-5 (half its ulp), so even exact statistics rounded to
        # float32 are 1e-5 off after the normalisation (std 2); measured: Welford 2.6e-5, torch's CPU
        # group_norm 2.7e-5, float32 sums of x and x^2 1.1e-2. atol 1e-4 tells them apart.
        assert_close(case, out, float64_truth(case, args), rtol=rtol, atol=1e-4)


def test_triton_cases_cover_both_paths():
    """The RMS cases run the one-tile and the chunked kernel, the GroupNorm ones one chunk and several."""
    rms = {dict(c.launch).get("block_c", 1024) >= c.shape[1] for c in TRITON_CASES if c.op == "rms"}
    splits = {dict(c.launch).get("splits") for c in TRITON_CASES if c.op == "group"}
    assert rms == {True, False} and {1, 3} <= splits


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="compiles the real kernels")
def test_triton_kernels_compile_for_hopper_with_16_byte_accesses():
    """No GPU needed: compile each kernel ahead of time for sm_90 (H100/H200) as the JIT specialises
    contiguous bf16 tensors (pointers and sizes divisible by 16), and check that x is read and y written
    in 16-byte vectors (only the per-channel parameters are read element by element)."""
    pytest.importorskip("triton")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from workbench.kernels import vae_norm

    def ptx(kernel, types: dict, constexprs: dict, num_warps: int) -> str:
        signature = {n: "constexpr" if n in constexprs else types[n] for n in kernel.arg_names}
        attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(kernel.arg_names)
                 if signature[n].startswith("*") or n in ("channels", "spatial", "group_numel", "chunk_numel")
                 or n.startswith("stride_")}
        source = ASTSource(kernel, signature, constexprs, attrs)
        return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps}).asm["ptx"]

    def accesses(text: str) -> set[str]:
        return set(re.findall(r"(?:ld|st)\.global[\w.]*", text))

    rms_types = {"y_ptr": "*bf16", "x_ptr": "*bf16", "x_bias_ptr": "*bf16", "gamma_ptr": "*bf16", "bias_ptr": "*bf16", "channels": "i32",
                 "spatial": "i32", "sqrt_channels": "fp32", "eps": "fp32",
                 **{f"stride_{t}{d}": "i32" for t in "xy" for d in "bcs"}}
    # The JIT specialises a stride of 1 as a constant: channel-first x and y have stride_s 1, channels-last stride_c 1.
    for unit_stride in ("s", "c"):
        for channels in (96, 192, 384, 768):  # Wan's decoder widths; 768: the chunked path
            block_c, block_s = vae_norm._rms_blocks(channels, None, None)
            text = ptx(vae_norm._rms_norm_silu_kernel, rms_types,
                       {"HAS_X_BIAS": True, "HAS_BIAS": True, "SILU": True, "ONE_TILE": block_c >= channels, "BLOCK_C": block_c,
                        "BLOCK_S": block_s, f"stride_x{unit_stride}": 1, f"stride_y{unit_stride}": 1}, 8)
            found = accesses(text)  # x in 16-byte vectors, y likewise; gamma and bias (tiny) as they come
            assert "ld.global.v4.b32" in found and found - {"ld.global.b16", "ld.global.b32", "ld.global.v2.b32"} == {
                "ld.global.v4.b32", "st.global.v4.b32"}, (unit_stride, channels, found)
    text = ptx(vae_norm._group_apply_kernel,
               {"y_ptr": "*bf16", "x_ptr": "*bf16", "stats_ptr": "*fp32", "weight_ptr": "*bf16", "bias_ptr": "*bf16",
                "channels": "i32", "spatial": "i32", "channels_per_group": "i32"},
               {"HAS_WEIGHT": True, "HAS_BIAS": True, "SILU": True, "BLOCK_S": vae_norm.GROUP_APPLY_BLOCK_S}, 4)
    assert accesses(text) == {"ld.global.v4.b32", "ld.global.b32", "ld.global.b16", "st.global.v4.b32"}
    text = ptx(vae_norm._group_stats_kernel,
               {"partial_ptr": "*fp32", "x_ptr": "*bf16", "group_numel": "i32", "chunk_numel": "i32", "splits": "i32"},
               {"BLOCK": vae_norm.GROUP_STATS_BLOCK}, 8)
    assert accesses(text) == {"ld.global.v4.b32", "st.global.b32"}
    text = ptx(vae_norm._group_finalize_kernel, {"stats_ptr": "*fp32", "partial_ptr": "*fp32", "splits": "i32",
                                                 "eps": "fp32"}, {"BLOCK_SPLITS": 64}, 1)
    assert "st.global.b32" in accesses(text)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available(),
                    reason="checks the error for CPU tensors without the interpreter")
def test_triton_on_cpu_without_interpreter_says_how():
    vae_norm = pytest.importorskip("workbench.kernels.vae_norm")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        vae_norm.rms_norm_silu(**make_args(Case("rms", (1, 16, 7), "fp32", False, True)))


# --- the ops --------------------------------------------------------------------------------------------------

def _op_args(op: str) -> tuple:
    args = make_args(Case(op, (2, 48, 3, 5), "fp32", True, True, 8 if op == "group" else 0))
    return tuple(args.values())


@pytest.mark.parametrize("op", ["rms", "group"])
def test_op_registration(op):
    """torch.library's checks (schema, fake against real, AOT dispatch); on CPU the op is the reference."""
    name = "rms_norm_silu" if op == "rms" else "group_norm_silu"
    args = _op_args(op)
    torch.library.opcheck(getattr(torch.ops.workbench, name).default, args)
    assert torch.equal(getattr(ops, name)(*args), getattr(ref, f"{name}_reference")(*args))


def test_out_op_registration_writes_into_a_slice():
    """rms_norm_silu_out under torch.library's checks; it writes the reference's values into a view and nothing
    else, and names what it needs when out does not fit."""
    x, gamma, bias, eps, silu = _op_args("rms")
    buffer = out_slice_buffer(x)
    torch.library.opcheck(torch.ops.workbench.rms_norm_silu_out.default,
                          (x, None, gamma, bias, eps, silu, buffer[:, :, 2:]))
    buffer = out_slice_buffer(x)
    ops.rms_norm_silu_out(x, None, gamma, bias, eps, silu, buffer[:, :, 2:])
    assert torch.equal(buffer[:, :, 2:], ref.rms_norm_silu_reference(x, gamma, bias, eps, silu))
    assert torch.all(buffer[:, :, :2] == SENTINEL)
    x_bias = torch.randn(x.shape[1])  # a conv's bias, folded in: the norm of x + x_bias
    ops.rms_norm_silu_out(x, x_bias, gamma, bias, eps, silu, buffer[:, :, 2:])
    torch.testing.assert_close(buffer[:, :, 2:], ref.rms_norm_silu_reference(x + x_bias.view(-1, 1, 1), gamma, bias,
                                                                             eps, silu), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="out must have x's shape, dtype and device"):
        ops.rms_norm_silu_out(x, None, gamma, bias, eps, silu, buffer[:, :, 1:])
    with pytest.raises(ValueError, match="x_bias must have shape"):
        ops.rms_norm_silu_out(x, x_bias[:3], gamma, bias, eps, silu, buffer[:, :, 2:])


def test_ops_compile_without_graph_breaks():
    def both(x, gamma, rms_bias, weight, bias):
        y = ops.rms_norm_silu(x, gamma, rms_bias, 1e-12, True)
        return ops.group_norm_silu(y * 2, 8, weight, bias, 1e-6, False) + 1

    x, gamma, rms_bias = _op_args("rms")[:3]
    weight, bias = _op_args("group")[2:4]
    torch._dynamo.reset()
    explained = torch._dynamo.explain(both)(x, gamma, rms_bias, weight, bias)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    targets = [str(n.target) for g in explained.graphs for n in g.graph.nodes]
    assert [t for t in targets if t.startswith("workbench.")] == ["workbench.rms_norm_silu.default",
                                                                   "workbench.group_norm_silu.default"]
    torch._dynamo.reset()
    compiled = torch.compile(both, fullgraph=True)
    torch.testing.assert_close(compiled(x, gamma, rms_bias, weight, bias), both(x, gamma, rms_bias, weight, bias),
                               rtol=1e-6, atol=1e-6)


# --- the adapter on diffusers' VAEs ---------------------------------------------------------------------------

def tiny_vae(kind: str, dtype=torch.float32, seed=0):
    """Random weights, seeded. Wan / Qwen-Image: base_dim 16, dim_mult [1, 2, 2, 2], one residual block per
    level; AutoencoderKL: two levels of 16 and 32 channels, GroupNorm(8), one layer per block."""
    from diffusers import AutoencoderKL, AutoencoderKLQwenImage, AutoencoderKLWan

    torch.manual_seed(seed)
    if kind in ("wan", "qwen-image"):
        cls = AutoencoderKLWan if kind == "wan" else AutoencoderKLQwenImage
        model = cls(base_dim=16, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1)
    else:
        model = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                              up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32),
                              layers_per_block=1, latent_channels=4, norm_num_groups=8)
    return model.to(dtype).eval()


def norms_followed_by_silu(kind: str, model) -> int:
    """Counted from the architecture: each residual block has two (norm1, norm2), the decoder head one.
    Wan / Qwen-Image decoder: a mid block of 2 residual blocks, then per level num_res_blocks + 1 of them.
    AutoencoderKL decoder: a mid block of 2 ResnetBlock2D, then per up block layers_per_block + 1."""
    config = model.config
    if kind in ("wan", "qwen-image"):
        residual_blocks = 2 + len(config.dim_mult) * (config.num_res_blocks + 1)
    else:
        residual_blocks = 2 + len(config.up_block_types) * (config.layers_per_block + 1)
    return 2 * residual_blocks + 1


def tiny_latent(kind: str, dtype=torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    shape = (1, 4, 2, 4, 4) if kind in ("wan", "qwen-image") else (1, 4, 8, 8)  # 2 latent frames -> 5 frames
    return torch.randn(*shape, generator=gen).to(dtype)


def decode(model, z) -> torch.Tensor:
    with torch.no_grad():
        return model.decode(z).sample


KINDS = ["wan", "qwen-image", "autoencoder-kl"]


@pytest.mark.parametrize("kind", KINDS)
def test_fused_decoder_equals_unmodified_fp32(kind):
    # Tolerance 1e-5 relative (and absolute, outputs are ~0.3): float32 throughout; the fused ops compute
    # the same float32 formula (on CPU the native ops even run the same torch functions), so only the
    # order of float32 operations may differ.
    model, z = tiny_vae(kind), tiny_latent(kind)
    expected = decode(model, z)
    assert (expected.abs() < 1).float().mean() > 0.9  # not saturated by the decoders' clamp to [-1, 1]
    state = model.state_dict()
    fused = fuse_norm_silu(model.decoder)
    assert fused == norms_followed_by_silu(kind, model)
    fused_type = FusedGroupNormSiLU if kind == "autoencoder-kl" else FusedRMSNormSiLU
    assert sum(type(m) is fused_type for m in model.decoder.modules()) == fused
    after = model.state_dict()
    assert list(after) == list(state) and all(after[k] is state[k] or torch.equal(after[k], state[k]) for k in state)
    torch.testing.assert_close(decode(model, z), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_unfuse_restores_diffusers_modules(kind):
    model, z = tiny_vae(kind), tiny_latent(kind)
    expected = decode(model, z)
    norm_types = {name: type(m) for name, m in model.named_modules()}
    fused = fuse_norm_silu(model.decoder)
    assert fuse_norm_silu(model.decoder) == 0  # already fused
    assert unfuse_norm_silu(model) == fused
    assert {name: type(m) for name, m in model.named_modules()} == norm_types
    assert torch.equal(decode(model, z), expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("kind", ["wan", "autoencoder-kl"])
def test_fused_decoder_is_as_accurate_as_unmodified(kind, dtype):
    # bf16/fp16 round after every op, so fused and unmodified decoders cannot agree bit for bit (the fused
    # norms round once where diffusers rounds three or four times). What must hold: the fused decoder is as
    # close to the float64 decoder as the unmodified one. The bounds (mean 1.1x, max 1.5x) leave room for
    # the convolutions' rounding, which dominates, without hiding a wrong norm (that gives errors ~100x).
    model, z = tiny_vae(kind), tiny_latent(kind)
    truth = decode(copy.deepcopy(model).double(), z.double())
    low = model.to(dtype)
    unmodified_err = (decode(low, z.to(dtype)).double() - truth).abs()
    fuse_norm_silu(low)
    fused_err = (decode(low, z.to(dtype)).double() - truth).abs()
    assert fused_err.mean() <= 1.1 * unmodified_err.mean(), (fused_err.mean(), unmodified_err.mean())
    assert fused_err.max() <= 1.5 * unmodified_err.max(), (fused_err.max(), unmodified_err.max())


@pytest.mark.parametrize("kind", ["wan", "autoencoder-kl"])
def test_fused_residual_block_compiles_without_graph_breaks(kind):
    """A residual block (conv, two fused norms, Identity where the SiLU was) as one graph, equal to eager."""
    model = tiny_vae(kind)
    block = model.decoder.mid_block.resnets[0]
    assert fuse_norm_silu(block) == 2
    channels = block.norm1.gamma.shape[0] if kind == "wan" else block.norm1.weight.shape[0]
    x = torch.randn(1, channels, *((2, 6, 5) if kind == "wan" else (6, 5)), generator=torch.Generator().manual_seed(2))
    run = (lambda b, t: b(t)) if kind == "wan" else (lambda b, t: b(t, None))  # ResnetBlock2D takes temb
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(lambda t: run(block, t))(x)
        assert explained.graph_break_count == 0 and explained.graph_count == 1
        targets = [str(n.target) for g in explained.graphs for n in g.graph.nodes]
        assert len([t for t in targets if t.startswith("workbench.")]) == 2
        torch._dynamo.reset()
        compiled = torch.compile(lambda t: run(block, t), fullgraph=True)
        torch.testing.assert_close(compiled(x), run(block, x), rtol=1e-5, atol=1e-5)


def test_resnet_blocks_whose_silu_has_other_uses_are_left_alone():
    """ResnetBlock2D applies its `nonlinearity` to the time embedding too (time_emb_proj, not skip_time_act),
    and with "scale_shift" a scale/shift comes between norm2 and the SiLU: no Identity may replace it there."""
    from diffusers.models.resnet import ResnetBlock2D

    torch.manual_seed(0)
    blocks = [ResnetBlock2D(in_channels=16, out_channels=16, temb_channels=8, groups=4),
              ResnetBlock2D(in_channels=16, out_channels=16, temb_channels=8, groups=4,
                            time_embedding_norm="scale_shift", skip_time_act=True)]
    x, temb = torch.randn(2, 16, 5, 6), torch.randn(2, 8)
    for block in blocks:
        with torch.no_grad():
            expected = block(x, temb)
        assert fuse_norm_silu(block) == 0 and type(block.nonlinearity) is nn.SiLU
        with torch.no_grad():
            assert torch.equal(block(x, temb), expected)
    skip_act = ResnetBlock2D(in_channels=16, out_channels=16, temb_channels=8, groups=4, skip_time_act=True)
    with torch.no_grad():
        expected = skip_act(x, temb)
        assert fuse_norm_silu(skip_act) == 2  # nonlinearity only after the norms: fused
        torch.testing.assert_close(skip_act(x, temb), expected, rtol=1e-5, atol=1e-5)


def test_fused_norms_are_not_taken_for_plain_norms():
    """Code that re-implements nn.GroupNorm by its class (the shard strategy does) must not find a fused one:
    it would drop the SiLU. Every SiLU of the decoder is replaced, once per residual block and head."""
    model = tiny_vae("autoencoder-kl")
    fused = fuse_norm_silu(model.decoder)
    modules = list(model.decoder.modules())
    assert not any(isinstance(m, nn.GroupNorm) for m in modules if type(m) is FusedGroupNormSiLU)
    assert sum(type(m) is FusedGroupNormSiLU for m in modules) == fused
    assert sum(type(m) is SiLUInNorm for m in modules) == (fused + 1) // 2  # two norms per block, one head
    assert not any(type(m) is nn.SiLU for m in modules)
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        fuse_norm_silu(object())


if __name__ == "__main__":  # the child process of triton_outputs
    torch.save(run_triton_cases(TRITON_CASES, "cuda" if torch.cuda.is_available() else "cpu"), sys.argv[1])
