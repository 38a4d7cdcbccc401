"""Sequence parallelism for unmodified diffusers DiTs, applied from outside.

    sequence_parallel(transformer, group=sp_group, attention="ulysses")   # or "ring"; in place
    undo_sequence_parallel(transformer)                                   # back to single-device

What changes, per model (QwenImageTransformer2DModel, WanTransformer3DModel, GlmImageTransformer2DModel):

- a forward pre-hook on the first block pads the image tokens to a multiple of the SP degree and keeps
  this rank's piece; the same hook shards the rotary embedding and any per-token input (Qwen-Image-Edit's
  `modulate_index`, Wan2.2's per-token timestep) to match, and later blocks get the same pieces;
- for the dual-stream blocks of Qwen-Image and GLM-Image the same hook also pads the text tokens
  (`encoder_hidden_states`) to a multiple of the SP degree and keeps this rank's piece (and the text
  rotary, Qwen-Image's `txt_freqs`): every per-token layer of the text stream (norms, modulation, the
  q/k/v and output projections, the MLP) runs on ceil(T/P) tokens per rank instead of T. The blocks pass
  the text piece on to each other; nothing after the blocks reads the text, so it is never gathered;
- each block's self-attention processor is replaced by one that computes q/k/v exactly as diffusers'
  processor does (projections, q/k norms, rotary) and then runs `ulysses_attention` or `ring_attention`
  on [this rank's text, this rank's image]: every query sees every real key of both streams once, the
  padding of either stream is cut off before it can be a key (the text mask, if any, stays whole and
  is applied to the real text keys);
- a forward hook on `proj_out` all-gathers the image tokens and cuts the padding off, so the model
  returns exactly what the single-device model returns, on every rank.

Everything between (norms, modulation, MLPs, Wan's cross-attention to the text) is token-wise and runs
unchanged on the local tokens. What stays replicated: the text embedders before the first block
(Qwen-Image's `txt_norm` + `txt_in`, one linear layer; GLM-Image's `glyph_projector`, a two-layer MLP: under
1 % of the text stream's per-token work in the real configs; sharding them would need a gather of the text
before the blocks, since the model's forward checks the text length against its mask and sizes the text
rotary by it) and Wan's cross-attention K/V of the text (a key/value source only, no text stream).
diffusers' own context-parallel plans are not used: they need a DeviceMesh, need the text length to
divide by the degree, do not pad arbitrary image lengths, and GLM-Image has none.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_qwenimage import apply_rotary_emb_qwen
from diffusers.models.transformers.transformer_wan import _get_qkv_projections

from ..comm import all_gather_cat, group_rank, group_size, probe_all_to_all
from .attention import SeqShard, ring_attention, ulysses_attention

__all__ = ["sequence_parallel", "undo_sequence_parallel", "is_parallelized", "SPState", "ATTENTION_METHODS"]

ATTENTION_METHODS = ("ulysses", "ring")


@dataclass
class SPState:
    """What the hooks and processors of one parallelized model share: the group and the current shard."""

    group: object
    attention: str
    native_a2a: bool = True
    shard: SeqShard | None = None  # the image tokens: set by the first block of each forward, cleared by proj_out
    text: SeqShard | None = None  # the text tokens of a dual-stream model, likewise
    pieces: dict = field(default_factory=dict)  # id(full tensor) -> (full, local piece), for one forward
    handles: list = field(default_factory=list)
    processors: dict = field(default_factory=dict)  # attention module -> its original processor

    @property
    def world(self) -> int:
        return group_size(self.group)

    def begin(self, length: int, text_length: int | None = None) -> SeqShard:
        rank = group_rank(self.group)
        self.shard = SeqShard(length, self.world, rank)
        self.text = None if text_length is None else SeqShard(text_length, self.world, rank)
        self.pieces.clear()
        return self.shard

    def end(self) -> SeqShard:
        """The image shard of the forward that ends here; forgets it, the text shard and the pieces."""
        shard, self.shard, self.text = self.shard, None, None
        self.pieces.clear()
        return shard

    def piece(self, full: torch.Tensor, dim: int, text: bool = False) -> torch.Tensor:
        """This rank's piece of a full-length tensor (of the image stream, or the text stream), cut once per forward."""
        kept = self.pieces.get(id(full))
        if kept is None or kept[0] is not full:
            kept = self.pieces[id(full)] = (full, (self.text if text else self.shard).shard(full, dim))
        return kept[1]

    def attend(self, q, k, v, text=None, text_mask=None):
        """(text_out, image_out) for local image q/k/v (B, S_local, H, D) and this rank's text piece (q, k, v),
        each (B, T_local, H, D); text_mask (B, T) is the whole text's."""
        if text is not None and self.text is None:
            raise RuntimeError("text tokens reached the attention unsharded: call the model's forward")
        if self.attention == "ring":
            return ring_attention(q, k, v, self.shard, self.group, text=text, text_shard=self.text,
                                  text_mask=text_mask)
        return ulysses_attention(q, k, v, self.shard, self.group, text=text, text_shard=self.text,
                                 text_mask=text_mask, native_a2a=self.native_a2a)


