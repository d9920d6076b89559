"""Uncertainty of the set-level metrics: bootstrap intervals over test images, paired differences.

`evaluate` writes, per mode, the per-image counts behind mask mIoU (intersection and union per
class) and attribute accuracy (which colour attributes each image got right). A set-level metric
is a function of the summed counts of its images, so resampling images with replacement and
recomputing it gives its bootstrap distribution (percentile intervals). Two runs scored on the
same test ids (the same sampling noise per id) are compared pairwise: the same resampled ids
enter both, so the interval of the difference excludes the image-to-image variation they share.

Variants trained with a few training seeds are compared with the training seed as the unit
(`paired_t_over_seeds`): one difference per seed (variant minus main model, same seed, all test
images), a Student t-interval and p-value over those differences, and Holm's adjustment over
the comparisons of a family (`holm`, `seed_verdict`). The bootstraps over seeds (`mean_over_seeds`,
`paired_difference_over_seeds`, `hierarchical_difference_over_seeds`) treat the few seeds as the
population and are too narrow with three of them; `coverage` measures that by simulation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = round(1.0 - CONFIDENCE, 10)  # 0.05 exactly (1 - 0.95 is 0.05000000000000004)
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


def _bootstrap_draws(statistics_per_seed: Sequence[Callable[[np.ndarray], Any]], n: int, *,
                     resamples: int, seed: int, images_per_seed: bool = False) -> np.ndarray:
    """(resamples, ...) bootstrap draws of the mean over seeds of a statistic on n test images:
    each draw resamples the seeds and the images, one image draw shared by all drawn seeds (the
    table's joint bootstrap) or, with `images_per_seed`, one per drawn seed (the two-level
    bootstrap). A statistic may return an array (one value per independent data set, as
    `coverage` uses it)."""
    if not statistics_per_seed:
        raise ValueError("bootstrap: no runs")
    rng = np.random.default_rng(seed)
    k = len(statistics_per_seed)
    draws = []
    for _ in range(resamples):
        chosen = rng.integers(0, k, k)
        rows = rng.integers(0, n, (k, n)) if images_per_seed else [rng.integers(0, n, n)] * k
        draws.append(np.mean([statistics_per_seed[c](row) for c, row in zip(chosen, rows)],
                             axis=0))
    return np.asarray(draws)


_seed_image_draws = _bootstrap_draws
_hierarchical_draws = functools.partial(_bootstrap_draws, images_per_seed=True)


def _seed_image_bootstrap(statistics_per_seed: Sequence[Callable[[np.ndarray], float]], n: int,
                          *, resamples: int, confidence: float, seed: int) -> Interval:
    """Mean over seeds of a statistic on n shared test images; each draw resamples the seeds
    and, shared by all of them, the images, so both kinds of variation widen the interval."""
    draws = _seed_image_draws(statistics_per_seed, n, resamples=resamples, seed=seed)
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
    diffs, n = _difference_statistics(pairs, metric)
    return _seed_image_bootstrap(diffs, n, resamples=resamples, confidence=confidence, seed=seed)


def _difference_statistics(pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
                           metric: str) -> tuple[list[Callable[[np.ndarray], float]], int]:
    """Per pair (a, b) the statistic metric(a) - metric(b) of indices into the first run's
    ids (every run aligned to them by id), and the number of test images."""
    if not pairs:
        raise ValueError("paired difference: no pairs of runs")
    ids = pairs[0][0]["ids"]
    diffs = []
    for a, b in pairs:
        fa, fb = _aligned(a, ids, metric), _aligned(b, ids, metric)
        diffs.append(lambda idx, fa=fa, fb=fb: fa(idx) - fb(idx))
    return diffs, len(ids)


def hierarchical_difference_over_seeds(
        pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]], metric: str, *,
        resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0) -> Interval:
    """As `paired_difference_over_seeds`, but each draw resamples the seeds and then the test
    images within each drawn seed on its own (a two-level bootstrap). Descriptive only: with
    three seeds its seed part has 10 distinct multisets and percentile, not t, quantiles."""
    diffs, n = _difference_statistics(pairs, metric)
    draws = _hierarchical_draws(diffs, n, resamples=resamples, seed=seed)
    return _percentile_interval(np.mean([f(np.arange(n)) for f in diffs]), draws, confidence)


# ----------------------------------------------------------------------------------------------
# The training seed as the unit: paired t-test, Holm's adjustment
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SeedTest(Interval):
    """A paired test whose unit is the training seed: `value` the mean of the per-seed
    differences `per_seed`, (`low`, `high`) its Student t-interval, `p` the two-sided p-value
    of a zero mean difference (paired t-test, n - 1 degrees of freedom)."""

    per_seed: tuple[float, ...]
    p: float

    @property
    def seeds(self) -> int:
        return len(self.per_seed)


def seed_t_test(per_seed: Sequence[float], confidence: float = CONFIDENCE) -> SeedTest:
    """Student t-interval and two-sided p-value of the mean of `per_seed` (one difference per
    training seed). One seed: no spread to measure, the interval is unbounded and p is 1; seeds
    that agree exactly: a zero-width interval, p 0 (or 1 if the difference is 0)."""
    d = np.asarray(per_seed, dtype=float)
    if d.size == 0:
        raise ValueError("seed test: no seeds")
    mean, values = float(d.mean()), tuple(float(x) for x in d)
    if d.size == 1:
        return SeedTest(mean, -np.inf, np.inf, values, 1.0)
    se = float(d.std(ddof=1) / np.sqrt(d.size))
    if se == 0.0:
        return SeedTest(mean, mean, mean, values, 1.0 if mean == 0.0 else 0.0)
    half = float(stats.t.ppf(0.5 + confidence / 2.0, d.size - 1)) * se
    p = float(2.0 * stats.t.sf(abs(mean) / se, d.size - 1))
    return SeedTest(mean, mean - half, mean + half, values, p)


def per_seed_differences(pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
                         metric: str) -> list[float]:
    """metric(a_k) - metric(b_k) on all test images, per pair k of runs with training seed k
    scored on the same test ids."""
    diffs, n = _difference_statistics(pairs, metric)
    return [float(f(np.arange(n))) for f in diffs]


def paired_t_over_seeds(pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
                        metric: str, confidence: float = CONFIDENCE) -> SeedTest:
    """The paired t-test over training seeds of metric(a_k) - metric(b_k). Its target is the
    expected difference over training runs (with their sampling noise) on these test images;
    a draw of other test images, common to all seeds, is not part of it."""
    return seed_t_test(per_seed_differences(pairs, metric), confidence)


def holm(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values of a family of tests (same keys): the i-th smallest
    of m p-values times m - i + 1, made non-decreasing in that order and capped at 1. Reject
    a test at level alpha when its adjusted p-value is below alpha."""
    order = sorted(pvalues, key=lambda key: pvalues[key])
    adjusted, running = {}, 0.0
    for rank, key in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * pvalues[key]))
        adjusted[key] = running
    return {key: adjusted[key] for key in pvalues}


