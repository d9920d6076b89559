"""The condition stream on FLUX with condition-only LoRA (facemogle.models.condition and
facemogle.models.lora).

Tiny real `FluxTransformer2DModel`s on CPU in fp32; a slow per-stream reference written here
(separate LoRA-off / LoRA-on module calls, explicit softmax attention) checks the fused forward.
"""

import math
from contextlib import contextmanager

import pytest
import torch
from diffusers import FluxTransformer2DModel
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file

from facemogle.base.standin import tiny_transformer
from facemogle.core.config import ConfigError, LoraConfig
from facemogle.core.flux import FLUX_DEV_TRANSFORMER
from facemogle.models.condition import ResidualCache, condition_forward
from facemogle.models.lora import (
    attach_lora,
    load_lora_state_dict,
    lora_parameters,
    lora_state_dict,
)

IN_CH = 16
TOL = 1e-5


def tiny_flux(guidance_embeds: bool, seed: int = 0) -> FluxTransformer2DModel:
    torch.manual_seed(seed)
    model = tiny_transformer(in_channels=IN_CH, num_layers=2, num_single_layers=2,
                             guidance_embeds=guidance_embeds, axes_dims_rope=[4, 4, 8])
    return model.eval()


def grid_ids(h: int, w: int) -> torch.Tensor:
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    return ids.reshape(h * w, 3)  # (L, 3)


def make_inputs(guidance_embeds: bool, batch: int = 2, text_len: int = 5, h: int = 3, w: int = 4,
                seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    inputs = dict(
        hidden_states=torch.randn(batch, h * w, IN_CH, generator=g),
        encoder_hidden_states=torch.randn(batch, text_len, 32, generator=g),
        pooled_projections=torch.randn(batch, 32, generator=g),
        timestep=torch.rand(batch, generator=g),
        img_ids=grid_ids(h, w), txt_ids=torch.zeros(text_len, 3),
        guidance=torch.full((batch,), 3.5) if guidance_embeds else None,
    )
    cond = torch.randn(batch, h * w, IN_CH, generator=g)
    return inputs, cond


def stock(model: FluxTransformer2DModel, inputs: dict) -> torch.Tensor:
    """The stock forward of the base weights (adapters off if any)."""
    lora = any(isinstance(m, LoraLayer) for m in model.modules())
    if lora:
        model.disable_adapters()
    try:
        return model(**inputs, return_dict=False)[0]
    finally:
        if lora:
            model.enable_adapters()


def randomise_lora_b(model: FluxTransformer2DModel, seed: int = 2, std: float = 0.1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoraLayer):
                w = m.lora_B["condition"].weight
                w.copy_(torch.randn(w.shape, generator=g) * std)


def zero_lora_b(model: FluxTransformer2DModel) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoraLayer):
                m.lora_B["condition"].weight.zero_()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ----------------------------------------------------------------------------------------------
# A slow, per-stream reference: LoRA toggled with peft's disable/enable, explicit attention.
# ----------------------------------------------------------------------------------------------


@contextmanager
def lora_off(model):
    model.disable_adapters()
    try:
        yield
    finally:
        model.enable_adapters()


def ref_attention(q, k, v):  # (B, S, H, Dh) each -> (B, S, H * Dh)
    w = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    return torch.einsum("bhqk,bkhd->bqhd", w.softmax(-1), v).flatten(2)


def ref_rope(x, rope):  # (B, S, H, Dh): rotate pairs (x0, x1) by the position angle
    cos, sin = (r[None, :, None, :] for r in rope)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack([-x1, x0], dim=-1).flatten(-2)
    return x * cos + rotated * sin


def ref_qkv(attn, h, added=False):
    names = ("add_q_proj", "add_k_proj", "add_v_proj") if added else ("to_q", "to_k", "to_v")
    q, k, v = (getattr(attn, n)(h).unflatten(-1, (attn.heads, -1)) for n in names)
    if added:
        return attn.norm_added_q(q), attn.norm_added_k(k), v
    return attn.norm_q(q), attn.norm_k(k), v


