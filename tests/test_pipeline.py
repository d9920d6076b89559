"""The DVC pipeline: declared params, and a real `dvc repro` + `dvc exp run` on a smoke profile."""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dvc.repo import Repo

from conftest import merge
from facemogle.core.config import set_sections
from facemogle.core.resume import check_folder

ROOT = Path(__file__).resolve().parents[1]
DVC = [sys.executable, "-m", "dvc"]

# Tiny sizes and few steps on the tiny embedded base of the tests (64 px, trained on the first 8
# faces): the whole pipeline in well under a minute or two on 2 cores.
SMOKE = {
    "data": {"resolution": 64, "num_train": 24, "num_test": 6, "captions_per_image": 2},
    "zeroshot": {"num_test": 4},
    # Photos are parsed at 128 px in the default (tests/test_synthfaces_variety.py); 64 px crops
    # are too small for the face mesh.
    "offdist": {"num_beyond": 3, "num_drawn": 2, "photos": False},
    "base": {"text_max_tokens": 8},
    "train": {"steps": 8, "batch_size": 4, "checkpoint_every": 4, "log_every": 2},
    "sample": {"steps": 4, "batch_size": 6},
    "evaluate": {"kid_subsets": 10, "kid_subset_size": 4, "detector_folds": 2,
                 "detector_steps": 5},
}


def _env() -> dict[str, str]:
    # Stage commands say `python`: it must be this interpreter, venv activated or not.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return dict(os.environ, PATH=path, DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1",
                OMP_NUM_THREADS="2", GIT_AUTHOR_NAME="ci", GIT_AUTHOR_EMAIL="ci@example.invalid",
                GIT_COMMITTER_NAME="ci", GIT_COMMITTER_EMAIL="ci@example.invalid")


def _run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, (f"{cmd} failed:\n{result.stdout[-3000:]}\n"
                                    f"{result.stderr[-5000:]}")
    return result


def _project_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [f for f in listed.splitlines() if (ROOT / f).is_file()]


def _stage_module(cmd: str) -> str:
    """The stage script a dvc.yaml command runs (the last `-m stages.X`: torchrun stages check
    their params with `stages.check_params` first)."""
    return re.findall(r"-m (stages\.\w+)", cmd)[-1]


def test_every_stage_declares_exactly_the_params_sections_it_reads():
    """Each stage of dvc.yaml, `foreach` entries expanded by DVC itself, tracks exactly the
    params sections its module reads (a `--set zeroshot` entry also reads `zeroshot`)."""
    with Repo(str(ROOT)) as repo:
        stages = list(repo.index.stages)
    assert {s.addressing for s in stages} >= {"download@test", "download@zeroshot", "train",
                                              "sample@zeroshot", "evaluate@zeroshot", "report"}
    for stage in stages:
        module = importlib.import_module(_stage_module(stage.cmd))
        eval_set = re.search(r"--set (\w+)", stage.cmd)
        expected = (set_sections(module.PARAMS, eval_set.group(1)) if eval_set
                    else module.PARAMS)
        declared = {key for dep in stage.params for key in dep.params}
        assert declared == set(expected), stage.addressing


