"""Peak memory of a decode, estimated by running the strategy's own code on meta tensors.

`estimate_bytes(vae, z_shape, mode, world_size, **params)` calls the same `decode_<mode>` function a real
decode calls, on a meta-device twin of the VAE (no data, no arithmetic), with a `Comm.trace` in place of
the process group: halo exchanges, gathers and broadcasts allocate their buffers but move nothing. A
dispatch mode adds every new storage's bytes when it is created and subtracts them when it is freed; the
largest total is the peak of live tensors for exactly this recipe: the patched shard decoder with its halo
concatenations and float32 GroupNorm statistics, the tiles and blend buffers, the gathered pieces.

Attention is counted as a fused kernel (output only), as PyTorch's memory-efficient SDPA runs it on GPUs
(the H200 peaks grow with the pixel count, not its square, even for the one 384-channel head of the
Wan/Qwen-Image mid-block); meta's own SDPA would materialise the score matrix. Each distinct decoder call
(shape, first frame or not) is traced once; repeats (the tiles of a tiled decode) replay its memory.
What the trace cannot see, allocator rounding and convolution workspaces, is the `safety(vae, mode)` factor,
calibrated against allocator peaks measured on an H200 (data/bench/decode_memory_*.json; tests/test_cost.py).

Videos: once the causal frame cache is full (from the 4th latent frame on), a strategy's peak grows by
one frame's output per latent frame, so latents of more than 4 frames are traced at 3 and 4 frames and
extrapolated; this keeps an estimate around a second for any length.
"""

from __future__ import annotations

import json
import weakref
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..comm import Comm
from .frames import FrameDecoder

__all__ = ["LiveBytes", "estimate_bytes", "traced_bytes", "weight_bytes", "safety"]

# Measured allocator peak over the traced one (weights and latent aside), H200, bf16, every preset at two
# sizes (data/bench/decode_memory_h200_sp4.json): Wan/Qwen-Image 1.04-1.24 (tiles 1.16-1.31); GLM-Image's
# AutoencoderKL 1.56-1.60 unpatched (convolution workspaces of its 512-1024-channel convs at full
# resolution, which the trace cannot see) but 1.00 for shard, whose peak is its own float32 GroupNorm.
SAFETY = {("AutoencoderKL", "shard"): 1.1, ("AutoencoderKL", None): 1.65, (None, "tiled"): 1.3,
          (None, "parallel_tiled"): 1.3}
SAFETY_DEFAULT = 1.2
# A lone frame of a causal VAE (every Qwen-Image decode) runs without the frame cache, whose copies of every
# conv input were most of the traced peak: the live tensors shrink, what the trace cannot see does not. On the
# H200 (decode_memory_h200_sp4_images.json) its peaks came to 1.09-1.30x of the estimates above.
LONE_FRAME_SAFETY = 1.3


def safety(vae, mode: str, lone_frame: bool = False) -> float:
    """Measured allocator peak over the traced one, for `vae`'s class and `mode` (`lone_frame`: a causal VAE's
    one-frame decode)."""
    name = type(vae).__name__
    factor = LONE_FRAME_SAFETY if lone_frame else 1.0
    for key in ((name, mode), (name, None), (None, mode)):
        if key in SAFETY:
            return SAFETY[key] * factor
    return SAFETY_DEFAULT * factor


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of live tensor storages created inside the mode; `peak` is the largest total."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, weakref.ref] = {}

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = id(storage)
        if key in self._refs:
            return
        nbytes = storage.nbytes()
        self.live += nbytes
        self.peak = max(self.peak, self.live)

        def freed(_, key=key, nbytes=nbytes):
            self.live -= nbytes
            self._refs.pop(key, None)

        self._refs[key] = weakref.ref(storage, freed)

    @contextmanager
    def above_start(self):
        """Yields a dict whose "peak" is, on exit, the largest total reached inside above the total at entry."""
        start, outer_peak = self.live, self.peak
        self.peak = self.live
        box = {}
        try:
            yield box
        finally:
            box["peak"] = self.peak - start
            self.peak = max(outer_peak, self.peak)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out


def _fused_sdpa(query, key, value, *args, **kwargs):
    return query.new_empty(query.shape[:-1] + value.shape[-1:])


@contextmanager
def _fused_attention():
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _fused_sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


