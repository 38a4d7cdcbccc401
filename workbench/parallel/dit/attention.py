"""Sequence-parallel joint attention: Ulysses (all-to-all between sequence and heads) and ring (K/V blocks
passed around the ranks, partial results merged by log-sum-exp in float32).

Tensors are (B, S, H, D), the layout diffusers' processors hold q/k/v in before attention. Both streams
are sharded: the image sequence and, for the joint attention of Qwen-Image and GLM-Image, the text
sequence, each padded to a multiple of P ranks and cut into equal pieces (`SeqShard`, padding at the end
of each stream). A rank holds [text_r, image_r] and gets back the attention output of exactly those
tokens; every query sees every real key of both streams once, padding is never a key:

- Ulysses: one all-to-all per q/k/v moves [text_r, image_r] of all ranks to each rank for H/P heads;
  the pieces are reordered into [text (T), image (S)] with each stream's padding cut off, so one
  ordinary attention over the whole sequence (the text mask, if any, on the text keys) runs per head
  group, exactly as on one device. One all-to-all brings [text_r, image_r] back, all heads.
- Ring: the local [text_r, image_r] K/V block travels round the ring; each local query (text and image)
  attends to the text rows of every block (math path, text mask) and its image rows (the platform's
  flash kernel where there is one), padding rows cut off, merged by log-sum-exp.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..comm import all_to_all, group_rank, group_size, ring_shift

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


def _joined(text, x, dim=1):
    """[text, image] along the sequence (the image alone when there is no text)."""
    return x if text is None else torch.cat([text, x], dim=dim)


def ulysses_attention(q, k, v, shard: SeqShard, group, *, text=None, text_shard: SeqShard | None = None,
                      text_mask=None, native_a2a: bool = True):
    """q, k, v: this rank's image tokens (B, S_local, H, D); text: this rank's text tokens (q, k, v), each
    (B, T_local, H, D), cut by `text_shard`; text_mask: (B, T) bool (the whole text) or None.
    -> (text_out (B, T_local, H, D) or None, image_out (B, S_local, H, D))."""
    world, heads = group_size(group), q.shape[2]
    if heads % world:
        raise ValueError(f"Ulysses needs the head count ({heads}) to divide by the SP degree ({world}); "
                         "use attention='ring' or another SP degree")
    n_local = 0 if text is None else text[0].shape[1]
    if text is not None and (text_shard is None or n_local != text_shard.local):
        raise ValueError(f"text pieces of {n_local} tokens need their SeqShard (got {text_shard})")
    # [text_local, image_local] (B, T_local + S_local, H, D) -> every rank's, for H/P heads
    # (B, P * (T_local + S_local), H/P, D), then [text (B, T), image (B, S)] with the padding cut off
    joint = []
    for i, x in enumerate((q, k, v)):
        x = all_to_all(_joined(None if text is None else text[i], x), 2, 1, group, native=native_a2a)
        x = x.unflatten(1, (world, -1))
        image = shard.unpad(x[:, :, n_local:].flatten(1, 2), 1)
        joint.append(image if text is None else torch.cat([text_shard.unpad(x[:, :, :n_local].flatten(1, 2), 1),
                                                            image], dim=1))
    n_text = 0 if text is None else text_shard.length
    mask = None
    if text_mask is not None and text is not None:
        image_keys = text_mask.new_ones(text_mask.shape[0], shard.length)
        mask = torch.cat([text_mask.bool(), image_keys.bool()], dim=1)[:, None, None, :]
    q, k, v = (t.transpose(1, 2) for t in joint)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)  # (B, T + S, H/P, D)
    # back: pad each stream, rank r's pieces [text_r, image_r] to rank r, all heads (B, T_local + S_local, H, D)
    image = shard.pad(out[:, n_text:], 1).unflatten(1, (world, -1))
    if text is not None:
        image = torch.cat([text_shard.pad(out[:, :n_text], 1).unflatten(1, (world, -1)), image], dim=2)
    back = all_to_all(image.flatten(1, 2), 1, 2, group, native=native_a2a)
    return (None if text is None else back[:, :n_local]), back[:, n_local:]


# ------------------------------------------------------------------------------------------------- ring


def ring_attention(q, k, v, shard: SeqShard, group, *, text=None, text_shard: SeqShard | None = None,
                   text_mask=None):
    """Same contract as `ulysses_attention`; any head count."""
    world, me = group_size(group), group_rank(group)
    n_local = 0 if text is None else text[0].shape[1]
    if text is not None and (text_shard is None or n_local != text_shard.local):
        raise ValueError(f"text pieces of {n_local} tokens need their SeqShard (got {text_shard})")
    if text is not None:
        q, k, v = (torch.cat([t, x], dim=1) for t, x in zip(text, (q, k, v)))  # (B, T_local + S_local, H, D)
    qh = q.transpose(1, 2)  # (B, H, T_local + S_local, D): every local query, text and image
    out = lse = None
    block = torch.stack([k, v])  # (2, B, T_local + S_local, H, D): travels round the ring
    for step in range(world):
        if step < world - 1:
            incoming, wait = ring_shift(block, group)
        src = (me - step) % world  # the block came from rank src; its padding rows are cut off
        n_text = 0 if text is None else text_shard.valid(src)
        if n_text:  # its text keys, with their mask (math path: small)
            kb, vb = (t[:, :n_text].transpose(1, 2) for t in block)
            key_mask = None
            if text_mask is not None:
                key_mask = text_mask.bool().narrow(1, src * text_shard.local, n_text)
            out, lse = merge_lse(out, lse, *attention_lse(qh, kb, vb, key_mask))
        n_image = shard.valid(src)
        if n_image:  # its image keys (the platform's flash kernel where there is one)
            kb, vb = (t[:, n_local:n_local + n_image].transpose(1, 2) for t in block)
            out, lse = merge_lse(out, lse, *attention_lse(qh, kb, vb))
        if step < world - 1:
            wait()
            block = incoming
    out = out.transpose(1, 2).to(q.dtype)  # (B, T_local + S_local, H, D)
    return (None if text is None else out[:, :n_local]), out[:, n_local:]
