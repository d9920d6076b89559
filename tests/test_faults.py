"""Faults injected into real `dvc repro` runs of a smoke profile (README, "Faults tried"):

- `kill -9` (SIGKILL to the whole process group: dvc, torchrun, the workers) at two points inside
  `cache_latents`, `train` and `sample`; the next `dvc repro` resumes (`cache_latents` from its
  finished shards, `train` from its newest checkpoint; `sample` starts again) and ends with
  outputs byte-identical to an uninterrupted run, and the killed run left no output behind,
  half-written or whole;
- a write that fails for want of space (a file-size limit, as a full disk fails a write) stops
  the stage with one line naming the file, leaves no output, and a re-run writes the same bytes;
- a second `dvc repro` started while one runs is refused by DVC's read/write lock on the paths
  the running stage holds, and the first one finishes with the same outputs.
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import merge
from facemogle.core.resume import check_folder
from test_pipeline import DVC, SMOKE, _env, _run, make_smoke_repo

# 12 train + 4 test faces in shards of 4 (4 shards), 12 training steps with a checkpoint every 2,
# one sampled image per batch (16 images over 4 modes).
FAULTS = merge(SMOKE, {"data": {"num_train": 12, "num_test": 4},
                       "cache": {"shard_size": 4, "num_processes": 1},
                       "train": {"steps": 12, "checkpoint_every": 2},
                       "sample": {"batch_size": 1}})
OUTPUTS = {"cache_latents@test": "data/latents", "train": "data/model",
           "sample@test": "data/samples"}


def _count(pattern: str) -> Callable[[Path], int]:
    return lambda work: len(list(work.glob(pattern)))


def _newest_step(checkpoints: Path) -> int:  # train keeps only its newest checkpoints
    return max((int(c.parent.name.split("-")[1])
                for c in checkpoints.glob("step-*/manifest.json")), default=0)


# How far a stage has got, read from its work folder; two kill points per stage.
PROGRESS = {
    "cache_latents@test": ("data/.resume/latents", _count("shard-*.safetensors"), (1, 3)),
    "train": ("data/.resume/model/checkpoints", _newest_step, (2, 8)),
    "sample@test": ("data/.samples.partial", _count("*/*.png"), (1, 9)),
}
SIZE_LIMIT = 64 * 1024  # bytes: under one shard of latents (about 330 kB)


def _hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def fault_repo(tmp_path_factory, embedded_base) -> tuple[Path, dict[str, dict[str, str]]]:
    """The project on the fault profile after one uninterrupted `dvc repro sample@test`, and
    the file hashes of the three stages' outputs."""
    repo = make_smoke_repo(tmp_path_factory.mktemp("faults") / "repo", embedded_base, FAULTS)
    _run(DVC + ["repro", "sample@test"], repo)
    return repo, {stage: _hashes(repo / out) for stage, out in OUTPUTS.items()}


def _start(cmd: list[str], repo: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=repo, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            **kwargs)


def _wait_for(proc: subprocess.Popen, done: Callable[[], bool], what: str) -> None:
    deadline = time.time() + 300
    while not done():
        assert proc.poll() is None, f"the run ended before {what}:\n{proc.stdout.read()[-3000:]}"
        assert time.time() < deadline, f"no {what} within 300 s"
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("point", [0, 1], ids=["early", "late"])
@pytest.mark.parametrize("stage", list(OUTPUTS))
def test_a_stage_killed_midway_reruns_to_the_same_bytes(fault_repo, stage, point):
    repo, reference = fault_repo
    folder, progress, points = PROGRESS[stage]
    work = repo / folder
    proc = _start(DVC + ["repro", "--force", "--single-item", stage], repo)
    _wait_for(proc, lambda: progress(work) >= points[point], f"{points[point]} done in {folder}")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (repo / OUTPUTS[stage]).exists()  # nothing published by the killed run
    shards = {p.name: p.stat().st_mtime_ns for p in work.glob("shard-*")}  # cache_latents'
    # --force: DVC would otherwise check the uninterrupted run's output out of its cache
    result = _run(DVC + ["repro", "--force", "--single-item", stage], repo)
    assert f"Running stage '{stage}'" in result.stdout
    if stage == "train":  # from the newest checkpoint; cache_latents keeps its finished shards
        assert "resuming from data/.resume/model/checkpoints/step-" in result.stderr + result.stdout
    assert {n: (repo / OUTPUTS[stage] / n).stat().st_mtime_ns for n in shards} == shards
    assert _hashes(repo / OUTPUTS[stage]) == reference[stage]
    assert not work.exists()  # the work folder is gone once the output is published
    assert "changed" not in _run(DVC + ["status", stage], repo).stdout


def _file_size_limit() -> None:  # in the child: a write past SIZE_LIMIT fails with EFBIG
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (SIZE_LIMIT, SIZE_LIMIT))


@pytest.mark.slow
def test_a_write_that_runs_out_of_space_names_the_file_and_leaves_nothing(fault_repo, tmp_path):
    repo, reference = fault_repo
    out, work = tmp_path / "latents", tmp_path / "work"
    cmd = [sys.executable, "-m", "stages.cache_latents", "--data", "data/raw", "--labels",
           "data/labels", "--base", "data/base", "--out", str(out), "--resume-dir", str(work)]
    full = subprocess.run(cmd, cwd=repo, env=_env(), capture_output=True, text=True,
                          timeout=600, preexec_fn=_file_size_limit)
    assert full.returncode == 2, full.stderr[-3000:]
    line = full.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {work}/shard-") and "File too large" in line, line
    assert "Traceback" not in full.stderr
    assert not out.exists()
    assert not list(work.glob("shard-*")) and not list(work.glob(".*"))  # no temporary file
    _run(cmd, repo)
    assert _hashes(out) == reference["cache_latents@test"]


@pytest.mark.slow
def test_a_second_dvc_repro_is_refused_while_one_runs(fault_repo):
    repo, reference = fault_repo
    first = _start(DVC + ["repro", "--force", "--single-item", "train"], repo)
    checkpoints = repo / "data" / ".resume" / "model" / "checkpoints"
    _wait_for(first, lambda: any(checkpoints.glob("step-*/manifest.json")), "a checkpoint")
    second = subprocess.run(DVC + ["repro", "sample@test"], cwd=repo, env=_env(),
                            capture_output=True, text=True, timeout=600)
    # DVC's read/write lock on the paths the running train holds (data/base among them)
    assert second.returncode != 0
    assert "is busy, it is being blocked by" in second.stderr, second.stderr[-2000:]
    assert "Running stage" not in second.stdout
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out[-3000:]
    assert _hashes(repo / "data" / "model") == reference["train"]
    assert check_folder(repo / "data" / "model")
