"""Sequence-parallel joint attention: Ulysses (all-to-all between sequence and heads) and ring (K/V blocks
passed around the ranks, partial results merged by log-sum-exp in float32).

Tensors are (B, S, H, D), the layout diffusers' processors hold q/k/v in before attention. The image
sequence is padded to a multiple of P ranks and sharded (`SeqShard`); text tokens, if any, are
replicated: every rank holds all of them. Each text key is counted once:

- Ulysses: after the all-to-all a rank holds the whole image sequence for H/P heads; it prepends the
  same H/P heads of the text tokens and runs one ordinary attention over [text, image]. Padding is cut
  off before the attention (it sits at the end of the sequence), so nothing needs masking. Image outputs
  go back by all-to-all; text outputs are all-gathered over heads, so every rank ends with the same text.
- Ring: image queries see the text keys once (a separate block) and then the image K/V block of every
  rank as it comes round, padded rows of the last block cut off. Text queries need every image key too:
  each rank attends them to its own image block (and rank 0 also to the text block); the P partial
  results are all-gathered and merged in rank order, so the text stream is bitwise identical on all ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..comm import all_gather_cat, all_gather_list, all_to_all, group_rank, group_size, ring_shift

__all__ = ["SeqShard", "ulysses_attention", "ring_attention", "attention_lse", "merge_lse"]


@dataclass(frozen=True)
class SeqShard:
    """A sequence of `length` tokens padded to a multiple of `world` and cut into equal pieces; this rank
    holds piece `rank`, tokens [start, start + local)."""

    length: int
    world: int
    rank: int

    @property
    def local(self) -> int:
        return -(-self.length // self.world)

    @property
    def padded(self) -> int:
        return self.local * self.world

    @property
    def start(self) -> int:
        return self.rank * self.local

    def valid(self, rank: int | None = None) -> int:
        """How many real (not padding) tokens rank `rank` (default: this one) holds."""
        r = self.rank if rank is None else rank
        return max(0, min(self.local, self.length - r * self.local))

    def pad(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """x with `dim` zero-padded from `length` to `padded`."""
        missing = self.padded - x.shape[dim]
        if missing == 0:
            return x
        shape = list(x.shape)
        shape[dim] = missing
        return torch.cat([x, x.new_zeros(shape)], dim=dim)

    def shard(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's piece of the full sequence `x` along `dim` (length -> local)."""
        if x.shape[dim] != self.length:
            raise ValueError(f"expected {self.length} tokens along dim {dim}, got shape {tuple(x.shape)}")
        return self.pad(x, dim).narrow(dim, self.start, self.local)

    def unpad(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return x.narrow(dim, 0, self.length)


# ------------------------------------------------------------------------------------ attention with LSE


def attention_lse(q, k, v, key_mask: torch.Tensor | None = None):
    """Attention and its log-sum-exp: q (B, H, Sq, D), k/v (B, H, Sk, D) -> out (B, H, Sq, D) and
    lse (B, H, Sq), both float32. `key_mask` (B, Sk) bool, True where a key may be attended."""
    if key_mask is None:
        fused = _fused_lse(q, k, v)
        if fused is not None:
            return fused
    return _math_lse(q, k, v, key_mask)


def _fused_lse(q, k, v):
    """The platform's flash kernel, which returns the log-sum-exp; None where there is none."""
    try:
        if q.device.type == "cpu":
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False)[:2]
        elif q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256:
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False)[:2]
        else:
            return None
    except (RuntimeError, NotImplementedError):
        return None
    return out.float(), lse.float()[..., : q.shape[2]]


def _math_lse(q, k, v, key_mask=None):
    scale = q.shape[-1] ** -0.5
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale  # (B, H, Sq, Sk)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # (B, H, Sq); -inf where every key is masked
    probs = torch.exp(scores - lse.unsqueeze(-1)).nan_to_num(0.0)
    return torch.matmul(probs, v.float()), lse


def merge_lse(out, lse, out_b, lse_b):
    """Combine two attention results over disjoint key sets (online softmax), float32. A row that has no
    key in either (lse -inf in both: every key masked) stays (0, -inf) instead of becoming NaN."""
    if out is None:
        return out_b, lse_b
    new = torch.logaddexp(lse, lse_b)
    ref = torch.where(torch.isneginf(new), torch.zeros_like(new), new)  # = new wherever any key was seen
    return out * (lse - ref).exp().unsqueeze(-1) + out_b * (lse_b - ref).exp().unsqueeze(-1), new


