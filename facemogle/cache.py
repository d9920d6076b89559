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
a shard written under another configuration (fingerprint) is discarded.
"""

from __future__ import annotations

import hashlib
import json
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


def build_cache(base, data_dir: str | Path, labels_dir: str | Path, out_dir: str | Path, *,
                resolution: int, shard_size: int = 256, batch_size: int = 32,
                config: dict | None = None) -> None:
    """Encode every image, mask slot and caption of `data_dir` into shards under `out_dir`.

    Args:
        base: a loaded `facemogle.base.Base` (its VAE and text encoder are used, frozen).
        data_dir: the `download` layout (images/, captions.jsonl, split.json).
        labels_dir: the `parse_masks` output (masks/{id}.png for every image).
        resolution: image size in pixels (square).
        config: what the cache depends on; stored as a fingerprint to invalidate old shards.
    """
    data_dir, labels_dir, out_dir = Path(data_dir), Path(labels_dir), Path(out_dir)
    split = json.loads((labels_dir / "split.json").read_text())  # ids that have a label map
    ids = list(split["train"]) + list(split["test"])
    captions = {row["id"]: row["captions"] for row in read_jsonl(data_dir / "captions.jsonl")}
    stamp = fingerprint({"config": config or {}, "ids": ids, "format": CACHE_FORMAT})
    out_dir.mkdir(parents=True, exist_ok=True)
    index_path = out_dir / "index.json"
    index_path.unlink(missing_ok=True)  # rewritten when every shard is there
    for old in out_dir.glob("*.safetensors"):
        if _stamp_of(old) != stamp:
            old.unlink()  # made under another configuration, or unreadable

    shards = [ids[s:s + shard_size] for s in range(0, len(ids), shard_size)]
    empty_path = out_dir / "empty.safetensors"
    if not empty_path.exists():
        _save(empty_path, _empty_entries(base, resolution), stamp)
    for number, shard_ids in enumerate(tqdm(shards, desc="cache_latents", unit="shard")):
        path = out_dir / f"shard-{number:05d}.safetensors"
        if path.exists():
            continue  # finished before an interruption
        tensors = _encode_shard(base, shard_ids, data_dir, labels_dir, captions, batch_size)
        _save(path, tensors, stamp)
    write_json(index_path, {
        "fingerprint": stamp,
        "shards": [{"file": f"shard-{n:05d}.safetensors", "ids": s} for n, s in enumerate(shards)],
        "train": split["train"], "test": split["test"],
        "resolution": resolution, "latent_size": resolution // 8,
        "config": config or {},
    })


@dataclass
class LatentCache:
    """All cached tensors of a split in memory, addressed by image id."""

    ids: list[str]
    image: Tensor  # (N, L, C)
    slot_latents: Tensor  # (M, L, C)
    slot_index: Tensor  # (N, 20), -1 = empty slot
    text_seq: Tensor  # (K, T, D)
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
        table = torch.cat([self.slot_latents, self.empty_slot[None]])  # (M + 1, L, C)
        return table[torch.where(index < 0, table.shape[0] - 1, index)]

    def num_captions(self, rows: Tensor) -> Tensor:
        return self.caption_offsets[rows + 1] - self.caption_offsets[rows]  # (B,)

    def text(self, rows: Tensor, choice: Tensor) -> tuple[Tensor, Tensor]:
        """Embeddings of caption `choice[b]` of each row: (B, T, D), (B, P)."""
        k = self.caption_offsets[rows] + choice
        return self.text_seq[k], self.text_pooled[k]


def load_cache(cache_dir: str | Path, split: str | None = None, *,
               dtype: torch.dtype = torch.float32) -> LatentCache:
    """Load the shards of `cache_dir` (optionally only the ids of `split`) into memory."""
    cache_dir = Path(cache_dir)
    index = json.loads((cache_dir / "index.json").read_text())
    wanted = None if split is None else set(index[split])
    parts: dict[str, list[Tensor]] = {k: [] for k in ("image", "slot_latents", "slot_index",
                                                       "text_seq", "text_pooled", "counts")}
    ids: list[str] = []
    slot_base = 0
    for shard in index["shards"]:
        t = load_file(str(cache_dir / shard["file"]))
        keep = [n for n, i in enumerate(shard["ids"]) if wanted is None or i in wanted]
        if not keep:
            continue
        ids += [shard["ids"][n] for n in keep]
        keep_t = torch.tensor(keep)
        slot_index = t["slot_index"][keep_t]
        used = slot_index[slot_index >= 0]
        remap = torch.full((t["slot_latents"].shape[0],), -1, dtype=torch.long)
        remap[used] = torch.arange(used.numel()) + slot_base
        parts["slot_index"].append(torch.where(slot_index >= 0, remap[slot_index.clamp(min=0)],
                                               slot_index))
        parts["slot_latents"].append(t["slot_latents"][used])
        slot_base += used.numel()
        parts["image"].append(t["image"][keep_t])
        offsets = t["caption_offsets"]
        rows = torch.cat([torch.arange(offsets[n], offsets[n + 1]) for n in keep])
        parts["text_seq"].append(t["text_seq"][rows])
        parts["text_pooled"].append(t["text_pooled"][rows])
        parts["counts"].append(offsets[keep_t + 1] - offsets[keep_t])
    empty = load_file(str(cache_dir / "empty.safetensors"))
    counts = torch.cat(parts["counts"])
    return LatentCache(
        ids=ids,
        image=torch.cat(parts["image"]).to(dtype),
        slot_latents=torch.cat(parts["slot_latents"]).to(dtype),
        slot_index=torch.cat(parts["slot_index"]),
        text_seq=torch.cat(parts["text_seq"]).to(dtype),
        text_pooled=torch.cat(parts["text_pooled"]).to(dtype),
        caption_offsets=torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]),
        empty_slot=empty["slot"].to(dtype),
        empty_text_seq=empty["text_seq"].to(dtype),
        empty_text_pooled=empty["text_pooled"].to(dtype),
        latent_size=index["latent_size"],
    )
