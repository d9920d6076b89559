"""Bootstrap intervals and paired differences over test images (and training seeds)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from facemogle.evaluation.evaluate import per_image_overlap
from facemogle.evaluation.metrics.segmentation import mask_iou
from facemogle.evaluation.uncertainty import (
    Interval,
    attribute_accuracy_of,
    metric_interval,
    paired_difference,
    paired_difference_over_seeds,
    percentile_bootstrap,
    verdict,
)


def test_bootstrap_of_a_constant_is_that_constant():
    values = np.full(17, 0.42)
    interval = percentile_bootstrap(lambda idx: float(values[idx].mean()), len(values))
    assert interval.value == pytest.approx(0.42)
    assert interval.low == pytest.approx(0.42) and interval.high == pytest.approx(0.42)


def test_percentile_interval_of_a_mean_matches_scipy():
    data = np.random.default_rng(3).normal(1.0, 2.0, 40)
    ours = percentile_bootstrap(lambda idx: float(data[idx].mean()), len(data), resamples=20000)
    ref = stats.bootstrap((data,), np.mean, n_resamples=20000, method="percentile",
                          confidence_level=0.95, random_state=np.random.default_rng(0))
    width = ref.confidence_interval.high - ref.confidence_interval.low
    assert ours.value == pytest.approx(data.mean())
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=0.03 * width)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=0.03 * width)


def _maps(seed: int, n: int = 12, noise: float = 0.2) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    targets = [rng.integers(0, 5, (8, 8)).astype(np.uint8) for _ in range(n)]
    preds = [np.where(rng.random((8, 8)) < noise, rng.integers(0, 5, (8, 8)), t).astype(np.uint8)
             for t in targets]
    return preds, targets


def _per_image(preds, targets, ids=None) -> dict:
    return {"ids": ids or [f"{i:03d}" for i in range(len(preds))],
            **per_image_overlap(preds, targets)}


def test_miou_from_per_image_counts_equals_the_set_miou():
    preds, targets = _maps(0)
    interval = metric_interval(_per_image(preds, targets), "mask_miou", resamples=200)
    assert interval.value == pytest.approx(mask_iou(preds, targets, num_classes=19).mean_iou)
    assert interval.low < interval.value < interval.high


def test_attribute_accuracy_averages_attributes_over_their_scored_images():
    rows = [{"hair_color": True, "eye_color": False}, {"hair_color": True}, {"hair_color": False}]
    statistic = attribute_accuracy_of(rows, ["hair_color", "eye_color", "lip_color"])
    assert statistic(np.arange(3)) == pytest.approx((2 / 3 + 0 / 1) / 2)
    assert statistic(np.array([1, 1])) == pytest.approx(1.0)  # eye_color unscored: left out


def test_paired_difference_pairs_by_id_and_decides_by_the_interval():
    preds, targets = _maps(1, n=40, noise=0.1)
    worse_preds, _ = _maps(1, n=40, noise=0.5)
    good = _per_image(preds, targets)
    # the same images, listed in another order: pairing is by id, not position
    order = np.random.default_rng(0).permutation(40)
    shuffled = {"ids": [good["ids"][i] for i in order],
                **per_image_overlap([worse_preds[i] for i in order],
                                    [targets[i] for i in order])}
    diff = paired_difference(good, shuffled, "mask_miou", resamples=500)
    assert diff.low > 0 and verdict(diff) == "better"
    assert verdict(paired_difference(shuffled, good, "mask_miou", resamples=500)) == "worse"
    same = paired_difference(good, good, "mask_miou", resamples=200)
    assert same.value == same.low == same.high == 0.0
    assert verdict(same) == "no measurable difference"
    with pytest.raises(ValueError, match="different test ids"):
        paired_difference(good, _per_image(preds[:5], targets[:5]), "mask_miou")


def test_paired_difference_over_seeds_widens_with_disagreeing_seeds():
    preds, targets = _maps(2, n=30, noise=0.2)
    low_preds, _ = _maps(2, n=30, noise=0.4)
    a, b = _per_image(preds, targets), _per_image(low_preds, targets)
    agree = paired_difference_over_seeds([(a, b), (a, b), (a, b)], "mask_miou", resamples=300)
    disagree = paired_difference_over_seeds([(a, b), (b, a), (a, b)], "mask_miou",
                                            resamples=300)
    assert agree.low > 0
    assert disagree.value == pytest.approx(agree.value / 3)
    assert disagree.high - disagree.low > agree.high - agree.low


def test_verdict_respects_the_direction_of_the_metric():
    assert verdict(Interval(0.1, 0.05, 0.2), higher_is_better=False) == "worse"
    assert verdict(Interval(-0.1, -0.2, -0.05), higher_is_better=False) == "better"
    assert verdict(Interval(0.01, -0.02, 0.04)) == "no measurable difference"


def _record(variant: str, seed: int, noise: float) -> dict:
    from facemogle.evaluation.ablations import MODES, VARIANTS

    preds, targets = _maps(10 + seed, n=30, noise=noise)
    per_image = _per_image(preds, targets)
    per_image["attributes"] = [{"hair_color": bool(i % 2)} for i in range(30)]
    per_image["color_attributes"] = ["hair_color"]
    miou = mask_iou(preds, targets, num_classes=19).mean_iou
    return {"variant": variant, "seed": seed, **VARIANTS[variant], "wall_s": 60.0,
            "metrics": {m: {"mask_miou": miou, "attribute_acc": 0.5,
                            "fd_parser": 0.01 + 0.001 * seed} for m in MODES},
            "per_image": {m: per_image for m in MODES}}


def test_ablation_table_and_verdicts_from_recorded_runs(tmp_path):
    """Runs recorded as files: the table has intervals and seed spreads; a variant whose faces
    follow the mask worse in every seed is measurably worse; a missing variant leaves its claim
    unresolved."""
    from facemogle.core.io import write_json
    from facemogle.evaluation.ablations import load_results, report, result_path

    for seed in (0, 1, 2):
        write_json(result_path("main", seed, tmp_path), _record("main", seed, 0.1))
        write_json(result_path("gating-scalar", seed, tmp_path),
                   _record("gating-scalar", seed, 0.5))
        write_json(result_path("gating-static", seed, tmp_path),
                   _record("gating-static", seed, 0.1))
    found = load_results(tmp_path)
    assert sorted(found) == ["gating-scalar", "gating-static", "main"]
    text = report(found)
    lines = {line.split("|")[1].strip(): line for line in text.splitlines()
             if line.startswith("| ") and not line.startswith("| variant")}
    assert "| 0,1,2 |" in lines["main"] and " ± " in lines["main"]
    assert "| 0.0110 ± 0.0010 |" in lines["main"]  # FD-parser: mean ± std over the seeds
    assert lines["gating-scalar"].rstrip(" |").endswith("variant worse")
    assert lines["gating-static"].rstrip(" |").endswith("no measurable difference")
    assert "Matrix gating beats scalar and static gating (Tables 4-5): **not resolved at this " \
           "scale**" in text
    assert "(Table 3): **not resolved (runs missing)**" in text
    assert "Runs: 9 runs, 1.0 min each on average (1.0 to 1.0), 0.1 h of run time" in text
    assert list(found) == ["main", "gating-scalar", "gating-static"]  # main first
    # the plot: gating-scalar's interval (red: measurably worse) lies left of the zero line
    from facemogle.evaluation.ablations import difference_plot

    pixels = np.asarray(difference_plot(found))[:, :110 + 260]  # labels and the first panel
    red_x = np.nonzero((pixels == (200, 0, 0)).all(-1))[1]
    assert red_x.size and red_x.max() < 110 + 130


def test_ablation_queue_shards_share_the_missing_runs_without_overlap(tmp_path):
    import argparse

    from facemogle.core.io import write_json
    from facemogle.evaluation.ablations import VARIANTS, _shard, pending, result_path

    write_json(result_path("main", 0, tmp_path), _record("main", 0, 0.1))
    missing = pending([0, 1], results=tmp_path)
    assert len(missing) == 2 * len(VARIANTS) - 1 and ("main", 0) not in missing
    first, second = (pending([0, 1], _shard(f"{k}/2"), tmp_path) for k in (1, 2))
    assert sorted(first + second) == sorted(missing) and not set(first) & set(second)
    for bad in ("0/2", "3/2", "two"):
        with pytest.raises(argparse.ArgumentTypeError, match="--shard"):
            _shard(bad)


def test_intervals_of_one_evaluated_run(tmp_path):
    from facemogle.core.io import InputError, write_json
    from facemogle.evaluation.ablations import intervals

    record = _record("main", 0, 0.3)
    for mode in ("multimodal", "mask2face"):
        write_json(tmp_path / f"{mode}.json", record["per_image"][mode])
    text = intervals(tmp_path)
    expected = metric_interval(record["per_image"]["multimodal"], "mask_miou")
    row = next(line for line in text.splitlines() if line.startswith("| multimodal |"))
    assert f"| 30 | {expected.value:.3f} [{expected.low:.3f}, {expected.high:.3f}] |" in row
    assert expected.low < expected.value < expected.high
    with pytest.raises(InputError, match="no per-image files"):
        intervals(tmp_path / "empty")
