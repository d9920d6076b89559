"""Condition tokens as a third stream of a frozen FLUX transformer, with condition-only LoRA.

Face-MoGLE (paper section 3; docs/design.md, "Condition stream and LoRA") feeds the MoGLE tokens
of the mask into the frozen FLUX transformer as a third token stream beside the text and image
tokens. How the official code does it, and what this module reproduces:

- The condition tokens reuse the image stream's modules (`x_embedder`, `norm1`, `attn.to_*`,
  `norm_q/k`, `to_out`, `norm2`, `ff` in double blocks; `norm`, `proj_mlp`, `attn`, `proj_out` in
  single blocks) with LoRA on; text and image tokens go through the same modules with LoRA off, so
  they are computed by the frozen base weights.
- Their modulation is `time_text_embed` at timestep 0 (the condition is clean; OminiControl #66)
  with a constant guidance value (one value in training and sampling: docs/design.md, bug B3).
- Their RoPE positions are the image positions (spatially aligned masks).
- The three streams meet only inside attention: one attention over [text; image; condition] with
  no mask among streams (a dropped mask is the empty mask, not hidden tokens).
- Optionally (`condition_attention="aligned"`, not in the paper), image token p attends only to
  the condition token at p. FLUX.1-dev's image queries find the same-position condition token by
  themselves; the embedded tiny base's do not (measured when it ran at 64 px, 16 image tokens:
  image queries spread their condition attention nearly uniformly), so for it the alignment is
  given as an attention mask.

Why a forward written over the blocks: `FluxTransformer2DModel.forward` and its blocks know two
streams; a third stream needs its own modulation, norms, feed-forward and residual in every block,
which an attention processor cannot add. The official code therefore rewrites the FLUX forward
(pinned to diffusers 0.31, OminiControl #58) and zero-scales LoRA around every image-stream call,
which still computes the LoRA branches. Here the forward is written over the stock modules of the
installed diffusers (0.40 to 0.42.1), reusing their weights, with LoRA applied per branch through
the layers' `base_layer` calls: each frozen projection runs once over the joined streams and only
the LoRA delta of the condition slice is added (`_project`). With no condition tokens the forward
is the stock forward. The adapter itself is attached, counted, saved and loaded in
`facemogle/models/lora.py`.

Read top-down as DiT: small helpers (`_project`, `modulate`, attention), the two blocks
(`_double_block`, `_single_block`), then `condition_forward`, the model forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import FluxTransformer2DModel
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import (
    FluxSingleTransformerBlock,
    FluxTransformerBlock,
)
from peft.tuners.lora import LoraLayer
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------


def _lora_delta(layer: LoraLayer, x: Tensor) -> Tensor | None:
    """Sum over the active adapters of `lora_B(lora_A(dropout(x))) * scaling`, or None."""
    delta = None
    for name in layer.active_adapters:
        if name not in layer.lora_A:
            continue
        if name in getattr(layer, "lora_variant", {}):
            raise NotImplementedError(f"adapter '{name}' is a LoRA variant (e.g. DoRA); the "
                                      "condition stream supports plain LoRA only")
        lora_a, lora_b = layer.lora_A[name], layer.lora_B[name]
        xa = x.to(lora_a.weight.dtype)
        d = lora_b(lora_a(layer.lora_dropout[name](xa))) * layer.scaling[name]
        delta = d if delta is None else delta + d
    return delta


def _project(module: nn.Module, x: Tensor, cond_start: int, dim: int = 1) -> Tensor:
    """Frozen projection of all of `x`, plus the LoRA delta on its condition part.

    `x` holds the streams joined along `dim` (tokens: dim 1; modulation embeddings: dim 0), the
    condition part being indices >= `cond_start`; it may be empty (no condition tokens). For a
    peft LoRA layer the base layer runs once over everything and LoRA only on the condition part
    (docs/design.md, "Condition stream and LoRA"); any other module is simply called.
    """
    if not isinstance(module, LoraLayer):
        return module(x)
    if module.merged:
        raise RuntimeError("a LoRA adapter is merged into the base weights, so image and text "
                           "tokens would see it; unmerge it before condition_forward")
    out = module.base_layer(x)
    n_cond = x.shape[dim] - cond_start
    if n_cond <= 0 or module.disable_adapters:
        return out
    delta = _lora_delta(module, x.narrow(dim, cond_start, n_cond))
    if delta is not None:
        # In place on the condition slice of the fresh base output: no copy of the whole output.
        out.narrow(dim, cond_start, n_cond).add_(delta.to(out.dtype))
    return out


def embed_condition(transformer: FluxTransformer2DModel, cond_tokens: Tensor) -> Tensor:
    """Condition tokens (B, Lc, C) through `x_embedder` as `condition_forward` embeds them (the
    frozen layer plus its LoRA delta) -> (B, Lc, D)."""
    return _project(transformer.x_embedder, cond_tokens, 0)  # (B, Lc, D)


def _per_token(mod: Tensor, n_main: int, n_cond: int) -> Tensor:
    """Modulation rows to per-token form.

    `mod` is (B, D) without condition tokens, else (2B, D) = [main; condition]. Returns a tensor
    broadcastable over (B, n_main + n_cond, D): the main rows for the first `n_main` tokens, the
    condition rows for the last `n_cond`.
    """
    if n_cond == 0:
        return mod[:, None]  # (B, 1, D)
    main, cond = mod.chunk(2)  # (B, D) each
    return torch.cat([main[:, None].expand(-1, n_main, -1),
                      cond[:, None].expand(-1, n_cond, -1)], dim=1)  # (B, n_main + n_cond, D)


def _modulation(linear: nn.Module, silu: nn.Module, temb: Tensor, chunks: int, n_main: int,
                n_cond: int) -> list[Tensor]:
    """adaLN-Zero parameters: `linear(silu(temb))` split in `chunks`, per token.

    temb (B or 2B, D); the condition rows (the second half) get the LoRA delta.
    """
    batch = temb.shape[0] // 2 if n_cond else temb.shape[0]
    emb = _project(linear, silu(temb), batch, dim=0)  # (B or 2B, chunks * D)
    return [_per_token(m, n_main, n_cond) for m in emb.chunk(chunks, dim=1)]


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation of normalised tokens x: `x * (1 + scale) + shift`."""
    # The stock FLUX blocks' expression and operation order, so the result is bitwise theirs.
    return x * (1 + scale) + shift


