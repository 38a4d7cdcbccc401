"""`shard`: exact spatial sharding. Activations stay split through the whole decoder.

Each rank holds one block of a rows x cols grid of the latent and runs the model's own decoder on
it, with three things changed from outside, for the duration of the decode only:

- every spatial convolution first swaps halo rows/columns with its neighbours (its padding's worth;
  zeros at the image border, which is the conv's own zero padding), then convolves unpadded; the
  Wan causal conv does this on its frame cache too, so the cache stays per rank, frame by frame;
- GroupNorm statistics are reduced over all ranks in two passes (global mean, then squared
  deviations around it), in float32;
- the mid-block attention, `attention="local_queries"` (the default): each rank attends its own
  queries to the keys and values gathered from all ranks, so the attention work is split too; it
  differs from `full` by float32 reduction order (~1e-6: the softmax sums the keys in rank order,
  not raster order). `attention="all_queries"`: every rank gathers the block's input, runs the
  model's own attention block on the whole frame and keeps its own rows, so the output equals `full`
  bit for bit on the CPU in float32 (row bands), at the price of the whole attention on every rank:
  on 4 H200s in bf16 it took qwen-image 2048x2048 from 0.087 to 0.130 s (+49%) and wan2.1
  720x1280x81 from 1.316 to 1.344 s (+2%), so local_queries stays the default
  (data/bench/shard_attention_h200_sp4_*.json).

Speed levers (`levers`, a subset of SHARD_LEVERS), the one-GPU decode's (workbench.ops.vae) inside each rank:
causal_conv runs a lone uncached frame's causal convolution as a 2-D one over its last temporal tap (the
other taps meet the causal zero padding), in the halo conv itself; fused_norm puts the fused RMS norm + SiLU
kernels in the Wan/Qwen decoders (channel-wise: right on a shard as they are). A GroupNorm decoder's fused
norm would take its statistics from this rank's pixels alone, so it is refused.

Everything else in these decoders is pointwise or channel-wise (RMS norms, SiLU, nearest 2x
upsampling, the Wan2.2 DupUp3D shortcut, unpatchify) and needs no change; any module type not known
to be one or the other is refused rather than silently decoded wrong.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ...ops.vae import last_tap_conv2d, optimized, takes_lone_frame_2d
from .blend import gather_blocks
from .plan import PlanError, ShardPlan, plan_shards

__all__ = ["decode_shard", "sharded", "ShardComm"]

from . import SHARD_ATTENTIONS as ATTENTIONS  # noqa: E402
from . import SHARD_OUTPUTS as OUTPUTS  # noqa: E402

# Module types whose forward is pointwise, channel-wise or a container: correct on a shard as they are.
_LOCAL = {
    "Sequential", "ModuleList", "Identity", "Dropout", "SiLU", "GELU", "Linear",
    # Wan / Qwen-Image causal 3-D VAEs
    "WanDecoder3d", "WanMidBlock", "WanUpBlock", "WanResidualUpBlock", "WanResidualBlock", "WanResample",
    "WanRMS_norm", "WanUpsample", "DupUp3D",
    "QwenImageDecoder3d", "QwenImageMidBlock", "QwenImageUpBlock", "QwenImageResidualBlock", "QwenImageResample",
    "QwenImageRMS_norm", "QwenImageUpsample",
    # AutoencoderKL
    "Decoder", "UNetMidBlock2D", "UpDecoderBlock2D", "ResnetBlock2D", "Upsample2D",
    # the fused_norm lever's modules (workbench.ops.vae_norm): an RMS norm over channels, an Identity
    "FusedRMSNormSiLU", "SiLUInNorm",
}
_ATTENTION_BLOCKS = {"WanAttentionBlock", "QwenImageAttentionBlock"}


class ShardComm:
    """This rank's place in the shard grid and the collectives the wrapped modules call (over a `Comm`)."""

    def __init__(self, plan: ShardPlan, comm):
        self.plan, self.comm = plan, comm
        rank = comm.rank
        self.up, self.down = plan.neighbour(rank, -1, 0), plan.neighbour(rank, 1, 0)
        self.left, self.right = plan.neighbour(rank, 0, -1), plan.neighbour(rank, 0, 1)
        self.shard = plan.items[rank]

    def halo(self, x: torch.Tensor, pad_h: int, pad_w: int) -> torch.Tensor:
        """x (..., h, w) -> (..., h + 2 pad_h, w + 2 pad_w) with the neighbours' rows and columns.

        Rows first, then columns of the row-extended block, so the corners come from the diagonal
        neighbours without talking to them.
        """
        x = self.comm.exchange_halo(x, x.dim() - 2, pad_h, self.up, self.down)
        return self.comm.exchange_halo(x, x.dim() - 1, pad_w, self.left, self.right)

    def gather_tokens(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """Every rank's tokens along `dim`, in rank order. Counts come from the plan: each rank has
        (its latent area) x (tokens per latent cell at this level) tokens."""
        per_cell = t.shape[dim] // self.shard.area
        counts = [s.area * per_cell for s in self.plan.items]
        front = t.movedim(dim, 0).contiguous()
        rest = front.shape[1:]
        parts = self.comm.all_gather_padded(front, [n * rest.numel() for n in counts])
        return torch.cat([p.view(-1, *rest) for p in parts], dim=0).movedim(0, dim)

    def level(self, x: torch.Tensor) -> int:
        """Rows (and columns) per latent cell of x (..., h, w) at its level of the decoder."""
        return x.shape[-2] // self.shard.rows.size

    def gather_image(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., h, w), this rank's block -> (..., H, W), the whole frame at x's level, blocks placed by the plan."""
        f = self.level(x)
        lead = x.shape[:-2]
        parts = self.comm.all_gather_padded(x.contiguous(), [lead.numel() * s.area * f * f for s in self.plan.items])
        rows, cols = self.plan.latent_shape[1] * f, self.plan.latent_shape[2] * f
        out = x.new_empty(*lead, rows, cols)
        for s, part in zip(self.plan.items, parts):
            out[..., s.rows.start * f: s.rows.stop * f, s.cols.start * f: s.cols.stop * f] = \
                part.view(*lead, s.rows.size * f, s.cols.size * f)
        return out

    def own_block(self, y: torch.Tensor, f: int) -> torch.Tensor:
        """y (..., H, W), the whole frame -> (..., h, w), this rank's block of it (f rows per latent cell)."""
        rows, cols = self.shard.rows, self.shard.cols
        return y[..., rows.start * f: rows.stop * f, cols.start * f: cols.stop * f].contiguous()


# ------------------------------------------------------------------------------------ wrappers


def _conv_halo_forward(conv, comm: ShardComm, lone_frame_2d: bool = False):
    """Forward for nn.Conv2d / nn.Conv3d (and the Wan/Qwen causal Conv3d) on a shard; `lone_frame_2d`: the
    causal_conv lever (a lone uncached frame through the last temporal tap as a 2-D convolution)."""
    if any(s != 1 for s in conv.stride[-2:]) or any(d != 1 for d in conv.dilation[-2:]):
        raise NotImplementedError(f"shard: spatially strided or dilated conv {conv} is not supported")
    if conv.padding_mode != "zeros":
        raise NotImplementedError(f"shard: conv padding_mode={conv.padding_mode!r} is not supported")
    causal = hasattr(conv, "_padding")  # WanCausalConv3d / QwenImageCausalConv3d: (w, w, h, h, 2t, 0)
    if causal:
        pad_w, pad_h = conv._padding[0], conv._padding[2]
    else:
        pad_h, pad_w = conv.padding[-2], conv.padding[-1]
    if pad_h == 0 and pad_w == 0:
        return None  # pointwise in space: nothing to exchange

    if causal:
        lone_frame_2d = lone_frame_2d and takes_lone_frame_2d(conv)

        def forward(x, cache_x=None):
            if lone_frame_2d and cache_x is None and x.shape[2] == 1:  # (B, C, 1, h, w): zeros on all but the last tap
                return last_tap_conv2d(conv, comm.halo(x[:, :, 0], pad_h, pad_w), 0)  # (B, C_out, 1, h, w)
            time_pad = conv._padding[4]
            if cache_x is not None and time_pad > 0:
                x = torch.cat([cache_x.to(x.device), x], dim=2)
                time_pad -= cache_x.shape[2]
            x = comm.halo(x, pad_h, pad_w)  # the cached frames get their halos too
            x = F.pad(x, (0, 0, 0, 0, time_pad, 0))
            return F.conv3d(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)
        return forward

    conv_fn = F.conv2d if conv.weight.dim() == 4 else F.conv3d
    other = tuple(conv.padding[:-2])  # a 3-D conv keeps its temporal padding

    def forward(x):
        x = comm.halo(x, pad_h, pad_w)
        return conv_fn(x, conv.weight, conv.bias, conv.stride, other + (0, 0), conv.dilation, conv.groups)
    return forward


def _group_norm_forward(norm: torch.nn.GroupNorm, comm: ShardComm):
    """GroupNorm with statistics over every rank's pixels: two passes, float32 accumulation."""

    def forward(x):
        n, c = x.shape[:2]
        g = norm.num_groups
        xg = x.reshape(n, g, -1).float()
        stats = torch.cat([xg.sum(dim=-1), torch.full((n, 1), float(xg.shape[-1]), device=x.device)], dim=1)
        stats = comm.comm.all_reduce(stats)  # (N, G + 1): per-group sums and the pixel count
        count = stats[:, -1:]
        mean = stats[:, :g] / count
        centred = xg - mean[..., None]
        var = comm.comm.all_reduce((centred * centred).sum(dim=-1)) / count
        y = centred * torch.rsqrt(var + norm.eps)[..., None]
        y = y.view(n, c, *x.shape[2:])
        if norm.affine:
            shape = (1, c) + (1,) * (x.dim() - 2)
            y = y * norm.weight.float().view(shape) + norm.bias.float().view(shape)
        return y.to(x.dtype)
    return forward


def _wan_attention_forward(block, comm: ShardComm):
    """WanAttentionBlock / QwenImageAttentionBlock: local queries against gathered keys and values."""

    def forward(x):
        identity = x
        b, c, t, h, w = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        x = block.norm(x)
        qkv = block.to_qkv(x).reshape(b * t, 1, c * 3, -1).permute(0, 1, 3, 2).contiguous()
        q, k, v = qkv.chunk(3, dim=-1)
        k, v = comm.gather_tokens(k, dim=2), comm.gather_tokens(v, dim=2)
        x = F.scaled_dot_product_attention(q, k, v)
        x = x.squeeze(1).permute(0, 2, 1).reshape(b * t, c, h, w)
        x = block.proj(x)
        x = x.view(b, t, c, h, w).permute(0, 2, 1, 3, 4)
        return x + identity
    return forward


def _all_queries_forward(block, comm: ShardComm):
    """Any attention block on the whole frame: gather its input, run the class's own forward, keep this rank's
    rows. Every rank computes the full attention, in the full decode's token order: bitwise equal to it."""

    def forward(x, *args, **kwargs):
        f = comm.level(x)
        y = type(block).forward(block, comm.gather_image(x), *args, **kwargs)  # (..., H, W)
        return comm.own_block(y, f)  # (..., h, w)
    return forward


def _gather_tokens_hook(comm: ShardComm):
    """diffusers Attention (AutoencoderKL mid-block): its key and value projections return every
    rank's tokens, while the queries stay local, so each rank attends its own pixels to all of them."""

    def hook(module, inputs, output):  # (N, tokens_local, dim) -> (N, tokens_all, dim)
        return comm.gather_tokens(output, dim=1)
    return hook


@contextmanager
def sharded(vae, comm: ShardComm, attention: str = "local_queries", lone_frame_2d: bool = False):
    """Within the block, `vae.decoder` runs on this rank's shard. The model is restored afterwards.

    `attention`: local_queries (own queries, gathered keys and values) or all_queries (the whole frame's
    attention on every rank, its modules left as they are). `lone_frame_2d`: the causal_conv lever."""
    from diffusers.models.attention_processor import Attention

    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
    patched, hooks, whole = [], [], set()  # whole: modules inside an all_queries block run on the whole frame
    try:
        for module in vae.decoder.modules():
            if id(module) in whole:
                continue
            name = type(module).__name__
            forward = None
            if attention == "all_queries" and (name in _ATTENTION_BLOCKS or isinstance(module, Attention)):
                forward = _all_queries_forward(module, comm)
                whole |= {id(m) for m in module.modules()}
            elif isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)):
                forward = _conv_halo_forward(module, comm, lone_frame_2d)
            elif isinstance(module, torch.nn.GroupNorm):
                forward = _group_norm_forward(module, comm)
            elif name in _ATTENTION_BLOCKS:
                forward = _wan_attention_forward(module, comm)
            elif isinstance(module, Attention):
                if module.spatial_norm is not None or module.norm_cross is not None:
                    raise NotImplementedError("shard: Attention with spatial or cross norm is not supported")
                hooks += [module.to_k.register_forward_hook(_gather_tokens_hook(comm)),
                          module.to_v.register_forward_hook(_gather_tokens_hook(comm))]
            elif name == "FusedGroupNormSiLU":
                raise NotImplementedError("shard: the fused_norm lever of a GroupNorm decoder would normalise by "
                                          "this rank's statistics alone; use levers=('causal_conv',) or none")
            elif name not in _LOCAL:
                raise NotImplementedError(f"shard: no rule for {name} in {type(vae).__name__}'s decoder; "
                                          "it may be spatial, so sharding it could silently change the output")
            if forward is not None:
                module.forward = forward
                patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward  # the class's forward again
        for h in hooks:
            h.remove()