def seed_verdict(test: SeedTest, adjusted_p: float, alpha: float = ALPHA,
                 higher_is_better: bool = True) -> str:
    """"better", "worse" or "not resolved": whether the (Holm-)adjusted test rejects a zero
    difference at `alpha`, and the sign of the mean difference."""
    if not adjusted_p < alpha:
        return "not resolved"
    return "better" if (test.value > 0) == higher_is_better else "worse"


def smallest_resolvable(sd: float, seeds: int, alpha: float = ALPHA,
                        comparisons: int = 1) -> float:
    """The smallest |mean difference| a paired t-test over `seeds` seeds whose differences
    scatter with standard deviation `sd` can declare non-zero at level alpha / comparisons
    (Holm's first, strictest step over that many comparisons; 1: the plain 95% t-interval)."""
    return float(stats.t.ppf(1.0 - alpha / comparisons / 2.0, seeds - 1)) * sd / np.sqrt(seeds)


# ----------------------------------------------------------------------------------------------
# Coverage by simulation: how often each interval holds a known true difference
# ----------------------------------------------------------------------------------------------

# Standard deviations of the per-image difference variant - main model (mIoU-sized): a seed
# effect per training run (shared by its images), per-image noise per run, and a face effect per
# test image shared by all seeds. The per-seed standard deviations of the recorded mIoU
# differences (0.002 to 0.016 over three seeds) lie in the range these give.
SCENARIOS: dict[str, dict[str, float]] = {
    "seed variance dominates": {"sigma_seed": 0.010, "sigma_image": 0.03, "sigma_face": 0.0},
    "image noise only": {"sigma_seed": 0.0, "sigma_image": 0.07, "sigma_face": 0.0},
    "mixed, with a face effect common to the seeds": {"sigma_seed": 0.0075, "sigma_image": 0.07,
                                                      "sigma_face": 0.025},
}
TRUE_DIFFERENCE = 0.02


