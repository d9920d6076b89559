"""Checkpoint I/O: safetensors weights + JSON, written atomically, never pickled.

A model folder (the `train` stage's output, and every checkpoint inside it) holds:

    lora.safetensors     peft LoRA state of the condition adapter
    mogle.safetensors    MoGLE state
    config.json          the resolved params the model was trained with

A training checkpoint (`checkpoints/step-NNNNNN/`) adds `optimizer.safetensors` (the optimizer's
tensors), `trainer.json` (step, loss history, the optimizer's scalar state and param groups) and
`rng.safetensors` (the batch/noise generator), which is everything a resume needs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from facemogle.core.io import atomic_path, write_json
from facemogle.core.optim_state import load_optimizer, save_optimizer
from facemogle.models.condition import load_lora_state_dict, lora_state_dict
from facemogle.models.facemogle import FaceMoGLE

STEP_PREFIX = "step-"


def write_weights(folder: Path, model, config: dict) -> None:
    """Write `lora.safetensors`, `mogle.safetensors` and `config.json` into `folder`."""
    save_file({k: v.detach().cpu().contiguous() for k, v in
               lora_state_dict(model.transformer).items()}, str(folder / "lora.safetensors"))
    save_file({k: v.detach().cpu().contiguous() for k, v in model.mogle.state_dict().items()},
              str(folder / "mogle.safetensors"))
    write_json(folder / "config.json", config)


def save_model(out_dir: str | Path, model, config: dict) -> None:
    """Write the trained weights and resolved config into `out_dir`, each file atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        write_weights(staging, model, config)
        for f in staging.iterdir():
            f.replace(out_dir / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_model_weights(folder: str | Path, model) -> dict:
    """Load LoRA and MoGLE weights from a model folder into `model`; returns its config."""
    folder = Path(folder)
    for name in ("lora.safetensors", "mogle.safetensors", "config.json"):
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder}: not a Face-MoGLE model folder (missing {name})")
    load_lora_state_dict(model.transformer, load_file(str(folder / "lora.safetensors")))
    model.mogle.load_state_dict(load_file(str(folder / "mogle.safetensors")), strict=True)
    return json.loads((folder / "config.json").read_text())


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
    for old in sorted(ckpt_root.glob(f"{STEP_PREFIX}*"))[:-keep]:
        shutil.rmtree(old)
    return target


def find_resumable(ckpt_root: str | Path, config: dict) -> Path | None:
    """The newest checkpoint written under the same resolved config, or None."""
    for folder in sorted(Path(ckpt_root).glob(f"{STEP_PREFIX}*"), reverse=True):
        try:
            saved = json.loads((folder / "config.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if saved == config:
            return folder
    return None


def load_training_state(folder: str | Path, model, optimizer,
                        generator: torch.Generator) -> tuple[int, list]:
    """Restore weights, optimizer and generator from a checkpoint; returns (step, history)."""
    folder = Path(folder)
    load_model_weights(folder, model)
    trainer = json.loads((folder / "trainer.json").read_text())
    load_optimizer(folder / "optimizer.safetensors", trainer["optimizer"], optimizer)
    generator.set_state(load_file(str(folder / "rng.safetensors"))["state"])
    return trainer["step"], [tuple(h) for h in trainer["history"]]


def load_trained(transformer, model_dir: str | Path, params):
    """Face-MoGLE rebuilt on `transformer` from `params` (`FaceMoGLE.from_params`) with the
    trained weights of `model_dir`, in eval mode."""
    model = FaceMoGLE.from_params(transformer, params)
    model.float32_trainables()  # as trained, before the float32 weights are loaded
    load_model_weights(model_dir, model)
    return model.eval()
