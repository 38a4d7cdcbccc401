"""Benchmark of the fused modulation kernels and of a Qwen-Image transformer step with and without them.

    PYTHONPATH=. python benchmarks/bench_modulation.py            # one H100/H200 -> data/bench/modulation_<gpu>.json
    PYTHONPATH=. python benchmarks/bench_modulation.py --smoke    # CPU sanity check, tiny shapes -> runs/bench/
    TRITON_INTERPRET=1 PYTHONPATH=. python benchmarks/bench_modulation.py --smoke   # same, Triton interpreted

Kernels: B=1, tokens 4096 and 16384, hidden 3072, bf16, for each variant (select01 and its residual form, as
Qwen-Image-Edit's image stream uses them; plain and plain residual, as the text stream and other DiTs do):
  fused     the Triton launcher (kernels/modulation.py)
  eager     diffusers' own sequence: F.layer_norm, then QwenImageTransformerBlock._modulate (and the gated
            residual add before it)
  compiled  torch.compile(fullgraph=True) of that eager sequence
Times are triton.testing.do_bench medians (L2 flushed before each call). The bytes that must move are those
read (x, residual and its gate, the modulation vectors, the index) and written (y, residual_out, gate);
bandwidth = bytes / median, against the copy bandwidth measured here (a large device-to-device copy_,
bytes read + written). Target: fused >= 80% of copy bandwidth and faster than compiled.

Model: QwenImageTransformer2DModel with the real width (hidden 3072 = 24 heads x 128, text width 3584) but
--layers blocks (2), random bf16 weights; Qwen-Image with 4096 image tokens (64x64 patches) and
Qwen-Image-Edit (zero_cond_t) with a 4096-token target plus a 4096-token reference image; 256 text tokens.
One forward step, eager and torch.compile(fullgraph=True), unfused and fused (workbench.ops.qwen).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_qwenimage import QwenImageTransformerBlock

VARIANTS = {  # name -> the op (function name in kernels.modulation and workbench.ops)
    "select01": "layernorm_scale_shift_gate_select01",
    "select01_residual": "layernorm_scale_shift_gate_select01_residual",
    "plain": "layernorm_scale_shift",
    "plain_residual": "layernorm_scale_shift_residual",
}
EPS = 1e-6
TARGET_PCT_OF_COPY = 80.0


# --- the sequences compared ----------------------------------------------------------------------------------

_DIFFUSERS_MODULATE = QwenImageTransformerBlock._modulate  # the plain function: dynamo inlines it


def _modulate(x, mod_params, index=None):
    return _DIFFUSERS_MODULATE(None, x, mod_params, index)  # uses no block state


def _layer_norm(x):
    return F.layer_norm(x, x.shape[-1:], eps=EPS)  # the blocks' LayerNorm: no affine, eps 1e-6


def eager_sequence(variant: str):
    """diffusers' unfused sequence for `variant`, as a function of the inputs dict."""
    def select01(x, mod_params, index):
        return _modulate(_layer_norm(x), mod_params, index)

    def select01_residual(x, residual, residual_gate, mod_params, index):
        residual_out = residual + residual_gate * x
        y, gate = _modulate(_layer_norm(residual_out), mod_params, index)
        return y, residual_out, gate

    def plain(x, mod_params):
        return _modulate(_layer_norm(x), mod_params)[0]  # the gate is a view of mod_params: nothing to write

    def plain_residual(x, residual, residual_gate, mod_params):
        residual_out = residual + residual_gate * x
        return _modulate(_layer_norm(residual_out), mod_params)[0], residual_out

    return {"select01": select01, "select01_residual": select01_residual, "plain": plain,
            "plain_residual": plain_residual}[variant]


def fused_sequence(variant: str, impl, **launch_kwargs):
    """The fused op of `variant` from `impl` (kernels.modulation or workbench.ops), as a function of the inputs."""
    op = getattr(impl, VARIANTS[variant])

    def run(x, mod_params, index=None, residual=None, residual_gate=None):
        shift, scale, gate = mod_params.chunk(3, dim=-1)
        res = (residual, residual_gate) if residual is not None else ()
        if index is None:
            return op(x, *res, None, None, scale, shift, EPS, **launch_kwargs)
        b = x.shape[0]
        return op(x, *res, None, None, scale[:b], shift[:b], gate[:b], scale[b:], shift[b:], gate[b:], index, EPS,
                  **launch_kwargs)

    return run


