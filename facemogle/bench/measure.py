"""Timed runs of the real training step, sampler and VAE encode (the code the stages run).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import safetensors.torch
import torch
from diffusers import AutoencoderKL
from torch import Tensor, nn

from facemogle.bench.device import (
    Clock,
    StepContext,
    autocast,
    peak_memory,
    release_memory,
    reset_memory,
)
from facemogle.bench.flops import Flops
from facemogle.bench.setup import BenchSize
from facemogle.cache.store import STORE_DTYPE, LatentCache
from facemogle.core import latents
from facemogle.core.config import TrainConfig
from facemogle.core.flux import SAMPLE_GUIDANCE
from facemogle.core.labels import NUM_SLOTS
from facemogle.models.facemogle import FaceMoGLE
from facemogle.sampling.sampler import Conditions, decode_images, generate_latents
from facemogle.training.step import Batch, draw_batch, make_optimizer, train_step


@dataclass
class TrainRun:
    """Everything one training measurement needs."""

    model: FaceMoGLE
    cache: LatentCache
    cfg: TrainConfig
    device: torch.device
    dtype: torch.dtype
    checkpointing: bool
    flops: Flops  # per sample
    peak: float | None


    def batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        """One training batch on the device, drawn as `train` draws it."""
        return draw_batch(self.cache, batch_size, self.cfg, generator, self.device)

    def step(self, batch: Batch, optimizer: torch.optim.Optimizer,
             trainable: list[nn.Parameter], clock: Clock) -> tuple[Tensor, Any, Any]:
        """`train_step`, the step the `train` stage runs; returns the loss and the clock marks
        after backward and after the optimizer."""
        marks = []
        loss = train_step(self.model, batch, optimizer, trainable,
                          replace(self.cfg, gradient_checkpointing=self.checkpointing),
                          StepContext(self.device, self.dtype), latent_size=self.cache.latent_size,
                          after_backward=lambda: marks.append(clock.mark()))
        return loss, marks[0], clock.mark()


def measure_training(run: TrainRun, batch_size: int, steps: int, warmup: int,
                     seed: int) -> dict[str, Any]:
    """Time `steps` training steps after `warmup`; one synchronize, after the timed steps.

    The step time is exact. Its split into phases (batch assembly and copy, forward and
    backward, clipping and optimizer) is approximate on a GPU: it is stream time between
    events that the host records while the device may still be busy.
    """
    run.model.train()
    trainable = run.model.trainable_parameters()
    optimizer = make_optimizer(trainable, run.cfg)
    generator = torch.Generator().manual_seed(seed)
    clock = Clock(run.device)
    reset_memory(run.device)
    for _ in range(warmup):
        run.step(run.batch(batch_size, generator), optimizer, trainable, clock)
    marks, losses = [], []
    for _ in range(steps):
        start = clock.mark()
        batch = run.batch(batch_size, generator)
        data = clock.mark()
        loss, backward, end = run.step(batch, optimizer, trainable, clock)
        marks.append((start, data, backward, end))
        losses.append(loss)
    phase = lambda i, j: sum(clock.seconds(m[i], m[j]) for m in marks) / steps  # noqa: E731
    step_s = phase(0, 3)
    finite = bool(torch.stack(losses).isfinite().all())
    del optimizer
    return _train_result(run, batch_size, step_s, finite, {
        "data_s": phase(0, 1), "forward_backward_s": phase(1, 2), "optimizer_s": phase(2, 3)})


def _train_result(run: TrainRun, batch_size: int, step_s: float, finite: bool,
                  phases: dict[str, float]) -> dict[str, Any]:
    model_flops = batch_size * run.flops.train_step
    hardware_flops = batch_size * run.flops.hardware(run.checkpointing)
    return {"batch_size": batch_size, "status": "ok", "step_s": step_s,
            "samples_per_s": batch_size / step_s, "phases": phases, "loss_finite": finite,
            **peak_memory(run.device),
            "model_tflop_per_s": model_flops / step_s / 1e12,
            "mfu": None if run.peak is None else model_flops / step_s / run.peak,
            "hfu": None if run.peak is None else hardware_flops / step_s / run.peak}


def train_sweep(run: TrainRun, batch_sizes: list[int], steps: int, warmup: int,
                seed: int) -> list[dict[str, Any]]:
    """`measure_training` at every batch size; one that runs out of memory is recorded as "oom"
    and the sweep goes on."""
    results = []
    for b in batch_sizes:
        try:
            results.append(measure_training(run, b, steps, warmup, seed))
        except torch.OutOfMemoryError:
            results.append({"batch_size": b, "status": "oom"})
        for p in run.model.parameters():
            p.grad = None
        release_memory(run.device)
    return results


def sample_conditions(cache: LatentCache, batch_size: int, device: torch.device) -> Conditions:
    """Multimodal conditions (caption + 20 slots) of the first `batch_size` cached rows."""
    rows = torch.arange(batch_size) % len(cache.ids)
    return Conditions(cache.text_seq[rows].to(device), cache.text_pooled[rows].to(device),
                      cache.slots(rows).to(device), cache.empty_text_seq.to(device),
                      cache.empty_text_pooled.to(device), cache.empty_slot.to(device))


def measure_sampling(run: TrainRun, vae: AutoencoderKL | None, batch_size: int,
                     steps: int) -> dict[str, Any]:
    """Seconds per image of `generate_latents` (`steps` Euler steps) after a 2-step warmup, and
    of the VAE decode."""
    model = run.model.eval()
    cond = sample_conditions(run.cache, batch_size, run.device)
    seeds = list(range(batch_size))
    clock = Clock(run.device)
    reset_memory(run.device)
    with autocast(run.device, run.dtype):
        generate_latents(model, cond, seeds, latent_size=run.cache.latent_size, steps=2)
        start = clock.mark()
        packed = generate_latents(model, cond, seeds, latent_size=run.cache.latent_size,
                                  steps=steps, guidance=SAMPLE_GUIDANCE)
        sampled = clock.mark()
        if vae is not None:
            decode_images(vae, packed, run.cache.latent_size)
        decoded = clock.mark()
    seconds = clock.seconds(start, sampled)
    flops = steps * batch_size * run.flops.forward
    return {"batch_size": batch_size, "status": "ok", "steps": steps,
            "s_per_image": seconds / batch_size,
            "decode_s_per_image": clock.seconds(sampled, decoded) / batch_size if vae else None,
            "finite": bool(packed.isfinite().all()), **peak_memory(run.device),
            "model_tflop_per_s": flops / seconds / 1e12,
            "mfu": None if run.peak is None else flops / seconds / run.peak}


def sample_sweep(run: TrainRun, vae: AutoencoderKL | None, batch_sizes: list[int],
                 steps: int) -> list[dict[str, Any]]:
    """`measure_sampling` at every batch size, "oom" where it does not fit."""
    results = []
    for b in batch_sizes:
        try:
            results.append(measure_sampling(run, vae, b, steps))
        except torch.OutOfMemoryError:
            results.append({"batch_size": b, "status": "oom"})
        release_memory(run.device)
    return results


def shard_bytes(size: BenchSize, text_dim: int, pooled_dim: int) -> dict[str, int]:
    """Bytes one image takes in a `facemogle.cache` shard (float16 tokens), with all 20 slots
    stored (the cache skips empty slots, so this is an upper bound) and
    `size.captions_per_image` captions, measured by serialising one image's tensors."""
    L, K = size.image_tokens, size.captions_per_image  # noqa: N806 (shape names)
    tensors = {"image": torch.zeros(1, L, 64, dtype=STORE_DTYPE),
               "slot_latents": torch.zeros(NUM_SLOTS, L, 64, dtype=STORE_DTYPE),
               "slot_index": torch.zeros(1, NUM_SLOTS, dtype=torch.int64),
               "text_seq": torch.zeros(K, size.text_tokens, text_dim, dtype=STORE_DTYPE),
               "text_pooled": torch.zeros(K, pooled_dim, dtype=STORE_DTYPE),
               "caption_offsets": torch.zeros(2, dtype=torch.int64)}
    parts = {f"{k}_bytes": t.numel() * t.element_size() for k, t in tensors.items()}
    return {**parts, "captions": K,
            "total_bytes": len(safetensors.torch.save(tensors))}


