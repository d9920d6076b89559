"""Working in a team (README, "Working in a team"; docs/team.md), offline in temporary folders: a
bare git repository as `origin` and the committed default DVC remote, `~/facemogle-dvc-remote`
(`.dvc/config`), with HOME a temporary folder, shared by three clones of the smoke profile.

A runs the pipeline up to `train`, pushes git, data and run-cache, tags a model version, runs an
experiment and pushes it. B, a fresh clone with no data, reproduces nothing that did not change,
pulls the model, gets A's experiment result by setting its params (the run-cache restores what it
can), and pulls and applies A's experiment by name. C fetches the tagged model and the base with
`dvc artifacts get`.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import merge
from test_pipeline import DVC, SMOKE, _env, make_smoke_repo

# The smallest smoke profile: 10 faces (8 train, 2 test), one cache process, 8 training steps.
TEAM = merge(SMOKE, {"data": {"num_train": 8, "num_test": 2}, "cache": {"num_processes": 1}})
EXPERIMENT = "small-shards"  # A's experiment: cache.shard_size=4 (3 shards, not 1): new latents
MODEL_TAG = "facemogle-model@v0.1.0"  # a registered version (GTO's tag format)
BASE_TAG = "embedded-base@v0.1.0"
CACHED = "Stage '{}' is cached - skipping run, checking out outputs"  # a run-cache restore


class Team:
    """Commands in the clones under `root`, with HOME = `root/home` (the remote's `~`)."""

    def __init__(self, root: Path):
        self.root, self.home = root, root / "home"
        self.home.mkdir()
        (self.home / ".gitconfig").write_text(
            "[user]\n\tname = ci\n\temail = ci@example.invalid\n[init]\n\tdefaultBranch = main\n")

    def run(self, cmd: list[str], cwd: Path) -> str:
        result = subprocess.run(cmd, cwd=cwd, env=dict(_env(), HOME=str(self.home)),
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (f"{cmd} failed:\n{result.stdout[-3000:]}\n"
                                        f"{result.stderr[-5000:]}")
        return result.stdout + result.stderr

    def dvc(self, *args: str, cwd: Path) -> str:
        return self.run(DVC + list(args), cwd)

    def clone(self, name: str) -> Path:
        self.run(["git", "clone", "-q", str(self.root / "origin.git"), name], self.root)
        return self.root / name


def _hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _outputs(repo: Path) -> dict[str, dict[str, str]]:
    return {name: _hashes(repo / "data" / name) for name in ("latents", "model")}


def _clone_a(team: Team, embedded_base: Path) -> Path:
    """The project with the smallest smoke profile and the tests' embedded base, committed and
    pushed to the bare `origin`."""
    a = make_smoke_repo(team.root / "A", embedded_base, TEAM)
    team.run(["git", "init", "-q", "--bare", str(team.root / "origin.git")], team.root)
    for cmd in (["remote", "add", "origin", "../origin.git"], ["push", "-q", "-u", "origin",
                                                               "main"]):
        team.run(["git", *cmd], a)
    return a


def _publish_baseline(team: Team, a: Path) -> dict[str, dict[str, str]]:
    """A: `dvc repro train`, commit the lock and the metrics, push git, data and run-cache, tag
    the model and the base; returns the latents' and the model's file hashes."""
    assert "Running stage 'train'" in team.dvc("repro", "train", cwd=a)
    for cmd in (["add", "dvc.lock", "metrics"], ["commit", "-qm", "baseline"],
                ["push", "-q", "origin", "main"]):
        team.run(["git", *cmd], a)
    team.dvc("push", "--run-cache", cwd=a)
    for tag in (MODEL_TAG, BASE_TAG):
        team.run(["git", "tag", "-a", tag, "-m", f"Register {tag}"], a)
        team.run(["git", "push", "-q", "origin", tag], a)
    return _outputs(a)


def _push_experiment(team: Team, a: Path) -> dict[str, dict[str, str]]:
    """A: an experiment up to `train`, pushed by name with its outputs and run-cache entries;
    returns its latents' and model's file hashes."""
    team.dvc("exp", "run", "-n", EXPERIMENT, "-S", "cache.shard_size=4", "train", cwd=a)
    team.dvc("exp", "push", "--run-cache", "origin", EXPERIMENT, cwd=a)
    return _outputs(a)


def _reader_gets_the_experiment_by_its_params(team: Team, b: Path,
                                              experiment: dict[str, dict[str, str]]) -> None:
    """B sets A's experiment params: `dvc repro --pull --allow-missing` pulls the inputs of the
    changed stages and restores them from the run-cache instead of running them."""
    params = yaml.safe_load((b / "params.yaml").read_text())
    (b / "params.yaml").write_text(yaml.safe_dump(merge(params, {"cache": {"shard_size": 4}}),
                                                  sort_keys=False))
    output = team.dvc("repro", "--pull", "--allow-missing", "train", cwd=b)
    assert CACHED.format("cache_latents@test") in output
    assert "Running stage 'cache_latents@test'" not in output
    # Every output of train, its metrics and plots too, is in the DVC cache (dvc.yaml): the
    # run-cache restores it from the remote as well.
    assert CACHED.format("train") in output and "Running stage" not in output
    assert _outputs(b) == experiment


@pytest.mark.slow
def test_two_clones_share_data_run_cache_experiments_and_a_model_version(tmp_path,
                                                                          embedded_base):
    team = Team(tmp_path)
    a = _clone_a(team, embedded_base)
    baseline = _publish_baseline(team, a)
    experiment = _push_experiment(team, a)
    assert experiment["latents"] != baseline["latents"]
    assert experiment["model"] != baseline["model"]

    b = team.clone("B")
    # Nothing changed: every stage is skipped, nothing is pulled or run.
    output = team.dvc("repro", "--pull", "--allow-missing", "train", cwd=b)
    assert "Stage 'train' didn't change, skipping" in output and "Running stage" not in output
    assert not (b / "data" / "model").exists()
    team.dvc("pull", "train", cwd=b)  # the published model
    assert _hashes(b / "data" / "model") == baseline["model"]
    _reader_gets_the_experiment_by_its_params(team, b, experiment)

    # Back to the baseline, then A's experiment by name.
    team.run(["git", "checkout", "--", "."], b)
    team.dvc("checkout", "train", cwd=b)
    assert _hashes(b / "data" / "model") == baseline["model"]
    team.dvc("exp", "pull", "origin", EXPERIMENT, cwd=b)
    assert EXPERIMENT in team.dvc("exp", "list", "--name-only", cwd=b)
    # `dvc exp apply` would check out every stage's outputs, and the lock here holds the stages
    # up to train only: the experiment as a branch, and its outputs of those stages.
    team.dvc("exp", "branch", EXPERIMENT, EXPERIMENT, cwd=b)
    team.run(["git", "checkout", "-q", EXPERIMENT], b)
    team.dvc("checkout", "train", cwd=b)
    assert yaml.safe_load((b / "params.yaml").read_text())["cache"]["shard_size"] == 4
    assert _outputs(b) == experiment

    # C: the tagged model version and the git-tracked base, with `dvc artifacts get`.
    c = team.clone("C")
    got = tmp_path / "got"
    team.dvc("artifacts", "get", str(c), "facemogle-model", "-o", str(got / "model"),
             cwd=tmp_path)
    assert _hashes(got / "model") == baseline["model"]
    team.dvc("artifacts", "get", str(c), "embedded-base", "-o", str(got / "base"),
             cwd=tmp_path)
    assert _hashes(got / "base") == _hashes(embedded_base)
    assert not (c / "data" / "model").exists()
    # Everything went through the committed default remote, `~/facemogle-dvc-remote`.
    assert (team.home / "facemogle-dvc-remote" / "files" / "md5").is_dir()