def ref_double(model, blk, ctx, x, c, temb, ctemb, rope_main, rope_cond):
    with lora_off(model):
        nx, gate_x, shift2_x, scale2_x, gate2_x = blk.norm1(x, emb=temb)
        nt, gate_t, shift2_t, scale2_t, gate2_t = blk.norm1_context(ctx, emb=temb)
        qx, kx, vx = ref_qkv(blk.attn, nx)
        qt, kt, vt = ref_qkv(blk.attn, nt, added=True)
    nc, gate_c, shift2_c, scale2_c, gate2_c = blk.norm1(c, emb=ctemb)
    qc, kc, vc = ref_qkv(blk.attn, nc)
    q = torch.cat([ref_rope(torch.cat([qt, qx], 1), rope_main), ref_rope(qc, rope_cond)], 1)
    k = torch.cat([ref_rope(torch.cat([kt, kx], 1), rope_main), ref_rope(kc, rope_cond)], 1)
    out = ref_attention(q, k, torch.cat([vt, vx, vc], 1))
    t, n = ctx.shape[1], x.shape[1]
    with lora_off(model):
        x = x + gate_x[:, None] * blk.attn.to_out[0](out[:, t:t + n])
        h = blk.norm2(x) * (1 + scale2_x[:, None]) + shift2_x[:, None]
        x = x + gate2_x[:, None] * blk.ff(h)
        ctx = ctx + gate_t[:, None] * blk.attn.to_add_out(out[:, :t])
        ctx = ctx + gate2_t[:, None] * blk.ff_context(
            blk.norm2_context(ctx) * (1 + scale2_t[:, None]) + shift2_t[:, None])
    c = c + gate_c[:, None] * blk.attn.to_out[0](out[:, t + n:])
    c = c + gate2_c[:, None] * blk.ff(blk.norm2(c) * (1 + scale2_c[:, None]) + shift2_c[:, None])
    return ctx, x, c


def ref_single_stream(blk, h, emb):
    nh, gate = blk.norm(h, emb=emb)
    return nh, gate, blk.act_mlp(blk.proj_mlp(nh)), ref_qkv(blk.attn, nh)


def ref_single(model, blk, main, c, temb, ctemb, rope_main, rope_cond):
    with lora_off(model):
        _, gate_m, mlp_m, (qm, km, vm) = ref_single_stream(blk, main, temb)
    _, gate_c, mlp_c, (qc, kc, vc) = ref_single_stream(blk, c, ctemb)
    q = torch.cat([ref_rope(qm, rope_main), ref_rope(qc, rope_cond)], 1)
    k = torch.cat([ref_rope(km, rope_main), ref_rope(kc, rope_cond)], 1)
    out = ref_attention(q, k, torch.cat([vm, vc], 1))
    s = main.shape[1]
    with lora_off(model):
        main = main + gate_m[:, None] * blk.proj_out(torch.cat([out[:, :s], mlp_m], 2))
    c = c + gate_c[:, None] * blk.proj_out(torch.cat([out[:, s:], mlp_c], 2))
    return main, c


def reference_forward(model, inputs, cond, cond_guidance):
    hs, ehs = inputs["hidden_states"], inputs["encoder_hidden_states"]
    pooled, t, g = inputs["pooled_projections"], inputs["timestep"], inputs["guidance"]

    def embed(tt, gg):
        if gg is None:
            return model.time_text_embed(tt * 1000, pooled)
        return model.time_text_embed(tt * 1000, gg * 1000, pooled)

    with lora_off(model):
        x = model.x_embedder(hs)
        ctx = model.context_embedder(ehs)
        temb = embed(t, g)
        ctemb = embed(torch.zeros_like(t), None if g is None else torch.full_like(g, cond_guidance))
        rope_main = model.pos_embed(torch.cat([inputs["txt_ids"], inputs["img_ids"]]))
        rope_cond = model.pos_embed(inputs["img_ids"])
    c = model.x_embedder(cond)
    for blk in model.transformer_blocks:
        ctx, x, c = ref_double(model, blk, ctx, x, c, temb, ctemb, rope_main, rope_cond)
    main = torch.cat([ctx, x], 1)
    for blk in model.single_transformer_blocks:
        main, c = ref_single(model, blk, main, c, temb, ctemb, rope_main, rope_cond)
    with lora_off(model):
        return model.proj_out(model.norm_out(main[:, ehs.shape[1]:], temb))


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("guidance_embeds,text_len", [(True, 5), (False, 5), (True, 1)])
@torch.no_grad()
def test_without_condition_equals_stock_forward(guidance_embeds, text_len):
    """Without condition tokens `condition_forward` is bitwise diffusers' own
    `FluxTransformer2DModel.forward`, for diffusers 0.40 to 0.42.1 (pyproject.toml's lower bound
    to constraints.txt's pin), whose `FluxTransformerBlock` and `FluxSingleTransformerBlock`
    forwards the blocks in facemogle/models/condition.py mirror."""
    model = tiny_flux(guidance_embeds)
    inputs, _ = make_inputs(guidance_embeds, text_len=text_len)
    out = condition_forward(model, **inputs)
    assert out.shape == (2, 12, IN_CH)
    assert torch.equal(out, stock(model, inputs))