# ------------------------------------------------------------------------------------------- processors


class QwenImageSPProcessor:
    """diffusers' QwenDoubleStreamAttnProcessor2_0 with the joint attention done across the SP group."""

    def __init__(self, state: SPState):
        self.state = state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, encoder_hidden_states_mask=None,
                 attention_mask=None, image_rotary_emb=None):
        if encoder_hidden_states is None or attention_mask is not None:
            raise ValueError("QwenImageSPProcessor needs encoder_hidden_states and no attention_mask (as diffusers')")
        head_dim = attn.inner_dim // attn.heads
        img = [attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)]
        txt = [attn.add_q_proj(encoder_hidden_states), attn.add_k_proj(encoder_hidden_states),
               attn.add_v_proj(encoder_hidden_states)]
        img = [t.unflatten(-1, (-1, head_dim)) for t in img]  # (B, S_local, H, D)
        txt = [t.unflatten(-1, (-1, head_dim)) for t in txt]  # (B, T_local, H, D)
        if attn.norm_q is not None:
            img[0] = attn.norm_q(img[0])
        if attn.norm_k is not None:
            img[1] = attn.norm_k(img[1])
        if attn.norm_added_q is not None:
            txt[0] = attn.norm_added_q(txt[0])
        if attn.norm_added_k is not None:
            txt[1] = attn.norm_added_k(txt[1])
        if image_rotary_emb is not None:
            img_freqs, txt_freqs = image_rotary_emb  # each already this rank's piece of its stream
            img[:2] = [apply_rotary_emb_qwen(t, img_freqs, use_real=False) for t in img[:2]]
            txt[:2] = [apply_rotary_emb_qwen(t, txt_freqs, use_real=False) for t in txt[:2]]
        txt_out, img_out = self.state.attend(*img, text=tuple(txt), text_mask=encoder_hidden_states_mask)
        img_out = img_out.flatten(2, 3).to(img[0].dtype)
        txt_out = txt_out.flatten(2, 3).to(img[0].dtype)
        img_out = attn.to_out[0](img_out.contiguous())
        if len(attn.to_out) > 1:
            img_out = attn.to_out[1](img_out)
        return img_out, attn.to_add_out(txt_out.contiguous())


def _wan_rotary(x, freqs_cos, freqs_sin):
    """diffusers' WanAttnProcessor rotary (a closure there): interleaved pairs."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class WanSPProcessor:
    """diffusers' WanAttnProcessor for the self-attention (attn1) with the attention done across the SP group."""

    def __init__(self, state: SPState):
        self.state = state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("WanSPProcessor replaces the self-attention only (no encoder states, no mask)")
        q, k, v = _get_qkv_projections(attn, hidden_states, None)
        q, k = attn.norm_q(q), attn.norm_k(k)
        q, k, v = (t.unflatten(2, (attn.heads, -1)) for t in (q, k, v))  # (B, S_local, H, D)
        if rotary_emb is not None:
            q, k = _wan_rotary(q, *rotary_emb), _wan_rotary(k, *rotary_emb)
        _, out = self.state.attend(q, k, v)
        out = out.flatten(2, 3).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))