@torch.no_grad()
def measure_caching(vae: AutoencoderKL, size: BenchSize, images: int, batch_size: int,
                    device: torch.device, generator: torch.Generator) -> dict[str, Any]:
    """VAE encodes of `images` faces and their 20 slot images each, as `cache_latents` runs
    them: host images, batches of `batch_size` to the device, packed float16 tokens back."""
    r = size.resolution
    faces = torch.rand(images, 3, r, r, generator=generator)  # (N, 3, r, r)
    slots = (torch.rand(images * NUM_SLOTS, 3, r, r, generator=generator) > 0.5).float()
    # slots: (N * 20, 3, r, r) binary masks (the colour mask's cost is the same)
    stack = torch.cat([faces, slots])  # (N * 21, 3, r, r)
    encode = lambda x: latents.pack(latents.encode(vae, x)).to(STORE_DTYPE).cpu()  # noqa: E731
    encode(stack[:batch_size])  # warmup
    clock = Clock(device)
    reset_memory(device)
    start = clock.mark()
    for i in range(0, stack.shape[0], batch_size):
        encode(stack[i:i + batch_size])
    seconds = clock.seconds(start, clock.mark())
    return {"images": images, "encodes_per_image": 1 + NUM_SLOTS, "batch_size": batch_size,
            "images_per_s": images / seconds, "encodes_per_s": stack.shape[0] / seconds,
            **peak_memory(device)}


# Per size: batch sizes, timed steps, warmup steps, images to cache, dtype.
DEFAULTS: dict[str, dict[str, Any]] = {
    "flux": {"batch_sizes": [1, 2, 4], "steps": 10, "warmup": 3, "cache_images": 8,
             "dtype": "bfloat16"},
    "tiny": {"batch_sizes": [1, 2], "steps": 3, "warmup": 1, "cache_images": 4,
             "dtype": "float32"},
}

