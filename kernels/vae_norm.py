"""Triton kernels: channel-first RMS norm and GroupNorm, each fused with an optional SiLU (the VAE decoders).

x (B, C, *spatial) is read as (B, C, S), S = prod(spatial), contiguous: the launchers call x.contiguous(),
which copies only a non-contiguous x (a contiguous one is returned as is). The RMS kernel also reads a
channels-last x (NHWC / NDHWC, the `channels_last` lever's layout) in place, through its strides, and
writes y through its own strides: rms_norm_silu_out writes into a slice of a larger tensor. Outputs
have x's layout, x's (fp32, bf16, fp16); statistics and arithmetic are float32 and every output is rounded once.
Semantics and argument checks are those of the references in `kernels/vae_norm_ref.py`.

rms_norm_silu (WanRMS_norm): a program owns BLOCK_S positions of one batch and reduces over C, reading
  (BLOCK_C, BLOCK_S) tiles whose rows are contiguous along S (coalesced). When one tile spans C (the
  default for C <= MAX_ONE_TILE_C, every Wan/Qwen-Image decoder width), x is read once and kept in
  registers; otherwise a first loop over C-chunks sums the squares and a second reads them again (which
  the GPU's L2 may serve) to write y.
group_norm_silu (nn.GroupNorm): a (batch, group) is one contiguous run of (C/G)*S values, up to tens of
  millions, so its statistics are a split reduction over three launches:
    1. stats:    grid (B*G, splits); each program runs a per-lane Welford update over its contiguous chunk
                 and merges the lanes (Chan's formula) -> (mean, M2, count) per chunk.
    2. finalize: grid (B*G,); merges the chunks the same way -> (mean, rstd) per group.
    3. apply:    grid (S blocks, B*C); y = (x - mean) * (rstd * w) + b, then SiLU.
  Welford rather than float32 sums of x and x^2: the same single read of x, but no cancellation in
  E[x^2] - mean^2 when |mean| >> std (the variance error of the sums grows as (mean/std)^2 * 1e-7), so the
  statistics stay float32-accurate on any input; its extra arithmetic (a few float32 operations per
  element) is meant to hide under the memory traffic.

The tile, block and split defaults below are first choices, not yet tuned on a GPU: the benchmark's --sweep
(benchmarks/bench_vae_norm.py) times alternatives through the launchers' keyword overrides.

Offsets are int64 (a decoder activation may pass 2**31 elements). Runs on CUDA tensors, or on CPU tensors
through the Triton interpreter: TRITON_INTERPRET=1 must be set before triton is first imported.

    python -m pytest tests/test_vae_norm.py -q
"""

from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from .vae_norm_ref import check_norm_args, check_out

__all__ = ["MAX_ONE_TILE_C", "rms_norm_silu", "rms_norm_silu_out", "group_norm_silu", "group_norm_silu_stats"]

MAX_ONE_TILE_C = 512  # RMS: up to this many channels (padded to a power of two) one tile holds all of C
RMS_TILE = 8192  # RMS: elements per (BLOCK_C, BLOCK_S) tile, 32 KiB of float32 registers per program
GROUP_STATS_BLOCK = 2048  # GroupNorm: lanes of the stats loop
GROUP_APPLY_BLOCK_S = 2048  # GroupNorm: positions per apply program
STATS_PROGRAMS_PER_SM = 4  # GroupNorm: splits are chosen to start about this many stats programs per SM


# --- RMS norm -------------------------------------------------------------------------------------------------

