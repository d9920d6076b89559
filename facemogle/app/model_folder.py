"""Checkpoint folders of the Python API: finding one (a local folder or a hub snapshot), its
config, the base it was trained on, and the `base/` copy that makes a saved folder stand alone.

A checkpoint folder is what the `train` stage writes (`lora.safetensors`, `mogle.safetensors`,
`config.json`, `manifest.json`) and optionally `base/`, the base it was trained on.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from facemogle.base.loader import (
    MANIFEST,
    flux_text_manifest,
    parts_dir,
    read_manifest,
    same_base,
)
from facemogle.base.text import TEXT_MANIFEST
from facemogle.core.io import InputError, read_json, write_json

MODEL_FILES: tuple[str, ...] = ("lora.safetensors", "mogle.safetensors", "config.json")
BASE_SUBDIR = "base"


def resolve_checkpoint(path_or_hub_id: str | Path, revision: str | None = None) -> Path:
    """A local checkpoint folder: the directory itself, or a hub snapshot of a repo id."""
    local = Path(path_or_hub_id).expanduser()
    text = str(path_or_hub_id)
    if not local.is_dir():
        if local.exists() or text.startswith(("/", ".", "~")) or text.count("/") != 1:
            raise InputError(f"checkpoint {text!r}: no such folder (expected the train stage's "
                             f"model folder with {list(MODEL_FILES)}, or a hub id 'owner/name')")
        from huggingface_hub import snapshot_download

        try:
            local = Path(snapshot_download(text, revision=revision))
        except Exception as err:  # any hub/network failure: say what was tried
            raise InputError(f"checkpoint {text!r}: not a local folder, and fetching it from the "
                             f"Hugging Face hub failed ({type(err).__name__}: {err})") from err
    missing = [name for name in MODEL_FILES if not (local / name).is_file()]
    if missing:
        raise InputError(f"{local}: not a Face-MoGLE checkpoint folder (missing {missing}; "
                         f"expected the train stage's output or a save_pretrained folder)")
    return local


def read_model_config(folder: Path) -> dict:
    """`config.json` of a checkpoint folder: the train stage's params and `base_manifest`."""
    config = read_json(folder / "config.json")
    if not isinstance(config.get("base_manifest"), dict):
        raise InputError(f"{folder / 'config.json'}: no 'base_manifest' (the base the model was "
                         f"trained on); was it written by the train stage?")
    return config


def find_base_dir(folder: Path, recorded: dict, base_dir: str | Path | None) -> Path | None:
    """The base folder to load: `base_dir`, else `folder/base`, else the sibling `base` of the
    DVC layout (data/model next to data/base); each must hold the base in `recorded`. None if
    no candidate exists and `recorded` is a FLUX manifest whose FLUX folder exists here (then
    the base loads from that manifest alone: `facemogle.base.loader.load_base`)."""
    if base_dir is not None:
        if not same_base(read_manifest(base_dir), recorded):
            raise InputError(f"{Path(base_dir) / MANIFEST}: not the base this model was trained "
                             f"on (it differs from {folder / 'config.json'}'s base_manifest)")
        return Path(base_dir)
    for candidate in (folder / BASE_SUBDIR, folder.parent / BASE_SUBDIR):
        if (candidate / MANIFEST).is_file() and same_base(read_manifest(candidate), recorded):
            return candidate
    if recorded["kind"] == "tiny":
        raise InputError(f"{folder}: no base folder found (looked for {BASE_SUBDIR}/ inside it "
                         f"and beside it); pass base_dir= (CLI --base) the base stage's output")
    flux_dir = recorded.get("dir")
    if not flux_dir or not Path(flux_dir).is_dir():
        raise InputError(f"the model's base_manifest names FLUX folder {flux_dir!r}, which does "
                         f"not exist here; pass base_dir= (CLI --base) the base stage's output")
    return None


def write_base_copy(folder: Path, base_dir: Path | None, recorded: dict) -> None:
    """`folder/base/`, so that a saved checkpoint folder stands alone: a copy of the embedded
    base's files (tiny), or the manifests naming the FLUX folder (`base_dir`'s, or made from
    the model's `recorded` base manifest when it was loaded without a base folder)."""
    out = folder / BASE_SUBDIR
    if base_dir is None:
        out.mkdir()
        write_json(out / MANIFEST, recorded)
        write_json(out / TEXT_MANIFEST, flux_text_manifest(recorded))
        return
    manifest = read_manifest(base_dir)
    if manifest["kind"] == "tiny":
        shutil.copytree(parts_dir(base_dir, manifest), out)  # the files themselves
        write_json(out / MANIFEST, {k: v for k, v in manifest.items() if k != "dir"})
        shutil.copy2(base_dir / TEXT_MANIFEST, out / TEXT_MANIFEST)
    else:
        out.mkdir()
        for name in (MANIFEST, TEXT_MANIFEST):
            shutil.copy2(base_dir / name, out / name)
