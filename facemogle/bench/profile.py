"""Profiler tables of the top operators and host-device synchronisation sites.
"""

from __future__ import annotations

import os
import re
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode  # torch's dispatch-mode hook
from torch.utils._pytree import tree_leaves

from facemogle.bench.device import Clock, autocast
from facemogle.bench.measure import TrainRun, sample_conditions
from facemogle.core.io import atomic_path, write_json, write_text
from facemogle.sampling.sampler import generate_latents
from facemogle.training.step import make_optimizer

# Operators whose result depends on tensor values read on the host (`.item()` and `bool(t)`
# dispatch `_local_scalar_dense`): a host-device synchronisation when the input is on a device.
SYNC_OPS = frozenset({torch.ops.aten._local_scalar_dense, torch.ops.aten.nonzero,
                      torch.ops.aten.equal, torch.ops.aten.masked_select})


# Frames of the dispatch machinery between a call site and `SyncRecorder`.
INTERNAL_FRAMES = r"/torch/(_dynamo/|utils/_python_dispatch|_ops\.py|_compile\.py)"


def _frame(frames: list[traceback.FrameSummary], own: bool) -> str | None:
    """The innermost frame of the project (`own`) or of a library, as "path:line"."""
    for f in reversed(frames):
        path = f.filename.replace(os.sep, "/")
        is_own = bool(re.search(r"/(facemogle|stages)/", path))
        if is_own == own and not re.search(INTERNAL_FRAMES, path):
            path = re.sub(r".*/site-packages/|.*/(?=(facemogle|stages)/)", "", path)
            return f"{path}:{f.lineno}"
    return None


class SyncRecorder(TorchDispatchMode):
    """Records every operator that reads a tensor's value on the host (`SYNC_OPS`: `.item()`,
    `bool(tensor)`, `nonzero`, ...) with the devices of its inputs and where it was called.

    On an accelerator each is a host-device synchronisation; reads of CPU tensors cost nothing
    and are listed with device "cpu". Exact file:line, unlike the profiler's Python stacks.
    """

    def __init__(self):
        super().__init__()
        self.sites: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in SYNC_OPS:
            devices = sorted({t.device.type for t in tree_leaves((args, kwargs))
                              if isinstance(t, Tensor)})
            frames = traceback.extract_stack()[:-1]  # without this method's own frame
            self.sites[(func.overloadpacket.__name__, ",".join(devices), _frame(frames, True),
                        _frame(frames, False))] += 1
        return func(*args, **(kwargs or {}))

    def report(self, calls: int) -> list[dict[str, Any]]:
        """Sites with their count per call of the recorded code."""
        return [{"op": op, "device": dev, "site": own, "library_site": lib, "per_call": n / calls}
                for (op, dev, own, lib), n in self.sites.most_common()]


def _op_table(device: torch.device, fn: Callable[[], Any]) -> str:
    """PyTorch-profiler table of the top operators of `fn()` by self time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        fn()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=60)


def profile_run(run: TrainRun, batch_size: int, out_dir: str | Path, seed: int,
                steps: int = 2) -> dict[str, Any]:
    """Profile `steps` training steps and one 2-step sampling call.

    Training inputs are prepared first, so only the loss, backward and optimizer are traced.
    Writes `train_ops.txt` and `sample_ops.txt` (top operators) and `host_syncs.json` (the
    `SyncRecorder` sites per training step and per sampling call) to `out_dir`.
    """
    generator = torch.Generator().manual_seed(seed)
    run.model.train()
    trainable = run.model.trainable_parameters()
    optimizer = make_optimizer(trainable, run.cfg)
    clock = Clock(run.device)
    batches = [run.batch(batch_size, generator) for _ in range(2 * steps + 1)]

    def train_steps() -> None:
        for _ in range(steps):
            run.step(batches.pop(), optimizer, trainable, clock)

    cond = sample_conditions(run.cache, batch_size, run.device)

    def sample() -> None:
        with autocast(run.device, run.dtype):
            generate_latents(run.model, cond, list(range(batch_size)),
                             latent_size=run.cache.latent_size, steps=2)

    run.step(batches.pop(), optimizer, trainable, clock)  # optimizer state, warm caches
    report: dict[str, Any] = {"batch_size": batch_size, "train_steps": steps}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        write_text(tmp / "train_ops.txt", _op_table(run.device, train_steps))
        with SyncRecorder() as syncs:
            train_steps()
        report["train_syncs_per_step"] = syncs.report(steps)
        run.model.eval()
        write_text(tmp / "sample_ops.txt", _op_table(run.device, sample))
        with SyncRecorder() as syncs:
            sample()
        report["sample_syncs_per_call"] = syncs.report(1)
        write_json(tmp / "host_syncs.json", report)
    run.model.train()
    return report
