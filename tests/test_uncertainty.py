"""Bootstrap intervals and paired differences over test images (and training seeds); the paired
t-test over training seeds, Holm's adjustment and the coverage simulation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from facemogle.evaluation.evaluate import per_image_overlap
from facemogle.evaluation.metrics.segmentation import mask_iou
from facemogle.evaluation.uncertainty import (
    Interval,
    attribute_accuracy_of,
    coverage,
    hierarchical_difference_over_seeds,
    holm,
    metric_interval,
    paired_difference,
    paired_difference_over_seeds,
    paired_t_over_seeds,
    percentile_bootstrap,
    seed_t_test,
    seed_verdict,
    smallest_resolvable,
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
            "params": {"seed": seed, **VARIANTS[variant], "train": {"steps": 8}},
            "metrics": {m: {"mask_miou": miou, "attribute_acc": 0.5,
                            "fd_parser": 0.01 + 0.001 * seed} for m in MODES},
            "per_image": {m: per_image for m in MODES}}


def test_ablation_table_and_verdicts_from_recorded_runs(tmp_path):
    """Runs recorded as files: the table has intervals and seed spreads; a variant whose faces
    follow the mask worse in every seed is measurably worse; a missing variant leaves its claim
    unresolved."""
    from facemogle.core.io import write_json
    from facemogle.evaluation.ablations import load_results, report, result_path

    for seed in range(5):
        write_json(result_path("main", seed, tmp_path), _record("main", seed, 0.1))
        write_json(result_path("gating-scalar", seed, tmp_path),
                   _record("gating-scalar", seed, 0.5))
        write_json(result_path("gating-static", seed, tmp_path),
                   _record("gating-static", seed, 0.1))
    found = load_results(tmp_path)
    assert sorted(found) == ["gating-scalar", "gating-static", "main"]
    text = report(found)
    main_table = text.split("The other columns")[0]  # the first table only
    lines = {line.split("|")[1].strip(): line for line in main_table.splitlines()
             if line.startswith("| ") and not line.startswith("| variant")}
    assert "| 0,1,2,3,4 |" in lines["main"] and " ± " in lines["main"]
    assert "| 0.0120 ± 0.0016 |" in lines["main"]  # FD-parser: mean ± std over the seeds
    assert lines["gating-scalar"].rstrip(" |").endswith("variant worse (n=5 seeds)")
    assert lines["gating-static"].rstrip(" |").endswith("| 1.000 | not resolved (n=5 seeds)")
    assert "Matrix gating beats scalar and static gating (Tables 4-5): **not resolved with 5 " \
           "seeds** (main vs gating-scalar: better (Holm p " in text
    assert "paired t-test over n=5 training seeds, Holm over 6 comparisons)" in text
    assert "Resolution (mask_miou multimodal): " in text
    assert "| variant | mIoU m2f: difference [95% t-interval], Holm p | Attr mm: " in text
    assert "(Table 3): **not resolved (runs missing)**" in text
    assert "Runs: 15 runs, 1.0 min each on average (1.0 to 1.0), 0.2 h of run time" in text
    assert list(found) == ["main", "gating-scalar", "gating-static"]  # main first
    # the plot: gating-scalar's interval (red: measurably worse) lies left of the zero line
    from facemogle.evaluation.ablations import difference_plot

    pixels = np.asarray(difference_plot(found))[:, :110 + 260]  # labels and the first panel
    red_x = np.nonzero((pixels == (200, 0, 0)).all(-1))[1]
    assert red_x.size and red_x.max() < 110 + 130


def test_a_claim_is_contradicted_by_one_better_variant_even_with_runs_missing(tmp_path):
    from facemogle.core.io import write_json
    from facemogle.evaluation.ablations import claim_verdicts, load_results, result_path

    for seed in range(5):
        write_json(result_path("main", seed, tmp_path), _record("main", seed, 0.5))
        write_json(result_path("gating-none", seed, tmp_path), _record("gating-none", seed, 0.1))
    lines = claim_verdicts(load_results(tmp_path))  # the claim's experts-none is absent
    assert lines[2].startswith("- Experts and gating are needed: removing the gate or the experts "
                               "hurts (Table 5): **contradicted** (main vs gating-none: worse")
    assert "**not resolved (runs missing)**" in lines[0]


def test_the_controls_compare_the_scaled_gate_with_the_plain_sum_not_with_main(tmp_path):
    from facemogle.core.io import write_json
    from facemogle.evaluation.ablations import control_answers, load_results, result_path

    for seed in range(5):
        for variant, noise in (("main", 0.1), ("gating-none", 0.1),
                               ("gating-matrix-scaled", 0.5)):
            write_json(result_path(variant, seed, tmp_path), _record(variant, seed, noise))
    lines = control_answers(load_results(tmp_path))
    assert len(lines) == 1  # experts-local-only has no runs: its two questions stay unasked
    assert lines[0].startswith("- Does the matrix gate beat the plain sum once the scales "
                               "match? gating-matrix-scaled - gating-none: -")
    assert lines[0].endswith("Holm p 0.000 over 3 questions: variant worse (n=5 seeds)")
    # in the table a control is shown against main but not judged, nor counted in the family
    from facemogle.evaluation.ablations import ablation_table, claim_verdicts

    found = load_results(tmp_path)
    row = next(r for r in ablation_table(found).splitlines() if r.startswith("| gating-matrix"))
    assert row.endswith("| - | control, questions below (n=5 seeds) |")
    assert "Holm over 6 comparisons)" in claim_verdicts(found)[2]


def test_fewer_than_five_seeds_give_no_verdict_however_small_the_p_value(tmp_path):
    from facemogle.core.io import write_json
    from facemogle.evaluation.ablations import (
        ablation_table,
        claim_verdicts,
        load_results,
        result_path,
    )

    for seed in (0, 1, 2):
        write_json(result_path("main", seed, tmp_path), _record("main", seed, 0.1))
        write_json(result_path("gating-none", seed, tmp_path), _record("gating-none", seed, 0.5))
    found = load_results(tmp_path)
    row = next(r for r in ablation_table(found).splitlines() if r.startswith("| gating-none"))
    assert row.endswith("| 1.000 | not resolved (n=3 seeds; a verdict needs 5) |")
    assert "**not resolved (runs missing)** (main vs gating-none: not resolved" in \
        claim_verdicts(found)[2]


def test_the_holm_family_counts_missing_comparisons_so_verdicts_never_flip():
    from facemogle.evaluation.ablations import MIN_SEEDS, PAPER, family_holm
    from facemogle.evaluation.uncertainty import SeedTest

    test = SeedTest(value=-0.01, low=-0.02, high=-0.001, p=0.01,
                    per_seed=(-0.01,) * MIN_SEEDS)
    few = SeedTest(value=-0.01, low=-0.02, high=-0.001, p=0.0001,
                   per_seed=(-0.01,) * (MIN_SEEDS - 1))
    alone = family_holm({"experts-local": test, "experts-global": few}, PAPER)
    assert alone["experts-local"] == pytest.approx(0.01 * len(PAPER))  # five others count as 1
    assert alone["experts-global"] == 1.0  # too few seeds: not yet in the family's evidence
    complete = family_holm({v: test for v in PAPER}, PAPER)
    assert all(complete[v] <= alone[v] for v in PAPER)  # more runs only lower the bound


def test_the_queue_is_one_dvc_exp_run_per_missing_variant_and_seed(tmp_path):
    import shlex

    from facemogle.core.io import write_json
    from facemogle.evaluation.ablations import VARIANTS, queue_commands, result_path

    write_json(result_path("main", 0, tmp_path), _record("main", 0, 0.1))
    lines = queue_commands([0, 1], results=tmp_path)
    assert len(lines) == 2 * len(VARIANTS) - 1
    assert not any("-n main-seed0 " in line for line in lines)
    words = shlex.split(next(line for line in lines if "-n gating-none-seed1 " in line))
    assert words[:4] == ["dvc", "exp", "run", "--queue"] and words[-1] == "evaluate@test"
    sets = {words[i + 1] for i, w in enumerate(words) if w == "-S"}
    assert sets == {"seed=1", "gating=none", "experts=global_local"}


def _git(repo, *args):
    import subprocess

    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid",
                        "HOME": str(repo), "PATH": "/usr/bin:/bin"})


def _experiment(repo, name: str, record: dict, params: dict, baseline: str = "ab/cdef0123"
                ) -> None:
    """A commit with the files a DVC experiment keeps in git, under
    `refs/exps/<baseline>/<name>`."""
    import json

    import yaml

    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    for mode, per_image in record["per_image"].items():
        (repo / "metrics" / "eval" / "per_image").mkdir(parents=True, exist_ok=True)
        (repo / "metrics" / "eval" / f"{mode}.json").write_text(
            json.dumps({**record["metrics"][mode], "mode": mode}))
        (repo / "metrics" / "eval" / "per_image" / f"{mode}.json").write_text(
            json.dumps(per_image))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", name)
    _git(repo, "update-ref", f"refs/exps/{baseline}/{name}", "HEAD")


def test_collect_records_the_experiments_of_the_workspace_settings(tmp_path, capsys):
    import yaml

    from facemogle.core.io import InputError, read_json
    from facemogle.evaluation.ablations import VARIANTS, collect, result_path

    repo, results = tmp_path / "repo", tmp_path / "results"
    repo.mkdir()
    _git(repo, "init", "-q")
    expected = _record("gating-none", 1, 0.2)
    settings = {"train": {"steps": 8, "logit_normal_mean": 1.0}}
    _experiment(repo, "gating-none-seed1", expected,
                {"seed": 1, **VARIANTS["gating-none"], **settings})
    _experiment(repo, "tuning-lr", expected, {"seed": 1})  # not an ablation name: left out
    # an earlier default's runs of other variants, then the workspace back on today's settings
    for variant in ("gating-scalar", "gating-static"):
        _experiment(repo, f"{variant}-seed1", expected,
                    {"seed": 1, **VARIANTS[variant],
                     "train": {"steps": 8, "logit_normal_mean": 2.0}})
    (repo / "params.yaml").write_text(yaml.safe_dump({"seed": 42, **VARIANTS["main"],
                                                      **settings}))
    assert collect(repo, results) == [result_path("gating-none", 1, results)]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("skipped 2 experiment(s) of other settings")
    assert "train.logit_normal_mean 2.0 (params.yaml: 1.0): gating-" in err[0]
    assert "gating-scalar-seed1 (" in err[0] and "gating-static-seed1 (" in err[0]
    written = read_json(result_path("gating-none", 1, results))
    assert written["per_image"] == expected["per_image"]
    assert written["metrics"] == expected["metrics"]
    assert written["experiment"] == "gating-none-seed1"
    assert written["params"]["train"] == settings["train"]
    assert collect(repo, results) == []  # recorded already
    _experiment(repo, "main-seed2", expected, {"seed": 2, **VARIANTS["gating-none"], **settings})
    assert collect(repo, results) == []
    assert "main-seed2" in (err := capsys.readouterr().err) and "not those its name" in err
    _experiment(repo, "gating-none-seed1", expected,  # the name again, under another baseline
                {"seed": 1, **VARIANTS["gating-none"], **settings}, baseline="12/3456789a")
    with pytest.raises(InputError, match="two experiments named gating-none-seed1"):
        collect(repo, results)


def test_a_table_never_mixes_runs_of_two_settings(tmp_path):
    from facemogle.core.io import InputError, write_json
    from facemogle.evaluation.ablations import load_results, result_path, settings_line

    write_json(result_path("main", 0, tmp_path), _record("main", 0, 0.1))
    other = _record("gating-none", 0, 0.1)
    write_json(result_path("gating-none", 0, tmp_path),
               {**other, "params": {**other["params"], "train": {"steps": 16}}})
    with pytest.raises(InputError, match=r"main-seed0.json: trained on other settings than "
                                         r"gating-none-seed0.json: train.steps 8 \(gating"):
        load_results(tmp_path)
    write_json(result_path("gating-none", 0, tmp_path), {**other, "params": None})
    with pytest.raises(InputError, match="no 'params'"):
        load_results(tmp_path)
    write_json(result_path("gating-none", 0, tmp_path), other)
    found = load_results(tmp_path)
    workspace = tmp_path / "params.yaml"
    workspace.write_text("seed: 42\ngating: matrix\nexperts: global_local\ntrain: {steps: 8}\n")
    assert "every run was trained on" in settings_line(found, workspace)
    workspace.write_text("seed: 42\ngating: matrix\nexperts: global_local\ntrain: {steps: 9}\n")
    assert settings_line(found, workspace).endswith(f"train.steps 8 ({workspace}: 9).")


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
    # a run evaluated without a face parser (the full setting) has ids and a reason, no counts
    write_json(tmp_path / "base.json", {"ids": ["a", "b"], "skipped": "no face parser"})
    row = next(line for line in intervals(tmp_path).splitlines() if line.startswith("| base |"))
    assert row == "| base | 2 | skipped: no face parser | - |"


# ----------------------------------------------------------------------------------------------
# The training seed as the unit
# ----------------------------------------------------------------------------------------------

def test_seed_t_test_matches_scipys_one_sample_t_test():
    per_seed = [0.011, 0.027, 0.016]
    ours = seed_t_test(per_seed)
    ref = stats.ttest_1samp(per_seed, 0.0)
    ci = ref.confidence_interval(0.95)
    assert ours.value == pytest.approx(np.mean(per_seed))
    assert (ours.low, ours.high) == pytest.approx((ci.low, ci.high))
    assert ours.p == pytest.approx(ref.pvalue) and ours.seeds == 3
    assert ours.per_seed == tuple(per_seed)
    five = np.random.default_rng(1).normal(0.01, 0.01, 5)
    ci5 = stats.ttest_1samp(five, 0.0).confidence_interval(0.9)
    assert (seed_t_test(five, 0.9).low, seed_t_test(five, 0.9).high) == pytest.approx(
        (ci5.low, ci5.high))


def test_seed_t_test_with_one_seed_or_identical_seeds():
    one = seed_t_test([0.03])
    assert one.value == 0.03 and one.low == -np.inf and one.high == np.inf and one.p == 1.0
    same = seed_t_test([0.02, 0.02, 0.02])
    assert same.low == same.high == pytest.approx(0.02) and same.p == 0.0
    assert seed_t_test([0.0, 0.0]).p == 1.0
    with pytest.raises(ValueError, match="no seeds"):
        seed_t_test([])


def test_holm_adjusts_step_down_and_caps_at_one():
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005, "e": 0.5})
    # sorted d, a, c, b, e: 5 x 0.005, 4 x 0.01, 3 x 0.03, max(that, 2 x 0.04), max(., 1 x 0.5)
    assert adjusted == pytest.approx({"d": 0.025, "a": 0.04, "c": 0.09, "b": 0.09, "e": 0.5})
    assert holm({"x": 0.6, "y": 0.7}) == pytest.approx({"x": 1.0, "y": 1.0})
    assert list(holm({"z": 0.2, "y": 0.1})) == ["z", "y"]  # the caller's order


def test_seed_verdict_follows_the_adjusted_p_value_and_the_sign():
    worse, better = seed_t_test([-0.033, -0.031, -0.035]), seed_t_test([0.03, 0.031, 0.029])
    assert seed_verdict(worse, 0.009) == "worse"
    assert seed_verdict(better, 0.009) == "better"
    assert seed_verdict(better, 0.009, higher_is_better=False) == "worse"
    assert seed_verdict(worse, 0.05) == "not resolved"  # not below alpha
    assert seed_verdict(worse, 0.257) == "not resolved"


def test_smallest_resolvable_is_the_half_width_of_the_t_interval():
    assert smallest_resolvable(0.01, 3) == pytest.approx(
        stats.t.ppf(0.975, 2) * 0.01 / np.sqrt(3))
    assert smallest_resolvable(0.01, 3, comparisons=6) == pytest.approx(
        stats.t.ppf(1 - 0.05 / 12, 2) * 0.01 / np.sqrt(3))
    assert smallest_resolvable(0.01, 5) < smallest_resolvable(0.01, 3)


def test_paired_t_over_seeds_takes_one_set_level_difference_per_seed():
    """Each seed's difference is the set-level mIoU difference on all images (pairing by id);
    the mean of them is the bootstrap's point value."""
    pairs, expected = [], []
    for seed, noise in ((0, 0.3), (1, 0.25), (2, 0.35)):
        preds, targets = _maps(20 + seed, n=25, noise=0.1)
        worse_preds, _ = _maps(20 + seed, n=25, noise=noise)
        a, b = _per_image(preds, targets), _per_image(worse_preds, targets)
        b = {"ids": b["ids"][::-1], "mask_intersection": b["mask_intersection"][::-1],
             "mask_union": b["mask_union"][::-1]}  # another order: pairing by id
        pairs.append((a, b))
        expected.append(mask_iou(preds, targets, num_classes=19).mean_iou
                        - mask_iou(worse_preds, targets, num_classes=19).mean_iou)
    test = paired_t_over_seeds(pairs, "mask_miou")
    assert test.per_seed == pytest.approx(expected)
    assert test.value == pytest.approx(paired_difference_over_seeds(pairs, "mask_miou",
                                                                    resamples=50).value)
    assert test.low > 0 and test.p < 0.05


