"""MoGLE (facemogle.models.mogle): shapes, gating semantics, expert variants, parameter counts."""

from __future__ import annotations

import itertools
from typing import get_args

import pytest
import torch
from torch import nn

from facemogle.core.config import ConfigError, Experts, Gating, ModelConfig
from facemogle.models.mogle import EXPERTS, GATINGS, MoGLE, NoGate, build_mogle, check_flow_time

# every pair but local_only + static, whose gate would have no input (refused; tested below)
VARIANTS = [v for v in itertools.product(EXPERTS, GATINGS) if v != ("local_only", "static")]
PAPER_COUNT = 101_780
EXPERTS_COUNT = 83_840  # 20 x 4,192
GATE_COUNT = 17_940


def make(experts: str = "global_local", gating: str = "matrix", *, seed: int = 0,
         **sizes) -> MoGLE:
    torch.manual_seed(seed)
    return MoGLE(experts=experts, gating=gating, **sizes).eval()


def inputs(batch: int = 2, length: int = 6, dim: int = 64, slots: int = 20, *, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    cond = torch.randn(batch, slots, length, dim, generator=gen)  # (B, S, L, D)
    z_t = torch.randn(batch, length, dim, generator=gen)  # (B, L, D)
    sigma = torch.rand(batch, generator=gen)  # (B,)
    return cond, z_t, sigma


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------------------
# Shapes and registries
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("experts,gating", VARIANTS)
@pytest.mark.parametrize("batch,length", [(1, 1), (3, 6), (1, 16), (3, 35)])
def test_output_shape(experts, gating, batch, length):
    model = make(experts, gating)
    out, weights = model(*inputs(batch, length), return_weights=True)
    assert out.shape == (batch, length, 64)
    assert weights.shape == (batch, length, len(model.slots))
    assert torch.isfinite(out).all()


def test_local_only_gate_reads_no_mask_and_a_mask_free_static_gate_is_refused():
    cond, z_t, sigma = inputs(2, 6)
    model = make("local_only", "matrix")
    changed = cond.clone()
    changed[:, 0] = torch.randn_like(changed[:, 0])  # another global colour mask
    assert torch.equal(model(cond, z_t, sigma), model(changed, z_t, sigma))
    reads = make("local", "matrix")  # today's `local`: the gate reads slot 0
    assert not torch.equal(reads(cond, z_t, sigma), reads(changed, z_t, sigma))
    with pytest.raises(ValueError, match="no input"):
        make("local_only", "static")


def test_scaled_matrix_gate_starts_at_the_plain_sums_scale():
    cond, z_t, sigma = inputs(2, 6)
    scaled, convex = make(gating="matrix_scaled"), make(gating="matrix")
    weights = scaled.gate_weights(cond, z_t, sigma)
    assert torch.allclose(weights.sum(-1), torch.full((2, 6), 20.0))
    assert torch.allclose(weights / 20.0, convex.gate_weights(cond, z_t, sigma))
    assert num_params(scaled) == num_params(convex) + 1


def test_slots_per_variant():
    assert make("global_local").slots == tuple(range(20))
    assert make("global").slots == (0,)
    assert make("local").slots == tuple(range(1, 20))
    assert make("none").slots == tuple(range(20))


def test_registries_match_config_choices():
    assert tuple(EXPERTS) == get_args(Experts)
    assert tuple(GATINGS) == get_args(Gating)


@pytest.mark.parametrize("kwargs,valid", [({"experts": "both"}, list(EXPERTS)),
                                          ({"gating": "soft"}, list(GATINGS))])
def test_unknown_variant_lists_choices(kwargs, valid):
    with pytest.raises(ValueError) as err:
        MoGLE(**kwargs)
    for name in valid:
        assert repr(name) in str(err.value)


def test_bad_inputs_are_refused():
    model = make()
    cond, z_t, sigma = inputs(2, 4)
    with pytest.raises(ValueError, match="cond must be"):
        model(cond[:, 1:], z_t, sigma)
    with pytest.raises(ValueError, match="z_t must be"):
        model(cond, z_t[:, 1:], sigma)
    with pytest.raises(ValueError, match="sigma must have shape"):
        model(cond, z_t, sigma[:1])
    # Scheduler timesteps in [0, 1000] instead of the flow time (docs/design.md, bug B2).
    with pytest.raises(ValueError, match=r"sigma must be the flow time in \[0, 1\]"):
        model(cond, z_t, sigma * 1000 + 1)


def test_the_flow_time_check_runs_on_every_device():
    """Off the CPU the check is a device assert (no host sync); its failure carries the same
    message. `torch._assert_async` on a CPU tensor raises at once, which exercises that path."""
    good, bad = torch.tensor([0.0, 0.5, 1.0]), torch.tensor([0.5, 999.0])
    check_flow_time(good)
    with pytest.raises(ValueError, match=r"got values in \[0.5, 999\]"):
        check_flow_time(bad)

    class Accelerated(torch.Tensor):  # a CPU tensor that reports another device type
        @property
        def device(self):
            return torch.device("meta")

    check_flow_time(good.as_subclass(Accelerated))
    with pytest.raises(RuntimeError, match="sigma must be the flow time"):
        check_flow_time(bad.as_subclass(Accelerated))


def test_config_rebuilds_the_same_module():
    model = make("local", "static", token_dim=16, expert_hidden=8, gate_hidden=12, num_local=5)
    clone = MoGLE(**model.config)
    assert clone.config == model.config
    clone.load_state_dict(model.state_dict())  # strict: same parameter names and shapes
    cond, z_t, sigma = inputs(2, 3, dim=16, slots=6)
    torch.testing.assert_close(clone(cond, z_t, sigma), model(cond, z_t, sigma))


def test_build_mogle_uses_model_params():
    cfg = ModelConfig(expert_hidden=8, gate_hidden=16)
    model = build_mogle(cfg, experts="global_local", gating="matrix", token_dim=16)
    assert model.config == {"token_dim": 16, "expert_hidden": 8, "gate_hidden": 16,
                            "num_local": 19, "experts": "global_local", "gating": "matrix",
                            "time_scale": 1000.0}
    assert model.experts.local_experts.weight1.shape == (19, 8, 16)
    assert model(*inputs(1, 4, dim=16)).shape == (1, 4, 16)
    with pytest.raises(ValueError, match="gating"):
        build_mogle(cfg, experts="global_local", gating="dense")


def test_model_config_rejects_bad_sizes():
    with pytest.raises(ConfigError, match="model.gate_hidden"):
        ModelConfig(gate_hidden=0)


# ----------------------------------------------------------------------------------------------
# Gating semantics
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gating", ["matrix", "scalar", "static"])
def test_weights_are_a_distribution_per_token(gating):
    _, weights = make("global_local", gating)(*inputs(3, 8), return_weights=True)
    assert (weights >= 0).all() and (weights <= 1).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 8))
    assert weights.std() > 0  # not a uniform constant