class _ReplayDecoder(FrameDecoder):
    """A FrameDecoder for traces: each distinct decoder call (input shape, first frame) runs once on meta;
    a repeat allocates that call's transient peak, frees it, and returns an empty output of its shape."""

    def __init__(self, vae, live: LiveBytes):
        super().__init__(vae)
        self.live, self.seen = live, {}

    def decode(self, x, cache, first):
        key = (tuple(x.shape), first)
        if key in self.seen:
            transient, out_shape = self.seen[key]
            out = x.new_empty(out_shape)
            torch.empty(max(0, transient - out.untyped_storage().nbytes()), dtype=torch.uint8, device=x.device)
            return out
        with self.live.above_start() as span:
            out = super().decode(x, cache, first)
        self.seen[key] = (span["peak"], tuple(out.shape))
        return out


class _Untimed:
    """The `measure` a traced strategy sees: phases are not timed."""

    def phase(self, name: str):
        return nullcontext()


_TWINS: dict = {}


def meta_twin(vae):
    """A meta-device model of the same class, config and dtype (cached by those, never by object identity:
    ids are reused once a model is freed)."""
    dtype = FrameDecoder(vae).dtype
    key = (type(vae).__name__, json.dumps(dict(vae.config), sort_keys=True, default=str), str(dtype))
    if key not in _TWINS:
        with torch.device("meta"):
            twin = type(vae).from_config(dict(vae.config))
        _TWINS[key] = torch.nn.Module.to(twin, dtype=dtype).eval().requires_grad_(False)
    return _TWINS[key]


def weight_bytes(vae) -> int:
    return sum(p.numel() * p.element_size() for p in vae.parameters())


def traced_bytes(vae, z_shape, mode: str, *, rank: int = 0, world_size: int = 1, **params) -> int:
    """Peak live bytes created while rank `rank` runs `mode` on a latent of `z_shape` (activations, buffers,
    output; not the weights or the latent), traced on the meta device."""
    from . import DecodeContext, strategy

    z_shape = tuple(z_shape)
    if len(z_shape) == 5 and z_shape[2] > 4:  # affine from the 4th frame on (the frame cache is full by then)
        three, four = (traced_bytes(vae, z_shape[:2] + (t,) + z_shape[3:], mode, rank=rank, world_size=world_size,
                                    **params) for t in (3, 4))
        return four + (z_shape[2] - 4) * max(0, four - three)
    run = strategy(mode)
    with torch.no_grad(), _fused_attention(), LiveBytes() as live:
        fd = _ReplayDecoder(meta_twin(vae), live)
        z = torch.empty(z_shape, device="meta", dtype=fd.dtype)
        live.peak = live.live = 0  # the latent is counted by the caller
        out = run(DecodeContext(fd, _Untimed(), Comm.trace(rank, world_size)), z, **params)
        del out
    return live.peak


def estimate_bytes(vae, z_shape, mode: str, world_size: int = 1, **params) -> int:
    """Estimated peak bytes on the busiest rank of decoding a latent of `z_shape` (the model's native layout)
    with `mode` on `world_size` ranks: weights, the latent, and `safety(vae, mode)` x the traced peak."""
    from . import SERIAL, check_params

    if mode == "auto":
        raise ValueError("auto has no estimate of its own: estimate the strategy it chooses")
    check_params(mode, params)
    # The unmodified model's peak: an upper bound, the levers only lower it (qwen-image 2048x2048 full:
    # 16.83 -> 13.07 GiB with causal_conv+fused_norm on an H200, data/bench/decode_1gpu_images_h200.json).
    params = {k: v for k, v in params.items() if k != "levers"}
    world = 1 if mode in SERIAL else world_size
    ranks = sorted({0, world - 1, world // 2})  # the gathering rank, an edge and a middle piece
    traced = max(traced_bytes(vae, z_shape, mode, rank=r, world_size=world, **params) for r in ranks)
    latent = 1
    for n in z_shape:
        latent *= n
    fd = FrameDecoder(vae)
    latent *= torch.finfo(fd.dtype).bits // 8
    lone_frame = fd.causal and not fd.keeps_cache(z_shape[2])  # the decode runs without the frame cache
    return int(weight_bytes(vae) + latent + safety(vae, mode, lone_frame) * traced)
