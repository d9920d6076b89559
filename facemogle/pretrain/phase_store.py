"""Checkpoints of one pretraining phase (VAE, transformer or parser), so a run of hours resumes.

A phase folder is a resumable state of `facemogle.core.resume`: `model.safetensors`,
`optimizer.safetensors`, `rng.safetensors` (the phase's batch/noise generator), `state.json`
(step, run key, learning-rate schedule, training time, the optimizer's scalar state) and
`manifest.json`. A folder written under another key (other training params or data) is ignored,
so a changed run starts that phase afresh instead of resuming a stale one. A file that does not
match the manifest stops the restore with an error naming the file (there is no older state to
fall back to); a folder written before manifests still resumes, unchecked.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from facemogle.core.io import load_safetensors
from facemogle.core.resume import check_folder, load_state, read_record, save_state

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.json"


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
        self._saved_elapsed, self._since = 0.0, time.monotonic()
        if not (self.folder / STATE_FILE).is_file():
            return 0
        check_folder(self.folder, required=False)
        state = read_record(self.folder, STATE_FILE)
        if state.get("key") != self.key:
            return 0
        self._saved_elapsed = self.elapsed = float(state.get("elapsed", 0.0))
        model.load_state_dict(load_safetensors(self.folder / MODEL_FILE))
        step = load_state(self.folder, optimizer, generator, state)
        schedule.load_state_dict(state["schedule"])
        return step

    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             schedule: Any, generator: torch.Generator) -> None:
        """Replace the folder atomically with the state after `step` steps."""
        self.elapsed = self._running()

        def write_model(tmp: Path) -> None:
            save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
                      str(tmp / MODEL_FILE))

        save_state(self.folder, step, optimizer, generator, write_model=write_model,
                   record_file=STATE_FILE, record={"key": self.key,
                                                   "schedule": schedule.state_dict(),
                                                   "elapsed": self.elapsed})
