"""The embedded base: trained once by `python -m stages.pretrain`
(`facemogle.pretrain.train_embedded`), shipped with the repository, checked and resolved by the
`base` stage (docs/design.md, "The embedded base").

The folder (`base.tiny_path`, default `pretrained/embedded/`) holds the diffusers folders `vae/`,
`transformer/`, `scheduler/`, the face parser `parser/`, `text_encoder.json`, and
`provenance.json`: the command, params, code commit, machine, wall time per phase, held-out
quality figures, and the SHA-256 of every file. The `base` stage refuses a folder whose files do
not match that record, as it would refuse a FLUX folder without its parts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from facemogle.base.loader import MANIFEST
from facemogle.base.quantize import write_quantized
from facemogle.base.text import MINILM_NAME, TEXT_MANIFEST, text_manifest
from facemogle.core.config import BaseConfig, DataConfig
from facemogle.core.io import InputError, atomic_path, file_sha256, read_json, write_json

PROVENANCE = "provenance.json"


PARTS: tuple[str, ...] = ("vae", "transformer", "scheduler", "parser")


# Data fields that decide which images are train and which are test: the embedded base must have
# been trained on train images of the set the pipeline tests on (or a prefix of them).
SPLIT_FIELDS: tuple[str, ...] = ("source", "variant", "layout", "seed", "resolution",
                                 "hub_repo", "hub_revision", "local_path")


def check_embedded(folder: str | Path, data: DataConfig) -> dict[str, Any]:
    """Verify an embedded-base folder against its provenance and `data`; returns the record.

    Raises InputError naming the file whose SHA-256 differs from the record (or that is missing),
    and when the base was trained on images that `data` puts in its test split.
    """
    folder = Path(folder)
    record = read_json(folder / PROVENANCE,
                       missing="embedded base provenance not found (python -m stages.pretrain)")
    files = record.get("files")
    if not isinstance(files, dict) or not files:
        raise InputError(f"{folder / PROVENANCE}: expected a 'files' mapping of path -> sha256")
    uncovered = [part for part in PARTS if not any(n.startswith(f"{part}/") for n in files)]
    if uncovered:
        raise InputError(f"{folder / PROVENANCE}: 'files' lists nothing under {uncovered}; "
                         f"expected every part of {list(PARTS)}")
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise InputError(f"{path}: listed in {PROVENANCE} but missing")
        actual = file_sha256(path)
        if actual != expected:
            raise InputError(f"{path}: SHA-256 {actual} differs from {expected} recorded in "
                             f"{folder / PROVENANCE}; restore the file (git checkout) or "
                             f"re-train the base (python -m stages.pretrain)")
    trained = record.get("data", {})
    mismatch = [k for k in SPLIT_FIELDS if trained.get(k) != getattr(data, k)]
    if mismatch or trained.get("num_train", 0) > data.num_train:
        raise InputError(
            f"{folder / PROVENANCE}: the embedded base was trained on the first "
            f"{trained.get('num_train')} images of data {[trained.get(k) for k in SPLIT_FIELDS]}"
            f" ({list(SPLIT_FIELDS)}); params 'data' ({[getattr(data, k) for k in SPLIT_FIELDS]},"
            f" num_train {data.num_train}) would test on other or overlapping images; re-train "
            f"the base for this data (python -m stages.pretrain)")
    return record


def resolve_embedded(cfg: BaseConfig, data: DataConfig, out_dir: str | Path) -> None:
    """The `base` stage for `base.kind: tiny`: check the shipped folder and point to it (by a
    path relative to `out_dir`, so the manifest is the same in every clone)."""
    record = check_embedded(cfg.tiny_path, data)
    if record.get("text_max_tokens") != cfg.text_max_tokens:
        raise InputError(f"params base.text_max_tokens is {cfg.text_max_tokens}, but the embedded "
                         f"base in {cfg.tiny_path} was trained on {record.get('text_max_tokens')} "
                         f"text tokens ({PROVENANCE}); set it to that or re-train the base")
    pointer = os.path.relpath(Path(cfg.tiny_path).resolve(), Path(out_dir).resolve())
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        write_json(tmp / TEXT_MANIFEST, text_manifest(MINILM_NAME, cfg.text_max_tokens))
        write_json(tmp / MANIFEST, {
            "kind": "tiny", "dtype": cfg.dtype, "dir": pointer,
            "resolution": record["resolution"], "metrics": record["metrics"],
            "provenance_sha256": file_sha256(Path(cfg.tiny_path) / PROVENANCE),
            "parser_sha256": record["files"]["parser/model.safetensors"],
            **write_quantized(cfg, Path(cfg.tiny_path), tmp)})