def _imported_files(module: str) -> set[str]:
    """Project files that importing `module` runs: its own file, every project module it imports
    (transitively, read from the source), and their packages' `__init__.py` where those hold
    code beyond a docstring and constants."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # a module imports its parent packages first
            stem = ROOT.joinpath(*parts[:depth])
            path = stem.with_suffix(".py") if stem.with_suffix(".py").exists() \
                else stem / "__init__.py"
            if not path.exists() or path in seen:
                continue
            seen.add(path)
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    todo += [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    todo += [node.module] + [f"{node.module}.{a.name}" for a in node.names]

    def has_code(path: Path) -> bool:
        return path.name != "__init__.py" or any(
            isinstance(n, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef))
            for n in ast.parse(path.read_text()).body)

    return {p.relative_to(ROOT).as_posix() for p in seen
            if p.relative_to(ROOT).parts[0] in ("facemogle", "stages") and has_code(p)}


def test_every_stage_depends_on_the_code_it_imports():
    """A change to any project module a stage imports re-runs that stage (`dvc.yaml` deps,
    listed as files or as the folders holding them)."""
    with Repo(str(ROOT)) as repo:
        stages = list(repo.index.stages)
    for stage in stages:
        module = _stage_module(stage.cmd)
        deps = [Path(d.def_path).as_posix().rstrip("/") for d in stage.deps]
        missing = sorted(f for f in _imported_files(module)
                         if not any(f == d or f.startswith(d + "/") for d in deps))
        assert not missing, f"{stage.addressing} imports {missing} but does not depend on them"


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory, embedded_base) -> Path:
    """A copy of the project, as its own git repo, with the smoke profile and the tests' tiny
    embedded base committed."""
    return make_smoke_repo(tmp_path_factory.mktemp("smoke") / "repo", embedded_base, SMOKE)


def make_smoke_repo(repo: Path, embedded_base: Path, profile: dict) -> Path:
    """The project's files copied to `repo` (no dvc.lock, no metrics), `profile` merged into its
    params.yaml and the tiny `embedded_base` as pretrained/embedded, committed on `main` of a new
    git repository. Returns `repo`."""
    for rel in _project_files():
        if rel.startswith("pretrained/") or rel == "dvc.lock":
            continue
        target = repo / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    shutil.rmtree(repo / "metrics", ignore_errors=True)
    shutil.copytree(embedded_base, repo / "pretrained" / "embedded")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(merge(params, profile), sort_keys=False))
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "smoke"]):
        _run(["git", *cmd], repo)
    return repo


@pytest.mark.slow
def test_dvc_repro_then_exp_run_changes_params_and_metrics(smoke_repo):
    repo = smoke_repo
    _run(DVC + ["repro"], repo)
    for mode in ("multimodal", "mask2face", "text2face", "base"):
        metrics = json.loads((repo / "metrics" / "eval" / f"{mode}.json").read_text())
        assert metrics["mask_miou"] is not None
        samples = list((repo / "data" / "samples" / mode).glob("*.png"))
        assert len(samples) == SMOKE["data"]["num_test"]
    assert (repo / "metrics" / "sheets" / "multimodal.png").exists()
    # The zero-shot entry: its own test faces, sampled by the same model, beside in the report.
    zeroshot = repo / "data" / "zeroshot"
    assert json.loads((zeroshot / "raw" / "split.json").read_text())["train"] == []
    assert len(list((zeroshot / "samples" / "text2face").glob("*.png"))) == 4
    offdist = repo / "data" / "offdist"
    assert len(list((offdist / "samples" / "multimodal").glob("*.png"))) == 5
    report = (repo / "metrics" / "report.md").read_text()
    assert "| Face-MoGLE (in-distribution) |" in report and "| Face-MoGLE (zero-shot) |" in report
    assert "| Face-MoGLE (off-distribution) |" in report and "mIoU-drawn" in report
    # `dvc plots show` renders train's DVCLive curves (DVC-cached, not git-tracked).
    _run(DVC + ["plots", "show", "-o", "plots-html"], repo)
    html = (repo / "plots-html" / "index.html").read_text()
    assert "metrics/train/plots/metrics/loss.tsv" in html and '"loss":' in html
    shutil.rmtree(repo / "plots-html")
    # A second repro has nothing to do.
    again = _run(DVC + ["repro"], repo)
    assert "Running stage" not in again.stdout
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "baseline"], repo)
    before = {m: _pngs(repo / "data" / "samples" / m) for m in ("text2face", "base")}
    _run(DVC + ["exp", "run", "-n", "scalar", "-S", "gating=scalar"], repo)
    diff = _run(DVC + ["exp", "diff", "--json"], repo)
    changes = json.loads(diff.stdout)
    assert changes["params"]["params.yaml"]["gating"]["new"] == "scalar"
    assert any(changes["metrics"][f] for f in changes["metrics"]), "metrics did not change"
    # text2face runs through the trained LoRA and MoGLE: another checkpoint, other faces; the
    # plain base (no condition tokens) is the same frozen transformer in both.
    assert _pngs(repo / "data" / "samples" / "text2face") != before["text2face"]
    assert _pngs(repo / "data" / "samples" / "base") == before["base"]


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


@pytest.mark.slow
def test_invalid_param_stops_the_stage_at_start_naming_the_key(smoke_repo):
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    params = yaml.safe_load((smoke_repo / "params.yaml").read_text())
    bad = smoke_repo / "bad-params.yaml"
    for override, key in (({"gating": "foo"}, "gating"), ({"train": {"steps": -1}}, "train.steps"),
                          ({"data": {"resolution": 72}}, "data.resolution")):
        bad.write_text(yaml.safe_dump(merge(params, override)))
        result = subprocess.run([sys.executable, "-m", "stages.train", "--latents", "x", "--base",
                                 "x", "--out", "x", "--metrics-dir", "x", "--params", str(bad)],
                                cwd=smoke_repo, env=env, capture_output=True, text=True)
        assert result.returncode != 0
        assert f"'{key}'" in result.stderr


def _kill_after_first_checkpoint(cmd: list[str], repo: Path, checkpoints: Path) -> int:
    """Start `cmd` in its own process group, SIGKILL the group once a checkpoint is in
    `checkpoints`; returns the step of the newest checkpoint left."""
    proc = subprocess.Popen(cmd, cwd=repo, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not any(
            checkpoints.glob("step-*/manifest.json")):
        time.sleep(0.05)
    assert proc.poll() is None, f"training exited early:\n{proc.stderr.read()[-3000:]}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    steps = [int(c.name.split("-")[1]) for c in checkpoints.glob("step-*")
             if (c / "manifest.json").exists()]
    assert steps, "no checkpoint was written before the kill"
    return max(steps)


@pytest.mark.slow
def test_killed_training_resumes_from_its_work_folder(smoke_repo, tmp_path):
    """`dvc repro train` killed after a checkpoint: `data/model` is a plain output, which DVC
    deletes before the stage runs, but the checkpoints are in `data/.resume/model`, not an
    output, so the next `dvc repro train` resumes from the last one; it then moves the model
    into `data/model` and deletes the work folder. Other params do not resume from it."""
    repo = smoke_repo
    params_path, original = repo / "params.yaml", (repo / "params.yaml").read_text()
    params = yaml.safe_load(original)
    work = repo / "data" / ".resume" / "model"
    try:
        params_path.write_text(yaml.safe_dump(merge(params, {"train": {
            "steps": 30, "checkpoint_every": 2}}), sort_keys=False))
        _run(DVC + ["repro", "cache_latents@test"], repo)  # so that the kill lands in train
        killed_at = _kill_after_first_checkpoint(DVC + ["repro", "train"], repo,
                                                 work / "checkpoints")
        assert killed_at < 30 and not (repo / "data" / "model").exists()
        # Another step count is another config: a run on a copy of the state starts afresh.
        shutil.copytree(work, tmp_path / "work")
        other = tmp_path / "params.yaml"
        other.write_text(yaml.safe_dump(merge(params, {"train": {"steps": killed_at + 2}})))
        result = _run([sys.executable, "-m", "stages.train", "--latents", "data/latents",
                       "--base", "data/base", "--out", str(tmp_path / "model"), "--metrics-dir",
                       str(tmp_path / "metrics"), "--resume-dir", str(tmp_path / "work"),
                       "--params", str(other)], repo)
        assert "resuming from" not in result.stderr and not (tmp_path / "work").exists()
        resumed = _run(DVC + ["repro", "train"], repo)
        assert (f"resuming from data/.resume/model/checkpoints/step-{killed_at:06d} at step "
                f"{killed_at}") in resumed.stderr + resumed.stdout
        assert not work.exists()
        assert sorted(p.name for p in (repo / "data" / "model").iterdir()) == [
            "config.json", "lora.safetensors", "manifest.json", "mogle.safetensors"]
        assert check_folder(repo / "data" / "model")
    finally:
        params_path.write_text(original)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _train_command(launcher: str, procs: int) -> list[str]:
    bin_dir = Path(sys.executable).parent
    if launcher == "torchrun":
        return [str(bin_dir / "torchrun"), "--standalone", "--nproc_per_node", str(procs), "-m"]
    if launcher == "accelerate-multi":  # DDP processes; train.py joins them over gloo on a CPU
        return [str(bin_dir / "accelerate"), "launch", "--multi_gpu", "--num_processes",
                str(procs), "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", "--main_process_port", str(_free_port()), "-m"]
    assert launcher == "accelerate-cpu"
    return [str(bin_dir / "accelerate"), "launch", "--cpu", "--num_processes", str(procs),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m"]


def _smoke_training(repo: Path, tmp_path: Path, name: str, launcher: str, procs: int,
                    batch: int, check: bool = True) -> subprocess.CompletedProcess:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(merge(params, {"train": {
        "steps": 4, "batch_size": batch, "log_every": 1, "num_processes": procs}})))
    cmd = _train_command(launcher, procs) + [
        "stages.train", "--latents", "data/latents", "--base", "data/base", "--out",
        str(tmp_path / f"model-{name}"), "--metrics-dir", str(tmp_path / f"metrics-{name}"),
        "--params", str(path)]
    if check:
        return _run(cmd, repo)
    return subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="2", HF_HUB_OFFLINE="1"))


def _losses(tmp_path: Path, name: str) -> list[float]:
    rows = (tmp_path / f"metrics-{name}" / "plots" / "metrics" / "loss.tsv").read_text().split()
    return [float(v) for v in rows[2:][1::2]]


@pytest.mark.slow
def test_two_processes_reproduce_one_process_with_the_same_global_batch(smoke_repo, tmp_path):
    """DDP over gloo on CPU, started by torchrun (the stage command) and by `accelerate launch`:
    2 processes x batch 2 give the losses of 1 process x batch 4 (docs/design.md, "Training")."""
    repo = smoke_repo
    if not (repo / "data" / "latents" / "index.json").exists():
        _run(DVC + ["repro", "cache_latents"], repo)
    _smoke_training(repo, tmp_path, "one", "torchrun", 1, 4)
    reference = _losses(tmp_path, "one")
    assert len(reference) == 4
    seed = yaml.safe_load((repo / "params.yaml").read_text())["seed"]
    for launcher in ("torchrun", "accelerate-multi"):
        result = _smoke_training(repo, tmp_path, launcher, launcher, 2, 2)
        assert _losses(tmp_path, launcher) == pytest.approx(reference, rel=1e-4), launcher
        # Same batches, but each process seeds its module randomness (LoRA dropout) apart.
        seeds = re.findall(r"process (\d)/2: module randomness seeded with (\d+)", result.stderr)
        assert sorted(seeds) == [("1", str(seed)), ("2", str(seed + 1))], launcher


@pytest.mark.slow
def test_a_launch_with_fewer_processes_than_declared_is_refused(smoke_repo, tmp_path):
    """`accelerate launch --cpu --num_processes 2` starts one process (accelerate runs several
    CPU processes only through MPI): training would silently halve the global batch, so the
    stage refuses it, naming the param, before writing anything."""
    repo = smoke_repo
    if not (repo / "data" / "latents" / "index.json").exists():
        _run(DVC + ["repro", "cache_latents"], repo)
    result = _smoke_training(repo, tmp_path, "cpu", "accelerate-cpu", 2, 2, check=False)
    assert result.returncode != 0
    assert "train.num_processes is 2 but 1 process(es) joined this run" in result.stderr
    assert not (tmp_path / "model-cpu").exists()