class GlmImageSPProcessor:
    """diffusers' GlmImageAttnProcessor (text and image share the projections) across the SP group."""

    def __init__(self, state: SPState):
        self.state = state

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None,
                 kv_cache=None):
        if attention_mask is not None or kv_cache is not None:
            raise NotImplementedError("GLM-Image under sequence parallelism takes no attention_mask and no kv_cache "
                                      "(text-to-image; diffusers' GlmImagePipeline passes neither)")
        dtype = encoder_hidden_states.dtype
        n_text = encoder_hidden_states.shape[1]  # this rank's text piece: T_local
        x = torch.cat([encoder_hidden_states, hidden_states], dim=1)  # (B, T_local + S_local, C)
        q, k, v = (proj(x).unflatten(2, (attn.heads, -1)) for proj in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            q = attn.norm_q(q).to(dtype=dtype)
        if attn.norm_k is not None:
            k = attn.norm_k(k).to(dtype=dtype)
        if image_rotary_emb is not None:
            for t in (q, k):
                t[:, n_text:] = apply_rotary_emb(t[:, n_text:], image_rotary_emb, sequence_dim=1, use_real_unbind_dim=-2)
        text = (q[:, :n_text], k[:, :n_text], v[:, :n_text])
        txt_out, img_out = self.state.attend(q[:, n_text:], k[:, n_text:], v[:, n_text:], text=text)
        out = torch.cat([txt_out, img_out], dim=1).flatten(2, 3).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        return out[:, n_text:], out[:, :n_text]


# ---------------------------------------------------------------------------------------- model plans


@dataclass(frozen=True)
class _Plan:
    """Where a model keeps its blocks and what its block calls carry."""

    blocks: str  # attribute holding the ModuleList of blocks
    attention: str  # the self-attention module inside a block
    processor: type
    hidden: tuple[str, int]  # (kwarg name, positional index) of the image tokens (B, S, C)
    rotary: tuple[str, int]  # the rotary embedding argument
    rotary_dims: dict  # element of the rotary tuple -> its sequence dim (image stream)
    per_token: dict = field(default_factory=dict)  # (name, index) -> (sequence dim, ndim it must have)
    text: tuple[str, int] | None = None  # the text stream (B, T, C) of a dual-stream block: sharded too
    rotary_text: dict = field(default_factory=dict)  # element of the rotary tuple -> its sequence dim (text stream)
    gather_before: str | None = None  # gather the tokens before this module (else after proj_out)


PLANS = {
    "QwenImageTransformer2DModel": _Plan(
        "transformer_blocks", "attn", QwenImageSPProcessor, ("hidden_states", 0), ("image_rotary_emb", 4), {0: 0},
        {("modulate_index", 6): (1, 2)}, text=("encoder_hidden_states", 1), rotary_text={1: 0}),
    "WanTransformer3DModel": _Plan(
        "blocks", "attn1", WanSPProcessor, ("hidden_states", 0), ("rotary_emb", 3), {0: 1, 1: 1},
        {("temb", 2): (1, 4)},  # Wan2.2 TI2V: a timestep per token, (B, S, 6, C)
        gather_before="norm_out"),  # its output modulation has a timestep per token too: full length there
    "GlmImageTransformer2DModel": _Plan(
        "transformer_blocks", "attn1", GlmImageSPProcessor, ("hidden_states", 0), ("image_rotary_emb", 3), {0: 0, 1: 0},
        text=("encoder_hidden_states", 1)),
}


def _get(args, kwargs, name: str, index: int):
    if name in kwargs:
        return kwargs[name]
    return args[index] if index < len(args) else None


def _set(args, kwargs, name: str, index: int, value):
    if name in kwargs or index >= len(args):
        kwargs[name] = value
        return args
    return (*args[:index], value, *args[index + 1:])


def _block_hook(state: SPState, plan: _Plan, first: bool):
    def hook(module, args, kwargs):
        if first:
            x = _get(args, kwargs, *plan.hidden)
            text = _get(args, kwargs, *plan.text) if plan.text else None
            state.begin(x.shape[1], None if text is None else text.shape[1])
            args = _set(args, kwargs, *plan.hidden, state.shard.shard(x, 1))  # (B, S, C) -> (B, S_local, C)
            if text is not None:  # (B, T, C) -> (B, T_local, C), zero padding at the end of the last pieces
                args = _set(args, kwargs, *plan.text, state.text.shard(text, 1))
        elif state.shard is None:
            raise RuntimeError("sequence-parallel blocks must be called through the model's forward")
        rotary = _get(args, kwargs, *plan.rotary)
        if rotary is not None:
            rotary = tuple(state.piece(r, plan.rotary_dims[i]) if i in plan.rotary_dims
                           else state.piece(r, plan.rotary_text[i], text=True) if i in plan.rotary_text
                           else r for i, r in enumerate(rotary))
            args = _set(args, kwargs, *plan.rotary, rotary)
        for (name, index), (dim, ndim) in plan.per_token.items():
            t = _get(args, kwargs, name, index)
            if isinstance(t, torch.Tensor) and t.dim() == ndim:
                args = _set(args, kwargs, name, index, state.piece(t, dim))
        return args, kwargs

    return hook


def _output_hook(state: SPState):
    def hook(module, args, output):  # (B, S_local, C) -> (B, S, C)
        shard = state.end()
        return shard.unpad(all_gather_cat(output, 1, state.group), 1)

    return hook


def _input_hook(state: SPState):
    def hook(module, args):  # (B, S_local, C) -> (B, S, C), before a module that needs the whole sequence
        shard = state.end()
        return (shard.unpad(all_gather_cat(args[0], 1, state.group), 1), *args[1:])

    return hook


def _plan(model) -> _Plan:
    for cls in type(model).__mro__:
        if cls.__name__ in PLANS:
            return PLANS[cls.__name__]
    raise TypeError(f"no sequence-parallel plan for {type(model).__name__}; accepted: {', '.join(PLANS)}")


def is_parallelized(model) -> bool:
    return getattr(model, "_workbench_sp", None) is not None


def sequence_parallel(model, *, group, attention: str = "ulysses") -> torch.nn.Module:
    """Run `model` sequence-parallel over `group` (every rank of it calls the model with the same inputs and
    gets the same output). In place; returns the model. Collective: every rank of `group` calls it."""
    if attention not in ATTENTION_METHODS:
        raise ValueError(f"unknown attention {attention!r}; accepted: {', '.join(ATTENTION_METHODS)}")
    plan = _plan(model)
    if is_parallelized(model):
        undo_sequence_parallel(model)
    state = SPState(group, attention)
    if state.world == 1:
        return model
    blocks = getattr(model, plan.blocks)
    heads = getattr(blocks[0], plan.attention).heads
    if attention == "ulysses" and heads % state.world:
        raise ValueError(f"{type(model).__name__} has {heads} heads, which do not divide by the SP degree "
                         f"{state.world}: use attention='ring' or an SP degree dividing {heads}")
    state.native_a2a = probe_all_to_all(group)
    for i, block in enumerate(blocks):
        state.handles.append(block.register_forward_pre_hook(_block_hook(state, plan, i == 0), with_kwargs=True))
        attn = getattr(block, plan.attention)
        state.processors[attn] = attn.processor
        attn.set_processor(plan.processor(state))
    if plan.gather_before:
        state.handles.append(getattr(model, plan.gather_before).register_forward_pre_hook(_input_hook(state)))
    else:
        state.handles.append(model.proj_out.register_forward_hook(_output_hook(state)))
    model._workbench_sp = state
    return model


def undo_sequence_parallel(model) -> torch.nn.Module:
    """Undo `sequence_parallel`: remove the hooks and give back the original processors."""
    state = getattr(model, "_workbench_sp", None)
    if state is None:
        return model
    for handle in state.handles:
        handle.remove()
    for attn, processor in state.processors.items():
        attn.set_processor(processor)
    model._workbench_sp = None
    return model
