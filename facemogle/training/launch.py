"""How the processes of a `train` run join: the count params declare, and the params that only
say where they meet.

A run is `train.num_processes` processes on each of `train.nnodes` nodes. dvc.yaml starts them
with torchrun (one node: a rendezvous on a free local port, as `--standalone`); recipes/ holds
a Slurm script and a SkyPilot task for several nodes (docs/full-setting.md, "Several nodes").
`batch_size` counts samples per process, so a run that joined any other number of processes
would train on another global batch: `check_world` stops it first.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from facemogle.core.config import ConfigError, TrainConfig

# `train` keys that say how the processes meet, not what they train: a checkpoint is resumed
# whatever they were (a Slurm job that restarts on another head node still resumes).
LAUNCH_ONLY = ("rdzv_endpoint",)


def check_world(cfg: TrainConfig, joined: int, env: Mapping[str, str] = os.environ) -> None:
    """Raise a `ConfigError` unless `joined` processes are `train.nnodes` x
    `train.num_processes`; the message says how the launch was shaped when torchrun says it
    (`GROUP_WORLD_SIZE` nodes of `LOCAL_WORLD_SIZE` processes)."""
    declared = cfg.nnodes * cfg.num_processes
    if joined == declared:
        return
    nodes, per_node = env.get("GROUP_WORLD_SIZE"), env.get("LOCAL_WORLD_SIZE")
    shape = f" ({nodes} node(s) x {per_node})" if nodes and per_node else ""
    if cfg.nnodes == 1:
        raise ConfigError(
            f"train.num_processes is {declared} but {joined} process(es) joined this run"
            f"{shape}; start {declared} with `torchrun --standalone --nproc_per_node {declared}` "
            f"or `accelerate launch --multi_gpu --num_processes {declared}`, or set "
            f"train.num_processes={joined} (`accelerate launch --cpu` starts a single process "
            "unless MPI is configured)")
    raise ConfigError(
        f"train.nnodes x train.num_processes is {cfg.nnodes} x {cfg.num_processes} = "
        f"{declared} but {joined} process(es) joined this run{shape}; start torchrun on each "
        f"of {cfg.nnodes} nodes with `--nnodes {cfg.nnodes} --nproc-per-node "
        f"{cfg.num_processes}` and one rendezvous endpoint, or set train.nnodes and "
        "train.num_processes to the launch")


def without_launch(resolved: dict) -> dict:
    """`resolved` without the `train` keys of `LAUNCH_ONLY`: the config a checkpoint and the
    trained model folder record, and a resume is matched on."""
    train = resolved.get("train")
    if not isinstance(train, dict):
        return resolved
    return {**resolved, "train": {k: v for k, v in train.items() if k not in LAUNCH_ONLY}}
