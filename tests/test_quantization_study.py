"""`bench.quantization`: the int8-base arm queued as DVC experiments beside the main runs, and the
comparison computed from the records (seed-level paired t, the none arm's range, the transfer)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from facemogle.bench import quantization
from facemogle.core.io import InputError, write_json
from facemogle.evaluation import ablations

NONE_MIOU = {0: 0.40, 1: 0.42, 2: 0.44}
INT8_MIOU = {0: 0.41, 1: 0.47, 2: 0.43}


def _record(arm: str, seed: int, miou: float, **extra) -> dict:
    metrics = {"mask_miou": miou, "attribute_acc": 0.7, "fd_parser": 0.02}
    return {"variant": arm, "seed": seed, "experiment": f"{arm}-seed{seed}", "commit": "0" * 40,
            "params": {"seed": seed, "base": {"quantization": "none" if arm == "main" else arm}},
            "metrics": {m: dict(metrics) for m in quantization.MODES},
            "loss": [[10.0, 0.5], [1800.0, 0.3 + seed / 100]],
            "seconds_per_step_median": 0.1 + seed / 100 + (0.1 if arm == "int8" else 0.0),
            **extra}


def _transfer(seed: int) -> dict:
    scores = {"mask_miou": 0.4, "attribute_acc": 0.7, "fd_parser": 0.02}
    moved = {**scores, "mask_miou": 0.4 + 0.01 * (seed + 1)}
    return {"int8": {m: dict(scores) for m in quantization.TRANSFER_MODES},
            "none": {m: dict(moved) for m in quantization.TRANSFER_MODES},
            "int8_reproduces_stage": seed != 2}


def test_queue_lines_differ_only_in_the_quantization(tmp_path):
    lines = ablations.queue_commands([0], tmp_path, quantization.ARMS)
    assert lines == [
        "dvc exp run --queue -n main-seed0 -S seed=0 -S gating=matrix -S experts=global_local "
        "-S base.quantization=none evaluate@test",
        "dvc exp run --queue -n int8-seed0 -S seed=0 -S gating=matrix -S experts=global_local "
        "-S base.quantization=int8 evaluate@test"]
    assert ablations.EXPERIMENT.match("int8-seed12")["variant"] == "int8"


def test_dotted_params_are_read_below_the_top_level():
    params = {"seed": 1, "base": {"quantization": "int8"}}
    assert ablations._param(params, "base.quantization") == "int8"
    assert ablations._param(params, "base.missing") is None
    assert ablations._param(params, "seed.x") is None


def test_the_report_pairs_the_arms_by_training_seed(tmp_path):
    for seed in NONE_MIOU:
        write_json(tmp_path / f"main-seed{seed}.json", _record("main", seed, NONE_MIOU[seed]))
        write_json(tmp_path / f"int8-seed{seed}.json",
                   _record("int8", seed, INT8_MIOU[seed], transfer=_transfer(seed)))
    text = quantization.report(quantization.load(tmp_path))
    diffs = [INT8_MIOU[s] - NONE_MIOU[s] for s in NONE_MIOU]  # +0.01, +0.05, -0.01
    half = stats.t.ppf(0.975, 2) * np.std(diffs, ddof=1) / np.sqrt(3)
    row = next(line for line in text.splitlines() if line.startswith("| mask_miou multimodal"))
    assert f"{np.mean(diffs):+.4f} [{np.mean(diffs) - half:+.4f}, {np.mean(diffs) + half:+.4f}]" \
        in row
    assert "0.4200 ± 0.0200 (n=3)" in row and "[0.4000, 0.4400]" in row
    assert "| 2 of 3 |" in row  # 0.47 lies outside [0.40, 0.44] widened to [0.38, 0.46]
    p = stats.ttest_1samp(diffs, 0.0).pvalue
    assert f"p {p:.3f}, Holm p {min(1.0, 6 * p):.3f}" in row  # the smallest of six p-values
    transfer = next(line for line in text.splitlines()
                    if line.startswith("| mask_miou multimodal | +0.0100, +0.0200, +0.0300"))
    assert "+0.0200 [" in transfer
    assert "main 0.110 (runs 0.100 to 0.120), int8 0.210 (runs 0.200 to 0.220)" in text
    assert "seed 2 0.3200" in text and "reproduces the stage's multimodal mIoU in 2 of 3" in text


def test_an_unknown_arm_in_the_results_folder_is_refused_by_name(tmp_path):
    write_json(tmp_path / "nf4-seed0.json", _record("nf4", 0, 0.4))
    with pytest.raises(InputError, match="nf4-seed0.json: unknown variant 'nf4'"):
        quantization.load(tmp_path)


def test_the_loss_plot_draws_each_arm_in_its_colour(tmp_path):
    found = {"main": {0: _record("main", 0, 0.4)}, "int8": {0: _record("int8", 0, 0.4)}}
    for arm in found:  # 40 logged intervals, the int8 arm 0.05 above
        shift = 0.05 if arm == "int8" else 0.0
        found[arm][0]["loss"] = [[10.0 * k, 0.6 - 0.005 * k + shift] for k in range(1, 41)]
    pixels = np.asarray(quantization.loss_plot(found, smooth=5)).reshape(-1, 3)
    colours = {tuple(p) for p in pixels}
    assert quantization.COLOURS["main"] in colours and quantization.COLOURS["int8"] in colours
    with pytest.raises(InputError, match="no record holds a loss curve"):
        quantization.loss_plot({"main": {0: {**_record("main", 0, 0.4), "loss": []}}})