@triton.jit
def _rms_write(y_ptr, x, y_offsets, mask, c, c_mask, inv_norm, gamma_ptr, bias_ptr,
               HAS_BIAS: tl.constexpr, SILU: tl.constexpr):
    """y = x * inv_norm * gamma (+ bias), SiLU, store: x (BLOCK_C, BLOCK_S) float32, inv_norm (BLOCK_S,)."""
    gamma = tl.load(gamma_ptr + c, mask=c_mask, other=0.0).to(tl.float32)
    y = x * inv_norm[None, :] * gamma[:, None]
    if HAS_BIAS:
        y += tl.load(bias_ptr + c, mask=c_mask, other=0.0).to(tl.float32)[:, None]
    if SILU:
        y = y * tl.sigmoid(y)
    tl.store(y_ptr + y_offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _offsets(batch, c, s, stride_b, stride_c, stride_s):
    """(BLOCK_C, BLOCK_S) int64 offsets of channels c, positions s of one batch in a (B, C, S) strided tensor."""
    return batch * stride_b + c[:, None].to(tl.int64) * stride_c + s[None, :].to(tl.int64) * stride_s


@triton.jit
def _load_x(x_ptr, offsets, mask, x_bias_ptr, c, c_mask, HAS_X_BIAS: tl.constexpr):
    """x (BLOCK_C, BLOCK_S) in float32, plus the per-channel x_bias (a convolution's bias folded in) if given."""
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if HAS_X_BIAS:
        x += tl.load(x_bias_ptr + c, mask=c_mask, other=0.0).to(tl.float32)[:, None]
    return x


@triton.jit
def _rms_norm_silu_kernel(
    y_ptr, x_ptr, x_bias_ptr, gamma_ptr, bias_ptr,  # x, y (B, C, S), each with its own strides; x_bias, gamma, bias (C,)
    channels, spatial, stride_xb, stride_xc, stride_xs, stride_yb, stride_yc, stride_ys, sqrt_channels, eps,
    HAS_X_BIAS: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, ONE_TILE: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    batch = tl.program_id(1).to(tl.int64)
    s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)  # (BLOCK_S,) positions
    s_mask = s < spatial
    c_tile = tl.arange(0, BLOCK_C)

    if ONE_TILE:  # all of C in one tile: read x once
        c_mask = c_tile < channels
        mask = c_mask[:, None] & s_mask[None, :]
        x = _load_x(x_ptr, _offsets(batch, c_tile, s, stride_xb, stride_xc, stride_xs), mask, x_bias_ptr, c_tile,
                    c_mask, HAS_X_BIAS)
        inv_norm = sqrt_channels / tl.maximum(tl.sqrt(tl.sum(x * x, axis=0)), eps)  # F.normalize's clamp
        _rms_write(y_ptr, x, _offsets(batch, c_tile, s, stride_yb, stride_yc, stride_ys), mask, c_tile, c_mask,
                   inv_norm, gamma_ptr, bias_ptr, HAS_BIAS, SILU)
    else:  # one pass over C-chunks for the sum of squares, one to write
        sum_sq = tl.zeros([BLOCK_S], dtype=tl.float32)
        for c0 in range(0, channels, BLOCK_C):
            c = c0 + c_tile
            c_mask = c < channels
            mask = c_mask[:, None] & s_mask[None, :]
            x = _load_x(x_ptr, _offsets(batch, c, s, stride_xb, stride_xc, stride_xs), mask, x_bias_ptr, c, c_mask,
                        HAS_X_BIAS)
            sum_sq += tl.sum(x * x, axis=0)
        inv_norm = sqrt_channels / tl.maximum(tl.sqrt(sum_sq), eps)
        for c0 in range(0, channels, BLOCK_C):
            c = c0 + c_tile
            c_mask = c < channels
            mask = c_mask[:, None] & s_mask[None, :]
            x = _load_x(x_ptr, _offsets(batch, c, s, stride_xb, stride_xc, stride_xs), mask, x_bias_ptr, c, c_mask,
                        HAS_X_BIAS)
            _rms_write(y_ptr, x, _offsets(batch, c, s, stride_yb, stride_yc, stride_ys), mask, c, c_mask,
                       inv_norm, gamma_ptr, bias_ptr, HAS_BIAS, SILU)


# --- GroupNorm ------------------------------------------------------------------------------------------------

@triton.jit
def _welford_combine(mean_a, m2_a, count_a, mean_b, m2_b, count_b):
    """Chan's merge of two (mean, sum of squared deviations, count) summaries; empty ones (count 0) allowed."""
    count = count_a + count_b
    weight_b = count_b / tl.maximum(count, 1.0)  # counts are whole numbers: count 0 means both are empty
    delta = mean_b - mean_a
    return mean_a + delta * weight_b, m2_a + m2_b + delta * delta * count_a * weight_b, count


@triton.jit
def _group_stats_kernel(
    partial_ptr,  # (B*G, splits, 3) float32: mean, M2, count of each chunk
    x_ptr, group_numel, chunk_numel, splits,
    BLOCK: tl.constexpr,
):
    group = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    x_group = x_ptr + group * group_numel  # a (batch, group) is contiguous: channels g*C/G.. times S
    start = split * chunk_numel
    end = tl.minimum(start + chunk_numel, group_numel)
    mean = tl.zeros([BLOCK], dtype=tl.float32)  # per lane: a running Welford summary
    m2 = tl.zeros([BLOCK], dtype=tl.float32)
    count = tl.zeros([BLOCK], dtype=tl.float32)
    for offset in range(start, end, BLOCK):
        idx = offset + tl.arange(0, BLOCK)
        mask = idx < end
        x = tl.load(x_group + idx, mask=mask, other=0.0).to(tl.float32)
        count += mask.to(tl.float32)
        delta = tl.where(mask, x - mean, 0.0)  # lanes past the end keep their summary
        mean += delta / tl.maximum(count, 1.0)
        m2 += delta * (x - mean)
    mean, m2, count = tl.reduce((mean, m2, count), 0, _welford_combine)
    out = partial_ptr + (group * splits + split) * 3
    tl.store(out, mean)
    tl.store(out + 1, m2)
    tl.store(out + 2, count)


@triton.jit
def _group_finalize_kernel(
    stats_ptr,  # (B*G, 2) float32: mean, rstd
    partial_ptr, splits, eps,
    BLOCK_SPLITS: tl.constexpr,
):
    group = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BLOCK_SPLITS)
    mask = i < splits
    chunk = partial_ptr + (group * splits + i) * 3
    mean = tl.load(chunk, mask=mask, other=0.0)
    m2 = tl.load(chunk + 1, mask=mask, other=0.0)
    count = tl.load(chunk + 2, mask=mask, other=0.0)  # padding lanes: empty summaries
    mean, m2, count = tl.reduce((mean, m2, count), 0, _welford_combine)
    tl.store(stats_ptr + group * 2, mean)
    tl.store(stats_ptr + group * 2 + 1, tl.rsqrt(m2 / count + eps))  # biased variance, as GroupNorm


