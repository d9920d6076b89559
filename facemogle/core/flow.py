"""Rectified flow as FLUX uses it: noising, the velocity loss, seeds and the Euler sampler.

One time convention everywhere (docs/design.md, "Time convention"): sigma in [0, 1], with
x_t = (1 - sigma) x_0 + sigma * noise, so sigma = 1 is pure noise and sampling runs from
sigma = 1 to 0. The FLUX transformer multiplies sigma by 1000 itself; MoGLE's gating network
receives sigma unchanged, in training and in sampling (the official code fed it [0, 1000] at
sampling time: docs/design.md, bug B2).

Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler
from tqdm.auto import tqdm

# FLUX.1-dev's `scheduler/scheduler_config.json`.
FLUX_DEV_SCHEDULER: dict = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "base_shift": 0.5,
    "max_shift": 1.15,
}

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sample_sigmas(batch_size: int, mean: float = 0.0, std: float = 1.0, *,
                  generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """Training noise levels, logit-normal: sigmoid(N(mean, std)) (paper section 3.3, SD3).

    Drawn on the generator's device, then moved to `device`. Returns (B,) float32 in (0, 1).
    """
    draw_device = generator.device if generator is not None else device
    z = torch.randn(batch_size, generator=generator, device=draw_device)  # (B,)
    return torch.sigmoid(mean + std * z).to(device)  # (B,)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - sigma) x_0 + sigma * noise; x0, noise (B, ...), sigma (B,) -> (B, ...)."""
    if x0.shape != noise.shape or sigma.shape != x0.shape[:1]:
        raise ValueError(f"add_noise: x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must "
                         f"match and sigma {tuple(sigma.shape)} must be (B,)")
    s = sigma.to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))  # (B, 1, ...)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """d x_t / d sigma = noise - x0, the regression target of rectified flow; (B, ...)."""
    return noise - x0


def rectified_flow_loss(pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Mean squared error between predicted and target velocity; scalar.

    Computed in float32: under bf16 autocast the reduction would otherwise lose precision.
    """
    return F.mse_loss(pred.float(), velocity_target(x0, noise).float())


def flux_mu(image_seq_len: int, scheduler_config: Mapping | None = None) -> float:
    """FLUX's resolution-dependent shift mu: linear in the image token count.

    Passes through (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift) of the
    scheduler config (FLUX.1-dev: 256 -> 0.5, 4096 -> 1.15). Written here rather than imported
    from `diffusers.pipelines.flux.pipeline_flux.calculate_shift`, which is not public API.
    """
    cfg = {**FLUX_DEV_SCHEDULER, **(scheduler_config or {})}
    base_len, max_len = cfg["base_image_seq_len"], cfg["max_image_seq_len"]
    slope = (cfg["max_shift"] - cfg["base_shift"]) / (max_len - base_len)
    return float(cfg["base_shift"] + slope * (image_seq_len - base_len))


def make_scheduler(config: Mapping | None = None) -> FlowMatchEulerDiscreteScheduler:
    """diffusers' Euler flow-matching scheduler; FLUX.1-dev's config unless `config` is given
    (e.g. a FLUX checkpoint's `scheduler/` config)."""
    return FlowMatchEulerDiscreteScheduler.from_config(dict(config or FLUX_DEV_SCHEDULER))


def _fresh_scheduler(scheduler: FlowMatchEulerDiscreteScheduler | Mapping | None
                     ) -> FlowMatchEulerDiscreteScheduler:
    """A new scheduler from a scheduler's or a plain config (schedulers keep a step index)."""
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return make_scheduler(scheduler.config)
    return make_scheduler(scheduler)


@torch.no_grad()
def euler_sample(velocity_fn: VelocityFn, noise: torch.Tensor, num_steps: int, *,
                 scheduler: FlowMatchEulerDiscreteScheduler | Mapping | None = None,
                 image_seq_len: int | None = None,
                 callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
                 progress: bool = False) -> torch.Tensor:
    """Integrate the flow from noise (sigma = 1) to data (sigma = 0) with Euler steps, no grad.

    The schedule is FLUX's: sigmas linspace(1, 1/num_steps, num_steps), shifted by
    mu = flux_mu(image_seq_len) (default: the token count noise.shape[1]) inside diffusers'
    `FlowMatchEulerDiscreteScheduler`, which also takes the steps.

    Args:
        velocity_fn: (z_t (B, L, C), sigma (B,)) -> velocity (B, L, C); sigma in [0, 1].
        noise: (B, L, C) initial packed latents at sigma = 1.
        num_steps: number of Euler steps.
        scheduler: a scheduler or scheduler config to copy (FLUX.1-dev's by default); a fresh
            scheduler is built for every call because schedulers are stateful.
        callback: called as callback(i, sigma (B,), z_t (B, L, C)) before step i, with the
            latents the velocity is evaluated at.
        progress: show a tqdm bar.
    Returns:
        (B, L, C) the latents at sigma = 0.
    """
    if num_steps < 1:
        raise ValueError(f"euler_sample: num_steps must be >= 1, got {num_steps}")
    sched = _fresh_scheduler(scheduler)
    sigmas = np.linspace(1.0, 1.0 / num_steps, num_steps)  # (S,)
    mu = flux_mu(noise.shape[1] if image_seq_len is None else image_seq_len, sched.config)
    sched.set_timesteps(sigmas=sigmas, mu=mu, device=noise.device)
    z = noise  # (B, L, C)
    for i, t in enumerate(tqdm(sched.timesteps, disable=not progress, desc="sampling")):
        # the timestep the FLUX pipeline divides by 1000 before the transformer: sigma in [0, 1]
        sigma = (t / sched.config.num_train_timesteps).expand(z.shape[0]).to(z.dtype)  # (B,)
        if callback is not None:
            callback(i, sigma, z)
        velocity = velocity_fn(z, sigma)  # (B, L, C)
        z = sched.step(velocity, t, z, return_dict=False)[0]  # (B, L, C)
    return z


def initial_noise(shape: Sequence[int], generators: Sequence[torch.Generator], *,
                  device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, *shape) standard normal noise, sample b drawn from generators[b].

    One generator per sample makes a sample's noise independent of batch size and position;
    drawing in float32 on CPU and then moving/casting makes CPU and GPU runs start alike.
    """
    for g in generators:
        if g.device.type != "cpu":
            raise ValueError(f"initial_noise: generators must be CPU generators, got {g.device}")
    noise = torch.stack([torch.randn(tuple(shape), generator=g) for g in generators])  # (B, ...)
    return noise.to(device=device, dtype=dtype)


def seed_for(image_id: str, seed: int) -> int:
    """Stable 63-bit seed from (image id, base seed), identical across processes and machines
    (Python's `hash` of a str is salted per process)."""
    digest = hashlib.sha256(f"{int(seed)}\x00{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def generators_for(image_ids: Sequence[str], seed: int) -> list[torch.Generator]:
    """One CPU generator per image id, seeded with `seed_for(id, seed)`."""
    return [torch.Generator("cpu").manual_seed(seed_for(i, seed)) for i in image_ids]
