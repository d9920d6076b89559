"""Mask consistency as segmentation agreement: mIoU and pixel accuracy of label maps.

The embedded stand-in for the DINO "Mask" column (docs/design.md, "Metrics"): a face parser reads
the generated face's label map, which is compared with the input mask. Intersections and unions
are summed over the whole set before dividing (the standard mIoU), so small images and small
regions weigh by their pixels, not per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from facemogle.core.labels import LABELS, NUM_LABELS
from facemogle.evaluation.metrics.common import MetricValue

METRIC_NAMES: tuple[str, ...] = ("mask_miou", "mask_pixel_acc")


class MaskScores(NamedTuple):
    """Per-class IoU (None: class in neither map), their mean over present classes, accuracy."""

    per_class: dict[str, float | None]
    mean_iou: float
    pixel_accuracy: float


def confusion_matrix(pred_maps: Sequence[np.ndarray], target_maps: Sequence[np.ndarray],
                     num_classes: int = NUM_LABELS) -> np.ndarray:
    """(C, C) pixel counts, rows = target class, columns = predicted class, over all pairs."""
    if len(pred_maps) != len(target_maps) or not pred_maps:
        raise ValueError(f"mask iou: need equally many predicted and target maps, got "
                         f"{len(pred_maps)} and {len(target_maps)}")
    counts = np.zeros(num_classes * num_classes, dtype=np.int64)
    for n, (pred, target) in enumerate(zip(pred_maps, target_maps)):
        pred, target = np.asarray(pred), np.asarray(target)
        if pred.shape != target.shape or pred.ndim != 2:
            raise ValueError(f"mask iou: pair {n} has shapes {pred.shape} vs {target.shape}; "
                             f"expected two (H, W) maps of the same size")
        for name, m in (("predicted", pred), ("target", target)):
            if not np.issubdtype(m.dtype, np.integer) or m.min() < 0 or m.max() >= num_classes:
                raise ValueError(f"mask iou: {name} map {n} must hold integer labels in "
                                 f"[0, {num_classes - 1}]")
        index = target.astype(np.int64).ravel() * num_classes + pred.astype(np.int64).ravel()
        counts += np.bincount(index, minlength=num_classes * num_classes)
    if counts.sum() == 0:
        raise ValueError("mask iou: the label maps hold no pixels")
    return counts.reshape(num_classes, num_classes)


def overlap(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the intersection and union pixel counts of a (C, C) confusion matrix."""
    intersection = np.diag(cm)  # (C,)
    return intersection, cm.sum(0) + cm.sum(1) - intersection


def mask_iou(pred_maps: Sequence[np.ndarray], target_maps: Sequence[np.ndarray],
             num_classes: int = NUM_LABELS, names: Sequence[str] | None = None) -> MaskScores:
    """IoU per class and mean IoU of predicted vs target (H, W) label maps, plus pixel accuracy.

    A class absent from both predicted and target maps of the whole set has IoU None and is left
    out of the mean. Names default to the CelebAMask-HQ labels when `num_classes` is 19.
    """
    names = list(names) if names is not None else (
        list(LABELS) if num_classes == NUM_LABELS else [str(i) for i in range(num_classes)])
    if len(names) != num_classes:
        raise ValueError(f"mask iou: {len(names)} names for {num_classes} classes")
    cm = confusion_matrix(pred_maps, target_maps, num_classes)  # (C, C)
    intersection, union = overlap(cm)  # (C,), (C,)
    per_class = {name: (float(i / u) if u > 0 else None)
                 for name, i, u in zip(names, intersection, union)}
    present = [v for v in per_class.values() if v is not None]
    return MaskScores(per_class, float(np.mean(present)), float(intersection.sum() / cm.sum()))


def mask_metric_values(scores: MaskScores, backend: str) -> list[MetricValue]:
    """mIoU, pixel accuracy and "mask_iou_<class>" for every class present."""
    values = [MetricValue("mask_miou", scores.mean_iou, backend),
              MetricValue("mask_pixel_acc", scores.pixel_accuracy, backend)]
    values += [MetricValue(f"mask_iou_{name}", iou, backend)
               for name, iou in scores.per_class.items() if iou is not None]
    return values