@torch.no_grad()
def test_a_transformer_without_double_blocks_runs_and_caches_nothing():
    """With `num_layers=0` there is no first double block for the residual cache to probe: the
    forward still runs (the stock one without condition tokens) and every step is computed."""
    torch.manual_seed(0)
    model = tiny_transformer(in_channels=IN_CH, num_layers=0, num_single_layers=2,
                             guidance_embeds=True, axes_dims_rope=[4, 4, 8]).eval()
    inputs, cond = make_inputs(True)
    assert torch.equal(condition_forward(model, **inputs), stock(model, inputs))
    plain = condition_forward(model, **inputs, cond_tokens=cond)  # (B, L, Cin)
    cache = ResidualCache(1e9)  # with a probe, every step after the first would be reused
    for _ in range(3):
        out = condition_forward(model, **inputs, cond_tokens=cond, residual_cache=cache)
        assert torch.equal(out, plain)
    assert (cache.computed, cache.skipped) == (0, 0)


@torch.no_grad()
def test_lora_acts_on_condition_tokens_only():
    model = tiny_flux(True)
    inputs, cond = make_inputs(True)
    base = stock(model, inputs)
    no_lora = condition_forward(model, **inputs, cond_tokens=cond)
    # The image attends to the condition keys/values even before any training.
    assert max_diff(no_lora, base) > 1e-3

    attach_lora(model, LoraConfig())
    # Gaussian init: B = 0, so the adapter starts as the identity.
    assert max_diff(condition_forward(model, **inputs, cond_tokens=cond), no_lora) < TOL
    randomise_lora_b(model)
    with_lora = condition_forward(model, **inputs, cond_tokens=cond)
    assert max_diff(with_lora, no_lora) > 1e-3
    # Without condition tokens the LoRA'd model is still the stock base model.
    assert max_diff(condition_forward(model, **inputs), base) < TOL
    assert max_diff(stock(model, inputs), base) < TOL
    zero_lora_b(model)
    assert max_diff(condition_forward(model, **inputs, cond_tokens=cond), no_lora) < TOL


@pytest.mark.parametrize("guidance_embeds,text_len", [(True, 5), (False, 1)])
@torch.no_grad()
def test_matches_per_stream_reference(guidance_embeds, text_len):
    model = tiny_flux(guidance_embeds)
    attach_lora(model, LoraConfig())
    randomise_lora_b(model)
    inputs, cond = make_inputs(guidance_embeds, text_len=text_len)
    out = condition_forward(model, **inputs, cond_tokens=cond, cond_guidance=1.0)
    ref = reference_forward(model, inputs, cond, cond_guidance=1.0)
    assert max_diff(out, ref) < TOL
    if guidance_embeds:  # the condition stream's guidance value reaches its modulation
        other = condition_forward(model, **inputs, cond_tokens=cond, cond_guidance=3.5)
        assert max_diff(other, out) > 1e-4
        assert max_diff(other, reference_forward(model, inputs, cond, cond_guidance=3.5)) < TOL


