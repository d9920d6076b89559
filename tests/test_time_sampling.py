"""`evaluation.time_sampling`: the logit-normal mean study queued as DVC experiments beside the
main runs, where training draws and sampler steps fall, and the comparison from the records."""

from __future__ import annotations

import pytest
from scipy import stats

from facemogle.core.io import write_json
from facemogle.evaluation import ablations, time_sampling
from test_uncertainty import _record


def test_training_share_below_half_is_the_normal_cdf_at_the_logit():
    for mean in (0.0, 1.0, 2.0):
        assert time_sampling.training_share_below(mean, 1.0) == pytest.approx(
            stats.norm.cdf(0.0, loc=mean))  # logit(0.5) = 0
    assert time_sampling.training_share_below(0.0, 1.0, sigma=0.2) == pytest.approx(
        stats.norm.cdf(-1.3862944))


def test_sampler_sigmas_follow_the_shifted_schedule_down_from_one():
    sigmas = time_sampling.sampler_sigmas(28, 64)
    assert len(sigmas) == 28 and sigmas[0] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(sigmas, sigmas[1:]))
    assert sum(s < 0.5 for s in sigmas) == 10  # the shift keeps more steps at high noise
    assert sum(s < 0.5 for s in time_sampling.sampler_sigmas(28, 4096)) < 10


def test_queue_lines_differ_only_in_the_logit_normal_mean(tmp_path):
    lines = ablations.queue_commands([3], tmp_path, time_sampling.ARMS)
    assert [line.split(" -S ")[-1] for line in lines] == [
        "train.logit_normal_mean=1.0 evaluate@test", "train.logit_normal_mean=2.0 evaluate@test",
        "train.logit_normal_mean=0.0 evaluate@test"]
    assert "-n main-seed3 " in lines[0] and "-n lnm2-seed3 " in lines[1]
    assert "-n lnm0-seed3 " in lines[2]


def test_the_report_compares_each_arm_with_the_default_by_seed(tmp_path):
    for seed in range(5):
        for arm, noise in (("main", 0.1), ("lnm0", 0.5)):
            record = {**_record("main", seed, noise), "variant": arm,
                      **time_sampling.ARMS[arm]}
            record["params"]["train"]["logit_normal_mean"] = time_sampling.ARMS[arm][
                time_sampling.KEY]
            write_json(ablations.result_path(arm, seed, tmp_path), record)
    found = ablations.load_results(tmp_path, time_sampling.ARMS)
    text = time_sampling.report(found, 1.0, 28, 64)
    assert "28 steps (64 image tokens): 10 below sigma 0.5" in text
    assert "- lnm0 (mean 0): 50.0%" in text and "- main (mean 1): 15.9%" in text
    assert "- lnm2 (mean 2): 2.3%" in text
    row = next(line for line in text.splitlines() if line.startswith("| lnm0 |"))
    assert row.startswith("| lnm0 | 0.0 | 0,1,2,3,4 |")
    assert row.rstrip(" |").endswith("variant worse (n=5 seeds)")