# ---------------------------------------------------------------------------------------------- Ulysses


def ulysses_attention(q, k, v, shard: SeqShard, group, *, text=None, text_mask=None, native_a2a: bool = True):
    """q, k, v: this rank's image tokens (B, S_local, H, D); text: (q, k, v) each (B, T, H, D), replicated;
    text_mask: (B, T) bool or None. -> (text_out (B, T, H, D) or None, image_out (B, S_local, H, D))."""
    world, heads = group_size(group), q.shape[2]
    if heads % world:
        raise ValueError(f"Ulysses needs the head count ({heads}) to divide by the SP degree ({world}); "
                         "use attention='ring' or another SP degree")
    mine = slice(group_rank(group) * heads // world, (group_rank(group) + 1) * heads // world)
    # (B, S_local, H, D) -> (B, S_padded, H/P, D) -> (B, S, H/P, D)
    q, k, v = (shard.unpad(all_to_all(t, 2, 1, group, native=native_a2a), 1) for t in (q, k, v))
    n_text, mask = 0, None
    if text is not None:
        n_text = text[0].shape[1]
        q, k, v = (torch.cat([t[:, :, mine], x], dim=1) for t, x in zip(text, (q, k, v)))  # (B, T + S, H/P, D)
        if text_mask is not None:
            image_keys = text_mask.new_ones(text_mask.shape[0], shard.length)
            mask = torch.cat([text_mask.bool(), image_keys.bool()], dim=1)[:, None, None, :]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    out = out.transpose(1, 2)  # (B, T + S, H/P, D)
    image = all_to_all(shard.pad(out[:, n_text:], 1), 1, 2, group, native=native_a2a)  # (B, S_local, H, D)
    text_out = all_gather_cat(out[:, :n_text].contiguous(), 2, group) if text is not None else None
    return text_out, image


# ------------------------------------------------------------------------------------------------- ring


def ring_attention(q, k, v, shard: SeqShard, group, *, text=None, text_mask=None):
    """Same contract as `ulysses_attention`; any head count."""
    world, me = group_size(group), group_rank(group)
    qh = q.transpose(1, 2)  # (B, H, S_local, D)
    out = lse = None
    if text is not None:  # the text keys, once, for the image queries
        out, lse = attention_lse(qh, text[1].transpose(1, 2), text[2].transpose(1, 2), text_mask)
    block = torch.stack([k, v])  # (2, B, S_local, H, D): travels round the ring
    for step in range(world):
        if step < world - 1:
            incoming, wait = ring_shift(block, group)
        n = shard.valid((me - step) % world)  # the block came from rank me - step; padding rows cut off
        if n:
            kb, vb = (t[:, :n].transpose(1, 2) for t in block)
            out, lse = merge_lse(out, lse, *attention_lse(qh, kb, vb))
        if step < world - 1:
            wait()
            block = incoming
    image = out.transpose(1, 2).to(q.dtype)  # (B, S_local, H, D)
    text_out = _ring_text(text, text_mask, k, v, shard, group) if text is not None else None
    return text_out, image


def _ring_text(text, text_mask, k, v, shard: SeqShard, group):
    """Text queries against all keys: a partial result per rank, gathered and merged in rank order."""
    tq, tk, tv = (t.transpose(1, 2) for t in text)  # (B, H, T, D)
    out = lse = None
    if group_rank(group) == 0:
        out, lse = attention_lse(tq, tk, tv, text_mask)
    n = shard.valid()
    if n:
        out, lse = merge_lse(out, lse, *attention_lse(tq, k[:, :n].transpose(1, 2), v[:, :n].transpose(1, 2)))
    if out is None:  # no keys here: an empty partial result
        out = tq.new_zeros(tq.shape, dtype=torch.float32)
        lse = tq.new_full(tq.shape[:-1], float("-inf"), dtype=torch.float32)
    packed = torch.cat([out, lse.unsqueeze(-1)], dim=-1)  # (B, H, T, D + 1)
    out = lse = None
    for part in all_gather_list(packed, group):  # rank order: the same sum on every rank
        out, lse = merge_lse(out, lse, part[..., :-1], part[..., -1])
    return out.transpose(1, 2).to(text[0].dtype)  # (B, T, H, D)
