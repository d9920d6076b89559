"""One training step of Face-MoGLE: batch assembly with condition dropout, the rectified-flow
loss, the optimizer (docs/design.md, "Training"). `train` and the benchmark both call these.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from facemogle.cache.store import LatentCache
from facemogle.core import flow, latents
from facemogle.core.config import TrainConfig
from facemogle.models.facemogle import FaceMoGLE


@dataclass
class Batch:
    """One training batch after condition dropout, with its flow time and noise."""

    x0: Tensor  # (B, L, C) clean packed image latents
    text: Tensor  # (B, T, D)
    pooled: Tensor  # (B, P)
    cond_latents: Tensor  # (B, 20, L, C); a dropped mask is 20 empty slots
    sigma: Tensor  # (B,) flow time in [0, 1]
    noise: Tensor  # (B, L, C)

    def shard(self, index: int, count: int) -> Batch:
        """This process's contiguous 1/count of the batch."""
        size = self.x0.shape[0] // count
        part = slice(index * size, (index + 1) * size)
        return Batch(*(getattr(self, f.name)[part] for f in fields(self)))


def make_batch(cache: LatentCache, rows: Tensor, cfg: TrainConfig,
               generator: torch.Generator) -> Batch:
    """Gather cached tensors for `rows`, apply the three condition dropouts, draw time and noise.

    - text: with p = text_drop the caption is replaced by the empty prompt (as in the paper);
    - local masks: each of slots 1..19 independently with p = local_mask_drop becomes the empty
      slot (the official code zeroes each binary mask image the same way);
    - whole mask: with p = mask_drop every slot, the colour mask included, becomes the empty
      slot; the condition tokens stay, so LoRA and MoGLE learn text-only generation, the way
      text2face samples (docs/design.md, bug B4);
    - sigma ~ logit-normal(mean, std), one per sample (paper section 4.1).
    """
    b = rows.shape[0]
    u = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    counts = cache.num_captions(rows)  # (B,)
    choice = (u(b) * counts).long().clamp(max=counts - 1)  # (B,)
    text, pooled = cache.text(rows, choice)  # (B, T, D), (B, P)
    drop_text = u(b) < cfg.text_drop  # (B,)
    text = torch.where(drop_text[:, None, None], cache.empty_text_seq, text)
    pooled = torch.where(drop_text[:, None], cache.empty_text_pooled, pooled)
    slots = cache.slots(rows)  # (B, 20, L, C)
    drop_local = u(b, slots.shape[1]) < cfg.local_mask_drop  # (B, 20)
    drop_local[:, 0] = False  # the global colour mask is dropped only with the whole mask
    slots = torch.where(drop_local[:, :, None, None], cache.empty_slot, slots)
    drop_mask = u(b) < cfg.mask_drop  # (B,)
    slots = torch.where(drop_mask[:, None, None, None], cache.empty_slot, slots)
    x0 = cache.image[rows]  # (B, L, C)
    sigma = flow.sample_sigmas(b, cfg.logit_normal_mean, cfg.logit_normal_std,
                               generator=generator)  # (B,)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)  # (B, L, C)
    return Batch(x0, text, pooled, slots, sigma, noise)


def training_loss(model: FaceMoGLE, batch: Batch, *, latent_size: int, guidance: float = 1.0,
                  checkpointing: bool = False) -> Tensor:
    """Rectified-flow loss of one batch (docs/design.md, "Training")."""
    device = batch.x0.device
    z_t = flow.add_noise(batch.x0, batch.noise, batch.sigma)  # (B, L, C)
    img_ids = latents.image_ids(latent_size, latent_size, device=device)
    txt_ids = latents.text_ids(batch.text.shape[1], device=device)
    pred = model(z_t, batch.sigma, batch.text, batch.pooled, img_ids=img_ids, txt_ids=txt_ids,
                 cond_latents=batch.cond_latents,
                 guidance=guidance, checkpointing=checkpointing)
    return flow.rectified_flow_loss(pred, batch.x0, batch.noise)


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """Prodigy as in the paper (lr 1.0, weight decay 0.01, bias correction, safeguard warmup)."""
    if cfg.optimizer == "prodigy":
        from prodigyopt import Prodigy

        return Prodigy(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                       use_bias_correction=True, safeguard_warmup=True)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def draw_batch(cache: LatentCache, batch_size: int, cfg: TrainConfig, generator: torch.Generator,
               device: torch.device, *, rank: int = 0, world: int = 1) -> Batch:
    """This process's slice of one global batch (`batch_size` x `world` rows), on `device`.

    Rows, condition dropout, time and noise are drawn on the CPU from the generator every
    process shares, so ranks see different samples and N processes x batch b reproduce one
    process with batch N*b; then one copy goes to the device.
    """
    rows = torch.randint(len(cache.ids), (batch_size * world,), generator=generator)
    batch = make_batch(cache, rows, cfg, generator).shard(rank, world)
    return Batch(*(getattr(batch, f.name).to(device, non_blocking=True) for f in fields(batch)))


def train_step(model, batch: Batch, optimizer: torch.optim.Optimizer,
               trainable: list[torch.nn.Parameter], cfg: TrainConfig, accelerator, *,
               latent_size: int, after_backward: Callable[[], Any] | None = None) -> Tensor:
    """One optimisation step: loss under the accelerator's autocast (fp32 trainable weights),
    backward, gradient clipping when gradients are synchronised, optimizer step. Returns the
    detached loss. `accelerator` is an `accelerate.Accelerator` (the `train` stage) or any object
    with its `autocast`, `backward`, `clip_grad_norm_` and `sync_gradients` (the benchmark);
    `after_backward` is called between backward and the optimizer (the benchmark's timer)."""
    with accelerator.autocast():
        loss = training_loss(model, batch, latent_size=latent_size, guidance=cfg.guidance,
                             checkpointing=cfg.gradient_checkpointing)
    accelerator.backward(loss)
    if after_backward is not None:
        after_backward()
    if accelerator.sync_gradients:
        accelerator.clip_grad_norm_(trainable, cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()
