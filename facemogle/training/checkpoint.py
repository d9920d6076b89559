"""Checkpoint I/O: safetensors weights + JSON, written atomically, never pickled.

A model folder (the `train` stage's output, and every checkpoint inside it) holds:

    lora.safetensors     peft LoRA state of the condition adapter
    mogle.safetensors    MoGLE state
    config.json          the resolved params the model was trained with

A training checkpoint (`checkpoints/step-NNNNNN/`) adds `optimizer.safetensors` (the optimizer's
tensors), `trainer.json` (step, loss history, the optimizer's scalar state and param groups) and
`rng.safetensors` (the batch/noise generator), which is everything a resume needs.

Both carry `manifest.json`, the SHA-256 and size of each of their files (`write_manifest` in
`facemogle.core.io`). Loading checks it first, so a truncated, corrupt or byte-flipped file stops
with an error naming the file; a resume skips a checkpoint that fails the check and takes the
newest one that passes.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from facemogle.core.io import (
    InputError,
    atomic_path,
    load_safetensors,
    read_json,
    verify_manifest,
    write_json,
    write_manifest,
)
from facemogle.core.optim_state import load_optimizer, save_optimizer
from facemogle.models.condition import load_lora_state_dict, lora_state_dict
from facemogle.models.facemogle import FaceMoGLE

STEP_PREFIX = "step-"

log = logging.getLogger(__name__)


def write_weights(folder: Path, model, config: dict) -> None:
    """Write `lora.safetensors`, `mogle.safetensors` and `config.json` into `folder`."""
    save_file({k: v.detach().cpu().contiguous() for k, v in
               lora_state_dict(model.transformer).items()}, str(folder / "lora.safetensors"))
    save_file({k: v.detach().cpu().contiguous() for k, v in model.mogle.state_dict().items()},
              str(folder / "mogle.safetensors"))
    write_json(folder / "config.json", config)


def save_model(out_dir: str | Path, model, config: dict) -> None:
    """Write the trained weights, resolved config and their manifest into `out_dir`, beside what
    it already holds (the run's `checkpoints/`). They are written in a temporary sibling folder
    and then moved in, each file atomically, so a failed write leaves `out_dir` as it was."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        write_weights(staging, model, config)
        write_manifest(staging)
        out_dir.mkdir(exist_ok=True)
        for f in staging.iterdir():
            f.replace(out_dir / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_model_weights(folder: str | Path, model, *, verify: bool = True) -> dict:
    """Load LoRA and MoGLE weights from a model folder into `model`; returns its config. The
    folder's files are checked against its manifest first, unless `verify` is False (the caller
    has just checked them)."""
    folder = Path(folder)
    for name in ("lora.safetensors", "mogle.safetensors", "config.json"):
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder}: not a Face-MoGLE model folder (missing {name})")
    if verify:
        verify_manifest(folder)
    load_lora_state_dict(model.transformer, load_safetensors(folder / "lora.safetensors"))
    model.mogle.load_state_dict(load_safetensors(folder / "mogle.safetensors"), strict=True)
    return read_json(folder / "config.json")


def save_training_state(ckpt_root: str | Path, step: int, model, optimizer,
                        generator: torch.Generator, history: list, config: dict, *,
                        keep: int = 2) -> Path:
    """Write checkpoint `step-NNNNNN` atomically and keep only the newest `keep` checkpoints."""
    ckpt_root = Path(ckpt_root)
    target = ckpt_root / f"{STEP_PREFIX}{step:06d}"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        write_weights(tmp, model, config)
        meta = save_optimizer(tmp / "optimizer.safetensors", optimizer)
        save_file({"state": generator.get_state()}, str(tmp / "rng.safetensors"))
        write_json(tmp / "trainer.json", {"step": step, "history": history, "optimizer": meta})
        write_manifest(tmp)
    for old in sorted(ckpt_root.glob(f"{STEP_PREFIX}*"))[:-keep]:
        shutil.rmtree(old)
    return target


def find_resumable(ckpt_root: str | Path, config: dict) -> Path | None:
    """The newest checkpoint written under the same resolved config whose files pass its
    manifest, or None; a damaged checkpoint is skipped with a warning naming it and the fault."""
    for folder in sorted(Path(ckpt_root).glob(f"{STEP_PREFIX}*"), reverse=True):
        try:
            if read_json(folder / "config.json") != config:
                continue
            verify_manifest(folder)
        except InputError as err:
            log.warning("skipping checkpoint %s: %s", folder, err)
            continue
        return folder
    return None


def load_training_state(folder: str | Path, model, optimizer,
                        generator: torch.Generator) -> tuple[int, list]:
    """Restore weights, optimizer and generator from a checkpoint that `find_resumable` returned
    (which checked its manifest); returns (step, history)."""
    folder = Path(folder)
    load_model_weights(folder, model, verify=False)
    trainer = read_json(folder / "trainer.json")
    load_optimizer(folder / "optimizer.safetensors", trainer["optimizer"], optimizer)
    generator.set_state(load_safetensors(folder / "rng.safetensors")["state"])
    return trainer["step"], [tuple(h) for h in trainer["history"]]


def load_trained(transformer, model_dir: str | Path, params, *, verify: bool = True):
    """Face-MoGLE rebuilt on `transformer` from `params` (`FaceMoGLE.from_params`) with the
    trained weights of `model_dir`, in eval mode; `verify` as in `load_model_weights`."""
    model = FaceMoGLE.from_params(transformer, params)
    model.float32_trainables()  # as trained, before the float32 weights are loaded
    load_model_weights(model_dir, model, verify=verify)
    return model.eval()