def test_scalar_weights_are_constant_over_tokens():
    model = make("global_local", "scalar")
    cond, z_t, sigma = inputs(2, 9)
    weights = model.gate_weights(cond, z_t, sigma)  # (B, L, E)
    torch.testing.assert_close(weights, weights[:, :1].expand_as(weights))
    # ... and equal to the matrix gate's weights averaged over tokens (same parameters).
    matrix = make("global_local", "matrix")
    matrix.load_state_dict(model.state_dict())
    torch.testing.assert_close(weights[:, 0], matrix.gate_weights(cond, z_t, sigma).mean(1))


def test_static_ignores_time_and_noisy_latent():
    model = make("global_local", "static")
    assert not any(name.startswith(("gate.noise_proj", "gate.time"))
                   for name, _ in model.named_parameters())
    cond, z_t, sigma = inputs(2, 6)
    weights = model.gate_weights(cond, z_t, sigma)
    torch.testing.assert_close(model.gate_weights(cond, torch.randn_like(z_t), 1 - sigma), weights)
    assert not torch.allclose(model.gate_weights(cond + 1, z_t, sigma), weights)


def test_matrix_depends_on_time_and_noisy_latent():
    model = make("global_local", "matrix")
    cond, z_t, sigma = inputs(2, 6)
    weights = model.gate_weights(cond, z_t, sigma)
    assert not torch.allclose(model.gate_weights(cond, z_t, 1 - sigma), weights)
    assert not torch.allclose(model.gate_weights(cond, torch.randn_like(z_t), sigma), weights)
    # Different tokens of one image get different weights (per-token routing).
    assert not torch.allclose(weights[:, 0], weights[:, 1])


def test_none_gating_is_a_plain_sum():
    model = make("global_local", "none")
    assert num_params(model.gate) == 0
    cond, z_t, sigma = inputs(2, 5)
    out, weights = model(cond, z_t, sigma, return_weights=True)
    assert torch.equal(weights, torch.ones(2, 5, 20))
    torch.testing.assert_close(out, model.experts(cond).sum(1))


def test_identity_experts_mix_raw_tokens():
    model = make("none", "none")
    cond, z_t, sigma = inputs(2, 5)
    assert num_params(model) == 0
    torch.testing.assert_close(model(cond, z_t, sigma), cond.sum(1))


def test_single_expert_has_no_gate():
    # Softmax over one expert is identically 1, so "global" builds no gate parameters.
    model = make("global", "matrix")
    assert isinstance(model.gate, NoGate)
    _, weights = model(*inputs(2, 4), return_weights=True)
    assert torch.equal(weights, torch.ones(2, 4, 1))


# ----------------------------------------------------------------------------------------------
# Expert variants use exactly their slots
# ----------------------------------------------------------------------------------------------


def perturbed(cond: torch.Tensor, slot: int) -> torch.Tensor:
    cond = cond.clone()
    cond[:, slot] += torch.randn(cond[:, slot].shape, generator=torch.Generator().manual_seed(7))
    return cond


@pytest.mark.parametrize("gating", list(GATINGS))
def test_global_ignores_local_slots(gating):
    model = make("global", gating)
    cond, z_t, sigma = inputs(2, 6)
    out = model(cond, z_t, sigma)
    for slot in range(1, 20):
        torch.testing.assert_close(model(perturbed(cond, slot), z_t, sigma), out)
    assert not torch.allclose(model(perturbed(cond, 0), z_t, sigma), out)