@triton.jit
def _group_apply_kernel(
    y_ptr, x_ptr, stats_ptr, weight_ptr, bias_ptr,  # x, y contiguous (B, C, S); weight, bias (C,)
    channels, spatial, channels_per_group,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BLOCK_S: tl.constexpr,
):
    row = tl.program_id(1).to(tl.int64)  # b * C + c
    channel = row % channels
    group = row // channels_per_group  # = b * G + c // (C/G)
    mean = tl.load(stats_ptr + group * 2)
    scale = tl.load(stats_ptr + group * 2 + 1)  # rstd, times the weight below
    if HAS_WEIGHT:
        scale *= tl.load(weight_ptr + channel).to(tl.float32)
    s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    mask = s < spatial
    offsets = row * spatial + s
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    y = (x - mean) * scale  # not x * scale - mean * scale: that cancels when |mean| >> std
    if HAS_BIAS:
        y += tl.load(bias_ptr + channel).to(tl.float32)
    if SILU:
        y = y * tl.sigmoid(y)
    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


# --- launchers ------------------------------------------------------------------------------------------------

def _interpreted() -> bool:
    """Whether the kernels run in the Triton interpreter; raises if only half of Triton does."""
    ours, triton_own = (isinstance(f, InterpretedFunction) for f in (_rms_norm_silu_kernel, tl.sum))
    if ours != triton_own:
        raise RuntimeError("TRITON_INTERPRET=1 was set after triton was imported but before kernels.vae_norm: "
                           "set it before triton is first imported")
    return ours


def _channels_last(x) -> bool:
    """x (B, C, *spatial) stored channels-last (NHWC / NDHWC): channels innermost, the rest in order."""
    return x.dim() > 2 and not x.is_contiguous() and x.movedim(1, -1).is_contiguous()


def _input(x, keep: bool = False):
    """x after checking the device, made contiguous unless `keep` (a layout the kernel reads as it is)."""
    if x.device.type != "cuda" and not _interpreted():
        raise RuntimeError(f"kernels.vae_norm runs on CUDA tensors, got {x.device}; for CPU tensors set "
                           "TRITON_INTERPRET=1 before triton is first imported")
    return x if keep else x.contiguous()  # no copy when x is already contiguous


