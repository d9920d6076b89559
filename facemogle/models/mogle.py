"""MoGLE: the mixture of global and local experts that encodes a decoupled mask (paper section 3.2).

Inputs are FLUX-packed latent tokens (docs/design.md, "The model"): the 20 mask slots (slot 0 =
the global colour mask, slots 1..19 = the binary masks of labels 0..18) VAE-encoded and packed
2x2 into D-dim tokens, L tokens per image, spatially aligned with the noisy image tokens z_t.

- Experts: one per-token MLP D -> hidden (ReLU) -> D per slot; the global expert reads slot 0,
  local expert i reads slot i.
- Gating: a network reads the global-mask tokens, a projection of z_t and an embedding of the
  flow time, and gives per-token softmax weights over the experts (the paper's "matrix" gating).
- Output: the weighted sum of expert outputs, one (B, L, D) token sequence.

Time convention: `sigma` is the flow time in [0, 1] (1 = pure noise) in training and sampling
alike; the gate scales it by `time_scale` (params `model.gate_time_scale`, default 1000)
before the sinusoidal embedding. The official release fed the gate t in (0, 1) in training but
scheduler timesteps in (0, 1000] in sampling (docs/design.md, bug B2), so its gate saw at test
time times it was never trained on; its weights are loaded with time_scale 1, the scale they
were trained on (facemogle/app/official.py).

Ablations of paper Tables 3-5 are the registries `EXPERTS` and `GATINGS` at the end of the file,
whose keys are the valid values of the `experts` and `gating` params.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import Tensor, nn

from facemogle.core.config import ModelConfig
from facemogle.core.labels import NUM_LABELS

# The gate embeds 1000 * sigma, the timestep range diffusers' sinusoidal embedding is made for.
TIME_SCALE = 1000.0


def _lookup(registry: dict, name: str, key: str):
    """`registry[name]`, or a `ValueError` naming `key` and the valid choices."""
    if name not in registry:
        raise ValueError(f"MoGLE: unknown {key} {name!r}; valid choices: {list(registry)}")
    return registry[name]


# ----------------------------------------------------------------------------------------------
# Experts
# ----------------------------------------------------------------------------------------------


class BatchedExperts(nn.Module):
    """`num` independent per-token MLPs dim -> hidden (ReLU) -> dim, run as one batched product.

    One einsum over all experts replaces a Python loop of `nn.Linear`s (fewer kernel launches).
    Weights are stacked in `nn.Linear`'s (out, in) layout: `weight1[i]`, `bias1[i]`, `weight2[i]`,
    `bias2[i]` are exactly expert i's two Linear layers, so the parameter count equals `num`
    separate MLPs (4,192 each at 64/32).
    """

    def __init__(self, num: int, dim: int, hidden: int):
        super().__init__()
        self.weight1 = nn.Parameter(torch.empty(num, hidden, dim))
        self.bias1 = nn.Parameter(torch.empty(num, hidden))
        self.weight2 = nn.Parameter(torch.empty(num, dim, hidden))
        self.bias2 = nn.Parameter(torch.empty(num, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """`nn.Linear`'s default init per expert (uniform, bound 1/sqrt(fan_in)), as released."""
        for weight, bias in ((self.weight1, self.bias1), (self.weight2, self.bias2)):
            bound = 1.0 / math.sqrt(weight.shape[-1])
            nn.init.uniform_(weight, -bound, bound)
            nn.init.uniform_(bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, num, L, dim), expert i applied to x[:, i] -> (B, num, L, dim)."""
        h = torch.einsum("bnld,nhd->bnlh", x, self.weight1) + self.bias1[:, None]  # (B, N, L, H)
        h = F.relu(h)
        return torch.einsum("bnlh,ndh->bnld", h, self.weight2) + self.bias2[:, None]  # (B, N, L, D)


@dataclass(frozen=True)
class ExpertsVariant:
    """Which slots get an expert (global: slot 0; local: slots 1..n), learned MLPs or identity,
    and whether the gate reads the global colour mask (slot 0) or a zero mask input."""

    global_slot: bool
    local_slots: bool
    learned: bool = True
    gate_reads_global: bool = True

    def slots(self, num_local: int) -> tuple[int, ...]:
        """The input slots the experts read, in order."""
        first = 0 if self.global_slot else 1
        last = num_local if self.local_slots else 0
        return tuple(range(first, last + 1))


class ExpertBank(nn.Module):
    """The experts of one `ExpertsVariant`: a global expert and/or the batched local experts.

    A variant that is not `learned` passes its slots' raw VAE tokens through (no parameters).
    """

    def __init__(self, variant: ExpertsVariant, *, token_dim: int, hidden: int, num_local: int):
        super().__init__()
        self.slots = variant.slots(num_local)
        # Slots are one contiguous range (0, 1..n or 0..n), so a slice selects them without a copy.
        self._slot_range = slice(self.slots[0], self.slots[-1] + 1)
        learned_global = variant.learned and variant.global_slot
        learned_local = variant.learned and variant.local_slots
        self.global_expert = BatchedExperts(1, token_dim, hidden) if learned_global else None
        self.local_experts = BatchedExperts(num_local, token_dim, hidden) if learned_local else None

    def forward(self, cond: Tensor) -> Tensor:
        """cond (B, 1 + n, L, D) slot latents -> (B, E, L, D) expert outputs, E = len(slots)."""
        if self.global_expert is None and self.local_experts is None:
            return cond[:, self._slot_range]  # (B, E, L, D)
        outputs = []
        if self.global_expert is not None:
            outputs.append(self.global_expert(cond[:, :1]))  # (B, 1, L, D)
        if self.local_experts is not None:
            outputs.append(self.local_experts(cond[:, 1:]))  # (B, n, L, D)
        return torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]  # (B, E, L, D)


# ----------------------------------------------------------------------------------------------
# Gating networks: (global-mask tokens (B, L, D), z_t (B, L, D), sigma (B,)) -> weights (B, L, E)
# ----------------------------------------------------------------------------------------------


class NoGate(nn.Module):
    """No gating: every expert output has weight 1 (a plain sum; no parameters)."""

    def __init__(self, *, token_dim: int, hidden: int, num_experts: int):  # noqa: ARG002 (same signature as the other gates)
        super().__init__()
        self.num_experts = num_experts

    def forward(self, mask_tokens: Tensor, z_t: Tensor, sigma: Tensor) -> Tensor:  # noqa: ARG002 (same signature as the other gates)
        """-> (B, L, E) ones."""
        batch, length, _ = mask_tokens.shape
        return mask_tokens.new_ones(batch, length, self.num_experts)  # (B, L, E)


class StaticGate(nn.Module):
    """Per-token softmax weights from the global-mask tokens alone (the paper's "w/o Diffusion").

    The global-mask tokens enter through a Linear to `hidden`, or unchanged when
    `hidden == token_dim` (the paper's 64-wide gate, which reproduces its parameter count);
    an MLP hidden -> hidden (ReLU) -> E gives the logits.
    """

    def __init__(self, *, token_dim: int, hidden: int, num_experts: int):
        super().__init__()
        self.num_experts = num_experts
        self.mask_proj = nn.Identity() if hidden == token_dim else nn.Linear(token_dim, hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_experts))

    def gate_input(self, mask_tokens: Tensor, z_t: Tensor, sigma: Tensor) -> Tensor:  # noqa: ARG002 (MatrixGate overrides, same signature)
        """-> (B, L, hidden) input of the gate MLP."""
        return self.mask_proj(mask_tokens)  # (B, L, H)

    def forward(self, mask_tokens: Tensor, z_t: Tensor, sigma: Tensor) -> Tensor:
        """-> (B, L, E) weights in [0, 1], summing to 1 over experts per token."""
        logits = self.mlp(self.gate_input(mask_tokens, z_t, sigma))  # (B, L, E)
        return logits.softmax(dim=-1)


class MatrixGate(StaticGate):
    """The paper's dynamic gate: per-token weights that depend on the mask, z_t and the time.

    Its three inputs are summed in `hidden` width (paper section 3.2): the global-mask tokens, a
    Linear projection of z_t, and the time embedding broadcast over tokens.
    """

    def __init__(self, *, token_dim: int, hidden: int, num_experts: int,
                 time_scale: float = TIME_SCALE):
        super().__init__(token_dim=token_dim, hidden=hidden, num_experts=num_experts)
        self.time_scale = time_scale
        self.noise_proj = nn.Linear(token_dim, hidden)
        self.time_proj = Timesteps(hidden, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(hidden, hidden)

    def time_embedding(self, sigma: Tensor, dtype: torch.dtype) -> Tensor:
        """sigma (B,) in [0, 1] -> (B, hidden) embedding of time_scale * sigma."""
        # Sinusoids in fp32, as diffusers computes them: 1000 * sigma in bf16 rounds to steps of 4.
        sinusoids = self.time_proj(sigma.float() * self.time_scale)  # (B, H)
        return self.time_embed(sinusoids.to(dtype))  # (B, H)

    def gate_input(self, mask_tokens: Tensor, z_t: Tensor, sigma: Tensor) -> Tensor:
        """-> (B, L, hidden): mask tokens + projected z_t + time embedding."""
        h = super().gate_input(mask_tokens, z_t, sigma) + self.noise_proj(z_t)  # (B, L, H)
        return h + self.time_embedding(sigma, z_t.dtype)[:, None]  # (B, L, H)


class ScaledMatrixGate(MatrixGate):
    """The matrix gate times one learned positive scale, initialised to the number of experts: at
    initialisation a uniform gate gives each expert weight 1, the plain sum's scale (a control for
    the convex gate's smaller output; `gating: matrix_scaled`)."""

    def __init__(self, *, token_dim: int, hidden: int, num_experts: int,
                 time_scale: float = TIME_SCALE):
        super().__init__(token_dim=token_dim, hidden=hidden, num_experts=num_experts,
                         time_scale=time_scale)
        self.log_scale = nn.Parameter(torch.tensor(math.log(num_experts)))

    def forward(self, mask_tokens: Tensor, z_t: Tensor, sigma: Tensor) -> Tensor:
        """-> (B, L, E) weights >= 0 summing to the learned scale over experts per token."""
        return super().forward(mask_tokens, z_t, sigma) * self.log_scale.exp()  # (B, L, E)


class ScalarGate(MatrixGate):
    """One weight per expert per sample: the matrix gate's weights averaged over tokens."""

    def forward(self, mask_tokens: Tensor, z_t: Tensor, sigma: Tensor) -> Tensor:
        """-> (B, L, E), constant over L, summing to 1 over experts."""
        weights = super().forward(mask_tokens, z_t, sigma)  # (B, L, E)
        return weights.mean(dim=1, keepdim=True).expand_as(weights)  # (B, L, E)


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


SIGMA_RANGE_ERROR = ("MoGLE: sigma must be the flow time in [0, 1] (1 = pure noise); divide "
                     "scheduler timesteps in [0, 1000] by 1000")


def check_flow_time(sigma: Tensor) -> None:
    """Refuse a gate time outside [0, 1] (guards docs/design.md, bug B2) on every device: on the
    CPU at once with the values seen; on an accelerator as an asynchronous device assert, which
    costs no host sync per step and fails the run at the next synchronisation."""
    inside = ((sigma >= 0) & (sigma <= 1)).all()
    if sigma.device.type != "cpu":
        torch._assert_async(inside, SIGMA_RANGE_ERROR)
    elif not bool(inside):
        raise ValueError(f"{SIGMA_RANGE_ERROR}; got values in [{sigma.min().item():g}, "
                         f"{sigma.max().item():g}]")


class MoGLE(nn.Module):
    """Mixture of global and local experts over the 1 + `num_local` mask slots (paper sec. 3.2).

    Parameters stay in the dtype they are created in (the trainer keeps them fp32 under autocast);
    nothing here casts to a fixed dtype or device. Paper config (64/32/64, `global_local`,
    `matrix`): 101,780 parameters (83,840 in the 20 experts, 17,940 in the gate). With a single
    expert (`experts="global"`) every gating gives weight 1, so no gate is built.

    Attributes:
        slots: the input slots the experts variant reads, in order; E = len(slots).
        config: the constructor arguments, to rebuild the module next to a checkpoint.
    """

    def __init__(self, *, token_dim: int = 64, expert_hidden: int = 32, gate_hidden: int = 64,
                 num_local: int = 19, experts: str = "global_local", gating: str = "matrix",
                 time_scale: float = TIME_SCALE):
        super().__init__()
        variant = _lookup(EXPERTS, experts, "experts")
        gate_cls = _lookup(GATINGS, gating, "gating")
        sizes = {"token_dim": token_dim, "expert_hidden": expert_hidden,
                 "gate_hidden": gate_hidden, "num_local": num_local}
        for name, value in sizes.items():
            if value < 1:
                raise ValueError(f"MoGLE: {name} must be a positive integer, got {value!r}")
        if not time_scale > 0:
            raise ValueError(f"MoGLE: time_scale must be positive, got {time_scale!r}")
        self.config = {**sizes, "experts": experts, "gating": gating, "time_scale": time_scale}
        self.token_dim = token_dim
        self.num_slots = 1 + num_local
        self.experts = ExpertBank(variant, token_dim=token_dim, hidden=expert_hidden,
                                  num_local=num_local)
        self.slots: tuple[int, ...] = self.experts.slots
        self.gate_reads_global = variant.gate_reads_global
        if not variant.gate_reads_global and gate_cls is StaticGate:
            raise ValueError(f"MoGLE: experts {experts!r} with gating {gating!r} would leave the "
                             f"gate no input (no mask, no z_t, no time); use matrix, "
                             f"matrix_scaled, scalar or none")
        if len(self.slots) == 1:
            # A softmax over one expert is identically 1: a gate would hold parameters that
            # never receive a gradient (experts="global").
            gate_cls = NoGate
        timed = {"time_scale": time_scale} if issubclass(gate_cls, MatrixGate) else {}
        self.gate = gate_cls(token_dim=token_dim, hidden=gate_hidden, num_experts=len(self.slots),
                             **timed)

    def _check_inputs(self, cond: Tensor, z_t: Tensor, sigma: Tensor) -> None:
        if cond.ndim != 4 or cond.shape[1] != self.num_slots or cond.shape[3] != self.token_dim:
            raise ValueError(f"MoGLE: cond must be (B, {self.num_slots}, L, {self.token_dim}) "
                             f"mask slot latents, got shape {tuple(cond.shape)}")
        batch, _, length, dim = cond.shape
        if tuple(z_t.shape) != (batch, length, dim):
            raise ValueError(f"MoGLE: z_t must be ({batch}, {length}, {dim}) noisy image tokens "
                             f"matching cond, got shape {tuple(z_t.shape)}")
        if tuple(sigma.shape) != (batch,):
            raise ValueError(f"MoGLE: sigma must have shape ({batch},), got {tuple(sigma.shape)}")
        if not torch.compiler.is_compiling():  # no graph break under torch.compile
            check_flow_time(sigma)

    def gate_weights(self, cond: Tensor, z_t: Tensor, sigma: Tensor) -> Tensor:
        """Expert weights per token.

        Args:
            cond: (B, 1 + num_local, L, D) mask slot latents; only slot 0 feeds the gate, and
                not even that when the variant's gate does not read the global mask (zeros).
            z_t: (B, L, D) noisy image tokens.
            sigma: (B,) flow time in [0, 1].

        Returns:
            (B, L, E) weights, E = len(self.slots).
        """
        self._check_inputs(cond, z_t, sigma)
        mask = cond[:, 0] if self.gate_reads_global else torch.zeros_like(cond[:, 0])  # (B, L, D)
        return self.gate(mask, z_t, sigma)  # (B, L, E)

    def forward(self, cond: Tensor, z_t: Tensor, sigma: Tensor, *,
                expert_out: Tensor | None = None,
                return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Condition tokens for the transformer.

        Args:
            cond: (B, 1 + num_local, L, D) slot latents (slot 0 global, slots 1.. local).
            z_t: (B, L, D) noisy image tokens.
            sigma: (B,) flow time in [0, 1], 1 = pure noise; the same convention in training
                and sampling.
            expert_out: `self.experts(cond)` computed earlier (B, E, L, D): the experts read the
                mask only, so a sampler computes them once per image, not once per step.
            return_weights: also return the gate weights.

        Returns:
            (B, L, D) condition tokens [, (B, L, E) weights].
        """
        weights = self.gate_weights(cond, z_t, sigma)  # (B, L, E)
        if expert_out is None:
            expert_out = self.experts(cond)  # (B, E, L, D)
        out = torch.einsum("beld,ble->bld", expert_out, weights)  # (B, L, D)
        return (out, weights) if return_weights else out


# ----------------------------------------------------------------------------------------------
# Variants (paper Tables 3-5); the keys are the valid `experts` / `gating` params
# ----------------------------------------------------------------------------------------------

EXPERTS: dict[str, ExpertsVariant] = {
    "global_local": ExpertsVariant(global_slot=True, local_slots=True),
    "global": ExpertsVariant(global_slot=True, local_slots=False),
    # Local experts, but the gate still reads the global colour mask (slot 0).
    "local": ExpertsVariant(global_slot=False, local_slots=True),
    # Local experts and a gate that sees no mask (only z_t and the time): nothing global enters.
    "local_only": ExpertsVariant(global_slot=False, local_slots=True, gate_reads_global=False),
    # Identity experts: the gate mixes the raw VAE tokens of all slots.
    "none": ExpertsVariant(global_slot=True, local_slots=True, learned=False),
}

GATINGS: dict[str, type[nn.Module]] = {
    "matrix": MatrixGate,
    "matrix_scaled": ScaledMatrixGate,
    "scalar": ScalarGate,
    "static": StaticGate,
    "none": NoGate,
}


def build_mogle(model_cfg: ModelConfig, *, experts: str, gating: str,
                token_dim: int = 64) -> MoGLE:
    """MoGLE over the 19 CelebAMask-HQ labels with the sizes of `model_cfg` (params `model`).

    `token_dim` is the packed latent width: 4 x the VAE's latent channels (64 for FLUX).
    """
    return MoGLE(token_dim=token_dim, expert_hidden=model_cfg.expert_hidden,
                 gate_hidden=model_cfg.gate_hidden, num_local=NUM_LABELS, experts=experts,
                 gating=gating, time_scale=model_cfg.gate_time_scale)
