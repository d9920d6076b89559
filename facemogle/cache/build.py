"""The `cache_latents` stage: VAE latents of faces and mask slots, text embeddings of captions.

Training never runs the VAE or the text encoders (docs/design.md, "Stages"): this stage encodes
everything once into safetensors shards:

    out/
      index.json                 ids per shard, token grid, dims, config fingerprint
      empty.safetensors          the empty mask slot latent (stored once) and the "" prompt
      shard-00000.safetensors    image (N, L, C), slot_latents (M, L, C), slot_index (N, 20),
                                 text_seq (K, T, D), text_pooled (K, P), caption_offsets (N + 1,)

A slot whose mask is empty is not stored per image: `slot_index` is -1 there and readers use the
empty-slot latent. Finished shards are kept, so an interrupted stage resumes where it stopped;
a shard written under another configuration (fingerprint) is discarded. Under torchrun the
processes encode every n-th shard each.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm import tqdm

from facemogle.cache.store import CACHE_FORMAT, STORE_DTYPE
from facemogle.core import labels, latents
from facemogle.core.io import atomic_path, open_image, read_jsonl, write_json

log = logging.getLogger(__name__)


def fingerprint(config: dict) -> str:
    """A short stable hash of a JSON-serialisable configuration."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def folder_fingerprint(folder: str | Path) -> str:
    """A short hash of every file's relative path and bytes under `folder` (the base stage's
    output: a few MB for the embedded base, a manifest for FLUX.1-dev)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _stamp_of(path: Path) -> str | None:
    """The configuration fingerprint stored in a shard's metadata (None: unreadable)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("fingerprint")
    except (SafetensorError, OSError):  # a truncated or foreign file is re-made
        return None


def _save(path: Path, tensors: dict[str, Tensor], stamp: str) -> None:
    # A single metadata key: safetensors writes several in a per-process order, so the file bytes
    # (hashed by DVC) of identical runs would differ. The shard's ids are in index.json.
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"fingerprint": stamp})


def _load_image01(path: Path) -> Tensor:
    array = np.asarray(open_image(path).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)  # (3, H, W)


@torch.no_grad()
def _encode_images(vae, images01: Tensor, batch_size: int) -> Tensor:
    out = []
    for start in range(0, images01.shape[0], batch_size):
        batch = images01[start:start + batch_size].to(vae.device, vae.dtype)
        out.append(latents.pack(latents.encode(vae, batch)).float().cpu())  # (b, L, C)
    return torch.cat(out)


def _encode_shard(base, ids: list[str], data_dir: Path, labels_dir: Path,
                  captions: dict[str, list[str]], batch_size: int) -> dict[str, Tensor]:
    faces = torch.stack([_load_image01(data_dir / "images" / f"{i}.png") for i in ids])
    maps = [labels.load_label_map(labels_dir / "masks" / f"{i}.png") for i in ids]
    presence = np.stack([labels.slot_presence(m) for m in maps])  # (N, 20)
    slots = torch.cat([labels.decouple(m)[torch.from_numpy(p)] for m, p in zip(maps, presence)])
    slot_index = np.full(presence.shape, -1, dtype=np.int64)
    slot_index[presence] = np.arange(int(presence.sum()))
    texts = [c for i in ids for c in captions[i]]
    offsets = np.cumsum([0] + [len(captions[i]) for i in ids])
    seq, pooled = _encode_text(base.text_encoder, texts, batch_size)
    return {
        "image": _encode_images(base.vae, faces, batch_size).to(STORE_DTYPE),
        "slot_latents": _encode_images(base.vae, slots, batch_size).to(STORE_DTYPE),
        "slot_index": torch.from_numpy(slot_index),
        "text_seq": seq.to(STORE_DTYPE),
        "text_pooled": pooled.to(STORE_DTYPE),
        "caption_offsets": torch.from_numpy(offsets.astype(np.int64)),
    }


