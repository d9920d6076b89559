"""The tiny training of tests/test_training.py as a script that torchrun can start (gloo on CPU):
3 steps of the tiny Face-MoGLE on the fake latent cache, logged every step to DVCLive.

    python tests/tiny_train_worker.py OUT METRICS BATCH NNODES NPROC ENDPOINT

BATCH is per process; NNODES, NPROC and ENDPOINT become train.nnodes, train.num_processes and
train.rdzv_endpoint, so the run checks the world it joined (`make_accelerator`).
"""

from __future__ import annotations

import sys

from facemogle.core.config import params_from_dict, to_dict
from facemogle.training.loop import make_accelerator, train
from test_training import fake_cache, tiny_model

STEPS = 3


def main(argv: list[str]) -> int:
    out, metrics, batch, nnodes, nproc, endpoint = argv
    params = params_from_dict({"train": {
        "steps": STEPS, "batch_size": int(batch), "log_every": 1, "checkpoint_every": STEPS,
        "optimizer": "prodigy", "mixed_precision": "fp32", "gradient_checkpointing": False,
        "nnodes": int(nnodes), "num_processes": int(nproc), "rdzv_endpoint": endpoint}})
    accelerator = make_accelerator(params.train)
    train(tiny_model(), fake_cache(), params, out, accelerator=accelerator,
          resolved={"train": to_dict(params.train)}, metrics_dir=metrics, monitor_system=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
