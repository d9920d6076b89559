"""LoRA + MoGLE training on cached latents (paper section 4.1; DESIGN.md section 6 "Training").

The loop is split into small named pieces: batch assembly with condition dropout, one training
step, checkpoint I/O (`facemogle.checkpoint`), and the driver `train` that the `train` stage calls.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import Tensor
from tqdm import tqdm

from facemogle import flow, latents
from facemogle.cache import LatentCache
from facemogle.checkpoint import (find_resumable, load_training_state, save_model,
                                  save_training_state)
from facemogle.config import ConfigError, Params, TrainConfig
from facemogle.models.condition import enable_compile
from facemogle.models.facemogle import FaceMoGLE

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """One training batch after condition dropout, with its flow time and noise."""

    x0: Tensor  # (B, L, C) clean packed image latents
    text: Tensor  # (B, T, D)
    pooled: Tensor  # (B, P)
    cond_latents: Tensor  # (B, 20, L, C)
    cond_keep: Tensor | None  # (B,) bool: False = whole mask dropped; None = all kept
    sigma: Tensor  # (B,) flow time in [0, 1]
    noise: Tensor  # (B, L, C)

    def shard(self, index: int, count: int) -> Batch:
        """This process's contiguous 1/count of the batch."""
        size = self.x0.shape[0] // count
        part = slice(index * size, (index + 1) * size)
        return Batch(*(None if getattr(self, f.name) is None else getattr(self, f.name)[part]
                       for f in fields(self)))


