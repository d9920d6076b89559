"""The embedded base: trained once by `python -m stages.pretrain`, shipped with the repository,
resolved and checked by the `base` stage (docs/design.md, "The embedded base").

The folder (`base.tiny_path`, default `pretrained/embedded/`) holds the diffusers folders `vae/`,
`transformer/`, `scheduler/`, the face parser `parser/`, `text_encoder.json`, and
`provenance.json`: the command, params, code commit, machine, wall time per phase, held-out
quality figures, and the SHA-256 of every file. The `base` stage refuses a folder whose files do
not match that record, as it would refuse a FLUX folder without its parts.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from facemogle.base import pretrain
from facemogle.base.loader import MANIFEST, Base, load_base
from facemogle.base.phase_store import PhaseStore
from facemogle.base.segmenter import load_parser, save_parser
from facemogle.base.text import MINILM_NAME, TEXT_MANIFEST, MiniLMTextEncoder, text_manifest
from facemogle.core import flow, latents
from facemogle.core.config import BaseConfig, DataConfig, Params, to_dict
from facemogle.core.io import InputError, atomic_path, read_json, write_json
from facemogle.data.download import download

PROVENANCE = "provenance.json"


PARTS: tuple[str, ...] = ("vae", "transformer", "scheduler", "parser")


# Data fields that decide which images are train and which are test: the embedded base must have
# been trained on train images of the set the pipeline tests on (or a prefix of them).
SPLIT_FIELDS: tuple[str, ...] = ("source", "variant", "seed", "resolution", "hub_repo",
                                 "hub_revision", "local_path")


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _code_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() + ("+uncommitted changes" if dirty else "")


def machine() -> dict[str, Any]:
    """Where a figure was measured: processor, cores, torch threads, versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__}


def _stores(params: Params, work_dir: Path) -> dict[str, PhaseStore]:
    # Any change of the inputs starts every phase afresh (the phases build on each other).
    key = {"seed": params.seed, "data": to_dict(params.data),
           "text_max_tokens": params.base.text_max_tokens, "pretrain": to_dict(params.pretrain)}
    every = params.pretrain.checkpoint_every
    return {phase: PhaseStore(work_dir / "checkpoints" / phase, every, key)
            for phase in ("vae", "parser", "transformer")}


def _elapsed(stores: dict[str, PhaseStore]) -> dict[str, float]:
    return {f"{phase}_s": round(store.elapsed, 1) for phase, store in stores.items()}


def pretrain_embedded(params: Params, work_dir: str | Path, out_dir: str | Path, *,
                      command: str, live: Any = None) -> dict[str, Any]:
    """Train the embedded base on the train split of `params.data` and write it to `out_dir`
    with its provenance; resumable from `work_dir` (rendered data and phase checkpoints).
    Returns the provenance record."""
    cfg, work_dir = params.pretrain, Path(work_dir)
    raw = work_dir / "raw"
    if not (raw / "split.json").is_file():
        download(params.data, raw)
    train, test = pretrain.load_faces(raw, "train"), pretrain.load_faces(raw, "test")
    torch.manual_seed(params.seed)
    stores = _stores(params, work_dir)
    vae = pretrain.train_vae(cfg.vae, train, generator=pretrain.phase_generator(params.seed, 1),
                             live=live, store=stores["vae"])
    decoded = (pretrain.decode_faces(vae, train) * 255).round().byte()  # (N, 3, H, W)
    parser = pretrain.train_parser(cfg.parser, train, decoded, live=live, store=stores["parser"],
                                   generator=pretrain.phase_generator(params.seed, 3))
    encoder = MiniLMTextEncoder(params.base.text_max_tokens)
    captions = [caps[:cfg.transformer.captions_per_image] for caps in train.captions]
    transformer = pretrain.train_transformer(
        cfg.transformer, latents.pack(pretrain.encode_faces(vae, train)),
        (train.resolution // 8,) * 2, pretrain.caption_table(encoder, captions), live=live,
        generator=pretrain.phase_generator(params.seed, 2), store=stores["transformer"])
    dtype = getattr(torch, cfg.weights_dtype)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        vae.to(dtype).save_pretrained(tmp / "vae")
        transformer.to(dtype).save_pretrained(tmp / "transformer")
        flow.make_scheduler().save_pretrained(tmp / "scheduler")
        save_parser(parser.to(dtype), tmp / "parser")
        write_json(tmp / TEXT_MANIFEST, text_manifest(MINILM_NAME, params.base.text_max_tokens))
        # Quality is measured on the weights as stored (float16 rounding included).
        start = time.monotonic()
        metrics = held_out_quality(tmp, test, params.seed, live)
        record = {
            "command": command, "code_commit": _code_commit(), "machine": machine(),
            "wall_time": {**_elapsed(stores), "evaluation_s": round(time.monotonic() - start, 1)},
            "seed": params.seed, "data": to_dict(params.data), "num_train": len(train),
            "num_test": len(test), "resolution": train.resolution,
            "text_max_tokens": params.base.text_max_tokens, "pretrain": to_dict(cfg),
            "metrics": metrics,
            "files": {str(f.relative_to(tmp)): sha256(f)
                      for f in sorted(tmp.rglob("*")) if f.is_file()},
        }
        write_json(tmp / PROVENANCE, record)
    return record


def load_folder(folder: Path) -> tuple[Base, Any]:
    """The base and parser of an embedded-base folder, float32, for measuring it."""
    write_json(folder / MANIFEST, {"kind": "tiny", "dtype": "float32", "dir": str(folder)})
    try:
        return load_base(folder), load_parser(folder / "parser").float()
    finally:
        (folder / MANIFEST).unlink()


def held_out_quality(folder: Path, test: pretrain.FaceSet, seed: int, live: Any
                     ) -> dict[str, Any]:
    base, parser = load_folder(folder)
    return pretrain.evaluate_parts(base, parser, test, seed, live)


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
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise InputError(f"{path}: listed in {PROVENANCE} but missing")
        actual = sha256(path)
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
    """The `base` stage for `base.kind: tiny`: check the shipped folder and point to it."""
    record = check_embedded(cfg.tiny_path, data)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        write_json(tmp / TEXT_MANIFEST, text_manifest(MINILM_NAME, cfg.text_max_tokens))
        write_json(tmp / MANIFEST, {
            "kind": "tiny", "dtype": cfg.dtype, "dir": cfg.tiny_path,
            "resolution": record["resolution"], "metrics": record["metrics"],
            "provenance_sha256": sha256(Path(cfg.tiny_path) / PROVENANCE),
            "parser_sha256": record["files"]["parser/model.safetensors"]})
