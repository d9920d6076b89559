"""Deepfake detection: AUC / EER / AP of a detector separating real from generated faces.

The paper reports how well detectors (NPR, Wavelet-CLIP) tell its faces from real ones; lower
AUC and AP and higher EER mean more realistic faces. Any `Detector` can supply the scores
(higher = more likely generated). The paper's detectors are in `npr` and `wavelet_clip` and run
when the authors' weights are configured; the embedded
default is `SmallDetector`, a small CNN trained here to separate the two sets, with k-fold
cross-fitting (`cross_fit_scores`) so that every image is scored by a model that never saw it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from torch import nn

from facemogle.evaluation.metrics.common import (
    Images,
    MetricValue,
    image_list,
    resolve_device,
)


def metric_names(prefix: str = "detect") -> tuple[str, ...]:
    """One detector's AUC / EER / AP names: `<prefix>_auc`, `<prefix>_eer`, `<prefix>_ap`."""
    return tuple(f"{prefix}_{k}" for k in ("auc", "eer", "ap"))


METRIC_NAMES: tuple[str, ...] = metric_names()  # the embedded SmallDetector


class Detector(Protocol):
    """Scores images; higher means more likely generated."""

    def score(self, images: Images) -> np.ndarray:
        """Images -> (N,) scores."""


class TrainableDetector(Detector, Protocol):
    """A detector trained on the two sets being compared."""

    def fit(self, real: Images, fake: Images) -> TrainableDetector:
        """Train to give generated images higher scores than real ones."""


def _scores(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if x.size == 0 or not np.isfinite(x).all():
        raise ValueError(f"{what}: expected a non-empty array of finite scores")
    return x


def equal_error_rate(labels: np.ndarray, scores: np.ndarray) -> float:
    """The rate at which false positives equal false negatives, on the ROC curve.

    FPR rises and FNR = 1 - TPR falls along `roc_curve`'s thresholds; the EER is where they
    cross, linearly interpolated between the two ROC points that bracket the crossing.
    """
    fpr, tpr, _ = roc_curve(labels, scores)
    gap = fpr - (1.0 - tpr)  # rises from -1 to +1
    i = int(np.argmax(gap >= 0.0))
    if i == 0 or gap[i] == 0.0:
        return float(fpr[i])
    t = -gap[i - 1] / (gap[i] - gap[i - 1])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def detection_metrics(real_scores: np.ndarray, fake_scores: np.ndarray) -> dict[str, float]:
    """AUC, EER and AP with generated images as the positive class (scikit-learn).

    real_scores: (N,), fake_scores: (M,). AUC 0.5 / EER 0.5 means the detector is at chance.
    """
    real = _scores(real_scores, "real_scores")
    fake = _scores(fake_scores, "fake_scores")
    labels = np.concatenate([np.zeros(real.size), np.ones(fake.size)])  # (N + M,)
    scores = np.concatenate([real, fake])  # (N + M,)
    return {
        "auc": float(roc_auc_score(labels, scores)),
        "eer": equal_error_rate(labels, scores),
        "ap": float(average_precision_score(labels, scores)),
    }


def detection_metric_values(real_scores: np.ndarray, fake_scores: np.ndarray, backend: str,
                            *, prefix: str = "detect") -> list[MetricValue]:
    """`detection_metrics` as metric values named `metric_names(prefix)` (one name per detector,
    e.g. "detect" for the embedded detector, "npr", "wavelet_clip"; the same three metrics)."""
    values = detection_metrics(real_scores, fake_scores)
    return [MetricValue(f"{prefix}_{k}", v, backend) for k, v in values.items()]


def _to_tensor(images: Images, size: int) -> torch.Tensor:
    """Images -> (N, 3, size, size) float in [0, 1] (antialiased bilinear downsizing)."""
    out = []
    for array in image_list(images):
        x = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, H, W)
        out.append(nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                             antialias=True, align_corners=False))
    return torch.cat(out)


