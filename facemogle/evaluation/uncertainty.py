"""Uncertainty of the set-level metrics: bootstrap intervals over test images, paired differences.

`evaluate` writes, per mode, the per-image counts behind mask mIoU (intersection and union per
class) and attribute accuracy (which colour attributes each image got right). A set-level metric
is a function of the summed counts of its images, so resampling images with replacement and
recomputing it gives its bootstrap distribution (percentile intervals). Two runs scored on the
same test ids (the same sampling noise per id) are compared pairwise: the same resampled ids
enter both, so the interval of the difference excludes the image-to-image variation they share.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """A point estimate with its (low, high) interval."""

    value: float
    low: float
    high: float

    def excludes(self, x: float) -> bool:
        return not self.low <= x <= self.high


def percentile_bootstrap(statistic: Callable[[np.ndarray], float], n: int, *,
                         resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                         seed: int = 0) -> Interval:
    """`statistic(indices)` on all n items, and the percentile interval of its values over
    `resamples` draws of n indices with replacement (a fixed generator: reproducible)."""
    if n < 1:
        raise ValueError("bootstrap: no items")
    rng = np.random.default_rng(seed)
    draws = [statistic(rng.integers(0, n, n)) for _ in range(resamples)]
    return _percentile_interval(statistic(np.arange(n)), draws, confidence)


def _percentile_interval(value: float, draws: Sequence[float], confidence: float) -> Interval:
    """`value` with the central `confidence` range of its bootstrap `draws`."""
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(np.asarray(draws), [tail, 100.0 - tail])
    return Interval(float(value), float(low), float(high))


def miou_of(intersection: np.ndarray, union: np.ndarray) -> Callable[[np.ndarray], float]:
    """Statistic: mIoU of the images `indices` from (N, C) per-image intersection and union
    counts; classes absent from both maps of every chosen image do not count (`mask_iou`)."""
    def statistic(indices: np.ndarray) -> float:
        i, u = intersection[indices].sum(0), union[indices].sum(0)  # (C,), (C,)
        present = u > 0
        return float((i[present] / u[present]).mean())
    return statistic


def attribute_accuracy_of(per_image: Sequence[Mapping[str, bool]], attributes: Sequence[str]
                          ) -> Callable[[np.ndarray], float]:
    """Statistic: the mean over `attributes` of each one's accuracy among the chosen images
    that were scored on it (`attribute_acc`); attributes no chosen image was scored on do not
    count."""
    scored = np.array([[a in row for a in attributes] for row in per_image])  # (N, A)
    correct = np.array([[bool(row.get(a)) for a in attributes] for row in per_image])  # (N, A)

    def statistic(indices: np.ndarray) -> float:
        n, k = scored[indices].sum(0), correct[indices].sum(0)  # (A,), (A,)
        return float((k[n > 0] / n[n > 0]).mean())
    return statistic


def statistics(per_image: Mapping[str, Any]) -> dict[str, Callable[[np.ndarray], float]]:
    """The resampleable metrics of one mode's per-image file: `mask_miou`, `attribute_acc`."""
    out = {"mask_miou": miou_of(np.asarray(per_image["mask_intersection"], dtype=np.int64),
                                np.asarray(per_image["mask_union"], dtype=np.int64))}
    if "attributes" in per_image:
        out["attribute_acc"] = attribute_accuracy_of(per_image["attributes"],
                                                     per_image["color_attributes"])
    return out


def metric_interval(per_image: Mapping[str, Any], metric: str, **kwargs) -> Interval:
    """Bootstrap interval of `metric` over the test images of one per-image file."""
    return percentile_bootstrap(statistics(per_image)[metric], len(per_image["ids"]), **kwargs)


def paired_difference(a: Mapping[str, Any], b: Mapping[str, Any], metric: str,
                      **kwargs) -> Interval:
    """Interval of metric(a) - metric(b) over the same resampled test ids (a and b must hold
    the same ids, in any order): one pair of `paired_difference_over_seeds`."""
    return paired_difference_over_seeds([(a, b)], metric, **kwargs)


def verdict(difference: Interval, higher_is_better: bool = True) -> str:
    """"better", "worse" or "no measurable difference": whether the interval excludes 0."""
    if not difference.excludes(0.0):
        return "no measurable difference"
    return "better" if (difference.value > 0) == higher_is_better else "worse"


def _seed_image_bootstrap(statistics_per_seed: Sequence[Callable[[np.ndarray], float]], n: int,
                          *, resamples: int, confidence: float, seed: int) -> Interval:
    """Mean over seeds of a statistic on n shared test images; each draw resamples the seeds
    and, shared by all of them, the images, so both kinds of variation widen the interval."""
    if not statistics_per_seed:
        raise ValueError("bootstrap: no runs")
    rng = np.random.default_rng(seed)
    k = len(statistics_per_seed)
    draws = []
    for _ in range(resamples):
        chosen, idx = rng.integers(0, k, k), rng.integers(0, n, n)
        draws.append(np.mean([statistics_per_seed[c](idx) for c in chosen]))
    return _percentile_interval(np.mean([f(np.arange(n)) for f in statistics_per_seed]), draws,
                                confidence)


def _aligned(run: Mapping[str, Any], ids: Sequence[str], metric: str
             ) -> Callable[[np.ndarray], float]:
    """`metric` of `run` as a function of indices into `ids` (runs list ids in any order)."""
    if sorted(run["ids"]) != sorted(ids):
        raise ValueError("paired difference: the runs were scored on different test ids")
    position = {i: n for n, i in enumerate(run["ids"])}
    to_run = np.array([position[i] for i in ids])
    statistic = statistics(run)[metric]
    return lambda idx: statistic(to_run[idx])


def mean_over_seeds(runs: Sequence[Mapping[str, Any]], metric: str, *,
                    resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                    seed: int = 0) -> Interval:
    """Interval of the mean over training seeds of `metric`, runs scored on the same test ids."""
    if not runs:
        raise ValueError("bootstrap: no runs")
    ids = runs[0]["ids"]
    return _seed_image_bootstrap([_aligned(r, ids, metric) for r in runs], len(ids),
                                 resamples=resamples, confidence=confidence, seed=seed)


def paired_difference_over_seeds(pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
                                 metric: str, *, resamples: int = RESAMPLES,
                                 confidence: float = CONFIDENCE, seed: int = 0) -> Interval:
    """Interval of the mean over training seeds of metric(a_k) - metric(b_k), where pair k is
    two runs with training seed k scored on the same test ids (the same sampling noise)."""
    if not pairs:
        raise ValueError("paired difference: no pairs of runs")
    ids = pairs[0][0]["ids"]
    diffs = []
    for a, b in pairs:
        fa, fb = _aligned(a, ids, metric), _aligned(b, ids, metric)
        diffs.append(lambda idx, fa=fa, fb=fb: fa(idx) - fb(idx))
    return _seed_image_bootstrap(diffs, len(ids), resamples=resamples, confidence=confidence,
                                 seed=seed)