def test_lora_gradients_match_per_stream_reference():
    model = tiny_flux(True)
    attach_lora(model, LoraConfig())
    randomise_lora_b(model)
    inputs, cond = make_inputs(True)
    grads = []
    for forward in (lambda: condition_forward(model, **inputs, cond_tokens=cond),
                    lambda: reference_forward(model, inputs, cond, cond_guidance=1.0)):
        model.zero_grad(set_to_none=True)
        forward().square().mean().backward()
        # The reference leaves dead branches out of the graph (None); the fused forward gives 0.
        grads.append([torch.zeros_like(p) if p.grad is None else p.grad.clone()
                      for p in lora_parameters(model)])
    assert any(g.abs().max() > 1e-4 for g in grads[0])
    for fused, ref in zip(*grads):
        torch.testing.assert_close(fused, ref, atol=1e-7, rtol=1e-4)


def test_only_lora_trains_and_gradients_reach_every_lora_parameter():
    model = tiny_flux(True)
    n = attach_lora(model, LoraConfig())
    lora = list(lora_parameters(model))
    assert n == sum(p.numel() for p in lora) > 0
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in lora}
    randomise_lora_b(model)
    inputs, cond = make_inputs(True)

    condition_forward(model, **inputs, cond_tokens=cond).square().mean().backward()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(n.startswith("x_embedder.") for n in names)
    # In the last single block the condition queries, MLP and output projection only update the
    # condition tokens, which nothing reads afterwards (as in the official model): no signal.
    last = f"single_transformer_blocks.{len(model.single_transformer_blocks) - 1}."
    dead = tuple(last + s for s in ("attn.to_q.", "proj_mlp.", "proj_out."))
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, name
        elif name.startswith(dead):
            assert p.grad is not None and p.grad.abs().sum() == 0, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name

    model.zero_grad(set_to_none=True)
    inputs["hidden_states"].requires_grad_(True)
    condition_forward(model, **inputs).square().mean().backward()
    assert inputs["hidden_states"].grad is not None
    assert all(p.grad is None for p in lora)


def _condition_influence(cond_attention: str) -> torch.Tensor:
    """|d out[0, p] / d cond[0, q]| summed over channels: (L, L), for one double block."""
    torch.manual_seed(0)
    model = tiny_transformer(in_channels=IN_CH, num_single_layers=0,
                             axes_dims_rope=[4, 4, 8]).eval()
    attach_lora(model, LoraConfig())
    randomise_lora_b(model)
    inputs, cond = make_inputs(False)
    cond.requires_grad_(True)
    rows = []
    for p in range(cond.shape[1]):
        out = condition_forward(model, **inputs, cond_tokens=cond, cond_attention=cond_attention)
        (grad,) = torch.autograd.grad(out[0, p].sum(), cond)
        rows.append(grad[0].abs().sum(-1))  # (L,)
    return torch.stack(rows)  # (L, L)


def test_aligned_condition_attention_reads_the_same_position_only():
    # One double block: image token p reaches condition token q only through its own attention.
    aligned = _condition_influence("aligned")
    off_diagonal = ~torch.eye(aligned.shape[0], dtype=torch.bool)
    assert aligned[off_diagonal].max().item() == 0.0
    assert aligned.diagonal().min().item() > 0.0
    full = _condition_influence("full")
    assert full[off_diagonal].min().item() > 0.0


def test_checkpointing_gives_the_same_output_and_gradients():
    model = tiny_flux(True)
    attach_lora(model, LoraConfig(dropout=0.0))
    randomise_lora_b(model)
    inputs, cond = make_inputs(True)
    results = []
    for checkpointing in (False, True):
        model.zero_grad(set_to_none=True)
        out = condition_forward(model, **inputs, cond_tokens=cond, checkpointing=checkpointing)
        out.square().mean().backward()
        results.append((out.detach(), [p.grad.clone() for p in lora_parameters(model)]))
    (out_a, grads_a), (out_b, grads_b) = results
    assert max_diff(out_a, out_b) < TOL
    assert len(grads_a) == len(grads_b) > 0
    assert all(max_diff(a, b) < 1e-6 for a, b in zip(grads_a, grads_b))


