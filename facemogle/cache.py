"""Frozen-encoder caches: VAE latents of faces and mask slots, text embeddings of captions.

Training never runs the VAE or the text encoders (DESIGN.md section 4): the `cache_latents` stage
encodes everything once into safetensors shards:

    out/
      index.json                 ids per shard, token grid, dims, config fingerprint
      empty.safetensors          the empty mask slot latent (stored once) and the "" prompt
      shard-00000.safetensors    image (N, L, C), slot_latents (M, L, C), slot_index (N, 20),
                                 text_seq (K, T, D), text_pooled (K, P), caption_offsets (N + 1,)

A slot whose mask is empty is not stored per image: `slot_index` is -1 there and readers use the
empty-slot latent. Finished shards are kept, so an interrupted stage resumes where it stopped;
a shard written under another configuration (fingerprint) is discarded. Under torchrun the
processes encode every n-th shard each. `load_cache` holds a split in memory, or, when it is
larger than `IN_MEMORY_BYTES`, reads each batch's rows from the memory-mapped shards.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm

from facemogle import labels, latents
from facemogle.io import atomic_path, open_image, read_jsonl, write_json

log = logging.getLogger(__name__)

STORE_DTYPE = torch.float16  # latents and embeddings are stored in half precision (half the disk)


CACHE_FORMAT = 2  # bumped when the shard layout changes, so older shards are re-made


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
        base: a loaded `facemogle.base.Base` (its VAE and text encoder are used, frozen).
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


class MappedRows:
    """Rows of one tensor spread over cache shards, read from the memory-mapped files when
    indexed: a cache larger than memory (MM-CelebA-HQ with T5: 30,000 images x 10 captions x
    512 tokens x 4096 in float16 is 1.3 TB of text embeddings) is gathered per batch.

    Indexing with a tensor of row numbers returns a tensor of `dtype`, like a tensor would.
    """

    def __init__(self, files: list[Path], key: str, rows: list[Tensor], dtype: torch.dtype):
        self._slices = [safe_open(str(f), framework="pt").get_slice(key) for f in files]
        self._shard = torch.cat([torch.full((len(r),), n, dtype=torch.long)
                                 for n, r in enumerate(rows)])
        self._local = torch.cat(rows)
        self.dtype = dtype
        self.shape = torch.Size([len(self._local), *self._slices[0].get_shape()[1:]])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Tensor) -> Tensor:
        index = torch.as_tensor(index)
        flat = index.reshape(-1)
        out = torch.empty((flat.numel(), *self.shape[1:]), dtype=self.dtype)
        for n, (s, r) in enumerate(zip(self._shard[flat].tolist(), self._local[flat].tolist())):
            out[n] = self._slices[s][r:r + 1][0]
        return out.reshape(*index.shape, *self.shape[1:])


Rows = Tensor | MappedRows  # both are indexed with a tensor of row numbers


@dataclass
class LatentCache:
    """The cached tensors of a split, addressed by image id; the large ones are in memory or
    read per batch from the shards (`MappedRows`)."""

    ids: list[str]
    image: Rows  # (N, L, C)
    slot_latents: Rows  # (M, L, C)
    slot_index: Tensor  # (N, 20), -1 = empty slot
    text_seq: Rows  # (K, T, D)
    text_pooled: Tensor  # (K, P)
    caption_offsets: Tensor  # (N + 1,)
    empty_slot: Tensor  # (L, C)
    empty_text_seq: Tensor  # (T, D)
    empty_text_pooled: Tensor  # (P,)
    latent_size: int

    @property
    def row(self) -> dict[str, int]:
        return {i: n for n, i in enumerate(self.ids)}

    def slots(self, rows: Tensor) -> Tensor:
        """(B, 20, L, C) slot latents of the given rows, empty slots filled in."""
        index = self.slot_index[rows]  # (B, 20)
        out = self.empty_slot.expand(*index.shape, *self.empty_slot.shape).clone()
        present = index >= 0
        out[present] = self.slot_latents[index[present]].to(out.dtype)
        return out

    def num_captions(self, rows: Tensor) -> Tensor:
        return self.caption_offsets[rows + 1] - self.caption_offsets[rows]  # (B,)

    def text(self, rows: Tensor, choice: Tensor) -> tuple[Tensor, Tensor]:
        """Embeddings of caption `choice[b]` of each row: (B, T, D), (B, P)."""
        k = self.caption_offsets[rows] + choice
        return self.text_seq[k], self.text_pooled[k]


IN_MEMORY_BYTES = 8 << 30  # a split whose tensors take more (at `dtype`) is read per batch


def load_cache(cache_dir: str | Path, split: str | None = None, *,
               dtype: torch.dtype = torch.float32, in_memory: bool | None = None) -> LatentCache:
    """The shards of `cache_dir` (optionally only the ids of `split`).

    Image, slot and text-sequence tensors are read into memory when they take at most
    `IN_MEMORY_BYTES` at `dtype` (or when `in_memory` says so), otherwise they stay in the
    memory-mapped shards and each batch reads its rows (`MappedRows`). Both give equal values.
    """
    cache_dir = Path(cache_dir)
    index = json.loads((cache_dir / "index.json").read_text())
    wanted = None if split is None else set(index[split])
    files: list[Path] = []
    keep_rows, slot_rows, text_rows, slot_index, pooled, counts = [], [], [], [], [], []
    ids: list[str] = []
    slot_base = 0
    for shard in index["shards"]:
        keep = [n for n, i in enumerate(shard["ids"]) if wanted is None or i in wanted]
        if not keep:
            continue
        path = cache_dir / shard["file"]
        with safe_open(str(path), framework="pt") as handle:
            shard_slots = handle.get_tensor("slot_index")
            offsets = handle.get_tensor("caption_offsets")
            shard_pooled = handle.get_tensor("text_pooled")
            num_slots = handle.get_slice("slot_latents").get_shape()[0]
        files.append(path)
        ids += [shard["ids"][n] for n in keep]
        keep_t = torch.tensor(keep)
        kept_slots = shard_slots[keep_t]
        used = kept_slots[kept_slots >= 0]
        remap = torch.full((num_slots,), -1, dtype=torch.long)
        remap[used] = torch.arange(used.numel()) + slot_base
        slot_index.append(torch.where(kept_slots >= 0, remap[kept_slots.clamp(min=0)],
                                      kept_slots))
        slot_base += used.numel()
        captions = torch.cat([torch.arange(offsets[n], offsets[n + 1]) for n in keep])
        keep_rows.append(keep_t)
        slot_rows.append(used)
        text_rows.append(captions)
        pooled.append(shard_pooled[captions])
        counts.append(offsets[keep_t + 1] - offsets[keep_t])
    large = {"image": keep_rows, "slot_latents": slot_rows, "text_seq": text_rows}
    mapped = {key: MappedRows(files, key, rows, dtype) for key, rows in large.items()}
    if in_memory is None:
        size = sum(m.shape.numel() for m in mapped.values()) * torch.finfo(dtype).bits // 8
        in_memory = size <= IN_MEMORY_BYTES
    tables: dict[str, Rows] = dict(mapped)
    if in_memory:
        tables = {key: _read_rows(files, key, rows).to(dtype) for key, rows in large.items()}
    empty = load_file(str(cache_dir / "empty.safetensors"))
    counts_t = torch.cat(counts)
    return LatentCache(
        ids=ids, **tables,
        slot_index=torch.cat(slot_index),
        text_pooled=torch.cat(pooled).to(dtype),
        caption_offsets=torch.cat([torch.zeros(1, dtype=torch.long), counts_t.cumsum(0)]),
        empty_slot=empty["slot"].to(dtype),
        empty_text_seq=empty["text_seq"].to(dtype),
        empty_text_pooled=empty["text_pooled"].to(dtype),
        latent_size=index["latent_size"],
    )


def _read_rows(files: list[Path], key: str, rows: list[Tensor]) -> Tensor:
    parts = []
    for path, kept in zip(files, rows):
        with safe_open(str(path), framework="pt") as handle:
            parts.append(handle.get_tensor(key)[kept])
    return torch.cat(parts)