def make_inputs(variant: str, batch: int, tokens: int, hidden: int, dtype, device, seed=0) -> dict:
    """As the Qwen-Image block has them: mod_params a (B or 2B, 3D) chunk of the (., 6D) projection; the
    Qwen-Image-Edit index (target tokens 0, then reference tokens 1); the select residual gate per token."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape, std=1.0):
        return torch.randn(*shape, generator=gen, device=device, dtype=torch.float32).mul_(std).to(dtype)

    select = variant.startswith("select01")
    inputs = {"x": randn(batch, tokens, hidden),
              "mod_params": randn(2 * batch if select else batch, 6 * hidden, std=0.5)[:, : 3 * hidden]}
    if select:
        inputs["index"] = (torch.arange(tokens, device=device) >= tokens // 2).int().expand(batch, tokens).contiguous()
    if variant.endswith("residual"):
        inputs["residual"] = randn(batch, tokens, hidden)
        inputs["residual_gate"] = randn(batch, tokens if select else 1, hidden, std=0.5)
    return inputs


def bytes_moved(variant: str, inputs: dict, outputs) -> int:
    """Bytes that must be read and written: every input tensor once (the modulation vectors the op uses: six
    with the index, scale and shift without), every output once."""
    x = inputs["x"]
    batch, _, hidden = x.shape
    mod_vectors = 6 if "index" in inputs else 2
    read = mod_vectors * batch * hidden * inputs["mod_params"].element_size()
    read += sum(t.numel() * t.element_size() for k, t in inputs.items() if k != "mod_params")
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    return read + sum(t.numel() * t.element_size() for t in outputs)


# --- timing --------------------------------------------------------------------------------------------------

def median_ms(fn, device, warmup_ms: float, rep_ms: float) -> float:
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")
    fn()  # CPU (--smoke): wall clock, a few calls
    times = []
    for _ in range(5):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def copy_bandwidth(device, nbytes: int, warmup_ms: float, rep_ms: float) -> dict:
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device, warmup_ms, rep_ms)
    return {"bytes_read_plus_written": 2 * nbytes, "ms": ms, "GBps": 2 * nbytes / ms / 1e6}


def max_error_in_eps(actual, expected) -> float:
    """max |actual - expected| / (eps |expected| + 1e-5), eps of the output dtype: about 1 means one rounding step."""
    eps = torch.finfo(actual.dtype).eps
    err = (actual.float() - expected.float()).abs()
    return float((err / (eps * expected.float().abs() + 1e-5)).max())


def bench_kernels(args, device, dtype, impl, copy_gbps: float) -> list[dict]:
    from workbench.kernels import modulation_ref

    references = SimpleNamespace(**{op: getattr(modulation_ref, f"{op}_reference") for op in VARIANTS.values()})
    rows = []
    for variant in args.variants:
        for tokens in args.tokens:
            inputs = make_inputs(variant, args.batch, tokens, args.hidden, dtype, device)
            eager = eager_sequence(variant)
            fused = fused_sequence(variant, impl)
            torch._dynamo.reset()
            compiled = torch.compile(eager, fullgraph=True)
            out = fused(**inputs)
            expected = fused_sequence(variant, references)(**inputs)
            compiled(**inputs)  # compile outside the timing
            moved = bytes_moved(variant, inputs, out)
            ms = {name: median_ms(lambda fn=fn: fn(**inputs), device, args.warmup_ms, args.rep_ms)
                  for name, fn in (("fused", fused), ("eager", eager), ("compiled", compiled))}
            gbps = {name: moved / t / 1e6 for name, t in ms.items()}
            row = {"variant": variant, "op": VARIANTS[variant], "batch": args.batch, "tokens": tokens,
                   "hidden": args.hidden, "dtype": str(dtype).removeprefix("torch."), "bytes_moved": moved, "ms": ms,
                   "GBps": gbps, "pct_of_copy": {k: 100 * v / copy_gbps for k, v in gbps.items()},
                   "fused_speedup_vs_eager": ms["eager"] / ms["fused"],
                   "fused_speedup_vs_compiled": ms["compiled"] / ms["fused"],
                   "fused_y_error_vs_reference_in_eps": max_error_in_eps(_first(out), _first(expected))}
            if args.sweep_warps and device.type == "cuda":
                row["fused_ms_by_num_warps"] = {
                    w: median_ms(lambda f=fused_sequence(variant, impl, num_warps=w): f(**inputs), device,
                                 args.warmup_ms, args.rep_ms) for w in (2, 4, 8, 16)}
            rows.append(row)
            print(f"  {variant:18s} tokens {tokens:6d}: fused {ms['fused']:.4f} ms "
                  f"({row['pct_of_copy']['fused']:.0f}% of copy), eager {ms['eager']:.4f}, compiled {ms['compiled']:.4f}",
                  flush=True)
    return rows


def _first(out):
    return out[0] if isinstance(out, tuple) else out


# --- the model step ------------------------------------------------------------------------------------------

def model_setups(args) -> list[dict]:
    if args.smoke:  # the tests' tiny model
        config = dict(patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16,
                      num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 6, 6))
        grid, text_tokens = (1, 8, 8), 7
    else:  # the real width, few blocks
        config = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=args.layers, attention_head_dim=128,
                      num_attention_heads=24, joint_attention_dim=3584, axes_dims_rope=(16, 56, 56))
        grid, text_tokens = (1, 64, 64), 256
    return [{"model": "qwen-image", "config": config | {"zero_cond_t": False}, "img_shapes": [[grid]],
             "text_tokens": text_tokens},
            {"model": "qwen-image-edit", "config": config | {"zero_cond_t": True}, "img_shapes": [[grid, grid]],
             "text_tokens": text_tokens}]


def bench_model(args, device, dtype) -> list[dict]:
    from diffusers import QwenImageTransformer2DModel

    from workbench.ops.qwen import fuse_modulation, unfuse_modulation

    rows = []
    for setup in model_setups(args):
        torch.manual_seed(0)
        with device:
            model = QwenImageTransformer2DModel(**setup["config"]).to(dtype).eval()
        image_tokens = sum(f * h * w for f, h, w in setup["img_shapes"][0])
        gen = torch.Generator(device=device).manual_seed(1)
        inputs = {
            "hidden_states": torch.randn(1, image_tokens, setup["config"]["in_channels"], generator=gen,
                                         device=device).to(dtype),
            "encoder_hidden_states": torch.randn(1, setup["text_tokens"], setup["config"]["joint_attention_dim"],
                                                 generator=gen, device=device).to(dtype),
            "encoder_hidden_states_mask": torch.ones(1, setup["text_tokens"], device=device),
            "timestep": torch.tensor([0.5], device=device), "img_shapes": setup["img_shapes"], "return_dict": False}
        outputs = {}
        for fused in (False, True):
            (fuse_modulation if fused else unfuse_modulation)(model)
            with torch.inference_mode():
                step = lambda m: m(**inputs)[0]  # noqa: E731
                eager_ms = median_ms(lambda: step(model), device, args.warmup_ms, args.model_rep_ms)
                torch._dynamo.reset()
                breaks = torch._dynamo.explain(model)(**inputs).graph_break_count
                torch._dynamo.reset()
                compiled = torch.compile(model, fullgraph=True)
                start = time.perf_counter()
                outputs[fused] = step(compiled).float()
                compile_s = time.perf_counter() - start
                compiled_ms = median_ms(lambda: step(compiled), device, args.warmup_ms, args.model_rep_ms)
            rows.append({"model": setup["model"], "fused": fused, "layers": setup["config"]["num_layers"],
                         "hidden": setup["config"]["num_attention_heads"] * setup["config"]["attention_head_dim"],
                         "image_tokens": image_tokens, "text_tokens": setup["text_tokens"],
                         "dtype": str(dtype).removeprefix("torch."), "graph_breaks": breaks,
                         "compile_s": compile_s, "eager_ms": eager_ms, "compiled_ms": compiled_ms})
            print(f"  {setup['model']:16s} fused={fused!s:5s}: eager {eager_ms:.3f} ms, compiled {compiled_ms:.3f} ms, "
                  f"graph breaks {breaks}, compile {compile_s:.0f} s", flush=True)
        rows[-1]["output_max_abs_diff_vs_unfused"] = float((outputs[True] - outputs[False]).abs().max())
        rows[-1]["output_max_abs"] = float(outputs[False].abs().max())
    return rows


# --- provenance, table, main ---------------------------------------------------------------------------------

def machine(device) -> dict:
    if device.type != "cuda":
        return {"device": "cpu", "cpu_count": os.cpu_count()}
    props = torch.cuda.get_device_properties(device)
    return {"device": "cuda", "gpu": props.name, "sm_count": props.multi_processor_count,
            "memory_GiB": round(props.total_memory / 2**30, 1), "compute_capability": f"{props.major}.{props.minor}",
            "l2_cache_MiB": getattr(props, "L2_cache_size", 0) / 2**20}


def table(result: dict) -> str:
    copy_gbps = result["copy_bandwidth"]["GBps"]
    lines = [f"copy bandwidth {copy_gbps:.0f} GB/s ({result['machine'].get('gpu', 'cpu')}); fused = {result['fused_impl']}"]
    if result["kernels"]:
        lines.append(f"{'variant':18s} {'tokens':>6s} {'MB':>7s} {'fused ms':>9s} {'eager ms':>9s} {'compiled':>9s} "
                     f"{'fused GB/s':>10s} {'% copy':>6s} {'vs comp':>7s}")
    for r in result["kernels"]:
        lines.append(f"{r['variant']:18s} {r['tokens']:6d} {r['bytes_moved'] / 1e6:7.1f} {r['ms']['fused']:9.4f} "
                     f"{r['ms']['eager']:9.4f} {r['ms']['compiled']:9.4f} {r['GBps']['fused']:10.0f} "
                     f"{r['pct_of_copy']['fused']:6.1f} {r['fused_speedup_vs_compiled']:6.2f}x")
    for r in result["model_steps"]:
        lines.append(f"{r['model']:16s} {'fused' if r['fused'] else 'unfused':7s} {r['layers']} layers "
                     f"{r['image_tokens']} img tokens: compiled {r['compiled_ms']:.3f} ms, eager {r['eager_ms']:.3f} ms, "
                     f"graph breaks {r['graph_breaks']}")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="CPU sanity check, tiny shapes; fused = Triton interpreted if TRITON_INTERPRET=1, else native")
    p.add_argument("--tokens", type=int, nargs="+", help="token counts (default 4096 16384; smoke 1 77)")
    p.add_argument("--hidden", type=int, help="hidden size (default 3072; smoke 3000)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--layers", type=int, default=2, help="transformer blocks of the model step (default 2)")
    p.add_argument("--skip-model", action="store_true", help="kernels only")
    p.add_argument("--skip-kernels", action="store_true", help="model step only")
    p.add_argument("--sweep-warps", action="store_true", help="also time the fused kernel at num_warps 2/4/8/16")
    p.add_argument("--copy-GiB", type=float, default=1.0, help="size of the copy that measures bandwidth")
    p.add_argument("--warmup-ms", type=float, default=25)
    p.add_argument("--rep-ms", type=float, default=200)
    p.add_argument("--model-rep-ms", type=float, default=1000)
    p.add_argument("--out", type=Path, help="JSON path (default data/bench/modulation_<gpu>.json; smoke runs/bench/)")
    args = p.parse_args(argv)
    args.tokens = args.tokens or ([1, 77] if args.smoke else [4096, 16384])
    args.hidden = args.hidden or (3000 if args.smoke else 3072)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cpu" and not args.smoke:
        sys.exit("no CUDA device: run on a GPU, or pass --smoke for the CPU sanity check")
    dtype = getattr(torch, args.dtype)
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"  # CPU: set before triton was first imported
    if importlib.util.find_spec("triton") is not None and (device.type == "cuda" or interpreted):
        from workbench.kernels import modulation as impl

        fused_impl = "triton" if device.type == "cuda" else "triton-interpreter"
    else:
        from workbench import ops as impl

        fused_impl = "workbench.ops (native)"
    if device.type == "cuda":
        torch.cuda.init()

    from workbench.measure import versions

    result = {"benchmark": "modulation", "smoke": args.smoke, "command": "python " + shlex.join(sys.argv),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(device),
              "versions": versions(), "fused_impl": fused_impl,
              "timer": "triton.testing.do_bench median (L2 flushed)" if device.type == "cuda" else "wall clock median",
              "target": {"fused_pct_of_copy_min": TARGET_PCT_OF_COPY, "fused_faster_than_compiled": True}}
    copy_bytes = int(args.copy_GiB * 2**30) if not args.smoke else 2**26
    result["copy_bandwidth"] = copy_bandwidth(device, copy_bytes, args.warmup_ms, args.rep_ms)
    print(f"copy bandwidth: {result['copy_bandwidth']['GBps']:.0f} GB/s", flush=True)
    result["kernels"] = [] if args.skip_kernels else bench_kernels(args, device, dtype, impl,
                                                                   result["copy_bandwidth"]["GBps"])
    result["model_steps"] = [] if args.skip_model else bench_model(args, device, dtype)
    result["target"]["met"] = bool(result["kernels"]) and all(r["pct_of_copy"]["fused"] >= TARGET_PCT_OF_COPY and r["fused_speedup_vs_compiled"] > 1
                                  for r in result["kernels"])

    out = args.out or (Path("runs/bench/modulation_smoke.json") if args.smoke
                       else Path("data/bench") / f"modulation_{_slug(result['machine']['gpu'])}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}\n")
    print(table(result))
    return result


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


if __name__ == "__main__":
    main()