def test_hierarchical_bootstrap_widens_with_disagreeing_seeds():
    preds, targets = _maps(2, n=30, noise=0.2)
    low_preds, _ = _maps(2, n=30, noise=0.4)
    a, b = _per_image(preds, targets), _per_image(low_preds, targets)
    agree = hierarchical_difference_over_seeds([(a, b)] * 3, "mask_miou", resamples=300)
    disagree = hierarchical_difference_over_seeds([(a, b), (b, a), (a, b)], "mask_miou",
                                                  resamples=300)
    assert agree.low > 0 and agree.value == pytest.approx(paired_t_over_seeds(
        [(a, b)], "mask_miou").value)
    assert disagree.high - disagree.low > agree.high - agree.low


def test_coverage_of_the_seed_t_interval_and_undercoverage_of_the_seed_bootstrap():
    """Seed effects dominate (3 seeds, 128 images, 400 simulated experiments): the t-interval
    over seeds holds the true difference about 95% of the time, the bootstraps that resample
    the three seeds far less often."""
    result = coverage(400, 3, 128, sigma_seed=0.01, sigma_image=0.03, resamples=100, seed=0)
    assert result["t_interval"] == pytest.approx(0.95, abs=0.035)  # 3 Monte Carlo SEs
    assert result["seed_image_bootstrap"] < 0.88
    assert result["hierarchical_bootstrap"] < 0.88
    assert result["seed_image_bootstrap_width"] < result["t_interval_width"] / 2


