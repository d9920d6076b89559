"""Checkpoint I/O: safetensors weights + JSON, written atomically, never pickled.

A model folder (the `train` stage's output, and every checkpoint of a run) holds:

    lora.safetensors     peft LoRA state of the condition adapter
    mogle.safetensors    MoGLE state
    config.json          the resolved params the model was trained with

A training checkpoint (`checkpoints/step-NNNNNN/`) adds `optimizer.safetensors` (the optimizer's
tensors), `trainer.json` (step, loss history, the optimizer's scalar state and param groups) and
`rng.safetensors` (the batch/noise generator), which is everything a resume needs.

The `train` stage trains in a work folder that is not a DVC output (`--resume-dir`, by default
`data/.resume/model`): `facemogle.training.loop.train` keeps its checkpoints there and writes the
finished model files beside them; `publish_model` then moves those files (renames, no copy) into
the stage's output folder, which holds the model only, and deletes the work folder. DVC deletes
an output before its stage runs and never restores a persistent one from the run-cache; the work
folder is neither, so a killed stage resumes from it and the finished model is a plain output.

A checkpoint is a resumable state of `facemogle.core.resume`, the one the pretraining phases
keep too. Both folders carry `manifest.json`, the SHA-256 and size of each of their files, written
last (`write_manifest` in `facemogle.core.io`). Loading checks it first (`check_folder`), so a
truncated, corrupt or byte-flipped file stops with an `InputError` naming the file; a resume skips
a checkpoint that fails the check, with a warning naming it and the fault, and takes the newest
one that passes. A folder without a manifest is refused like a damaged one.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from facemogle.core.io import (
    MANIFEST_FILE,
    InputError,
    load_safetensors,
    read_json,
    replace_path,
    write_errors_named,
    write_json,
    write_manifest,
)
from facemogle.core.resume import check_folder, load_state, save_state
from facemogle.models.facemogle import FaceMoGLE
from facemogle.models.lora import load_lora_state_dict, lora_state_dict

STEP_PREFIX = "step-"
TRAINER_FILE = "trainer.json"

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
    and then moved in, each file atomically and the manifest last, so a failed write leaves
    `out_dir` as it was and a write cut short between moves fails the manifest check."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        with write_errors_named(out_dir):
            write_weights(staging, model, config)
            write_manifest(staging)
        out_dir.mkdir(exist_ok=True)
        for f in sorted(staging.iterdir(), key=lambda f: f.name == MANIFEST_FILE):
            f.replace(out_dir / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish_model(work_dir: str | Path, out_dir: str | Path) -> Path:
    """Move the model `save_model` wrote into `work_dir` (beside the run's `checkpoints/`) to
    `out_dir`, replacing what it held, and delete `work_dir`; returns `out_dir`.

    The files are checked against their manifest first (`check_folder`), then renamed into
    `work_dir/.published`, which is renamed to `out_dir`: the bytes are those `save_model`
    wrote, and `out_dir` appears whole or not at all. Interrupted before the last rename, the
    work folder keeps its checkpoints: a re-run resumes from the last one, writes the same model
    again and publishes it. `out_dir` must be on the file system of `work_dir`."""
    work, out = Path(work_dir), Path(out_dir)
    if work.resolve() == out.resolve() or work.resolve().is_relative_to(out.resolve()):
        raise ValueError(f"the work folder {work} lies inside {out}, which the model replaces")
    check_folder(work)
    staging = work / ".published"
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted publish
    staging.mkdir()
    for name in [*sorted(read_json(work / MANIFEST_FILE)["sha256"]), MANIFEST_FILE]:
        (work / name).replace(staging / name)
    replace_path(staging, out)
    shutil.rmtree(work)
    log.info("train: model moved from %s to %s; work folder removed", work, out)
    return out


def load_model_weights(folder: str | Path, model, *, verify: bool = True) -> dict:
    """Load LoRA and MoGLE weights from a model folder into `model`; returns its config.

    With `verify` (the default) the folder's files are first checked against its manifest
    (`facemogle.core.resume.check_folder`): a truncated, corrupt or changed file is an
    `InputError` naming it and what the manifest records. A folder written before model folders
    carried a manifest loads without that check (a warning says so). `verify=False`: the caller
    has just checked the folder."""
    folder = Path(folder)
    for name in ("lora.safetensors", "mogle.safetensors", "config.json"):
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder}: not a Face-MoGLE model folder (missing {name})")
    if verify:
        check_folder(folder)
    load_lora_state_dict(model.transformer, load_safetensors(folder / "lora.safetensors"))
    model.mogle.load_state_dict(load_safetensors(folder / "mogle.safetensors"), strict=True)
    return read_json(folder / "config.json")


def save_training_state(ckpt_root: str | Path, step: int, model, optimizer,
                        generator: torch.Generator, history: list, config: dict, *,
                        keep: int = 2) -> Path:
    """Write checkpoint `step-NNNNNN` atomically and keep only the newest `keep` checkpoints."""
    ckpt_root = Path(ckpt_root)
    target = save_state(ckpt_root / f"{STEP_PREFIX}{step:06d}", step, optimizer, generator,
                        write_model=lambda tmp: write_weights(tmp, model, config),
                        record_file=TRAINER_FILE, record={"history": history})
    for old in sorted(ckpt_root.glob(f"{STEP_PREFIX}*"))[:-keep]:
        shutil.rmtree(old)
    return target


def find_resumable(ckpt_root: str | Path, config: dict) -> Path | None:
    """The newest checkpoint written under the same resolved config whose files pass its
    manifest, or None. A damaged checkpoint is skipped with a warning naming it and the fault
    (checked before its config is compared, so a damaged config.json is not taken for another
    run's); one without a manifest is skipped the same way (`check_folder`)."""
    for folder in sorted(Path(ckpt_root).glob(f"{STEP_PREFIX}*"), reverse=True):
        try:
            check_folder(folder)
            if read_json(folder / "config.json") != config:
                continue
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
    trainer = read_json(folder / TRAINER_FILE, missing="not found (a training checkpoint "
                        "records its step, loss history and optimizer state there)")
    step = load_state(folder, optimizer, generator, trainer)
    return step, [tuple(h) for h in trainer["history"]]


def load_trained(transformer, model_dir: str | Path, params, *, verify: bool = True):
    """Face-MoGLE rebuilt on `transformer` from `params` (`FaceMoGLE.from_params`) with the
    trained weights of `model_dir`, in eval mode; `verify` as in `load_model_weights`."""
    model = FaceMoGLE.from_params(transformer, params)
    model.float32_trainables()  # as trained, before the float32 weights are loaded
    load_model_weights(model_dir, model, verify=verify)
    return model.eval()
