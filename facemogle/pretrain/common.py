"""The training phases of the embedded base (`base.kind: tiny`, `python -m stages.pretrain`).

On the train split of the normalized data layout: a small `AutoencoderKL` (16 latent channels,
x8 down, like FLUX's VAE) on faces and decoupled mask images, a small face parser, and a small
`FluxTransformer2DModel` text-to-image with rectified flow on all-MiniLM-L6-v2 embeddings. Each
phase resumes from its `PhaseStore`. This module holds what the phases share (the face set,
the resumable AdamW loop, loss logging to DVCLive); `vae`, `parser` and `transformer`
the phases; `facemogle.pretrain.train_embedded` runs them, measures held-out quality and ships
the result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.optimization import get_cosine_schedule_with_warmup
from torch import Tensor
from tqdm.auto import tqdm

from facemogle.core.io import InputError, read_rgb, write_text
from facemogle.core.labels import load_label_map
from facemogle.data.layout import (
    captions_path,
    image_path,
    mask_path,
    read_captions,
    read_split,
    split_path,
)
from facemogle.pretrain.phase_store import PhaseStore

LOG_EVERY = 10  # training steps per logged loss mean


EVAL_BATCH = 64


@dataclass
class FaceSet:
    """One split in memory: images (N, 3, H, W) uint8, label maps (N, H, W) uint8, captions."""

    ids: list[str]
    images: Tensor
    label_maps: Tensor
    captions: list[list[str]]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def resolution(self) -> int:
        return self.images.shape[-1]

    def images01(self, index: Tensor | slice) -> Tensor:
        """(B, 3, H, W) float images in [0, 1]."""
        return self.images[index].float() / 255.0


def load_faces(data_dir: str | Path, split: str) -> FaceSet:
    """Read one split of the normalized layout (`images/`, `masks/`, `captions.jsonl`)."""
    ids = read_split(data_dir)[split]
    if not ids:
        raise InputError(f"{split_path(data_dir)}: the {split!r} split is empty")
    captions = read_captions(data_dir)
    missing = [i for i in ids if not captions.get(i)]
    if missing:
        raise InputError(f"{captions_path(data_dir)}: no captions for {len(missing)} "
                         f"{split} ids, e.g. {missing[0]!r}")
    images = np.stack([_read_square(image_path(data_dir, i)) for i in ids])  # (N, H, W, 3)
    maps = np.stack([load_label_map(mask_path(data_dir, i)) for i in ids])  # (N, H, W)
    if maps.shape != images.shape[:3]:
        raise InputError(f"{mask_path(data_dir, ids[0]).parent}: label maps {maps.shape[1:]} do "
                         f"not match the images {images.shape[1:3]}")
    return FaceSet(ids, torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                   torch.from_numpy(maps), [captions[i] for i in ids])


def _read_square(path: Path) -> np.ndarray:
    image = read_rgb(path)  # (H, W, 3)
    h, w = image.shape[:2]
    # x8 VAE, then 2x2 token packing: sides must be multiples of 16.
    if h != w or h % 16:
        raise InputError(f"{path}: expected a square image with a side that is a multiple of 16, "
                         f"got {w}x{h}")
    return image


class LossLog:
    """Running means of losses: the tqdm postfix, and one DVCLive TSV per loss every `LOG_EVERY`
    steps."""

    def __init__(self, live: Any, prefix: str, bar: tqdm):
        self.live, self.prefix, self.bar = live, prefix, bar
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, step: int, **values: float) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1
        if (step + 1) % LOG_EVERY == 0:
            self.flush(step + 1)

    def flush(self, step: int) -> dict[str, float]:
        means = {k: v / self.count for k, v in self.sums.items()} if self.count else {}
        if means:
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in means.items()})
            if self.live is not None:
                self.live.step = step
                for key, value in means.items():
                    self.live.log_metric(f"{self.prefix}/{key}", value)
        self.sums, self.count = {}, 0
        return means


def truncate_curves(live: Any, prefix: str, step: int) -> None:
    """Drop the logged points of `prefix` after `step` from DVCLive's TSVs: a phase resumed from
    its checkpoint at `step` (0: started afresh) logs the later steps again."""
    for tsv in (Path(live.plots_dir) / "metrics" / prefix).glob("*.tsv"):
        header, *rows = tsv.read_text().splitlines()
        kept = [r for r in rows if int(r.split("\t")[0]) <= step]
        if len(kept) < len(rows):
            write_text(tsv, "\n".join([header, *kept]) + "\n")


def _optimizer(model: torch.nn.Module, lr: float, warmup: int, steps: int):
    """AdamW with linear warmup then cosine decay to 0 (short runs end on a low learning rate)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    return opt, get_cosine_schedule_with_warmup(opt, min(warmup, steps), max(steps, 1))


def run_phase(name: str, model: torch.nn.Module, cfg: Any, loss_fn: Callable[[], tuple[Tensor,
              dict[str, float]]], *, generator: torch.Generator, live: Any = None,
              store: PhaseStore | None = None, grad_clip: float | None = None) -> None:
    """`cfg.steps` AdamW steps on `loss_fn()` (the loss and the values to log), resuming from and
    writing to `store` (every `store.every` steps and at the end) when one is given."""
    opt, schedule = _optimizer(model, cfg.lr, cfg.warmup_steps, cfg.steps)
    start = store.restore(model, opt, schedule, generator) if store is not None else 0
    if live is not None:
        truncate_curves(live, name, start)
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"pretrain: {name}",
               mininterval=5)
    log = LossLog(live, name, bar)
    for step in bar:
        loss, values = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        schedule.step()
        log.add(step, **values)
        if store is not None and ((step + 1) % store.every == 0 or step + 1 == cfg.steps):
            store.save(step + 1, model, opt, schedule, generator)
    log.flush(cfg.steps)


def phase_generator(seed: int, stream: int) -> torch.Generator:
    """A CPU generator per training phase, so changing one phase leaves the others' draws alone."""
    return torch.Generator("cpu").manual_seed(seed * 1000 + stream)