def _heads(attn: nn.Module, x: Tensor) -> Tensor:
    """(B, S, H * Dh) -> (B, S, H, Dh), as the stock `FluxAttnProcessor` splits heads."""
    return x.unflatten(-1, (-1, attn.head_dim))


def _attention(q: Tensor, k: Tensor, v: Tensor, rope: tuple[Tensor, Tensor],
               attn_mask: Tensor | None) -> Tensor:
    """RoPE on q, k (B, S, H, Dh) as the stock processor applies it, then one SDPA call.

    Returns (B, S, H * Dh).
    """
    q = apply_rotary_emb(q, rope, sequence_dim=1)  # (B, S, H, Dh)
    k = apply_rotary_emb(k, rope, sequence_dim=1)  # (B, S, H, Dh)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=attn_mask)  # (B, H, S, Dh)
    return out.transpose(1, 2).flatten(2, 3).to(q.dtype)  # (B, S, H * Dh)


CONDITION_ATTENTION: tuple[str, ...] = ("full", "aligned")


def _attention_mask(cond_attention: str, n_text: int, n_img: int, n_cond: int,
                    device: torch.device) -> Tensor | None:
    """Boolean attention mask over [text; image; condition] tokens (True = may attend), or None
    when nothing is masked (the stock attention, flash kernels on GPU).

    `cond_attention` is one of CONDITION_ATTENTION: "full" masks nothing; "aligned" lets image
    query p see condition key p only (image and condition share positions), text and condition
    queries unrestricted. Returns (1, 1, S, S), S = n_text + n_img + n_cond, or None without
    condition tokens or with full attention.
    """
    if cond_attention not in CONDITION_ATTENTION:
        raise ValueError(f"condition_forward: cond_attention must be one of "
                         f"{list(CONDITION_ATTENTION)}, got {cond_attention!r}")
    if n_cond == 0 or cond_attention != "aligned":
        return None
    if n_cond != n_img:
        raise ValueError(f"condition_forward: aligned condition attention needs one condition "
                         f"token per image token, got {n_cond} and {n_img}")
    size = n_text + n_img + n_cond
    pairs = torch.ones(size, size, dtype=torch.bool, device=device)  # (S, S)
    pairs[n_text:n_text + n_img, n_text + n_img:] = torch.eye(n_img, dtype=torch.bool,
                                                              device=device)  # (L, Lc)
    return pairs[None, None]  # (1, 1, S, S)


def _clip_fp16(x: Tensor) -> Tensor:
    """The stock blocks clip float16 activations to the float16 range."""
    return x.clip(-65504, 65504) if x.dtype == torch.float16 else x


