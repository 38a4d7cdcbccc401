"""Parity of the fused modulation kernels (kernels/modulation.py) and their PyTorch references.

- The references (the native ops) against the formula written out in float64, over odd shapes (hidden 3072,
  3000, 64; tokens 1, 77, 4096), fp32/bf16/fp16, both index patterns, strided inputs and LayerNorm affine.
- The Triton kernels against the references. Without a GPU they run through the Triton interpreter, which
  triton.jit picks when a function is decorated (triton.language's tl.sum included, at `import triton`): so
  the kernels run in a child process (this file run as a script) started with TRITON_INTERPRET=1, whatever
  this process imported first. Small shapes there: the interpreter runs one Python program per token.

    python -m pytest tests/test_kernels.py -q
"""

from __future__ import annotations

import os
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import run_triton_script

from workbench.kernels import modulation_ref as ref

ROOT = Path(__file__).resolve().parents[1]
EPS = 1e-6  # Qwen-Image's LayerNorm eps
OUTPUTS = {  # op -> names of its outputs, in order
    "layernorm_scale_shift": ("y",),
    "layernorm_scale_shift_residual": ("y", "residual_out"),
    "layernorm_scale_shift_gate_select01": ("y", "gate"),
    "layernorm_scale_shift_gate_select01_residual": ("y", "residual_out", "gate"),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Case:
    op: str
    shape: tuple[int, int, int]  # (batch, tokens, hidden)
    dtype: str
    pattern: str = "-"  # index: "blocks" (Qwen-Image-Edit: target tokens 0, then reference tokens 1) or "random"
    strided: bool = False  # x, residual, index, weight, bias as views with token and hidden strides
    affine: bool = False  # LayerNorm weight and bias (the Qwen-Image blocks have none)

    @property
    def id(self) -> str:
        layout = "strided" if self.strided else "contiguous"
        return "-".join([self.op.removeprefix("layernorm_scale_shift").strip("_") or "plain", "x".join(map(str, self.shape)),
                         self.dtype, self.pattern, layout] + (["affine"] if self.affine else []))


def make_cases(shapes, dtypes=DTYPES, *, strided=False, affine=False) -> list[Case]:
    cases = []
    for op in OUTPUTS:
        patterns = ("blocks", "random") if "select01" in op else ("-",)
        cases += [Case(op, s, d, p, strided, affine) for s in shapes for d in dtypes for p in patterns]
    return cases


def make_args(case: Case, device="cpu") -> dict:
    """The op's arguments, by name in signature order. scale/shift/gate are chunks of one (B or 2B, 6D) tensor,
    as diffusers' QwenImageTransformerBlock makes them (rows with stride 6D; set 1 in rows [B, 2B))."""
    batch, tokens, hidden = case.shape
    dtype = DTYPES[case.dtype]
    gen = torch.Generator().manual_seed(zlib.crc32(case.id.encode()))  # the same inputs in every process

    def layout(t):  # strided: the same values in a view with doubled strides on every dim but the batch
        if not case.strided:
            return t
        keep_first = t.dim() > 1
        wide = t.new_zeros([s if keep_first and i == 0 else 2 * s for i, s in enumerate(t.shape)])
        view = wide[tuple(slice(None) if keep_first and i == 0 else slice(None, None, 2) for i in range(t.dim()))]
        return view.copy_(t)

    def randn(*size, std=1.0, mean=0.0):
        return layout((torch.randn(*size, generator=gen) * std + mean).to(dtype).to(device))

    args = {"x": randn(batch, tokens, hidden, std=2.0, mean=0.5)}
    if "residual" in case.op:
        args["residual"] = randn(batch, tokens, hidden)
        gate_tokens = tokens if "select01" in case.op else 1  # per token (Qwen-Image-Edit) or per batch
        args["residual_gate"] = randn(batch, gate_tokens, hidden, std=0.5)
    args["weight"], args["bias"] = (randn(hidden), randn(hidden)) if case.affine else (None, None)
    mod = (torch.randn(2 * batch if "select01" in case.op else batch, 6 * hidden, generator=gen) * 0.5).to(dtype)
    shift, scale, gate = mod.to(device)[:, : 3 * hidden].chunk(3, dim=-1)
    if "select01" in case.op:
        args |= {"scale0": scale[:batch], "shift0": shift[:batch], "gate0": gate[:batch],
                 "scale1": scale[batch:], "shift1": shift[batch:], "gate1": gate[batch:]}
        if case.pattern == "blocks":
            index = (torch.arange(tokens) >= (tokens + 1) // 2).int().expand(batch, tokens)
        else:
            index = torch.randint(0, 2, (batch, tokens), generator=gen)
        args["index"] = layout(index.to(device))
    else:
        args |= {"scale": scale, "shift": shift}
    args["eps"] = EPS
    return args


def as_dict(case: Case, outputs) -> dict:
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    return dict(zip(OUTPUTS[case.op], outputs, strict=True))


def float64_truth(case: Case, args: dict, residual_out=None) -> dict:
    """The formula written out in float64, independent of kernels/. For the residual ops, y is normalised
    from `residual_out` (the output under test): the ops define y from the stored, rounded residual_out."""
    x = args["x"].double()
    truth = {}
    if "residual" in case.op:
        truth["residual_out"] = args["residual"].double() + args["residual_gate"].double() * x
        x = residual_out.double()
    centered = x - x.mean(-1, keepdim=True)
    y = centered / torch.sqrt(centered.pow(2).mean(-1, keepdim=True) + EPS)
    if case.affine:
        y = y * args["weight"].double() + args["bias"].double()
    if "select01" in case.op:
        set1 = (args["index"] != 0).unsqueeze(-1)
        scale, shift, gate = (torch.where(set1, args[f"{n}1"].unsqueeze(1), args[f"{n}0"].unsqueeze(1))
                              for n in ("scale", "shift", "gate"))
        truth["gate"] = gate
    else:
        scale, shift = args["scale"].unsqueeze(1), args["shift"].unsqueeze(1)
    truth["y"] = y * (1 + scale.double()) + shift.double()
    return truth


def reference(case: Case, args: dict) -> dict:
    return as_dict(case, getattr(ref, f"{case.op}_reference")(**args))


def assert_outputs_close(case: Case, actual: dict, expected: dict, rtol: float, atol: float):
    for name in OUTPUTS[case.op]:
        a, e = actual[name], expected[name]
        assert a.shape == e.shape, f"{name}: shape {tuple(a.shape)} != {tuple(e.shape)}"
        if name == "gate":  # a copy of the chosen modulation row: exact
            assert torch.equal(a, e.to(a.dtype)), f"{case.id}: gate differs from the chosen set"
        else:  # |a - e| <= atol + rtol |e|, as torch.testing.assert_close but cheaper on large tensors
            err = (a.double() - e.double()).abs()
            excess = err - (atol + rtol * e.double().abs())
            worst = int(excess.argmax())
            assert excess.flatten()[worst] <= 0, (
                f"{case.id} {name}: {int((excess > 0).sum())} of {err.numel()} elements out of tolerance "
                f"(rtol={rtol:.3g}, atol={atol:.3g}); worst: {a.flatten()[worst].item()} vs {e.flatten()[worst].item()}")


# --- the references (the native ops) against float64 -------------------------------------------------------

NATIVE_CASES = (make_cases([(1, 1, 3072), (2, 77, 3072), (2, 77, 3000), (3, 77, 64), (1, 4096, 64)])
                + make_cases([(2, 77, 3000)], strided=True, affine=True))


@pytest.mark.parametrize("case", NATIVE_CASES, ids=lambda c: c.id)
def test_reference_matches_float64(case):
    # Tolerance: float32 statistics and arithmetic (~1e-6 relative), then one rounding to the output dtype,
    # at most one unit in the last place of bf16/fp16 (rtol = their eps).
    args = make_args(case)
    out = reference(case, args)
    truth = float64_truth(case, args, out.get("residual_out"))
    dtype = DTYPES[case.dtype]
    rtol = 1e-5 if dtype == torch.float32 else torch.finfo(dtype).eps
    assert_outputs_close(case, out, truth, rtol=rtol, atol=1e-5)
    for name, t in out.items():
        expected_dtype = dtype  # every input of a case has the case's dtype
        assert t.dtype == expected_dtype and t.is_contiguous(), f"{name}: {t.dtype}, contiguous={t.is_contiguous()}"


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("pattern", ["blocks", "random"])
def test_reference_matches_diffusers_modulate(dtype, pattern):
    """diffusers' own sequence: LayerNorm, then QwenImageTransformerBlock._modulate (torch.where on the index).
    fp32: equal within 1e-5. bf16/fp16: diffusers rounds after each op (norm, 1 + scale, product, sum), the
    reference once, so the reference is at least as close to float64 as diffusers' sequence is."""
    from diffusers.models.transformers.transformer_qwenimage import QwenImageTransformerBlock

    case = Case("layernorm_scale_shift_gate_select01", (2, 77, 3000), dtype, pattern)
    args = make_args(case)
    b = case.shape[0]
    mod_params = torch.cat([torch.cat([args[f"shift{s}"], args[f"scale{s}"], args[f"gate{s}"]], -1) for s in "01"])
    normed = F.layer_norm(args["x"], (case.shape[-1],), eps=EPS)
    y_diffusers, gate_diffusers = QwenImageTransformerBlock._modulate(None, normed, mod_params, args["index"])
    out = reference(case, args)
    assert torch.equal(out["gate"], gate_diffusers) and mod_params.shape[0] == 2 * b
    if dtype == "fp32":
        torch.testing.assert_close(out["y"], y_diffusers, rtol=1e-5, atol=1e-5)
    else:
        truth = float64_truth(case, args)["y"]
        assert (out["y"].double() - truth).abs().max() <= (y_diffusers.double() - truth).abs().max()


@pytest.mark.parametrize("bad, message", [
    (lambda a: a | {"x": a["x"][0]}, "x must be 3-D"),
    (lambda a: a | {"scale0": a["scale0"][:, :-1]}, "scale0 must have shape"),
    (lambda a: a | {"gate1": a["gate1"].half()}, "must share one dtype"),
    (lambda a: a | {"index": a["index"].float()}, "index must be an integer or bool tensor"),
    (lambda a: a | {"index": a["index"][:, :-1]}, "index must have shape"),
    (lambda a: a | {"residual_gate": a["residual_gate"][:, :2]}, "residual_gate must have shape"),
    (lambda a: a | {"weight": torch.ones(3)}, "weight must have shape"),
    (lambda a: a | {"x": a["x"].int()}, "x must be float32, bfloat16 or float16"),
    (lambda a: a | {"eps": -1.0}, "eps must be a float >= 0"),
])
def test_bad_arguments_are_named(bad, message):
    case = Case("layernorm_scale_shift_gate_select01_residual", (2, 5, 64), "fp32", "random")
    with pytest.raises((ValueError, TypeError), match=message):
        ref.layernorm_scale_shift_gate_select01_residual_reference(**bad(make_args(case)))


def test_bool_index_and_broadcast_residual_gate():
    case = Case("layernorm_scale_shift_gate_select01_residual", (2, 5, 64), "fp32", "random")
    args = make_args(case)
    out = reference(case, args | {"index": args["index"].bool()})
    assert torch.equal(out["gate"], reference(case, args)["gate"])
    args["residual_gate"] = args["residual_gate"][:, :1]  # (B, 1, D), as the text stream passes it
    out = reference(case, args)
    assert_outputs_close(case, out, float64_truth(case, args, out["residual_out"]), rtol=1e-5, atol=1e-5)


# --- the Triton kernels against the references --------------------------------------------------------------

# 13 tokens, not 77: one program per token (row), each on its own row alone, so the count only adds interpreter
# time (77 tokens cost 14 of the child's 18 s); odd, with both index sets among them, as 77 was.
TRITON_CASES = (make_cases([(1, 1, 3072), (1, 13, 3000), (1, 13, 64), (2, 7, 3072)])
                + make_cases([(2, 7, 3000)], dtypes=("fp32", "bf16"), strided=True, affine=True))


def run_triton_cases(cases, device: str) -> dict:
    """case id -> outputs of the Triton launcher (on CPU), or the error it raised as a string."""
    from workbench.kernels import modulation

    results = {}
    for case in cases:
        try:
            outputs = as_dict(case, getattr(modulation, case.op)(**make_args(case, device)))
            results[case.id] = {k: v.cpu() for k, v in outputs.items()}
        except Exception as e:  # reported by the test of that case
            results[case.id] = f"{type(e).__name__}: {e}"
    return results


@pytest.fixture(scope="module")
def triton_outputs(tmp_path_factory):
    return run_triton_script(__file__, tmp_path_factory)


@pytest.mark.parametrize("case", TRITON_CASES, ids=lambda c: c.id)
def test_triton_matches_reference(case, triton_outputs):
    # Tolerance: fp32 1e-5 (float32 statistics, another reduction order). bf16/fp16: kernel and reference
    # both round once from float32 values that agree to ~1e-6, so a value may land one rounding step apart;
    # the CPU interpreter truncates float32 -> bfloat16 where GPUs round to nearest: up to 1.5 ulp, rtol 2 eps.
    # Residual ops: y is checked against the reference run on the kernel's own residual_out.
    out = triton_outputs[case.id]
    assert not isinstance(out, str), out
    args = make_args(case)
    expected = reference(case, args)
    if "residual" in case.op:
        plain = case.op.removesuffix("_residual")
        plain_args = {k: v for k, v in args.items() if k not in ("residual", "residual_gate")}
        expected["y"] = getattr(ref, f"{plain}_reference")(**plain_args | {"x": out["residual_out"]})
        expected["y"] = expected["y"][0] if isinstance(expected["y"], tuple) else expected["y"]
    dtype = DTYPES[case.dtype]
    rtol = 1e-5 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps
    assert_outputs_close(case, out, expected, rtol=rtol, atol=1e-5)
    for name, t in out.items():  # what the ops' fake implementation (the reference) promises torch.compile
        assert t.dtype == expected[name].dtype and t.is_contiguous(), name


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available(),
                    reason="checks the error for CPU tensors without the interpreter")
def test_triton_on_cpu_without_interpreter_says_how():
    modulation = pytest.importorskip("workbench.kernels.modulation")
    args = make_args(Case("layernorm_scale_shift", (1, 2, 64), "fp32"))
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        modulation.layernorm_scale_shift(**args)
    args = make_args(Case("layernorm_scale_shift", (1, 1, modulation.MAX_HIDDEN + 1), "fp32"))
    with pytest.raises(ValueError, match="MAX_HIDDEN"):
        modulation.layernorm_scale_shift(**args)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="compiles the real kernel")
