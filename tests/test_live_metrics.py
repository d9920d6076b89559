"""The training's live metrics: DVCLive's layout, and a killed run's curve continued on resume
with every step once (`facemogle.training.live`)."""

from __future__ import annotations

import json
import shutil

import psutil
import pytest
from accelerate import Accelerator

from facemogle.core.config import params_from_dict, to_dict
from facemogle.training import live as live_module
from facemogle.training import loop
from facemogle.training.live import SNAPSHOT
from facemogle.training.loop import train
from test_training import fake_cache, tiny_model

STEPS = 5


def _params(steps: int):
    return params_from_dict({"train": {"steps": steps, "batch_size": 2, "log_every": 1,
                                       "checkpoint_every": 2, "optimizer": "adamw", "lr": 1e-3,
                                       "mixed_precision": "fp32"}})


def _run(out, metrics, steps: int = STEPS, **kwargs):
    p = _params(steps)
    resolved = {"train": to_dict(p.train) | {"steps": STEPS}}  # one config for every part
    return train(tiny_model(), fake_cache(), p, out, accelerator=Accelerator(cpu=True),
                 resolved=resolved, metrics_dir=metrics, **kwargs)


def _rows(tsv) -> list[tuple[int, float]]:
    lines = tsv.read_text().splitlines()
    header = lines[0].split("\t")
    step, value = header.index("step"), len(header) - 1
    return [(int(r.split("\t")[step]), float(r.split("\t")[value])) for r in lines[1:]]


@pytest.fixture(autouse=True)
def _fast_monitor(tmp_path, monkeypatch):
    """DVCLive's system monitor with a row every 10 ms (every 2 s in a real run), and no DVC
    project around: DVCLive looks for one from the working folder."""
    monkeypatch.setattr(live_module, "INTERVAL", 0.005)
    monkeypatch.setattr(live_module, "SAMPLES", 2)
    monkeypatch.chdir(tmp_path)


def test_the_metrics_folder_has_dvclives_layout(tmp_path):
    metrics = tmp_path / "metrics"
    (metrics / "plots" / "metrics").mkdir(parents=True)
    (metrics / "plots" / "metrics" / "stale.tsv").write_text("step\tstale\n9\t1.0\n")
    history = _run(tmp_path / "model", metrics)
    tsvs = metrics / "plots" / "metrics"
    assert not (tsvs / "stale.tsv").exists()  # a run from step 0 starts the folder afresh
    for name in ("loss", "lr", "seconds_per_step"):
        assert (tsvs / f"{name}.tsv").read_text().splitlines()[0] == f"step\t{name}"
        assert [s for s, _ in _rows(tsvs / f"{name}.tsv")] == [1, 2, 3, 4, 5]
    assert _rows(tsvs / "loss.tsv") == history
    assert {v for _, v in _rows(tsvs / "lr.tsv")} == {1e-3}  # AdamW, no schedule
    summary = json.loads((metrics / "metrics.json").read_text())
    assert summary["step"] == STEPS and summary["loss"] == history[-1][1]
    assert summary["lr"] == 1e-3 and summary["seconds_per_step"] > 0
    # DVCLive's system monitor, each row a mean over a whole window (its last, partial window
    # would give 2 samples' sum divided by 2 only if both were taken).
    assert summary["system"]["cpu"]["count"] == psutil.cpu_count()
    assert (tsvs / "system" / "cpu" / "usage (%).tsv").read_text().startswith(
        "timestamp\tstep\tusage (%)")
    assert not (metrics / "dvc.yaml").exists()  # the project's dvc.yaml declares the folder


@pytest.mark.parametrize("left", ["folder", "snapshot", "checkpoint"])
def test_a_killed_run_resumes_its_curve_with_every_step_once(tmp_path, monkeypatch, left):
    """3 steps logged, killed during step 4 with the last checkpoint at step 2; the run again
    to step 5 logs steps 1..5 once each, with the values of a run straight through. `left`:
    the metrics folder is left as the kill left it (a rerun by hand); DVC deleted it before
    rerunning the stage (`dvc repro`), so the copy beside the checkpoints is taken; or only the
    checkpoint's loss curve is left."""
    straight = _run(tmp_path / "a", tmp_path / "ma", monitor_system=False)
    out, metrics = tmp_path / "b", tmp_path / "mb"
    real_step, calls = loop._Run.step, []

    def killed_at_step_4(self):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt("killed")
        return real_step(self)

    monkeypatch.setattr(loop._Run, "step", killed_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        _run(out, metrics)
    monkeypatch.setattr(loop._Run, "step", real_step)
    tsvs = metrics / "plots" / "metrics"
    assert [s for s, _ in _rows(tsvs / "loss.tsv")] == [1, 2, 3]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002"]
    if left != "folder":  # what DVC deletes: the stage's metrics and plots outputs
        (metrics / "metrics.json").unlink()
        shutil.rmtree(tsvs)
    if left == "checkpoint":
        shutil.rmtree(out / SNAPSHOT)

    resumed = _run(out, metrics)
    assert [s for s, _ in resumed] == [1, 2, 3, 4, 5]
    loss = _rows(tsvs / "loss.tsv")
    assert [s for s, _ in loss] == [1, 2, 3, 4, 5]
    assert [v for _, v in loss] == pytest.approx([v for _, v in straight], rel=1e-5)
    assert loss == resumed
    since = 1 if left != "checkpoint" else 3  # the checkpoint keeps the loss curve only
    for name in ("lr", "seconds_per_step"):
        assert [s for s, _ in _rows(tsvs / f"{name}.tsv")] == list(range(since, STEPS + 1))
    cpu = [s for s, _ in _rows(tsvs / "system" / "cpu" / "usage (%).tsv")]
    assert cpu == sorted(cpu) and cpu[-1] <= STEPS  # rows past step 2 of the killed run dropped
    assert json.loads((metrics / "metrics.json").read_text())["step"] == STEPS


def test_rows_cut_short_by_a_kill_are_dropped_on_resume(tmp_path):
    out, metrics = tmp_path / "model", tmp_path / "metrics"
    _run(out, metrics, steps=2, monitor_system=False)  # its last checkpoint: step 2
    tsvs = metrics / "plots" / "metrics"
    for name, cut in (("loss", "3\t2.3"), ("lr", "3")):  # rows the kill left half written
        (tsvs / f"{name}.tsv").write_text((tsvs / f"{name}.tsv").read_text() + cut)
    summary = metrics / "metrics.json"
    summary.write_text(summary.read_text()[:20])  # and a summary cut short
    _run(out, metrics, monitor_system=False)
    for name in ("loss", "lr", "seconds_per_step"):
        assert [s for s, _ in _rows(tsvs / f"{name}.tsv")] == [1, 2, 3, 4, 5]
    assert json.loads(summary.read_text())["step"] == STEPS