def simulated_differences(experiments: int, seeds: int, images: int, *, truth: float,
                          sigma_seed: float, sigma_image: float, sigma_face: float,
                          rng: np.random.Generator) -> np.ndarray:
    """(experiments, seeds, images) per-image differences of simulated paired experiments:
    truth + seed effect N(0, sigma_seed) per run + face effect N(0, sigma_face) per test image
    (common to the seeds) + noise N(0, sigma_image) per image and run. The set-level metric of a
    run is taken as the mean over its images (linear, unlike mIoU's ratio of sums)."""
    seed_effect = rng.normal(0.0, sigma_seed, (experiments, seeds, 1))
    face_effect = rng.normal(0.0, sigma_face, (experiments, 1, images))
    noise = rng.normal(0.0, sigma_image, (experiments, seeds, images))
    return truth + seed_effect + face_effect + noise


def _bootstrap_coverage(draw: Callable[..., np.ndarray], d: np.ndarray, truth: float, *,
                        resamples: int, chunk: int, confidence: float, seed: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Per simulated experiment (rows of d, (E, seeds, images)): whether the percentile
    interval of bootstrap `draw` holds `truth`, and its width. Experiments go in blocks of
    `chunk` that share one generator's resampled indices (each block its own generator)."""
    tail = (1.0 - confidence) / 2.0 * 100.0
    hits, widths = [], []
    for c, start in enumerate(range(0, len(d), chunk)):
        block = d[start:start + chunk]
        per_seed = [lambda idx, s=s, block=block: block[:, s, idx].mean(-1)
                    for s in range(d.shape[1])]
        draws = draw(per_seed, d.shape[2], resamples=resamples, seed=seed + 1 + c)
        low, high = np.percentile(draws, [tail, 100.0 - tail], axis=0)
        hits.append((low <= truth) & (truth <= high))
        widths.append(high - low)
    return np.concatenate(hits), np.concatenate(widths)


def coverage(experiments: int = 2000, seeds: int = 3, images: int = 128, *, sigma_seed: float,
             sigma_image: float, sigma_face: float = 0.0, truth: float = TRUE_DIFFERENCE,
             resamples: int = 200, chunk: int = 100, confidence: float = CONFIDENCE,
             seed: int = 0) -> dict[str, float]:
    """Share of `experiments` simulated paired experiments (`simulated_differences`) whose
    `confidence` interval holds the true difference, and the mean width, for the per-seed
    t-interval (`seed_t_test`), the two-level bootstrap (`_hierarchical_draws`) and the joint
    seed-and-image bootstrap of the table (`_seed_image_draws`), `resamples` draws each."""
    rng = np.random.default_rng(seed)
    d = simulated_differences(experiments, seeds, images, truth=truth, sigma_seed=sigma_seed,
                              sigma_image=sigma_image, sigma_face=sigma_face, rng=rng)
    tests = [seed_t_test(x, confidence) for x in d.mean(-1)]
    low, high = np.array([t.low for t in tests]), np.array([t.high for t in tests])
    out = {"t_interval": float(np.mean((low <= truth) & (truth <= high))),
           "t_interval_width": float(np.mean(high - low))}
    for name, draw in (("hierarchical_bootstrap", _hierarchical_draws),
                       ("seed_image_bootstrap", _seed_image_draws)):
        hits, widths = _bootstrap_coverage(draw, d, truth, resamples=resamples, chunk=chunk,
                                           confidence=confidence, seed=seed)
        out[name], out[f"{name}_width"] = float(hits.mean()), float(widths.mean())
    return out


def coverage_study(experiments: int = 2000, seeds: Sequence[int] = (3, 5), images: int = 128,
                   resamples: int = 200, seed: int = 0) -> dict[str, Any]:
    """`coverage` for every scenario of `SCENARIOS` and seed count, with the settings and the
    Monte Carlo standard error of a 95% coverage estimated from `experiments` experiments."""
    scenarios = {}
    for k, (name, sigmas) in enumerate(SCENARIOS.items()):
        scenarios[name] = {**sigmas, "coverage": {
            str(n): {key: round(value, 4) for key, value in coverage(
                experiments, n, images, resamples=resamples, seed=seed + 1000 * k + n,
                **sigmas).items()} for n in seeds}}
    return {"confidence": CONFIDENCE, "true_difference": TRUE_DIFFERENCE,
            "experiments": experiments, "images": images, "seeds": list(seeds),
            "bootstrap_resamples": resamples, "generator_seed": seed,
            "monte_carlo_se_at_95": round(float(np.sqrt(0.95 * 0.05 / experiments)), 4),
            "scenarios": scenarios}
