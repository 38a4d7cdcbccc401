"""Peak-memory estimates from a shape-only run of the decoder on the meta device.

The model's own decoder runs on meta tensors (no data, no arithmetic) under a dispatch mode that
adds every new storage's bytes when it is created and subtracts them when it is freed; the largest
total is the peak of live tensors for exactly these shapes, dtype and code path. Attention is
counted as a fused kernel (output only), as flash / memory-efficient SDPA behaves on GPUs; meta's
own SDPA would materialise the full attention matrix.

What the trace cannot see, allocator fragmentation and convolution workspaces, is covered by
`SAFETY`, calibrated against allocator peaks measured on an H200 (data/bench/).
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .frames import FrameDecoder

__all__ = ["LiveBytes", "trace_decode_bytes", "SAFETY", "weight_bytes"]

SAFETY = 1.5  # measured peak / traced peak on the H200 anchors was 1.3-1.5 (allocator, cuDNN workspaces)
_TRACE_FRAMES = 3  # latent frames traced; later frames repeat frame 2's pattern and only grow the output


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


_META: dict = {}


def _meta_twin(vae):
    """A meta-device copy of the VAE's architecture (cached per model object)."""
    key = id(vae)
    if key not in _META:
        with torch.device("meta"):
            twin = type(vae).from_config(vae.config)
        twin = torch.nn.Module.to(twin, dtype=FrameDecoder(vae).dtype).eval().requires_grad_(False)
        _META[key] = (weakref.ref(vae), twin)
    return _META[key][1]


def weight_bytes(vae) -> int:
    return sum(p.numel() * p.element_size() for p in vae.parameters())


def trace_decode_bytes(vae, z5_shape) -> int:
    """Peak live bytes of decoding a 5-D latent of `z5_shape` (activations and output, not weights)."""
    fd = FrameDecoder(_meta_twin(vae))
    b, c, t, h, w = z5_shape
    traced = min(t, _TRACE_FRAMES)
    z = torch.empty((b, c, traced, h, w), device="meta", dtype=fd.dtype)
    with torch.no_grad(), _fused_attention(), LiveBytes() as live:
        out = fd.finish(fd.decode(fd.prepare(z), fd.new_cache(), first=True))
    peak = live.peak
    if t > traced:  # each later latent frame adds its output frames, held twice while they are concatenated
        frame_bytes = out.numel() * out.element_size() // out.shape[2] if out.dim() == 5 else 0
        peak += 2 * (t - traced) * fd.temporal_ratio * frame_bytes
    return peak