def neighbor_residual(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> x minus its 2x-subsampled, nearest-upsampled copy (same shape).

    The neighbouring-pixel relationships that NPR (Tan et al., CVPR 2024), one of the paper's
    detectors, reads: upsampling layers of generators leave traces in them.
    """
    coarse = nn.functional.interpolate(x[:, :, ::2, ::2], scale_factor=2.0, mode="nearest")
    return x - coarse[:, :, :x.shape[2], :x.shape[3]]


class _SmallCNN(nn.Module):
    """Image and its neighbour residual (6 channels) -> one logit."""

    def __init__(self, width: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(6, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> (B,) logits."""
        return self.net(torch.cat([x, neighbor_residual(x)], dim=1)).squeeze(1)


class SmallDetector:
    """A three-layer CNN on downsized images (64 px) and their neighbour residuals.

    Trained with logistic loss for a few hundred Adam steps, seeded (weights, batches). Each
    step takes `batch_size / 2` real and as many generated images, so unequal set sizes do
    not bias it. `score` returns logits (higher = generated).
    """

    def __init__(self, *, size: int = 64, width: int = 16, steps: int = 200,
                 batch_size: int = 32, lr: float = 1e-3, seed: int = 0,
                 device: torch.device | str | None = None):
        if size < 8 or width < 1 or steps < 1 or batch_size < 2:
            raise ValueError(f"SmallDetector: need size >= 8, width >= 1, steps >= 1, "
                             f"batch_size >= 2; got {size}, {width}, {steps}, {batch_size}")
        self.size, self.steps, self.batch_size, self.lr = size, steps, batch_size, lr
        self.seed = seed
        self.device = resolve_device(device)
        self.model = _SmallCNN(width).to(self.device)
        generator = torch.Generator().manual_seed(seed)
        for p in self.model.parameters():
            # Seeded init that leaves the global RNG alone.
            if p.ndim > 1:
                nn.init.kaiming_normal_(p, nonlinearity="relu", generator=generator)
            else:
                nn.init.zeros_(p)

    def fit(self, real: Images, fake: Images) -> SmallDetector:
        """Train on real (label 0) vs generated (label 1) images."""
        x_real = _to_tensor(real, self.size)  # (N, 3, S, S)
        x_fake = _to_tensor(fake, self.size)  # (M, 3, S, S)
        rng = np.random.default_rng(self.seed)
        optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        half = self.batch_size // 2
        labels = torch.cat([torch.zeros(half), torch.ones(half)]).to(self.device)  # (2h,)
        self.model.train()
        for _ in range(self.steps):
            batch = torch.cat([x_real[rng.integers(0, len(x_real), half)],
                               x_fake[rng.integers(0, len(x_fake), half)]])  # (2h, 3, S, S)
            logits = self.model(batch.to(self.device))  # (2h,)
            loss = nn.functional.binary_cross_entropy_with_logits(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        self.model.eval()
        return self

    @torch.no_grad()
    def score(self, images: Images) -> np.ndarray:
        """Images -> (N,) logits."""
        x = _to_tensor(images, self.size).to(self.device)  # (N, 3, S, S)
        return self.model(x).double().cpu().numpy()


def _folds(n: int, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    return np.array_split(rng.permutation(n), k)


def cross_fit_scores(real: Images, fake: Images, make_detector: Callable[[int], TrainableDetector],
                     *, folds: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold scores of every real (N,) and generated (M,) image.

    Both sets are split into `folds` random parts (stratified: each fold holds real and
    generated images); for fold j a fresh detector `make_detector(j)` is trained on the other
    folds and scores fold j. The folds' scores come from different models and are pooled
    into one ROC, the usual cross-fitting estimate (slightly pessimistic for the detector).
    """
    real_list, fake_list = image_list(real, "real"), image_list(fake, "fake")
    if folds < 2 or min(len(real_list), len(fake_list)) < folds:
        raise ValueError(f"cross-fitting needs folds >= 2 and at least `folds` images per set; "
                         f"got folds={folds}, {len(real_list)} real, {len(fake_list)} generated")
    rng = np.random.default_rng(seed)
    real_folds, fake_folds = _folds(len(real_list), folds, rng), _folds(len(fake_list), folds, rng)
    real_scores, fake_scores = np.zeros(len(real_list)), np.zeros(len(fake_list))
    for j in range(folds):
        train_real = [real_list[i] for k, f in enumerate(real_folds) if k != j for i in f]
        train_fake = [fake_list[i] for k, f in enumerate(fake_folds) if k != j for i in f]
        detector = make_detector(j).fit(train_real, train_fake)
        real_scores[real_folds[j]] = detector.score([real_list[i] for i in real_folds[j]])
        fake_scores[fake_folds[j]] = detector.score([fake_list[i] for i in fake_folds[j]])
    return real_scores, fake_scores
