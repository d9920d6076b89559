"""Generating faces in the three modes (docs/design.md, "The three modes"; `sample` stage).

`generate_latents` is the whole sampler: per-sample seeded noise, the Euler flow-matching loop
of `facemogle.core.flow`, optional true classifier-free guidance. Modes are expressed only
through the inputs (see `facemogle.models.facemogle`). `generate_images` adds the decoding under
the sampling precision policy; the `sample` stage and `facemogle.app.pipeline.FaceMoGLEPipeline`
both sample through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from facemogle.core import flow, latents
from facemogle.models.condition import ResidualCache
from facemogle.models.facemogle import FaceMoGLE

# `sample.cache_threshold` of the CLI's --fast: the fastest measured threshold whose mIoU,
# attribute accuracy and fd_parser stay within the spread of six sampling seeds of the exact
# sampler in all four modes (docs/speed.md).
FAST_CACHE_THRESHOLD = 0.3


@dataclass
class Conditions:
    """What one batch is conditioned on. text2face conditions on the empty mask (20 empty slots,
    as whole-mask dropout trains it); `cond_latents` None means no condition tokens at all (the
    plain base, the `base` reference mode)."""

    text: Tensor  # (B, T, D)
    pooled: Tensor  # (B, P)
    cond_latents: Tensor | None  # (B, 20, L, C) or None
    empty_text: Tensor  # (T, D) embeddings of "" (for true CFG)
    empty_pooled: Tensor  # (P,)
    empty_slot: Tensor | None = None  # (L, C) latent of an empty slot (true CFG with a mask)


def velocity_fn(model: FaceMoGLE, cond: Conditions, *, latent_size: int, guidance: float,
                 cfg_scale: float, residual_cache: ResidualCache | None = None,
                 experts_once: bool = True):
    """The velocity of one denoising step as a function of (z_t (B, L, C), sigma (B,)).

    The MoGLE experts read only the mask, so their outputs are computed here once for all steps
    (`experts_once`; False recomputes them every step, the same numbers). `residual_cache`
    skips blocks at steps that change little (`ResidualCache`; it keeps state across steps).
    """
    device = cond.text.device
    img_ids = latents.image_ids(latent_size, latent_size, device=device)
    txt_ids = latents.text_ids(cond.text.shape[1], device=device)
    text, pooled, slots = cond.text, cond.pooled, cond.cond_latents
    if cfg_scale != 1.0:
        # True CFG against the fully unconditional prediction (empty prompt and, with condition
        # tokens, the empty mask: what text and whole-mask dropout train together), for base
        # models without a distilled guidance embedding. Both halves run in one batch.
        text = torch.cat([text, cond.empty_text.expand_as(text)])  # (2B, T, D)
        pooled = torch.cat([pooled, cond.empty_pooled.expand_as(pooled)])  # (2B, P)
        if slots is not None:
            slots = torch.cat([slots, cond.empty_slot.expand_as(slots)])  # (2B, 20, L, C)
    expert_out = None
    if experts_once and slots is not None:
        expert_out = model.mogle.experts(slots)  # (B or 2B, E, L, C)

    def velocity(z_t: Tensor, sigma: Tensor) -> Tensor:
        if cfg_scale != 1.0:
            z_t, sigma = torch.cat([z_t, z_t]), torch.cat([sigma, sigma])  # (2B, L, C), (2B,)
        v = model(z_t, sigma, text, pooled, img_ids=img_ids, txt_ids=txt_ids,
                  cond_latents=slots, guidance=guidance, expert_out=expert_out,
                  residual_cache=residual_cache)
        if cfg_scale == 1.0:
            return v
        v_cond, v_uncond = v.chunk(2)
        return v_uncond + cfg_scale * (v_cond - v_uncond)

    return velocity


@torch.no_grad()
def generate_latents(model: FaceMoGLE, cond: Conditions, seeds: Sequence[int | torch.Generator], *,
                     latent_size: int, steps: int = 28, guidance: float = 3.5,
                     cfg_scale: float = 1.0, scheduler_config: dict | None = None,
                     progress: bool = False, callback=None,
                     residual_cache: ResidualCache | None = None,
                     experts_once: bool = True) -> Tensor:
    """Sample packed latents (B, L, C), one seed (or CPU generator) per sample.

    Each sample's initial noise comes from its own generator, so an image depends on its seed
    only, not on the batch it was generated in (with a `residual_cache`, which decides per
    batch which steps to skip, it also depends on the batch). A generator given more than once
    is drawn from in turn.
    """
    device = cond.text.device
    channels = model.transformer.config.in_channels
    num_tokens = (latent_size // 2) ** 2
    generators = [s if isinstance(s, torch.Generator) else torch.Generator().manual_seed(s)
                  for s in seeds]
    noise = flow.initial_noise((num_tokens, channels), generators, device=device,
                               dtype=cond.text.dtype)  # (B, L, C)
    velocity = velocity_fn(model, cond, latent_size=latent_size, guidance=guidance,
                            cfg_scale=cfg_scale, residual_cache=residual_cache,
                            experts_once=experts_once)
    scheduler = flow.make_scheduler(scheduler_config)
    return flow.euler_sample(velocity, noise, steps, scheduler=scheduler,
                             image_seq_len=num_tokens, progress=progress, callback=callback)


@torch.no_grad()
def decode_images(vae, packed: Tensor, latent_size: int) -> Tensor:
    """Packed latents (B, L, C) -> images (B, 3, H, W) in [0, 1]."""
    grid = latents.unpack(packed, latent_size, latent_size)  # (B, C/4, h, w)
    return latents.decode(vae, grid.to(vae.dtype)).float()


def mode_conditions(cache, rows: Tensor, mode: str, device: torch.device) -> Conditions:
    """The inputs of `mode` for cached test rows; prompts are each image's first caption.

    multimodal: caption + mask; mask2face: "" + mask; text2face: caption + the empty mask
    through MoGLE; base: caption and no condition tokens (the plain base, a reference).
    """
    first = torch.zeros_like(rows)
    text, pooled = cache.text(rows, first)  # (B, T, D), (B, P)
    if mode == "mask2face":
        text = cache.empty_text_seq.expand_as(text)
        pooled = cache.empty_text_pooled.expand_as(pooled)
    slots = cache.slots(rows)  # (B, 20, L, C)
    if mode == "text2face":
        slots = cache.empty_slot.expand_as(slots)
    return Conditions(text.to(device), pooled.to(device),
                      None if mode == "base" else slots.to(device),
                      cache.empty_text_seq.to(device), cache.empty_text_pooled.to(device),
                      cache.empty_slot.to(device))


def residual_cache(threshold: float) -> ResidualCache | None:
    """A fresh `ResidualCache` for one batch's loop when `threshold` (`sample.cache_threshold`)
    is > 0; None (every block at every step) otherwise."""
    return ResidualCache(threshold) if threshold > 0 else None


def sampling_autocast(base_dtype: torch.dtype, device: torch.device):
    """The precision policy of sampling, shared by the `sample` stage and `FaceMoGLEPipeline`:
    inputs, LoRA and MoGLE stay float32 as trained, and a bf16 base (FLUX.1-dev) computes in
    bf16 under autocast; off for a float32 base."""
    return torch.autocast(device.type, dtype=base_dtype, enabled=base_dtype != torch.float32)


def generate_images(model: FaceMoGLE, vae, cond: Conditions,
                    seeds: Sequence[int | torch.Generator], *, latent_size: int,
                    base_dtype: torch.dtype, **sampling) -> Tensor:
    """Images (B, 3, H, W) in [0, 1]: `generate_latents` (`sampling`: its keyword arguments)
    and `decode_images`, under `sampling_autocast(base_dtype)`."""
    with sampling_autocast(base_dtype, cond.text.device):
        packed = generate_latents(model, cond, seeds, latent_size=latent_size, **sampling)
        return decode_images(vae, packed.float(), latent_size)


def sample_rows(model: FaceMoGLE, base, cache, rows: Tensor, mode: str, cfg, *, seed: int,
                progress: bool = False) -> Tensor:
    """Images (B, 3, H, W) in [0, 1] for cached rows in one mode; seeds depend on ids only."""
    device = next(model.parameters()).device
    seeds = [flow.seed_for(cache.ids[int(r)], seed) for r in rows]
    cond = mode_conditions(cache, rows, mode, device)
    return generate_images(model, base.vae, cond, seeds, latent_size=cache.latent_size,
                           base_dtype=base.transformer.dtype, steps=cfg.steps,
                           guidance=cfg.guidance, cfg_scale=cfg.cfg_scale,
                           scheduler_config=base.scheduler_config, progress=progress,
                           residual_cache=residual_cache(cfg.cache_threshold))
