"""Run an unmodified diffusers VAE decoder over a latent region, window by window.

Internally every latent is 5-D (B, C, T, H, W); image VAEs (AutoencoderKL) get T = 1 and are handed
back 4-D. For the causal 3-D VAEs (Wan, Qwen-Image) the decoder is called one latent frame at a time
with a frame cache, exactly as diffusers' own `_decode` does; a region keeps its own cache, so a
video can be decoded in windows of frames (and, for tiles, tile by tile inside a window) with the
same result as one pass over all frames.
"""

from __future__ import annotations

import inspect

import torch

__all__ = ["FrameDecoder"]


class FrameDecoder:
    """The decode primitives of one VAE: prepare, decode a window of frames, finish.

        fd = FrameDecoder(vae)
        x = fd.prepare(fd.as_5d(z))             # post-quant conv, once for the whole latent
        cache = fd.new_cache(x.shape[2])        # None for a lone frame: nothing would read it
        y = fd.decode(x[..., rows, cols], cache, first=True)  # pixels, unclamped
        out = fd.finish(y)                      # clamp and native layout, as vae.decode returns
    """

    def __init__(self, vae):
        self.vae = vae
        self.causal = hasattr(vae, "_cached_conv_counts")  # Wan and Qwen-Image: causal 3-D convs with a frame cache
        cfg = vae.config
        if self.causal:
            self.spatial_ratio = int(vae.spatial_compression_ratio)
            self.temporal_ratio = int(getattr(cfg, "scale_factor_temporal", None) or 2 ** sum(cfg.temperal_downsample))
            self.patch_size = getattr(cfg, "patch_size", None)
            self._first_chunk = "first_chunk" in inspect.signature(vae.decoder.forward).parameters
        else:
            self.spatial_ratio = 2 ** (len(cfg.block_out_channels) - 1)
            self.temporal_ratio = None
            self.patch_size = None
            self._first_chunk = False
        self.native_ndim = 5 if self.causal else 4

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.decoder.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.vae.decoder.parameters()).device

    # ------------------------------------------------------------------------------------- layout

    def as_5d(self, z: torch.Tensor) -> torch.Tensor:
        return z if z.dim() == 5 else z.unsqueeze(2)

    def to_native(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.native_ndim == 5 else y.squeeze(2)

    def output_shape(self, z5_shape) -> tuple[int, ...]:
        """5-D output shape (B, C, frames, H, W) for a 5-D latent shape."""
        b, _, t, h, w = z5_shape
        frames = 1 + (t - 1) * self.temporal_ratio if self.temporal_ratio else t
        out_channels = self.vae.decoder.conv_out.out_channels // (self.patch_size or 1) ** 2
        return (b, out_channels, frames, h * self.spatial_ratio, w * self.spatial_ratio)

    # --------------------------------------------------------------------------------- primitives

    def prepare(self, z: torch.Tensor) -> torch.Tensor:
        """Post-quant conv (1x1, pointwise) on a 5-D latent."""
        pqc = getattr(self.vae, "post_quant_conv", None)
        if pqc is None:
            return z
        if self.causal:
            return pqc(z)
        return pqc(z[:, :, 0]).unsqueeze(2)

    def keeps_cache(self, latent_frames: int, continued: bool = False) -> bool:
        """Whether a decode of `latent_frames` frames needs the causal frame cache: not for a lone frame that no
        later window continues (every image). The cache keeps a copy of each causal convolution's input frame
        until the decode returns; for a one-frame decode those copies are never read, and they are most of its
        peak (qwen-image: each of the decoder's 3x3 convs' inputs, all at once). Without it the decoder runs
        exactly as on its first frame: every cache slot is empty then."""
        return self.causal and (latent_frames > 1 or continued)

    def new_cache(self, latent_frames: int, continued: bool = False) -> list | None:
        """The causal frame cache for the decode, or None where nothing would read it (`keeps_cache`)."""
        if not self.keeps_cache(latent_frames, continued):
            return None
        return [None] * self.vae._cached_conv_counts["decoder"]

    def decode(self, x: torch.Tensor, cache: list | None, first: bool) -> torch.Tensor:
        """Decode latent frames (B, C, t, h, w) -> pixels (B, 3, frames, h*s, w*s), not clamped.

        `cache` carries the causal frame cache from the previous window of the same region; `first`
        says the window starts at latent frame 0 (the Wan decoder emits one frame for it, not four).
        """
        return self._unpatchify(self.run_decoder(x, cache, first))

    def run_decoder(self, x: torch.Tensor, cache: list | None, first: bool) -> torch.Tensor:
        """The decoder module over latent frames (B, C, t, h, w), frame by frame for the causal ones -> its output
        (B, C_out, frames, ...), before unpatchify (the global stem runs a cut-down decoder through this)."""
        if not self.causal:
            return self.vae.decoder(x[:, :, 0]).unsqueeze(2)
        outs = []
        for i in range(x.shape[2]):
            kwargs = {"first_chunk": first and i == 0} if self._first_chunk else {}
            outs.append(self.vae.decoder(x[:, :, i : i + 1], feat_cache=cache, feat_idx=[0], **kwargs))
        return torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]

    def decode_window(self, x: torch.Tensor, tiles, window, caches: dict, last: bool, measure, batch: int = 1,
                      scale: int = 1):
        """Yield (tile, pixels) for each tile of one frame window, decoding it from the prepared latent `x`.

        Each decoder call is timed as phase "decode" of `measure`. `batch` tiles (of one size, as the planner
        makes them) go through one decoder call, stacked along the batch dimension: fewer, larger kernels for
        the price of `batch` tiles' activations at once. `caches` maps a group's first tile index to the group's
        causal frame cache and carries it to the next window (dropped after the `last`), so a tiled decode in
        windows gives the output of one pass. `x` may be a global trunk's output at `scale` times the latent's
        resolution: the tiles' latent rows and columns are scaled to crop it.
        """
        tiles = list(tiles)
        for g in range(0, len(tiles), batch):
            group = tiles[g:g + batch]
            cache = caches.pop(group[0].index, None) or self.new_cache(window.latent.size, continued=not last)
            crops = [x[:, :, window.latent.slice(), t.rows.scaled(scale).slice(), t.cols.scaled(scale).slice()]
                     for t in group]
            if len({c.shape for c in crops}) > 1:
                raise ValueError(f"tiles of one batch must have one size, got {sorted({c.shape[3:] for c in crops})}")
            with measure.phase("decode"):
                pixels = self.decode(torch.cat(crops) if len(crops) > 1 else crops[0], cache, window.first)
            if not last:
                caches[group[0].index] = cache
            del cache, crops  # a group's cache is dead once its last window is decoded: not held while blending
            yield from zip(group, pixels.chunk(len(group)))  # (len(group) * B, ...) -> B per tile, tile-major

    def _unpatchify(self, y: torch.Tensor) -> torch.Tensor:
        if not self.patch_size or self.patch_size == 1:
            return y
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

        return unpatchify(y, patch_size=self.patch_size)

    def finish(self, y: torch.Tensor) -> torch.Tensor:
        """Clamp as the model's own decode does (the causal VAEs clamp to [-1, 1]) and go native."""
        if self.causal:
            y = torch.clamp(y, min=-1.0, max=1.0)
        return self.to_native(y)