def test_local_has_no_global_expert():
    model = make("local", "matrix")
    assert model.experts.global_expert is None
    assert not any("global" in name for name, _ in model.named_parameters())
    assert model.experts.local_experts.weight1.shape[0] == 19
    # Slot 0 still feeds the gate.
    cond, z_t, sigma = inputs(2, 6)
    assert not torch.allclose(model.gate_weights(perturbed(cond, 0), z_t, sigma),
                              model.gate_weights(cond, z_t, sigma))


def test_local_expert_side_ignores_slot_zero():
    model = make("local", "none")
    cond, z_t, sigma = inputs(2, 6)
    out = model(cond, z_t, sigma)
    torch.testing.assert_close(model(perturbed(cond, 0), z_t, sigma), out)
    for slot in range(1, 20):
        assert not torch.allclose(model(perturbed(cond, slot), z_t, sigma), out)


@pytest.mark.parametrize("experts", ["global_local", "none"])
def test_all_slots_variants_use_every_slot(experts):
    model = make(experts, "matrix")
    cond, z_t, sigma = inputs(2, 6)
    out = model(cond, z_t, sigma)
    for slot in range(20):
        assert not torch.allclose(model(perturbed(cond, slot), z_t, sigma), out)


# ----------------------------------------------------------------------------------------------
# Parameter counts (docs/design.md, "Scale figures")
# ----------------------------------------------------------------------------------------------


def test_paper_parameter_count():
    model = build_mogle(ModelConfig(), experts="global_local", gating="matrix")
    count = num_params(model)
    print(f"MoGLE paper config (64/32/64, global_local, matrix): {count:,} parameters")
    assert count == PAPER_COUNT
    assert num_params(model.experts) == EXPERTS_COUNT
    assert num_params(model.gate) == GATE_COUNT
    assert num_params(model.gate.time_embed) == 8_320
    assert num_params(model.gate.noise_proj) == 4_160
    assert num_params(model.gate.mlp) == 5_460
    assert isinstance(model.gate.mask_proj, nn.Identity)  # gate_hidden == token_dim


def test_ablation_parameter_counts():
    assert num_params(make("global_local", "none")) == EXPERTS_COUNT
    assert num_params(make("none", "matrix")) == GATE_COUNT
    assert num_params(make("global_local", "scalar")) == PAPER_COUNT
    assert num_params(make("global_local", "static")) == EXPERTS_COUNT + 5_460
    assert num_params(make("global", "matrix")) == 4_192
    assert num_params(make("local", "none")) == 19 * 4_192
    # A gate narrower than the tokens projects the global-mask tokens first (64*32 + 32).
    mask_proj, mlp = 64 * 32 + 32, (32 * 32 + 32) + (32 * 20 + 20)
    assert num_params(make("none", "static", gate_hidden=32)) == mask_proj + mlp


# ----------------------------------------------------------------------------------------------
# Batched experts, gradients, dtypes
# ----------------------------------------------------------------------------------------------


def test_batched_local_experts_equal_a_loop_of_mlps():
    bank = make("global_local", "none").experts.local_experts
    cond, _, _ = inputs(3, 7)
    x = cond[:, 1:]  # (B, 19, L, D)
    expected = []
    for i in range(19):
        mlp = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 64))
        with torch.no_grad():
            mlp[0].weight.copy_(bank.weight1[i])
            mlp[0].bias.copy_(bank.bias1[i])
            mlp[2].weight.copy_(bank.weight2[i])
            mlp[2].bias.copy_(bank.bias2[i])
        expected.append(mlp(x[:, i]))  # (B, L, D)
    torch.testing.assert_close(bank(x), torch.stack(expected, dim=1))
    assert num_params(bank) == 19 * num_params(mlp)


def test_experts_are_initialised_like_linear_layers():
    bank = make("global_local", "none").experts.local_experts
    # nn.Linear default: uniform with bound 1/sqrt(fan_in), independently per expert.
    assert bank.weight1.abs().max() <= 64 ** -0.5 and bank.weight2.abs().max() <= 32 ** -0.5
    assert bank.weight1.abs().max() > 0.9 * 64 ** -0.5
    assert not torch.equal(bank.weight1[0], bank.weight1[1])


@pytest.mark.parametrize("experts,gating", [v for v in VARIANTS if v != ("none", "none")])
def test_gradients_reach_every_parameter(experts, gating):
    model = make(experts, gating).train()
    cond, z_t, sigma = inputs(2, 6)
    target = torch.randn(2, 6, 64, generator=torch.Generator().manual_seed(3))
    loss = (model(cond, z_t, sigma) - target).square().mean()
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


def test_parameters_keep_their_dtype():
    model = make().double()
    cond, z_t, sigma = inputs(2, 4)
    out = model(cond.double(), z_t.double(), sigma.double())
    assert out.dtype == torch.float64
    model = make()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(cond, z_t, sigma)
    assert out.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())