# ----------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------


def _double_attention(attn: nn.Module, h: Tensor, context: Tensor, rope: tuple[Tensor, Tensor],
                      attn_mask: Tensor | None, n_img: int) -> tuple[Tensor, Tensor]:
    """Joint attention of a double block.

    h (B, L + Lc, D) normalised image then condition tokens; context (B, T, D) normalised text.
    Returns the attention outputs (B, L + Lc, D) and (B, T, D).
    """
    q, k, v = (_heads(attn, _project(p, h, n_img)) for p in (attn.to_q, attn.to_k, attn.to_v))
    q, k = attn.norm_q(q), attn.norm_k(k)  # (B, L + Lc, H, Dh)
    tq, tk, tv = (_heads(attn, p(context)) for p in
                  (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))  # (B, T, H, Dh)
    tq, tk = attn.norm_added_q(tq), attn.norm_added_k(tk)
    out = _attention(torch.cat([tq, q], 1), torch.cat([tk, k], 1), torch.cat([tv, v], 1),
                     rope, attn_mask)  # (B, T + L + Lc, H * Dh)
    n_text = context.shape[1]
    out_text, out_x = out[:, :n_text], out[:, n_text:]
    out_x = attn.to_out[1](_project(attn.to_out[0], out_x.contiguous(), n_img))  # (B, L + Lc, D)
    return out_x, attn.to_add_out(out_text.contiguous())  # (B, T, D)


def _feed_forward(ff: nn.Module, h: Tensor, n_img: int) -> Tensor:
    """The stock `FeedForward` (GELU proj, dropout, Linear, ...) with `_project` on its Linears."""
    act = ff.net[0]
    h = act.gelu(_project(act.proj, h, n_img))  # (B, L + Lc, 4D)
    for layer in ff.net[1:]:  # dropout, Linear (LoRA target), optional final dropout
        h = _project(layer, h, n_img)
    return h  # (B, L + Lc, D)


# Mirrors `FluxTransformerBlock.forward` of diffusers 0.40 to 0.42.1 (pyproject.toml's lower bound
# to constraints.txt's pin) step for step, in its operation order, so that without condition
# tokens the result is the stock block's; a diffusers upgrade must be checked against it.
def _double_block(block: FluxTransformerBlock, context: Tensor, x: Tensor, temb: Tensor,
                  rope: tuple[Tensor, Tensor], attn_mask: Tensor | None, n_img: int
                  ) -> tuple[Tensor, Tensor]:
    """`FluxTransformerBlock.forward` with the condition tokens as a third stream.

    context (B, T, D) text; x (B, L + Lc, D) image then condition tokens; temb (B, D), or
    (2B, D) = [image/text; condition] when Lc > 0. Returns the updated (context, x).
    """
    n_cond = x.shape[1] - n_img
    norm1 = block.norm1
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = _modulation(
        norm1.linear, norm1.silu, temb, 6, n_img, n_cond)  # each (B, 1 or L + Lc, D)
    h = modulate(norm1.norm(x), shift_msa, scale_msa)  # (B, L + Lc, D)
    main_temb = temb[:context.shape[0]]  # (B, D)
    h_text, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = block.norm1_context(
        context, emb=main_temb)  # (B, T, D), then (B, D) each
    attn_x, attn_text = _double_attention(block.attn, h, h_text, rope, attn_mask,
                                          n_img)  # (B, L + Lc, D), (B, T, D)

    x = x + gate_msa * attn_x  # (B, L + Lc, D)
    h = modulate(block.norm2(x), shift_mlp, scale_mlp)  # (B, L + Lc, D)
    x = x + gate_mlp * _feed_forward(block.ff, h, n_img)  # (B, L + Lc, D)

    context = context + c_gate_msa.unsqueeze(1) * attn_text  # (B, T, D)
    h_text = modulate(block.norm2_context(context), c_shift_mlp[:, None],
                      c_scale_mlp[:, None])  # (B, T, D)
    context = context + c_gate_mlp.unsqueeze(1) * block.ff_context(h_text)  # (B, T, D)
    return _clip_fp16(context), x


