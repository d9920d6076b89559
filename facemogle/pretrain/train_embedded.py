"""Training the embedded base and shipping it with its provenance (`python -m stages.pretrain`).

The phases (`vae`, `parser`, `transformer` in `facemogle.pretrain`) run
in the order VAE, face parser (which also reads VAE reconstructions), transformer (on the VAE's
latents); each checkpoints into the work folder, so an interrupted run resumes. The result is
written atomically: weights (stored in `pretrain.weights_dtype`), `text_encoder.json`, and
`provenance.json` whose quality figures are measured on the weights as stored.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel
from torch import Tensor

from facemogle.base.embedded import PROVENANCE
from facemogle.base.loader import MANIFEST, Base, load_base
from facemogle.base.segmenter import FaceParser, load_parser, save_parser
from facemogle.base.text import MINILM_NAME, TEXT_MANIFEST, MiniLMTextEncoder, text_manifest
from facemogle.core import flow, latents
from facemogle.core.config import DataConfig, Params, to_dict
from facemogle.core.io import InputError, atomic_path, file_sha256, read_json, write_json
from facemogle.core.machine import machine
from facemogle.data.download import download
from facemogle.data.layout import split_path
from facemogle.pretrain.common import FaceSet, load_faces, phase_generator
from facemogle.pretrain.parser import parser_miou, train_parser
from facemogle.pretrain.phase_store import PhaseStore
from facemogle.pretrain.transformer import caption_table, sample_previews, train_transformer
from facemogle.pretrain.vae import decode_faces, encode_faces, train_vae, vae_psnr

NUM_PREVIEWS = 8  # test faces in the preview row


def faces_for(data: DataConfig, work_dir: Path) -> Path:
    """`work_dir/raw`: the faces of `data`, rendered again when the folder holds other data
    (its params are kept beside it in `raw.json`). Returns the folder."""
    raw, record = work_dir / "raw", work_dir / "raw.json"
    wanted = json.loads(json.dumps(to_dict(data)))
    if not split_path(raw).is_file() or not record.is_file() or read_json(record) != wanted:
        shutil.rmtree(raw, ignore_errors=True)
        record.unlink(missing_ok=True)
        download(data, raw)
        write_json(record, wanted)
    return raw


def _code_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() + ("+uncommitted changes" if dirty else "")


NOT_TRAINING = ("checkpoint_every", "weights_dtype")  # pretrain params that leave training alone


def _stores(params: Params, work_dir: Path) -> dict[str, PhaseStore]:
    # Any change of what training depends on starts every phase afresh (the phases build on
    # each other); how often checkpoints are written and the shipped dtype do not count.
    recipe = {k: v for k, v in to_dict(params.pretrain).items() if k not in NOT_TRAINING}
    key = {"seed": params.seed, "data": to_dict(params.data),
           "text_max_tokens": params.base.text_max_tokens, "pretrain": recipe}
    every = params.pretrain.checkpoint_every
    return {phase: PhaseStore(work_dir / "checkpoints" / phase, every, key)
            for phase in ("vae", "parser", "transformer")}


def _elapsed(stores: dict[str, PhaseStore]) -> dict[str, float]:
    return {f"{phase}_s": round(store.elapsed, 1) for phase, store in stores.items()}


def _vae_and_parser(params: Params, train: FaceSet, stores: dict[str, PhaseStore], live: Any,
                    reuse: str | Path | None
                    ) -> tuple[AutoencoderKL, FaceParser, dict[str, Any] | None]:
    """The VAE and the face parser: trained (the parser also on VAE reconstructions), or with
    `reuse` those of an earlier run as stored. (vae, parser, the earlier run's record or
    None)."""
    if reuse is not None:  # the VAE and parser of an earlier run, as stored
        earlier = reused_record(reuse, params)
        shipped, parser = load_folder(Path(reuse))
        return shipped.vae, parser, earlier
    cfg = params.pretrain
    vae = train_vae(cfg.vae, train, generator=phase_generator(params.seed, 1),
                    live=live, store=stores["vae"])
    decoded = (decode_faces(vae, train) * 255).round().byte()  # (N, 3, H, W)
    parser = train_parser(cfg.parser, train, decoded, live=live, store=stores["parser"],
                          generator=phase_generator(params.seed, 3))
    return vae, parser, None


def _transformer_phase(params: Params, train: FaceSet, vae: AutoencoderKL,
                       stores: dict[str, PhaseStore], live: Any) -> FluxTransformer2DModel:
    """The transformer trained on the VAE's latents of the train faces and their captions."""
    cfg = params.pretrain
    encoder = MiniLMTextEncoder(params.base.text_max_tokens)
    captions = [caps[:cfg.transformer.captions_per_image] for caps in train.captions]
    return train_transformer(
        cfg.transformer, latents.pack(encode_faces(vae, train)),
        latents.image_ids(train.resolution // 8, train.resolution // 8),
        caption_table(encoder, captions), live=live,
        generator=phase_generator(params.seed, 2), store=stores["transformer"])


def _save_vae_and_parser(tmp: Path, dtype: torch.dtype, reuse: str | Path | None,
                         vae: AutoencoderKL, parser: FaceParser) -> None:
    """Write the VAE and parser into `tmp`: the reused folder's files byte for byte, or the
    trained weights in `dtype`."""
    if reuse is not None:  # the earlier files, byte for byte
        for part in REUSED_PHASES:
            shutil.copytree(Path(reuse) / part, tmp / part)
    else:
        vae.to(dtype).save_pretrained(tmp / "vae")
        save_parser(parser.to(dtype), tmp / "parser")


def pretrain_embedded(params: Params, work_dir: str | Path, out_dir: str | Path, *,
                      command: str, live: Any = None,
                      reuse: str | Path | None = None) -> dict[str, Any]:
    """Train the embedded base on the train split of `params.data` and write it to `out_dir`
    with its provenance; resumable from `work_dir` (rendered data and phase checkpoints).
    With `reuse`, an embedded-base folder, only the transformer is trained: the VAE and parser
    are that folder's, which must have been trained on the same data and recipe (their
    provenance goes into this record's `reused`). Returns the provenance record."""
    cfg, work_dir = params.pretrain, Path(work_dir)
    raw = faces_for(params.data, work_dir)
    train, test = load_faces(raw, "train"), load_faces(raw, "test")
    torch.manual_seed(params.seed)
    stores = _stores(params, work_dir)
    vae, parser, earlier = _vae_and_parser(params, train, stores, live, reuse)
    transformer = _transformer_phase(params, train, vae, stores, live)
    dtype = getattr(torch, cfg.weights_dtype)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        _save_vae_and_parser(tmp, dtype, reuse, vae, parser)
        transformer.to(dtype).save_pretrained(tmp / "transformer")
        flow.make_scheduler().save_pretrained(tmp / "scheduler")
        write_json(tmp / TEXT_MANIFEST, text_manifest(MINILM_NAME, params.base.text_max_tokens))
        # Quality is measured on the weights as stored (float16 rounding included).
        start = time.monotonic()
        metrics = held_out_quality(tmp, test, params.seed, live)
        record = {
            "command": command, "code_commit": _code_commit(), "machine": machine(),
            "wall_time": {**_elapsed(stores), "evaluation_s": round(time.monotonic() - start, 1)},
            **({"reused": earlier} if reuse is not None else {}),
            "seed": params.seed, "data": to_dict(params.data), "num_train": len(train),
            "num_test": len(test), "resolution": train.resolution,
            "text_max_tokens": params.base.text_max_tokens, "pretrain": to_dict(cfg),
            "metrics": metrics,
            "files": {str(f.relative_to(tmp)): file_sha256(f)
                      for f in sorted(tmp.rglob("*")) if f.is_file()},
        }
        write_json(tmp / PROVENANCE, record)
    return record


REUSED_PHASES = ("vae", "parser")


def reused_record(folder: str | Path, params: Params) -> dict[str, Any]:
    """What the provenance of `folder` says about its VAE and parser, after checking that they
    were trained on `params.data` with `params.pretrain`'s recipe for those phases."""
    path = Path(folder) / PROVENANCE
    record = read_json(path, missing="embedded base provenance not found")
    wanted = {"seed": params.seed, "data": json.loads(json.dumps(to_dict(params.data))),
              **{p: json.loads(json.dumps(to_dict(getattr(params.pretrain, p))))
                 for p in REUSED_PHASES}}
    found = {"seed": record.get("seed"), "data": record.get("data"),
             **{p: record.get("pretrain", {}).get(p) for p in REUSED_PHASES}}
    differ = [k for k in wanted if wanted[k] != found[k]]
    if differ:
        raise InputError(f"{path}: its {differ} differ from the params; the VAE and parser can "
                         f"only be reused for the data and recipe they were trained with")
    files = {k: v for k, v in record["files"].items() if k.split("/")[0] in REUSED_PHASES}
    return {"from_provenance_sha256": file_sha256(path), "command": record.get("command"),
            "code_commit": record.get("code_commit"), "machine": record.get("machine"),
            "wall_time": {f"{p}_s": record.get("wall_time", {}).get(f"{p}_s")
                          for p in REUSED_PHASES}, "files": files}


def load_folder(folder: Path) -> tuple[Base, FaceParser]:
    """The base and parser of an embedded-base folder, float32, for measuring it."""
    write_json(folder / MANIFEST, {"kind": "tiny", "dtype": "float32"})  # parts in the folder
    try:
        return load_base(folder), load_parser(folder / "parser").float()
    finally:
        (folder / MANIFEST).unlink()


def held_out_quality(folder: Path, test: FaceSet, seed: int, live: Any) -> dict[str, float]:
    """Held-out quality of the weights in `folder`: VAE PSNR, parser mIoU on renders and on
    VAE-decoded renders (the look of generated faces); with DVCLive also a preview row of test
    faces over samples of their first caption."""
    base, parser = load_folder(folder)
    images = test.images01(slice(None))  # (N, 3, H, W)
    metrics = {**vae_psnr(base.vae, test),
               "parser_miou": parser_miou(parser, images, test.label_maps),
               "parser_miou_decoded": parser_miou(parser, decode_faces(base.vae, test),
                                                  test.label_maps)}
    if live is not None:
        for key, value in metrics.items():
            live.log_metric(key, value, plot=False)
        previews = sample_previews(base, [caps[0] for caps in test.captions[:NUM_PREVIEWS]],
                                   test.resolution, seed)  # (P, 3, H, W)
        live.log_image("base_previews.png", _grid(torch.cat([images[:NUM_PREVIEWS], previews],
                                                            dim=2)))
    return metrics


def _grid(images01: Tensor) -> np.ndarray:
    """(P, 3, H, W) -> one (H, P * W, 3) uint8 row."""
    return (images01.permute(2, 0, 3, 1).flatten(1, 2) * 255).round().byte().numpy()


