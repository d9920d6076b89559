"""Training on several nodes: train.nnodes and train.rdzv_endpoint, the world-size check, the
dvc.yaml command, the Slurm and SkyPilot recipes, and two "nodes" on this machine."""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from accelerate import Accelerator
from dvc.repo import Repo
from torch.distributed.run import get_args_parser

from facemogle.core.config import ConfigError, params_from_dict, to_dict
from facemogle.core.resume import check_folder
from facemogle.training.launch import check_world
from facemogle.training.loop import make_accelerator, train
from test_training import fake_cache, tiny_model

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = str(Path(sys.executable).parent / "torchrun")
STAGE_ARGS = ["--latents", "data/latents", "--base", "data/base", "--out", "data/model",
              "--metrics-dir", "metrics/train"]


def _train(**values):
    return params_from_dict({"train": values}).train


@pytest.mark.parametrize("values, key", [
    ({"nnodes": 0}, "train.nnodes"),
    ({"rdzv_endpoint": "node0"}, "train.rdzv_endpoint"),
    ({"rdzv_endpoint": "node0:port"}, "train.rdzv_endpoint"),
    ({"rdzv_endpoint": "node 0:29500"}, "train.rdzv_endpoint"),
    ({"nnodes": 2}, "train.rdzv_endpoint"),  # localhost:0: each node would pick its own port
])
def test_launch_params_are_checked(values, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        _train(**values)


def test_launch_params_accept_endpoints():
    assert _train().rdzv_endpoint == "localhost:0" and _train().nnodes == 1
    for endpoint in ("node0:29500", "10.0.0.1:29500", "[fe80::1]:29500"):
        assert _train(nnodes=4, rdzv_endpoint=endpoint).rdzv_endpoint == endpoint


def test_a_world_other_than_nnodes_x_num_processes_is_refused():
    cfg = _train(nnodes=2, num_processes=4, rdzv_endpoint="node0:29500")
    check_world(cfg, 8, env={})
    with pytest.raises(ConfigError) as refused:
        check_world(cfg, 4, env={"GROUP_WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "4"})
    assert str(refused.value).startswith(
        "train.nnodes x train.num_processes is 2 x 4 = 8 but 4 process(es) joined this run "
        "(1 node(s) x 4); start torchrun on each of 2 nodes with `--nnodes 2 --nproc-per-node 4`")
    # One process, as the accelerator of a plain `python -m stages.train` sees it (fp32: the
    # accelerator's state outlives it, and the other tests' accelerators are fp32).
    with pytest.raises(ConfigError, match=r"is 2 x 1 = 2 but 1 process\(es\) joined"):
        make_accelerator(_train(nnodes=2, rdzv_endpoint="node0:29500", mixed_precision="fp32"))


def test_checkpoints_resume_whatever_the_rendezvous_endpoint(tmp_path, caplog):
    """A Slurm job restarted on another head node resumes: the endpoint is not part of the
    config a checkpoint is matched on, nor of the trained model's config.json."""
    def run(steps, endpoint):
        p = params_from_dict({"train": {"steps": steps, "batch_size": 2, "checkpoint_every": 1,
                                        "optimizer": "adamw", "lr": 1e-3,
                                        "mixed_precision": "fp32", "rdzv_endpoint": endpoint}})
        resolved = {"train": to_dict(p.train) | {"steps": 2}}
        return train(tiny_model(), fake_cache(), p, tmp_path, accelerator=Accelerator(cpu=True),
                     resolved=resolved)

    run(1, "node0:29500")
    with caplog.at_level(logging.INFO):
        run(2, "node7:29500")
    assert "at step 1" in caplog.text
    assert "rdzv_endpoint" not in json.loads((tmp_path / "config.json").read_text())["train"]


def _train_command() -> list[str]:
    with Repo(str(ROOT)) as repo:
        stage = next(s for s in repo.index.stages if s.addressing == "train")
    first, torchrun = stage.cmd.split(" && ")
    assert first == "python -m stages.check_params"
    return shlex.split(torchrun)


def test_the_stage_command_is_one_node_on_a_free_local_port_by_default():
    """dvc.yaml's torchrun with the default params: torchrun's --standalone, spelled out
    (torch/distributed/run.py sets backend c10d and endpoint localhost:0 for --standalone)."""
    argv = _train_command()
    assert argv[0] == "torchrun"
    args = get_args_parser().parse_args(argv[1:])
    assert not args.standalone
    assert (args.nnodes, args.nproc_per_node) == ("1", "1")
    assert (args.rdzv_backend, args.rdzv_endpoint) == ("c10d", "localhost:0")
    assert args.module and args.training_script == "stages.train"
    assert args.training_script_args == STAGE_ARGS


@pytest.mark.slow
def test_the_stage_command_trains_on_one_node(trained_run, tmp_path):
    """dvc.yaml's train command as DVC runs it (check_params, then torchrun with a c10d
    rendezvous on localhost:0), on the tiny run's latents and base: the model and DVCLive's
    metrics."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "latents").symlink_to(trained_run.latents)
    (tmp_path / "data" / "base").symlink_to(trained_run.base)
    shutil.copy(trained_run.params, tmp_path / "params.yaml")
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    result = subprocess.run(["bash", "-c", " && ".join(
        ["python -m stages.check_params", shlex.join(_train_command())])], cwd=tmp_path,
        env=dict(os.environ, PATH=path, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"),
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert check_folder(tmp_path / "data" / "model")
    steps = yaml.safe_load(trained_run.params.read_text())["train"]
    assert [s for s, _ in _losses(tmp_path / "metrics" / "train")] == list(
        range(steps["log_every"], steps["steps"] + 1, steps["log_every"]))
    assert json.loads((tmp_path / "metrics" / "train" / "metrics.json").read_text())[
        "step"] == steps["steps"]


def _stubs(folder: Path, names: list[str]) -> Path:
    """Commands that write their arguments, one a line, to `<name>.args` in `folder`."""
    folder.mkdir()
    for name in names:
        stub = folder / name
        stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> "{folder}/{name}.args"\n')
        stub.chmod(0o755)
    return folder


def test_the_slurm_recipe_runs_torchrun_once_per_node_at_the_first_nodes_rendezvous(tmp_path):
    bin_dir = _stubs(tmp_path / "bin", ["srun"])
    (bin_dir / "scontrol").write_text('#!/bin/sh\n[ "$*" = "show hostnames gpu[07-08]" ] && '
                                      'printf "gpu07\\ngpu08\\n"\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               SLURM_JOB_NODELIST="gpu[07-08]", SLURM_JOB_NUM_NODES="2", SLURM_JOB_ID="4242")
    script = str(ROOT / "recipes" / "slurm" / "train.sbatch")
    subprocess.run(["bash", script, "8", *STAGE_ARGS], cwd=tmp_path, env=env, check=True)
    assert (bin_dir / "srun.args").read_text().split() == [
        "--kill-on-bad-exit=1", "--ntasks-per-node=1", "torchrun", "--nnodes", "2",
        "--nproc-per-node", "8", "--rdzv-backend", "c10d", "--rdzv-endpoint", "gpu07:29500",
        "--rdzv-id", "4242", "-m", "stages.train", *STAGE_ARGS]
    usage = subprocess.run(["bash", script], cwd=tmp_path, env=env, capture_output=True,
                           text=True)
    assert usage.returncode == 2 and "usage: sbatch --wait --nodes N" in usage.stderr


@pytest.mark.parametrize("node_rank", [0, 1])
def test_the_skypilot_task_gives_torchrun_skypilots_node_rank_and_head(tmp_path, node_rank):
    task = yaml.safe_load((ROOT / "recipes" / "skypilot" / "train.yaml").read_text())
    assert task["workdir"] == "." and task["num_nodes"] >= 2
    assert "dvc pull data/latents" in task["setup"]
    bin_dir = _stubs(tmp_path / "bin", ["torchrun", "python", "dvc"])
    home = tmp_path / "home"
    (home / "facemogle-venv" / "bin").mkdir(parents=True)
    (home / "facemogle-venv" / "bin" / "activate").write_text("")
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", HOME=str(home),
               NPROC="8", SKYPILOT_NUM_NODES="2", SKYPILOT_NODE_RANK=str(node_rank),
               SKYPILOT_NODE_IPS="10.0.0.5\n10.0.0.6\n")
    subprocess.run(["bash", "-c", task["run"]], cwd=tmp_path, env=env, check=True)
    assert (bin_dir / "python.args").read_text().split() == ["-m", "stages.check_params"]
    assert (bin_dir / "torchrun.args").read_text().split() == [
        "--nnodes", "2", "--nproc-per-node", "8", "--node-rank", str(node_rank),
        "--master-addr", "10.0.0.5", "--master-port", "29500", "-m", "stages.train",
        *STAGE_ARGS]
    pushed = (bin_dir / "dvc.args").read_text().split() if node_rank == 0 else []
    assert pushed == (["commit", "--force", "train", "push", "train"] if node_rank == 0 else [])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _losses(metrics: Path) -> list[tuple[int, float]]:
    rows = (metrics / "plots" / "metrics" / "loss.tsv").read_text().splitlines()[1:]
    return [(int(s), float(v)) for s, v in (r.split("\t") for r in rows)]


@pytest.mark.slow
def test_two_nodes_reproduce_one_process_with_the_same_global_batch(tmp_path):
    """Two torchrun "nodes" on this machine (c10d rendezvous on a local port, one gloo process
    each, batch 2) give the losses of one process with batch 4.

    Every process draws the same global batch from the shared generator and trains on its half
    (`draw_batch`); DDP averages the two halves' gradients, which equals the full batch's mean
    gradient up to the order of float32 sums. The losses therefore agree to rounding: well
    within rel 1e-4 over 3 Prodigy steps (a loss of about 2.4; float32's epsilon is 1.2e-7,
    and a few steps of the optimizer do not grow rounding by three orders of magnitude). A
    wrong split (other rows, dropout or noise per rank) or a missing all-reduce changes them
    in the first or second decimal.
    """
    worker = str(ROOT / "tests" / "tiny_train_worker.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    endpoint = f"localhost:{_free_port()}"
    node = [TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", endpoint, "--rdzv-id", "two-nodes", worker,
            str(tmp_path / "two"), str(tmp_path / "metrics-two"), "2", "2", "1", endpoint]
    one = [sys.executable, worker, str(tmp_path / "one"), str(tmp_path / "metrics-one"), "4",
           "1", "1", "localhost:0"]
    runs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True) for cmd in (node, node, one)]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-3000:]
    reference, two = _losses(tmp_path / "metrics-one"), _losses(tmp_path / "metrics-two")
    assert [s for s, _ in two] == [s for s, _ in reference] == [1, 2, 3]
    assert [v for _, v in two] == pytest.approx([v for _, v in reference], rel=1e-4)
