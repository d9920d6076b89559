"""The ablation grid through DVC's own experiment machinery, end to end on the smoke profile: the
`queue` lines queue a variant, `dvc queue start` runs it, `dvc exp show` lists it with its
params and metrics, and `collect` records it from the experiment's git ref."""

from __future__ import annotations

import subprocess
import time

import pytest

from conftest import merge
from facemogle.core.io import read_json
from facemogle.evaluation.ablations import VARIANTS, collect, queue_commands, result_path
from test_pipeline import DVC, SMOKE, _env, _run, make_smoke_repo

QUEUE = merge(SMOKE, {"data": {"num_train": 8, "num_test": 4}, "cache": {"num_processes": 1}})


@pytest.mark.slow
def test_an_ablation_queued_and_run_by_dvc_is_collected(tmp_path, embedded_base):
    repo = make_smoke_repo(tmp_path / "repo", embedded_base, QUEUE)
    _run(DVC + ["repro", "evaluate@test"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "baseline"], repo)
    results, stubs = tmp_path / "records", tmp_path / "stubs"
    stubs.mkdir()
    for variant in VARIANTS:  # the grid of seed 3 recorded but for one run
        if variant != "gating-none":
            result_path(variant, 3, stubs).write_text("{}")
    [line] = queue_commands([3], stubs)
    subprocess.run(line, shell=True, cwd=repo, env=_env(), check=True, capture_output=True)
    _run(DVC + ["queue", "start", "--jobs", "1"], repo)
    deadline = time.time() + 900
    while "Queued" in (status := _run(DVC + ["queue", "status"], repo).stdout) or \
            "Running" in status:
        assert time.time() < deadline, status
        time.sleep(2)
    assert "Success" in status and "Failed" not in status, status
    shown = _run(DVC + ["exp", "show", "--csv"], repo).stdout
    row = next(r for r in shown.splitlines() if "gating-none-seed3" in r)
    assert "none" in row.split(",") and "mask_miou" in shown.splitlines()[0]
    assert collect(repo, results) == [result_path("gating-none", 3, results)]
    record = read_json(result_path("gating-none", 3, results))
    assert (record["gating"], record["experts"], record["seed"]) == ("none", "global_local", 3)
    assert len(record["per_image"]["multimodal"]["ids"]) == QUEUE["data"]["num_test"]
    assert 0.0 <= record["metrics"]["mask2face"]["mask_miou"] <= 1.0


def test_queue_skips_only_the_runs_recorded_in_the_chosen_results_folder(tmp_path, capsys):
    from facemogle.evaluation.ablations import main

    old, new = tmp_path / "previous-default", tmp_path / "current-default"
    old.mkdir()
    for variant in VARIANTS:  # a whole seed-0 grid of another default
        result_path(variant, 0, old).write_text("{}")
    main(["--results", str(old), "queue", "--seeds", "0"])
    assert capsys.readouterr().out.strip() == ""
    main(["--results", str(new), "queue", "--seeds", "0"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(VARIANTS) and all("dvc exp run --queue" in ln for ln in lines)