def make_batch(cache: LatentCache, rows: Tensor, cfg: TrainConfig,
               generator: torch.Generator) -> Batch:
    """Gather cached tensors for `rows`, apply the three condition dropouts, draw time and noise.

    - text: with p = text_drop the caption is replaced by the empty prompt (as in the paper);
    - local masks: each of slots 1..19 independently with p = local_mask_drop becomes the empty
      slot (the official code zeroes each binary mask image the same way);
    - whole mask: with p = mask_drop the sample has no condition tokens at all, so text-only
      generation is trained rather than only advertised (official-implementation.md B4);
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
    cond_keep = u(b) >= cfg.mask_drop  # (B,)
    x0 = cache.image[rows]  # (B, L, C)
    sigma = flow.sample_sigmas(b, cfg.logit_normal_mean, cfg.logit_normal_std,
                               generator=generator)  # (B,)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)  # (B, L, C)
    return Batch(x0, text, pooled, slots, cond_keep, sigma, noise)


def training_loss(model: FaceMoGLE, batch: Batch, *, latent_size: int, guidance: float = 1.0,
                  checkpointing: bool = False) -> Tensor:
    """Rectified-flow loss of one batch (DESIGN.md section 6)."""
    device = batch.x0.device
    z_t = flow.add_noise(batch.x0, batch.noise, batch.sigma)  # (B, L, C)
    img_ids = latents.image_ids(latent_size, latent_size, device=device)
    txt_ids = latents.text_ids(batch.text.shape[1], device=device)
    pred = model(z_t, batch.sigma, batch.text, batch.pooled, img_ids=img_ids, txt_ids=txt_ids,
                 cond_latents=batch.cond_latents, cond_keep=batch.cond_keep,
                 guidance=guidance, checkpointing=checkpointing)
    return flow.rectified_flow_loss(pred, batch.x0, batch.noise)


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """Prodigy as in the paper (lr 1.0, weight decay 0.01, bias correction, safeguard warmup)."""
    if cfg.optimizer == "prodigy":
        from prodigyopt import Prodigy

        return Prodigy(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                       use_bias_correction=True, safeguard_warmup=True)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _to_device(batch: Batch, device: torch.device) -> Batch:
    return Batch(*(None if getattr(batch, f.name) is None else getattr(batch, f.name).to(device)
                   for f in fields(batch)))


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """The accelerator of a training run: `cfg`'s precision and gradient accumulation, refusing
    a launch whose process count is not `train.num_processes` (`batch_size` counts samples per
    process, so the global batch would silently change)."""
    # cpu=True when there is no GPU: only then does accelerate join CPU processes (gloo) started
    # by torchrun; on GPUs it picks the device of each process.
    precision = "no" if cfg.mixed_precision == "fp32" else cfg.mixed_precision
    accelerator = Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available(),
                              gradient_accumulation_steps=cfg.grad_accum)
    started, declared = accelerator.num_processes, cfg.num_processes
    if started != declared:
        raise ConfigError(
            f"train.num_processes is {declared} but {started} process(es) joined this run; "
            f"start {declared} with `torchrun --standalone --nproc_per_node {declared}` or "
            f"`accelerate launch --multi_gpu --num_processes {declared}`, or set "
            f"train.num_processes={started} (`accelerate launch --cpu` starts a single process "
            "unless MPI is configured)")
    return accelerator


def train(model: FaceMoGLE, cache: LatentCache, params: Params, out_dir: str | Path, *,
          accelerator, resolved: dict, live=None) -> list[tuple[int, float]]:
    """Train LoRA + MoGLE for `params.train.steps`, resuming from the last checkpoint.

    `resolved` (the params the stage declares, plus the base manifest) is stored with every
    checkpoint; a checkpoint is resumed only under an identical `resolved`. Returns the
    (step, loss) history, which is also kept in every checkpoint so loss curves survive a resume.
    """
    cfg = params.train
    if accelerator.gradient_accumulation_steps != cfg.grad_accum:
        raise ValueError(f"train.grad_accum is {cfg.grad_accum} but the accelerator accumulates "
                         f"{accelerator.gradient_accumulation_steps} batches: create it with "
                         "gradient_accumulation_steps=train.grad_accum")
    out_dir = Path(out_dir)
    trainable = model.trainable_parameters()
    for p in trainable:
        p.data = p.data.float()  # fp32 master weights; autocast handles bf16 compute
    optimizer = make_optimizer(trainable, cfg)
    if cfg.compile:
        enable_compile()
    model, optimizer = accelerator.prepare(model, optimizer)
    inner = accelerator.unwrap_model(model)
    # Every process draws the same global batch (rows, dropout, time, noise) and trains on its own
    # slice of it: ranks see different samples (the official code seeded every DDP rank alike, so
    # all ranks drew identical noise and time), and N processes x batch b reproduce one process
    # with batch N*b.
    generator = torch.Generator().manual_seed(params.seed)
    world, rank = accelerator.num_processes, accelerator.process_index
    start, history = 0, []
    resumable = find_resumable(out_dir / "checkpoints", resolved)
    if resumable is not None:
        start, history = load_training_state(resumable, inner, optimizer, generator)
        log.info("resuming from %s at step %d", resumable, start)
        for past_step, value in history if live is not None else ():
            live.step = past_step  # the curve survives the resume
            live.log_metric("loss", value)
    n = len(cache.ids)
    bar = tqdm(range(start, cfg.steps), desc="train", unit="step", initial=start, total=cfg.steps,
               disable=not accelerator.is_main_process)
    running = []
    for step in bar:
        for _ in range(cfg.grad_accum):
            with accelerator.accumulate(model):
                rows = torch.randint(n, (cfg.batch_size * world,), generator=generator)
                batch = make_batch(cache, rows, cfg, generator).shard(rank, world)
                if bool(batch.cond_keep.all()):
                    batch.cond_keep = None  # no key mask needed (decided on the CPU copy)
                batch = _to_device(batch, accelerator.device)
                with accelerator.autocast():
                    loss = training_loss(model, batch, latent_size=cache.latent_size,
                                         guidance=cfg.guidance,
                                         checkpointing=cfg.gradient_checkpointing)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable, cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            running.append(loss.detach())
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            mean = accelerator.reduce(torch.stack(running).mean(), reduction="mean")
            value = mean.item()  # one host sync per log interval
            running = []
            if not math.isfinite(value):
                raise FloatingPointError(f"train: loss became {value} at step {done}")
            history.append((done, value))
            bar.set_postfix(loss=f"{value:.4f}")
            if live is not None:
                live.step = done
                live.log_metric("loss", value)
        if accelerator.is_main_process and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            save_training_state(out_dir / "checkpoints", done, inner, optimizer, generator,
                                history, resolved, keep=cfg.keep_checkpoints)
        accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_model(out_dir, inner, resolved)
    return history
