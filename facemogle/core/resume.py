"""A resumable training state: one folder, written atomically, checked before it is read.

The pretraining phases (`facemogle.pretrain.phase_store.PhaseStore`) and the train stage's
checkpoints (`facemogle.training.checkpoint`) both keep their state with `save_state` and read it
back with `check_folder`, `read_record` and `load_state`. A state folder holds

    the model files          written by the caller (`write_model`), read back by it
    optimizer.safetensors    the optimizer's tensors (`facemogle.core.optim_state`)
    rng.safetensors          the batch/noise generator's state
    a record (JSON)          {"step", the caller's fields (the run's key among them),
                              "optimizer": the optimizer's scalar state and param groups}
    manifest.json            SHA-256 and size of every other file (`facemogle.core.io`)

The folder is built in a temporary sibling, its manifest last, and moved into place with one
rename: a crash leaves the previous state or the new one, never a mix. `check_folder` is also the
check of a trained model folder (`facemogle.training.checkpoint.load_model_weights`,
`facemogle.app.pipeline.FaceMoGLEPipeline.from_pretrained`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from facemogle.core.io import (
    MANIFEST_FILE,
    atomic_path,
    load_safetensors,
    read_json,
    verify_manifest,
    write_json,
    write_manifest,
)
from facemogle.core.optim_state import load_optimizer, save_optimizer

OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"

log = logging.getLogger(__name__)


def save_state(folder: str | Path, step: int, optimizer: torch.optim.Optimizer,
               generator: torch.Generator, *, write_model: Callable[[Path], None],
               record_file: str, record: dict[str, Any]) -> Path:
    """Replace `folder` atomically with the state after `step` steps: `write_model(tmp)` writes
    the model files into the new folder, then the optimizer, the generator, the record
    (`{"step": step, **record, "optimizer": ...}` as `record_file`) and the manifest."""
    folder = Path(folder)
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        write_model(tmp)
        meta = save_optimizer(tmp / OPTIMIZER_FILE, optimizer)
        save_file({"state": generator.get_state()}, str(tmp / RNG_FILE))
        write_json(tmp / record_file, {"step": step, **record, "optimizer": meta})
        write_manifest(tmp)
    return folder


def check_folder(folder: str | Path, *, required: bool = True) -> bool:
    """Check the files of a state or model folder against its `manifest.json`; a missing,
    truncated or changed file is an `InputError` naming it, the size or SHA-256 the manifest
    records and what was found.

    A folder without a manifest is refused (`InputError`): model folders and checkpoints have
    carried one since they were first written by this code, so a missing manifest means a folder
    that was not written whole by it. `required=False` (the embedded base's pretraining phases,
    whose states may predate manifests) loads such a folder with a warning and returns False.
    """
    if verify_manifest(folder, required=required):
        return True
    log.warning("%s has no %s (written before phase states carried one): its files are loaded "
                "without their SHA-256 check", folder, MANIFEST_FILE)
    return False


def read_record(folder: str | Path, record_file: str) -> dict | None:
    """The record `save_state` wrote into `folder`, or None where there is none."""
    path = Path(folder) / record_file
    return read_json(path) if path.is_file() else None


def load_state(folder: str | Path, optimizer: torch.optim.Optimizer,
               generator: torch.Generator, record: dict) -> int:
    """Restore the optimizer and the generator from `folder` (`record`: its `read_record`, after
    `check_folder`); returns the step it was saved after. The model files are the caller's."""
    folder = Path(folder)
    load_optimizer(folder / OPTIMIZER_FILE, record["optimizer"], optimizer)
    generator.set_state(load_safetensors(folder / RNG_FILE)["state"])
    return int(record["step"])