# Mirrors `FluxSingleTransformerBlock.forward` of diffusers 0.40 to 0.42.1 (pyproject.toml's lower
# bound to constraints.txt's pin), as `_double_block` does its block, but keeps the joined
# [text; image; condition] sequence instead of splitting it after every block.
def _single_block(block: FluxSingleTransformerBlock, x: Tensor, temb: Tensor,
                  rope: tuple[Tensor, Tensor], attn_mask: Tensor | None, n_main: int) -> Tensor:
    """`FluxSingleTransformerBlock.forward` with the condition tokens as a third stream.

    x (B, T + L + Lc, D) text, image, condition tokens; the first `n_main` = T + L tokens use the
    base weights and temb[:B], the condition tokens LoRA and temb[B:]. Returns the updated x.
    """
    n_cond = x.shape[1] - n_main
    shift, scale, gate = _modulation(block.norm.linear, block.norm.silu, temb, 3, n_main, n_cond)
    h = modulate(block.norm.norm(x), shift, scale)  # (B, S, D)
    mlp = block.act_mlp(_project(block.proj_mlp, h, n_main))  # (B, S, 4D)
    attn = block.attn
    q, k, v = (_heads(attn, _project(p, h, n_main)) for p in (attn.to_q, attn.to_k, attn.to_v))
    out = _attention(attn.norm_q(q), attn.norm_k(k), v, rope, attn_mask)  # (B, S, D)
    out = gate * _project(block.proj_out, torch.cat([out, mlp], dim=2), n_main)  # (B, S, D)
    return _clip_fp16(x + out)  # (B, S, D)


# The block functions `condition_forward` calls; `enable_compile` swaps in compiled versions.
_BLOCK_FNS = {"double": _double_block, "single": _single_block}


def enable_compile(**options) -> None:
    """Use `torch.compile`d block functions in every later `condition_forward` (train.compile).

    The blocks are compiled rather than the whole forward: the Python loop over blocks and the
    optional checkpointing stay eager, each block's projections, norms, RoPE and attention fuse.
    """
    _BLOCK_FNS["double"] = torch.compile(_double_block, **options)
    _BLOCK_FNS["single"] = torch.compile(_single_block, **options)


def _run(kind: str, checkpointing: bool, *args):
    """Call the "double" or "single" block function of `_BLOCK_FNS`, under non-reentrant
    activation checkpointing if asked (and grad is on, as the stock model does); the numerics
    are the same."""
    fn = _BLOCK_FNS[kind]
    if checkpointing and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


# ----------------------------------------------------------------------------------------------
# The model forward
# ----------------------------------------------------------------------------------------------


class ResidualCache:
    """First-block residual caching across the steps of one denoising loop (the idea of
    ParaAttention's First-Block Cache, applied to `condition_forward`).

    Every step runs the first double block. When its change of the image tokens differs from
    the one of the last fully computed step by less than `threshold` (mean absolute difference
    over mean absolute value), the other blocks are skipped and their change of the image tokens
    at that step is added instead. `threshold` 0 computes every step, and so does a transformer
    without double blocks (no first block to probe; nothing is counted). One instance serves one
    batch's loop (`FaceMoGLE.forward(residual_cache=...)`), in order.
    """

    def __init__(self, threshold: float):
        if not threshold >= 0:
            raise ValueError(f"ResidualCache: threshold must be >= 0, got {threshold!r}")
        self.threshold = threshold
        self.first: Tensor | None = None  # (B, L, D) first block's change, last full step
        self.rest: Tensor | None = None  # (B, L, D) the other blocks' change, last full step
        self.computed = self.skipped = 0

    def reusable(self, first: Tensor) -> bool:
        """Whether the step whose first-block change is `first` may reuse `rest`."""
        if self.threshold == 0 or self.first is None or self.first.shape != first.shape:
            return False
        change = (first - self.first).abs().mean() / self.first.abs().mean().clamp_min(1e-12)
        return bool(change < self.threshold)

    def reuse(self, after_first: Tensor) -> Tensor:
        """The image tokens (B, L, D) of a skipped step: `after_first` plus the stored `rest`."""
        self.skipped += 1
        return after_first + self.rest  # (B, L, D)

    def store(self, first: Tensor, rest: Tensor) -> None:
        """Keep the changes of the image tokens at a fully computed step: by the first block
        (`first`) and by the other blocks (`rest`), each (B, L, D)."""
        self.computed += 1
        self.first, self.rest = first, rest


def _expect(t: Tensor | None, shape: tuple[int | None, ...], name: str) -> None:
    """Raise a ValueError unless `t` has `shape` (None = any size)."""
    ok = t is not None and t.ndim == len(shape) and all(
        s is None or s == n for s, n in zip(shape, t.shape))
    if not ok:
        got = None if t is None else tuple(t.shape)
        want = tuple("*" if s is None else s for s in shape)
        raise ValueError(f"condition_forward: '{name}' must have shape {want}, got {got}")