def _prepare(x, keep: bool = False):
    """-> (x, (B, C, S), y of x's layout, device context): _input's x and an output for it."""
    x = _input(x, keep)
    batch, channels = x.shape[:2]
    y = torch.empty_like(x)  # dense x: the same strides
    device = torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()
    return x, (batch, channels, math.prod(x.shape[2:])), y, device


def _flat(t):
    """A per-channel parameter, (C,) or (C, 1, ...), as a contiguous (C,) tensor (a view when it can be)."""
    return None if t is None else t.contiguous().view(-1)


def _rms_blocks(channels: int, block_c: int | None, block_s: int | None) -> tuple[int, int]:
    block_c = block_c or min(triton.next_power_of_2(channels), MAX_ONE_TILE_C)
    return block_c, block_s or max(16, RMS_TILE // block_c)


def bcs_strides(t) -> tuple[int, int, int] | None:
    """(batch, channel, position) strides of t (B, C, *spatial) read as (B, C, S), or None when its spatial
    dims do not flatten to one stride (a slice along the first spatial dim, as rms_norm_silu_out writes
    into, does flatten)."""
    dims = [(n, st) for n, st in zip(t.shape[2:], t.stride()[2:]) if n != 1]
    for (_, outer), (n, inner) in zip(dims, dims[1:]):
        if outer != n * inner:
            return None
    return t.stride(0), t.stride(1), dims[-1][1] if dims else 1


def _rms_launch(y, x, gamma, bias, eps, silu, block_c, block_s, num_warps, x_bias=None):
    """One launch writing y (x's shape, any layout bcs_strides reads) from x (contiguous or channels-last)."""
    batch, channels, spatial = x.shape[0], x.shape[1], math.prod(x.shape[2:])
    block_c, block_s = _rms_blocks(channels, block_c, block_s)
    device = torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()
    with device:
        _rms_norm_silu_kernel[(triton.cdiv(spatial, block_s), batch)](
            y, x, x if x_bias is None else _flat(x_bias), _flat(gamma), x if bias is None else _flat(bias),
            channels, spatial, *bcs_strides(x), *bcs_strides(y), math.sqrt(channels), float(eps),  # x: never-read
            HAS_X_BIAS=x_bias is not None, HAS_BIAS=bias is not None, SILU=bool(silu), ONE_TILE=block_c >= channels,
            BLOCK_C=block_c, BLOCK_S=block_s, num_warps=num_warps or (4 if block_c * block_s <= 4096 else 8),
        )


def rms_norm_silu(x, gamma, bias, eps, silu, *, block_c=None, block_s=None, num_warps=None):
    """(B, C, *spatial) -> y, same shape and dtype: x / max(||x||_C, eps) * sqrt(C) * gamma (+ bias), then
    SiLU if `silu`. gamma, bias (C,) or (C, 1, ...); bias may be None. block_c, block_s, num_warps override
    the tile (powers of two) and warps; the defaults read x once for C <= MAX_ONE_TILE_C."""
    check_norm_args(x, {"gamma": gamma, "bias": bias}, eps)
    x, _, y, _ = _prepare(x, keep=_channels_last(x))
    if x.numel():
        _rms_launch(y, x, gamma, bias, eps, silu, block_c, block_s, num_warps)
    return y


def rms_norm_silu_out(x, x_bias, gamma, bias, eps, silu, out, *, block_c=None, block_s=None, num_warps=None):
    """rms_norm_silu of x + x_bias (per channel, in float32; None: x) written into `out` (x's shape and dtype),
    which may be a view: a slice of a larger tensor along its first spatial dim, in either layout (the
    conv_buffers lever writes a norm's output after a causal conv's cached frames, and adds the bias of the
    conv before the norm here). Returns None."""
    check_norm_args(x, {"x_bias": x_bias, "gamma": gamma, "bias": bias}, eps)
    check_out(x, out)
    if bcs_strides(out) is None:
        raise ValueError(f"out must be readable as (batch, channels, positions) with one position stride, got "
                         f"strides {out.stride()} for shape {tuple(out.shape)}")
    x = _input(x, keep=_channels_last(x))
    if x.numel():
        _rms_launch(out, x, gamma, bias, eps, silu, block_c, block_s, num_warps, x_bias)


def _stats_splits(groups: int, group_numel: int, block: int, device) -> int:
    """Chunks per group: enough programs to fill the GPU, never a chunk under one block."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    return max(1, min(triton.cdiv(STATS_PROGRAMS_PER_SM * sms, groups), triton.cdiv(group_numel, block)))


def _group_apply(y, x, stats, weight, bias, silu, channels, spatial, num_groups, block_s, num_warps):
    """y = (x - mean) * rstd [* weight] [+ bias] [then SiLU], per group of the stats (B*G, 2) float32 (mean, rstd);
    x, y contiguous (B, C, S). The launch is inside the caller's device context."""
    block_s = block_s or GROUP_APPLY_BLOCK_S
    _group_apply_kernel[(triton.cdiv(spatial, block_s), x.shape[0] * channels)](
        y, x, stats, x if weight is None else _flat(weight), x if bias is None else _flat(bias),
        channels, spatial, channels // num_groups,
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, SILU=bool(silu), BLOCK_S=block_s,
        num_warps=num_warps or 4,
    )


def _in_layout(y, channels_last: bool):
    """y back in the layout x came in, as the reference (and so torch.compile's fake) returns it."""
    if channels_last:
        return y.contiguous(memory_format=torch.channels_last_3d if y.dim() == 5 else torch.channels_last)
    return y


def group_norm_silu(x, num_groups, weight, bias, eps, silu, *, splits=None, stats_block=None, block_s=None,
                    num_warps=None):
    """(B, C, *spatial) -> y, same shape and dtype: GroupNorm(num_groups) with weight, bias (C,) or None,
    then SiLU if `silu`. splits, stats_block (power of two), block_s (power of two) and num_warps (of the
    apply kernel) override the split reduction and the tiles."""
    check_norm_args(x, {"weight": weight, "bias": bias}, eps, num_groups)
    channels_last = _channels_last(x)  # read through a contiguous copy: a group is one run of memory
    x, (batch, channels, spatial), y, device = _prepare(x)
    if x.numel() == 0:
        return y
    groups, group_numel = batch * num_groups, channels // num_groups * spatial
    stats_block = stats_block or GROUP_STATS_BLOCK
    splits = splits or _stats_splits(groups, group_numel, stats_block, x.device)
    chunk_numel = triton.cdiv(triton.cdiv(group_numel, splits), stats_block) * stats_block  # whole blocks
    splits = triton.cdiv(group_numel, chunk_numel)  # no empty chunk
    partials = torch.empty(groups, splits, 3, dtype=torch.float32, device=x.device)
    stats = torch.empty(groups, 2, dtype=torch.float32, device=x.device)
    with device:
        _group_stats_kernel[(groups, splits)](partials, x, group_numel, chunk_numel, splits, BLOCK=stats_block,
                                              num_warps=8)
        _group_finalize_kernel[(groups,)](stats, partials, splits, float(eps),
                                          BLOCK_SPLITS=triton.next_power_of_2(splits), num_warps=1)
        _group_apply(y, x, stats, weight, bias, silu, channels, spatial, num_groups, block_s, num_warps)
    return _in_layout(y, channels_last)


def group_norm_silu_stats(x, num_groups, mean, rstd, weight, bias, silu, *, block_s=None, num_warps=None):
    """(B, C, *spatial) -> y: GroupNorm with given statistics mean, rstd (B, G) float32 (not x's own), weight,
    bias (C,) or None, then SiLU if `silu`: the apply kernel of group_norm_silu alone."""
    check_norm_args(x, {"weight": weight, "bias": bias}, 0.0, num_groups)
    channels_last = _channels_last(x)
    x, (_, channels, spatial), y, device = _prepare(x)
    if x.numel() == 0:
        return y
    stats = torch.stack([mean.reshape(-1), rstd.reshape(-1)], dim=1).float().contiguous()  # (B*G, 2)
    with device:
        _group_apply(y, x, stats, weight, bias, silu, channels, spatial, num_groups, block_s, num_warps)
    return _in_layout(y, channels_last)
