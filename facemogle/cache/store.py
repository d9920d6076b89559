"""Reading the latent cache that `cache_latents` wrote (layout: `facemogle.cache.build`).

`load_cache` holds a split in memory, or, when it is larger than `IN_MEMORY_BYTES`, reads each
batch's rows from the memory-mapped shards.

A cache built with `cache.trim_text_padding` stores each caption's real tokens only; reading it
gives the full (T, D) sequence back (`PaddedText`): the stored tokens, then at the padding
positions the encoder's states of the empty prompt "" at the same positions (stored once in
`empty.safetensors`). These are the encoder's own padding states, but of a prompt without words:
T5 as FLUX runs it (no attention mask) and MiniLM (padding attends to the words) give padding
states that depend on the caption, and those are what trimming drops. Training and the sample
stage read the same restored sequences; a prompt encoded afresh (`facemogle.app`) has its own
padding states, so the option trades that difference for disk (docs/full-setting.md, "Memory").
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

log = logging.getLogger(__name__)

STORE_DTYPE = torch.float16  # latents and embeddings are stored in half precision (half the disk)


CACHE_FORMAT = 2  # bumped when the shard layout changes, so older shards are re-made
TRIMMED_CACHE_FORMAT = 3  # cache.trim_text_padding: text_tokens + text_lengths, not text_seq

# The cache folder's files (the layout in `facemogle.cache.build`'s docstring): every module that
# writes or reads a cache names them through these.
INDEX = "index.json"  # ids per shard, token grid, dims, config fingerprint; written last
EMPTY = "empty.safetensors"  # the empty mask slot latent and the "" prompt's embeddings


def shard_name(number: int) -> str:
    """The file name of shard `number`: `shard-00000.safetensors`, ..."""
    return f"shard-{number:05d}.safetensors"


class MappedRows:
    """Rows of one tensor spread over cache shards, read from the memory-mapped files when
    indexed: a cache larger than memory (MM-CelebA-HQ with T5: 30,000 images x 10 captions x
    512 tokens x 4096 in float16 is 1.3 TB of text embeddings) is gathered per batch.

    Indexing with a tensor of row numbers returns a tensor of `dtype`, like a tensor would.
    """

    def __init__(self, files: list[Path], key: str, rows: list[Tensor], dtype: torch.dtype):
        self._files, self._key, self._rows = files, key, rows
        self._slices = [safe_open(str(f), framework="pt").get_slice(key) for f in files]
        self._shard = torch.cat([torch.full((len(r),), n, dtype=torch.long)
                                 for n, r in enumerate(rows)])
        self._local = torch.cat(rows)
        self.dtype = dtype
        self.shape = torch.Size([len(self._local), *self._slices[0].get_shape()[1:]])

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def stored_numel(self) -> int:
        """Elements these rows take in memory once read."""
        return self.shape.numel()

    def __getitem__(self, index: Tensor) -> Tensor:
        index = torch.as_tensor(index)
        flat = index.reshape(-1)
        out = torch.empty((flat.numel(), *self.shape[1:]), dtype=self.dtype)
        for n, (s, r) in enumerate(zip(self._shard[flat].tolist(), self._local[flat].tolist())):
            out[n] = self._slices[s][r:r + 1][0]
        return out.reshape(*index.shape, *self.shape[1:])

    def in_memory(self) -> Tensor:
        """All the rows, read into one tensor of `dtype`."""
        parts = []
        for path, kept in zip(self._files, self._rows):
            with safe_open(str(path), framework="pt") as handle:
                parts.append(handle.get_tensor(self._key)[kept])
        return torch.cat(parts).to(self.dtype)


class PaddedText:
    """Caption sequences of a cache built with `cache.trim_text_padding`, at full length when
    indexed: caption k's stored tokens, then `fill`'s rows (the empty prompt's states) at the
    padding positions (module docstring). Indexing with a tensor of caption rows returns a
    (..., T, D) tensor of `dtype`, like `MappedRows`.

    The tokens are per shard, either read into memory (`in_memory`) or memory-mapped.
    """

    def __init__(self, parts: list, where: Tensor, fill: Tensor, dtype: torch.dtype):
        self._parts = parts  # per shard: its (S, D) tokens, a tensor or a safetensors slice
        self._where = where  # (K, 3) long: shard, first token in that part, length
        self._fill = fill.to(dtype)  # (T, D)
        self.dtype = dtype
        self.shape = torch.Size([len(where), *fill.shape])

    @classmethod
    def mapped(cls, files: list[Path], starts: list[Tensor], lengths: list[Tensor],
               fill: Tensor, dtype: torch.dtype) -> PaddedText:
        """The captions whose tokens start at `starts[s]` with `lengths[s]` in shard `s`."""
        parts = [safe_open(str(f), framework="pt").get_slice("text_tokens") for f in files]
        shard = torch.cat([torch.full((len(r),), n, dtype=torch.long)
                           for n, r in enumerate(lengths)])  # (K,)
        where = torch.stack([shard, torch.cat(starts), torch.cat(lengths)], dim=1)  # (K, 3)
        return cls(parts, where, fill, dtype)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def stored_numel(self) -> int:
        """Elements the stored tokens take in memory once read (padding is not held)."""
        return int(self._where[:, 2].sum()) * self.shape[2]

    def __getitem__(self, index: Tensor) -> Tensor:
        index = torch.as_tensor(index)
        flat = index.reshape(-1)
        out = self._fill.expand(flat.numel(), *self._fill.shape).clone()  # (B, T, D)
        for n, (s, start, length) in enumerate(self._where[flat].tolist()):
            out[n, :length] = self._parts[s][start:start + length].to(self.dtype)  # (length, D)
        return out.reshape(*index.shape, *self.shape[1:])

    def in_memory(self) -> PaddedText:
        """The same captions with their tokens read into one tensor of `dtype`."""
        pieces = [self._parts[s][start:start + length]
                  for s, start, length in self._where.tolist()]  # K x (length, D)
        lengths = self._where[:, 2]
        starts = lengths.cumsum(0) - lengths  # (K,)
        tokens = torch.cat(pieces).to(self.dtype)  # (sum of lengths, D)
        where = torch.stack([torch.zeros_like(lengths), starts, lengths], dim=1)  # (K, 3)
        return PaddedText([tokens], where, self._fill, self.dtype)


Rows = Tensor | MappedRows | PaddedText  # each is indexed with a tensor of row numbers


@dataclass
class LatentCache:
    """The cached tensors of a split, addressed by image id; the large ones are in memory or
    read per batch from the shards (`MappedRows`, `PaddedText`)."""

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
    Text of a cache built with `cache.trim_text_padding` comes back at full length (`PaddedText`).
    """
    cache_dir = Path(cache_dir)
    index = json.loads((cache_dir / INDEX).read_text())
    wanted = None if split is None else set(index[split])
    rows = _select_rows(cache_dir, index["shards"], wanted)
    empty = load_file(str(cache_dir / EMPTY))
    tables = _large_tables(rows, empty["text_seq"], dtype, in_memory)
    counts_t = torch.cat(rows.counts)
    return LatentCache(
        ids=rows.ids, **tables,
        slot_index=torch.cat(rows.slot_index),
        text_pooled=torch.cat(rows.pooled).to(dtype),
        caption_offsets=torch.cat([torch.zeros(1, dtype=torch.long), counts_t.cumsum(0)]),
        empty_slot=empty["slot"].to(dtype),
        empty_text_seq=empty["text_seq"].to(dtype),
        empty_text_pooled=empty["text_pooled"].to(dtype),
        latent_size=index["latent_size"],
    )


@dataclass
class _SplitRows:
    """Which rows of which shards make up a split, shard by shard, and the small tensors read
    from them on the way (`_select_rows`)."""

    files: list[Path] = field(default_factory=list)  # the shards holding rows of the split
    ids: list[str] = field(default_factory=list)  # (N,) over all shards
    image_rows: list[Tensor] = field(default_factory=list)  # per shard: (n,) image rows kept
    slot_rows: list[Tensor] = field(default_factory=list)  # per shard: (m,) slot latents used
    text_rows: list[Tensor] = field(default_factory=list)  # per shard: (k,) captions kept
    slot_index: list[Tensor] = field(default_factory=list)  # per shard: (n, 20) split slot rows
    pooled: list[Tensor] = field(default_factory=list)  # per shard: (k, P)
    counts: list[Tensor] = field(default_factory=list)  # per shard: (n,) captions per image
    num_slots: int = 0  # slot latents selected so far (where the next shard's numbering starts)
    # Trimmed text (cache.trim_text_padding): per shard, (k,) first token and (k,) token count
    # of each kept caption in the shard's text_tokens.
    token_starts: list[Tensor] = field(default_factory=list)
    token_lengths: list[Tensor] = field(default_factory=list)


def _select_rows(cache_dir: Path, shards: list[dict], wanted: set[str] | None) -> _SplitRows:
    """The rows of the shards in `index.json` whose ids are `wanted` (None: all), in order."""
    rows = _SplitRows()
    for shard in shards:
        keep = [n for n, i in enumerate(shard["ids"]) if wanted is None or i in wanted]
        if not keep:
            continue
        _select_shard_rows(rows, cache_dir / shard["file"], shard["ids"], keep)
    return rows


def _select_shard_rows(rows: _SplitRows, path: Path, shard_ids: list[str],
                       keep: list[int]) -> None:
    """Add rows `keep` of the shard at `path` to `rows`, its slots renumbered after the
    slot latents already selected."""
    with safe_open(str(path), framework="pt") as handle:
        shard_slots = handle.get_tensor("slot_index")
        offsets = handle.get_tensor("caption_offsets")
        shard_pooled = handle.get_tensor("text_pooled")
        num_slots = handle.get_slice("slot_latents").get_shape()[0]
        names = handle.keys()  # a list: a safe_open handle is not iterable
        lengths = handle.get_tensor("text_lengths") if "text_lengths" in names else None
    rows.files.append(path)
    rows.ids += [shard_ids[n] for n in keep]
    keep_t = torch.tensor(keep)
    kept_slots = shard_slots[keep_t]
    used = kept_slots[kept_slots >= 0]
    remap = torch.full((num_slots,), -1, dtype=torch.long)
    remap[used] = torch.arange(used.numel()) + rows.num_slots
    rows.slot_index.append(torch.where(kept_slots >= 0, remap[kept_slots.clamp(min=0)],
                                       kept_slots))
    rows.num_slots += used.numel()
    captions = torch.cat([torch.arange(offsets[n], offsets[n + 1]) for n in keep])
    rows.image_rows.append(keep_t)
    rows.slot_rows.append(used)
    rows.text_rows.append(captions)
    rows.pooled.append(shard_pooled[captions])
    rows.counts.append(offsets[keep_t + 1] - offsets[keep_t])
    if lengths is not None:
        rows.token_starts.append((lengths.cumsum(0) - lengths)[captions])  # (k,)
        rows.token_lengths.append(lengths[captions])  # (k,)


def _large_tables(rows: _SplitRows, empty_text_seq: Tensor, dtype: torch.dtype,
                  in_memory: bool | None) -> dict[str, Rows]:
    """The large tensors' selected rows: read into memory at `dtype`, or left in the shards
    (`MappedRows`, `PaddedText`); `in_memory` None decides by their size against
    `IN_MEMORY_BYTES`."""
    files = rows.files
    tables: dict[str, MappedRows | PaddedText] = {
        "image": MappedRows(files, "image", rows.image_rows, dtype),
        "slot_latents": MappedRows(files, "slot_latents", rows.slot_rows, dtype),
        "text_seq": (PaddedText.mapped(files, rows.token_starts, rows.token_lengths,
                                       empty_text_seq, dtype) if rows.token_lengths
                     else MappedRows(files, "text_seq", rows.text_rows, dtype)),
    }
    if in_memory is None:
        size = sum(t.stored_numel for t in tables.values()) * torch.finfo(dtype).bits // 8
        in_memory = size <= IN_MEMORY_BYTES
    if in_memory:
        return {key: table.in_memory() for key, table in tables.items()}
    return dict(tables)