def _check_inputs(transformer: FluxTransformer2DModel, hidden_states: Tensor,
                  encoder_hidden_states: Tensor, pooled_projections: Tensor, timestep: Tensor,
                  img_ids: Tensor, txt_ids: Tensor, guidance: Tensor | None,
                  cond_tokens: Tensor | None, cond_ids: Tensor | None
                  ) -> tuple[int, int, int, int]:
    """Raise a ValueError naming the argument unless the inputs of `condition_forward` fit the
    transformer and each other; return their sizes B, T, L, Lc (Lc = 0 without condition)."""
    cfg = transformer.config
    _expect(hidden_states, (None, None, cfg.in_channels), "hidden_states")
    batch, length = hidden_states.shape[:2]
    _expect(encoder_hidden_states, (batch, None, cfg.joint_attention_dim), "encoder_hidden_states")
    _expect(pooled_projections, (batch, cfg.pooled_projection_dim), "pooled_projections")
    _expect(timestep, (batch,), "timestep")
    n_axes = len(transformer.pos_embed.axes_dim)
    _expect(img_ids, (length, n_axes), "img_ids")
    _expect(txt_ids, (encoder_hidden_states.shape[1], n_axes), "txt_ids")
    if encoder_hidden_states.shape[1] == 0:
        raise ValueError("condition_forward: 'encoder_hidden_states' needs at least one token")
    if cfg.guidance_embeds != (guidance is not None):
        has, want = ("has", "a (B,) tensor") if cfg.guidance_embeds else ("has no", "None")
        raise ValueError(f"condition_forward: the transformer {has} guidance embedding, so "
                         f"'guidance' must be {want}")
    if guidance is not None:
        _expect(guidance, (batch,), "guidance")
    if cond_tokens is None:
        return batch, encoder_hidden_states.shape[1], length, 0
    _expect(cond_tokens, (batch, None, cfg.in_channels), "cond_tokens")
    if cond_tokens.shape[1] == 0:
        raise ValueError("condition_forward: 'cond_tokens' needs at least one token (pass None "
                         "for no condition)")
    if cond_ids is None and cond_tokens.shape[1] != length:
        raise ValueError("condition_forward: 'cond_ids' is required when the condition has a "
                         "different number of tokens than the image")
    _expect(img_ids if cond_ids is None else cond_ids, (cond_tokens.shape[1], n_axes), "cond_ids")
    return batch, encoder_hidden_states.shape[1], length, cond_tokens.shape[1]


def _embed_time(transformer: FluxTransformer2DModel, dtype: torch.dtype, timestep: Tensor,
                guidance: Tensor | None, pooled: Tensor, cond_guidance: float | None) -> Tensor:
    """`temb` as the stock forward computes it (B, D); with `cond_guidance`, the condition
    stream's `cond_temb` (timestep 0, guidance `cond_guidance`) stacked below it: (2B, D)."""
    t = timestep.to(dtype) * 1000  # (B,) the stock forward's scaling of sigma
    g = None if guidance is None else guidance.to(dtype) * 1000  # (B,)
    if cond_guidance is not None:
        # The condition is clean: timestep 0 (as in the official code and OminiControl #66); its
        # guidance value is one constant for training and sampling (docs/design.md, bug B3).
        t = torch.cat([t, torch.zeros_like(t)])  # (2B,)
        if g is not None:
            g = torch.cat([g, torch.full_like(g, cond_guidance) * 1000])  # (2B,)
        pooled = torch.cat([pooled, pooled])  # (2B, P)
    if g is None:
        return transformer.time_text_embed(t, pooled)
    return transformer.time_text_embed(t, g, pooled)


