"""Pretraining phase 2: the small face parser (the fixed instrument of the mask metrics), on
rendered faces and their VAE reconstructions, and its mIoU.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassJaccardIndex

from facemogle.base.segmenter import FaceParser
from facemogle.core.config import TinyParserConfig
from facemogle.core.labels import LABEL_INDEX, NUM_LABELS
from facemogle.pretrain.common import EVAL_BATCH, FaceSet, run_phase
from facemogle.pretrain.phase_store import PhaseStore

# Horizontal flips swap the subject's left and right: l_eye <-> r_eye, l_brow <-> r_brow,
# l_ear <-> r_ear.
FLIP_LABELS = torch.arange(NUM_LABELS)


for _left, _right in (("l_eye", "r_eye"), ("l_brow", "r_brow"), ("l_ear", "r_ear")):
    FLIP_LABELS[LABEL_INDEX[_left]], FLIP_LABELS[LABEL_INDEX[_right]] = (LABEL_INDEX[_right],
                                                                         LABEL_INDEX[_left])


def augment(images01: Tensor, label_maps: Tensor, generator: torch.Generator
            ) -> tuple[Tensor, Tensor]:
    """Light augmentation so the parser transfers to generated faces: mirrored faces (labels
    swapped), brightness/contrast/saturation jitter, blur (generated faces are soft), noise.
    (B, 3, H, W) in [0, 1], (B, H, W) long -> same shapes."""
    b = images01.shape[0]
    flip = torch.rand(b, generator=generator) < 0.5  # (B,)
    images01 = torch.where(flip[:, None, None, None], images01.flip(-1), images01)
    label_maps = torch.where(flip[:, None, None], FLIP_LABELS[label_maps.flip(-1)], label_maps)

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(b, 1, 1, 1, generator=generator)  # (B, 1, 1, 1)

    grey = images01.mean(dim=1, keepdim=True)  # (B, 1, H, W)
    images01 = grey + uniform(0.6, 1.4) * (images01 - grey)  # saturation
    mean = images01.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    images01 = mean + uniform(0.7, 1.3) * (images01 - mean) + uniform(-0.1, 0.1)
    blurred = F.avg_pool2d(F.pad(images01, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    images01 = torch.where(uniform(0, 1) < 0.3, blurred, images01)
    images01 = images01 + uniform(0, 0.05) * torch.randn(images01.shape, generator=generator)
    return images01.clamp(0, 1), label_maps


def class_weights(label_maps: Tensor) -> Tensor:
    """(19,) cross-entropy weights ~ 1 / sqrt(pixel frequency), capped at 10x the smallest
    weight and normalized so the average pixel weighs 1; absent classes get the cap."""
    freq = torch.bincount(label_maps.flatten().long(), minlength=NUM_LABELS).double()  # (19,)
    freq = freq / freq.sum()
    weights = freq.clamp(min=1e-12).rsqrt()  # (19,)
    weights = weights.clamp(max=10 * weights.min())
    return (weights / (weights * freq).sum()).float()  # (19,)


def train_parser(cfg: TinyParserConfig, faces: FaceSet, decoded: Tensor | None = None, *,
                 generator: torch.Generator, live: Any = None,
                 store: PhaseStore | None = None) -> FaceParser:
    """Train the parser with (optionally class-weighted) cross-entropy on augmented faces.

    `decoded` (N, 3, H, W) uint8 are the faces after VAE encode -> decode: a
    `cfg.decoded_fraction` of each batch uses them, so the parser also reads the soft, decoded
    look of generated faces, which `evaluate` parses (same geometry, so the labels still fit).
    """
    parser = FaceParser(cfg.width).train()
    weights = class_weights(faces.label_maps) if cfg.class_weighted else None

    def loss_fn() -> tuple[Tensor, dict[str, float]]:
        index = torch.randint(len(faces), (cfg.batch_size,), generator=generator)  # (B,)
        images = faces.images01(index)  # (B, 3, H, W)
        if decoded is not None:
            use = torch.rand(cfg.batch_size, generator=generator) < cfg.decoded_fraction  # (B,)
            images = torch.where(use[:, None, None, None], decoded[index].float() / 255, images)
        images, targets = augment(images, faces.label_maps[index].long(),
                                  generator)  # (B, 3, H, W), (B, H, W)
        loss = F.cross_entropy(parser(images), targets, weight=weights)
        return loss, {"loss": loss.item()}

    run_phase("parser", parser, cfg, loss_fn, generator=generator, live=live, store=store)
    return parser.eval()


@torch.no_grad()
def parser_miou(parser: FaceParser, images01: Tensor, label_maps: Tensor) -> float:
    """IoU per class over all of (N, 3, H, W) images vs (N, H, W) label maps, averaged over the
    classes present in the prediction or the truth."""
    metric = MulticlassJaccardIndex(NUM_LABELS, average="none", zero_division=float("nan"))
    for i in range(0, len(images01), EVAL_BATCH):
        metric.update(parser.parse(images01[i:i + EVAL_BATCH]).long(),
                      label_maps[i:i + EVAL_BATCH].long())
    return float(metric.compute().nanmean())