@pytest.mark.parametrize("residual, index", [(False, False), (True, False), (False, True), (True, True)])
def test_triton_kernel_compiles_for_hopper_with_16_byte_accesses(residual, index):
    """No GPU needed: compile ahead of time for sm_90 (H100/H200), specialised as the JIT specialises contiguous
    bf16 inputs of hidden 3072 (unit strides become constants, the rest divisible by 16), and check that
    every load and store of a row is a 16-byte vector."""
    pytest.importorskip("triton")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from workbench.kernels import modulation

    kernel = modulation._layernorm_modulate_kernel
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name.endswith("_ptr"):
            signature[name] = "*i32" if name == "index_ptr" else "*bf16"
        elif name.endswith("_d") or name in ("stride_w", "stride_bias", "stride_i_l"):
            signature[name], constexprs[name] = "constexpr", 1
        elif name in ("eps", "tokens"):
            signature[name] = "fp32" if name == "eps" else "i32"
            continue
        elif name.isupper():
            signature[name] = "constexpr"
            continue
        else:
            signature[name] = "i32"
        attrs[(i,)] = [["tt.divisibility", 16]]
    constexprs |= {"HAS_RESIDUAL": residual, "HAS_INDEX": index, "HAS_WEIGHT": False, "HAS_BIAS": False,
                   "BLOCK_D": 4096}
    attrs = {k: v for k, v in attrs.items() if signature[kernel.arg_names[k[0]]] != "constexpr"}
    compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": 8})
    ptx = compiled.asm["ptx"]
    assert "ld.global.b16" not in ptx and "ld.global.v4" in ptx and "st.global.v4" in ptx
    rows_out = 1 + residual + index  # y, residual_out, gate
    assert ptx.count("st.global.v4") == 2 * rows_out  # 3072 bf16 over 256 threads: 2 x 16 bytes each


if __name__ == "__main__":  # the child process of triton_outputs
    torch.save(run_triton_cases(TRITON_CASES, "cuda" if torch.cuda.is_available() else "cpu"), sys.argv[1])