# ------------------------------------------------------------------------------------ strategy


def decode_shard(ctx, z: torch.Tensor, *, grid=None, output: str = "rank0", attention: str = "local_queries",
                 levers: tuple = ()):
    """Exact spatial sharding over the ranks of `ctx.comm`; `output`: rank0, all or sharded.

    rank0 gathers the image to rank 0 (the others get None), all gathers it to every rank, sharded
    leaves each rank its own block (no device ever holds the full video).

    `attention` (the mid-block attention; see the module's docstring): local_queries, the default, splits
    the attention work and matches `full` to ~1e-6; all_queries computes the whole attention on every rank
    and matches `full` bit for bit in float32 on the CPU (row bands). The default stays local_queries:
    all_queries costs +49% at qwen-image 2048x2048 and +2% at wan2.1 720x1280x81 on 4 H200s.

    `levers`: SHARD_LEVERS to speed up each rank's decode (see the module's docstring; checked by check_params).
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    fd = ctx.fd
    z5 = fd.as_5d(z)
    try:
        plan = plan_shards(z5.shape[2:], scale=fd.spatial_ratio, world_size=ctx.comm.world_size, grid=grid)
    except PlanError as e:
        raise PlanError(f"shard: {e}. Smaller latents decode exactly with mode='full' on one rank, "
                        "or with fewer ranks") from None
    comm = ShardComm(plan, ctx.comm)
    mine = comm.shard
    fused = ("fused_norm",) if "fused_norm" in levers else ()
    with ctx.measure.phase("decode"), optimized(fd.vae, fused), sharded(fd.vae, comm, attention, "causal_conv" in levers):
        local = z5[:, :, :, mine.rows.slice(), mine.cols.slice()]
        x = fd.prepare(local)
        y = fd.finish(fd.decode(x, fd.new_cache(x.shape[2]), first=True))
    with ctx.measure.phase("gather"):
        out = _assemble(y, plan, fd, ctx, output)
    return out, plan, {"grid": list(plan.grid), "output": output, "attention": attention,
                       **({"levers": list(levers)} if levers else {})}


def _assemble(y: torch.Tensor, plan: ShardPlan, fd, ctx, output: str):
    """Gather the blocks (rank0 / all) into the native output layout, or keep this rank's block."""
    if output == "sharded" or ctx.comm.world_size == 1:
        return y
    out = gather_blocks(fd.as_5d(y), plan, ctx.comm, everywhere=output == "all")
    return None if out is None else fd.to_native(out)