# Mirrors `FluxTransformer2DModel.forward` of diffusers 0.40 to 0.42.1 (pyproject.toml's lower
# bound to constraints.txt's pin): embedders, double blocks, single blocks, `norm_out`,
# `proj_out`, with a third token stream. With no condition tokens it equals the stock forward
# (tests/test_condition.py::test_without_condition_equals_stock_forward).
def condition_forward(transformer: FluxTransformer2DModel, *, hidden_states: Tensor,
                      encoder_hidden_states: Tensor, pooled_projections: Tensor, timestep: Tensor,
                      img_ids: Tensor, txt_ids: Tensor, guidance: Tensor | None = None,
                      cond_tokens: Tensor | None = None, cond_ids: Tensor | None = None,
                      cond_guidance: float = 1.0,
                      cond_attention: str = "full", checkpointing: bool = False,
                      residual_cache: ResidualCache | None = None) -> Tensor:
    """FLUX velocity prediction with the condition tokens as a third stream.

    Args:
        hidden_states: (B, L, Cin) packed noisy image tokens.
        encoder_hidden_states: (B, T, Dtxt) text embeddings, T >= 1 (an empty prompt's too).
        pooled_projections: (B, P).
        timestep: (B,) sigma in [0, 1]; scaled by 1000 inside, as the stock forward does.
        img_ids: (L, 3) image positions; txt_ids: (T, 3).
        guidance: (B,) raw guidance value (e.g. 3.5) if the transformer has a guidance
            embedding, else None; scaled by 1000 inside, as the stock forward does.
        cond_tokens: (B, Lc, Cin) MoGLE tokens, or None for none at all (then this is the stock
            forward).
        cond_ids: (Lc, 3) condition positions; default `img_ids` (spatially aligned).
        cond_guidance: guidance value of the condition stream's modulation (used when the
            transformer has a guidance embedding).
        cond_attention: "full" (the paper: image queries see every condition token) or
            "aligned" (image query p sees condition token p only; needs Lc == L).
        checkpointing: recompute each block in the backward pass (same numerics).
        residual_cache: skip the blocks after the first at steps where they would change little
            (sampling only; `ResidualCache`).

    Returns:
        (B, L, Cout) velocity for the image tokens.
    """
    batch, n_text, n_img, n_cond = _check_inputs(  # B, T, L, Lc (Lc = 0: no condition tokens)
        transformer, hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids,
        txt_ids, guidance, cond_tokens, cond_ids)

    # Embedders. The condition tokens follow the image tokens through `x_embedder` (LoRA on them
    # only) and take the image positions unless given their own (spatially aligned masks).
    x, ids = hidden_states, [txt_ids, img_ids]  # (B, L, Cin); (T, 3), (L, 3)
    if cond_tokens is not None:
        ids.append(img_ids if cond_ids is None else cond_ids)  # (Lc, 3)
        x = torch.cat([hidden_states, cond_tokens.to(hidden_states.dtype)], dim=1)  # (B, L+Lc, Cin)
    x = _project(transformer.x_embedder, x, n_img)  # (B, L + Lc, D)
    temb = _embed_time(transformer, x.dtype, timestep, guidance, pooled_projections,
                       cond_guidance if n_cond else None)  # (B, D), or (2B, D) = [main; cond]
    context = transformer.context_embedder(encoder_hidden_states)  # (B, T, D)
    rope = transformer.pos_embed(torch.cat(ids, dim=0))  # 2 x (T + L + Lc, Dh)
    attn_mask = _attention_mask(cond_attention, n_text, n_img, n_cond,
                                x.device)  # (1, 1, T + L + Lc, T + L + Lc) or None

    # Double blocks: text and image + condition tokens apart, meeting in attention. The first one
    # is the residual cache's probe: its change of the image tokens decides whether the others
    # run at this step. Without double blocks there is no probe, so nothing is cached.
    cache = residual_cache if len(transformer.transformer_blocks) else None
    start = x[:, :n_img]  # (B, L, D)
    for block in transformer.transformer_blocks[:1]:  # context (B, T, D), x (B, L + Lc, D)
        context, x = _run("double", checkpointing, block, context, x, temb, rope, attn_mask, n_img)
    after_first = x[:, :n_img]  # (B, L, D)
    if cache is not None and cache.reusable(after_first - start):
        image = cache.reuse(after_first)  # (B, L, D)
    else:
        for block in transformer.transformer_blocks[1:]:  # context (B, T, D), x (B, L + Lc, D)
            context, x = _run("double", checkpointing, block, context, x, temb, rope, attn_mask,
                              n_img)
        # Single blocks: the three streams as one sequence [text; image; condition].
        x = torch.cat([context, x], dim=1)  # (B, T + L + Lc, D)
        for block in transformer.single_transformer_blocks:  # x (B, T + L + Lc, D)
            x = _run("single", checkpointing, block, x, temb, rope, attn_mask, n_text + n_img)
        image = x[:, n_text:n_text + n_img]  # (B, L, D)
        if cache is not None:
            cache.store(after_first - start, image - after_first)  # (B, L, D) each
    image = transformer.norm_out(image, temb[:batch])  # (B, L, D)
    return transformer.proj_out(image)  # (B, L, Cout)
