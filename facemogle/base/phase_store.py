"""Checkpoints of one pretraining phase (VAE, transformer or parser), so a run of hours resumes.

A phase folder holds `model.safetensors`, `optimizer.safetensors`, `rng.safetensors` (the
phase's batch/noise generator) and `state.json` (step, learning-rate schedule, the optimizer's
scalar state, and the run key). A folder written under another key (other training params or
data) is ignored, so a changed run starts that phase afresh instead of resuming a stale one.
`manifest.json` holds the SHA-256 of each file (`facemogle.core.io.write_manifest`); a file that
does not match it stops the restore with an error naming the file.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from facemogle.core.io import (
    atomic_path,
    load_safetensors,
    read_json,
    verify_manifest,
    write_json,
    write_manifest,
)
from facemogle.core.optim_state import load_optimizer, save_optimizer


class PhaseStore:
    """Save/restore one phase under `folder` every `every` steps; `key` identifies the run."""

    def __init__(self, folder: str | Path, every: int, key: Any):
        self.folder, self.every, self.key = Path(folder), every, key
        self._saved_elapsed, self._since = 0.0, time.monotonic()
        self.elapsed = 0.0  # seconds of training up to the last save or restore

    def _running(self) -> float:
        return self._saved_elapsed + time.monotonic() - self._since

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: Any,
                generator: torch.Generator) -> int:
        """Load the saved state into the objects; returns the step to continue from (0: none)."""
        state_path = self.folder / "state.json"
        self._saved_elapsed, self._since = 0.0, time.monotonic()
        if not state_path.is_file():
            return 0
        # A folder saved before stores carried manifests (a long run under way) still resumes.
        verify_manifest(self.folder, required=False)
        state = read_json(state_path)
        if state.get("key") != self.key:
            return 0
        self._saved_elapsed = self.elapsed = float(state.get("elapsed", 0.0))
        model.load_state_dict(load_safetensors(self.folder / "model.safetensors"))
        load_optimizer(self.folder / "optimizer.safetensors", state["optimizer"], optimizer)
        schedule.load_state_dict(state["schedule"])
        generator.set_state(load_safetensors(self.folder / "rng.safetensors")["state"])
        return int(state["step"])

    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             schedule: Any, generator: torch.Generator) -> None:
        """Replace the folder atomically with the state after `step` steps."""
        self.elapsed = self._running()
        with atomic_path(self.folder) as tmp:
            tmp.mkdir(parents=True)
            save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
                      str(tmp / "model.safetensors"))
            meta = save_optimizer(tmp / "optimizer.safetensors", optimizer)
            save_file({"state": generator.get_state()}, str(tmp / "rng.safetensors"))
            write_json(tmp / "state.json", {"step": step, "key": self.key, "optimizer": meta,
                                            "schedule": schedule.state_dict(),
                                            "elapsed": self.elapsed})
            write_manifest(tmp)