@torch.no_grad()
def _encode_text(encoder, texts: list[str], batch_size: int) -> tuple[Tensor, Tensor]:
    seqs, pools = [], []
    for start in range(0, len(texts), batch_size):
        seq, pooled = encoder.encode(texts[start:start + batch_size])
        seqs.append(seq.float().cpu())
        pools.append(pooled.float().cpu())
    return torch.cat(seqs), torch.cat(pools)


def _empty_entries(base, resolution: int) -> dict[str, Tensor]:
    black = torch.zeros(1, 3, resolution, resolution)
    seq, pooled = _encode_text(base.text_encoder, [""], 1)
    return {
        "slot": _encode_images(base.vae, black, 1)[0].to(STORE_DTYPE),  # (L, C)
        "text_seq": seq[0].to(STORE_DTYPE),  # (T, D)
        "text_pooled": pooled[0].to(STORE_DTYPE),  # (P,)
    }


class SingleProcess:
    """The process-group interface `build_cache` needs, for one process (accelerate's
    `PartialState` provides the same attributes under `torchrun`)."""

    process_index, num_processes, is_main_process = 0, 1, True

    def wait_for_everyone(self) -> None:
        pass


def build_cache(base, data_dir: str | Path, labels_dir: str | Path, out_dir: str | Path, *,
                resolution: int, shard_size: int = 256, batch_size: int = 32,
                config: dict | None = None, processes=None) -> None:
    """Encode every image, mask slot and caption of `data_dir` into shards under `out_dir`.

    Args:
        base: a loaded `facemogle.base.loader.Base` (its VAE and text encoder are used, frozen).
        data_dir: the `download` layout (images/, captions.jsonl, split.json).
        labels_dir: the `parse_masks` output (masks/{id}.png for every image).
        resolution: image size in pixels (square).
        config: what the cache depends on; stored as a fingerprint to invalidate old shards.
        processes: an accelerate `PartialState` (or `SingleProcess`): process i encodes shards
            i, i + n, ...; the main process clears stale shards first and writes the index last.
            A shard's bytes do not depend on the number of processes.
    """
    processes = processes or SingleProcess()
    data_dir, labels_dir, out_dir = Path(data_dir), Path(labels_dir), Path(out_dir)
    split = json.loads((labels_dir / "split.json").read_text())  # ids that have a label map
    ids = list(split["train"]) + list(split["test"])
    captions = {row["id"]: row["captions"] for row in read_jsonl(data_dir / "captions.jsonl")}
    stamp = fingerprint({"config": config or {}, "ids": ids, "batch_size": batch_size,
                         "shard_size": shard_size, "format": CACHE_FORMAT})
    index_path = out_dir / "index.json"
    empty_path = out_dir / "empty.safetensors"
    if processes.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        index_path.unlink(missing_ok=True)  # rewritten when every shard is there
        for old in out_dir.glob("*.safetensors"):
            if _stamp_of(old) != stamp:
                old.unlink()  # made under another configuration, or unreadable
        if not empty_path.exists():
            _save(empty_path, _empty_entries(base, resolution), stamp)
    processes.wait_for_everyone()

    shards = [ids[s:s + shard_size] for s in range(0, len(ids), shard_size)]
    mine = range(processes.process_index, len(shards), processes.num_processes)
    log.info("process %d/%d: %d of %d shards (%d::%d)", processes.process_index + 1,
             processes.num_processes, len(mine), len(shards), mine.start, mine.step)
    for number in tqdm(mine, desc="cache_latents", unit="shard",
                       disable=not processes.is_main_process):
        path = out_dir / f"shard-{number:05d}.safetensors"
        if path.exists():
            continue  # finished before an interruption
        tensors = _encode_shard(base, shards[number], data_dir, labels_dir, captions, batch_size)
        _save(path, tensors, stamp)
    processes.wait_for_everyone()
    if processes.is_main_process:
        write_json(index_path, {
            "fingerprint": stamp,
            "shards": [{"file": f"shard-{n:05d}.safetensors", "ids": s}
                       for n, s in enumerate(shards)],
            "train": split["train"], "test": split["test"],
            "resolution": resolution, "latent_size": resolution // 8,
            "config": config or {},
        })