def test_coverage_command_writes_every_scenario_and_seed_count(tmp_path):
    from facemogle.core.io import read_json
    from facemogle.evaluation.ablations import main
    from facemogle.evaluation.uncertainty import SCENARIOS

    out = tmp_path / "coverage.json"
    assert main(["coverage", "--out", str(out), "--experiments", "60", "--resamples", "20"]) == 0
    written = read_json(out)
    assert written["experiments"] == 60 and written["bootstrap_resamples"] == 20
    assert list(written["scenarios"]) == list(SCENARIOS)
    for scenario in written["scenarios"].values():
        assert sorted(scenario["coverage"]) == ["3", "5"]
        assert 0.0 <= scenario["coverage"]["3"]["t_interval"] <= 1.0


def test_a_variant_with_one_seed_is_shown_without_an_interval(tmp_path):
    from facemogle.core.io import write_json
    from facemogle.evaluation.ablations import load_results, report, result_path

    for seed in range(2):
        write_json(result_path("main", seed, tmp_path), _record("main", seed, 0.1))
    write_json(result_path("gating-none", 0, tmp_path), _record("gating-none", 0, 0.1))
    text = report(load_results(tmp_path))
    row = next(r for r in text.splitlines() if r.startswith("| gating-none | none"))
    assert "[no interval from one seed] | 1.000 | not resolved (n=1 seeds" in row
    assert "inf" not in text