@torch.no_grad()
def test_lora_state_dict_round_trip_and_strict_loading(tmp_path):
    src = tiny_flux(False)
    attach_lora(src, LoraConfig())
    randomise_lora_b(src)
    state = lora_state_dict(src)
    assert state and all("lora_" in k and "condition" not in k for k in state)
    save_file(state, tmp_path / "lora.safetensors")

    dst = tiny_flux(False)
    attach_lora(dst, LoraConfig())
    load_lora_state_dict(dst, load_file(tmp_path / "lora.safetensors"))
    inputs, cond = make_inputs(False)
    assert max_diff(condition_forward(dst, **inputs, cond_tokens=cond),
                    condition_forward(src, **inputs, cond_tokens=cond)) == 0.0

    key = sorted(state)[0]
    with pytest.raises(ValueError, match="missing keys"):
        load_lora_state_dict(dst, {k: v for k, v in state.items() if k != key})
    with pytest.raises(ValueError, match="unexpected keys"):
        load_lora_state_dict(dst, {**state, "proj_out.lora_A.weight": state[key]})
    with pytest.raises(ValueError, match="shape"):
        load_lora_state_dict(dst, {**state, key: torch.zeros(1, 1)})


def test_attach_lora_refuses_targets_outside_the_condition_stream():
    with pytest.raises(ConfigError, match="lora.target_modules"):
        attach_lora(tiny_flux(False), LoraConfig(target_modules=(r"context_embedder",)))
    with pytest.raises(ConfigError, match="matched no layer"):
        attach_lora(tiny_flux(False), LoraConfig(target_modules=(r"no_such_layer",)))


@torch.no_grad()
def test_bad_inputs_are_refused_with_the_argument_name():
    model = tiny_flux(True)
    inputs, cond = make_inputs(True)
    with pytest.raises(ValueError, match="'guidance'"):
        condition_forward(model, **{**inputs, "guidance": None})
    with pytest.raises(ValueError, match="'cond_tokens'"):
        condition_forward(model, **inputs, cond_tokens=cond[:, :, :8])
    with pytest.raises(ValueError, match="'img_ids'"):
        condition_forward(model, **{**inputs, "img_ids": inputs["img_ids"][:5]})


def test_paper_lora_on_full_flux_dev_architecture():
    # FLUX.1-dev's transformer on the meta device: shapes and counts without any weights
    # (docs/design.md, "Scale figures"). peft's gaussian init is a
    # no-op on meta tensors, so the paper's config attaches as is.
    with torch.device("meta"):
        model = FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER)
    n_base = sum(p.numel() for p in model.parameters())
    n_lora = attach_lora(model, LoraConfig())
    n_layers = sum(isinstance(m, LoraLayer) for m in model.modules())
    print(f"FLUX.1-dev: {n_base:,} base parameters; LoRA r=4: {n_layers} layers, "
          f"{n_lora:,} parameters")
    assert n_base == 11_901_408_320
    assert n_layers == 343
    assert n_lora == 14_487_808
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == n_lora


def test_compiled_blocks_give_the_same_output(monkeypatch):
    """train.compile swaps in torch.compile'd block functions; the numerics must not change."""
    import facemogle.models.condition as condition

    transformer = tiny_transformer(in_channels=16, axes_dims_rope=[4, 4, 8])
    g = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(2, 4, 16, generator=g),
                  encoder_hidden_states=torch.randn(2, 3, 32, generator=g),
                  pooled_projections=torch.randn(2, 32, generator=g),
                  timestep=torch.tensor([0.3, 0.7]), img_ids=torch.zeros(4, 3),
                  txt_ids=torch.zeros(3, 3), cond_tokens=torch.randn(2, 4, 16, generator=g))
    with torch.no_grad():
        eager = condition.condition_forward(transformer, **inputs)
        monkeypatch.setattr(condition, "_BLOCK_FNS", dict(condition._BLOCK_FNS))
        condition.enable_compile(backend="eager")  # the compile path without a C++ toolchain run
        assert condition._BLOCK_FNS["double"] is not condition._double_block
        compiled = condition.condition_forward(transformer, **inputs)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
