"""The `cache_latents` stage: VAE latents of faces and mask slots, text embeddings of captions.

Training never runs the VAE or the text encoders (docs/design.md, "Stages"): this stage encodes
everything once into safetensors shards:

    out/
      index.json                 ids per shard, token grid, dims, config fingerprint
      empty.safetensors          the empty mask slot latent (stored once) and the "" prompt
      shard-00000.safetensors    image (N, L, C), slot_latents (M, L, C), slot_index (N, 20),
                                 text_seq (K, T, D), text_pooled (K, P), caption_offsets (N + 1,)

A slot whose mask is empty is not stored per image: `slot_index` is -1 there and readers use the
empty-slot latent. Under torchrun the processes encode every n-th shard each.

Resuming: the shards are written into a work folder (the stage's `--resume-dir`, by default
`<out's folder>/.resume/<out's name>`: `data/.resume/latents`), which is not a DVC output, so
DVC neither deletes it before the stage runs nor keeps it in the run-cache. Finished shards stay
there, so an interrupted stage resumes where it stopped; a shard written under another
configuration (fingerprint) is discarded. When every shard and `index.json` are written, the
work folder is renamed to `out` (one rename on the same file system: no copy, nothing doubled;
an `out` left from an earlier run is replaced), so `out` only ever holds a finished cache.

Options (`cache` section): `max_captions` stores the first n captions of each image (K shrinks);
`trim_text_padding` stores each caption's real tokens only: `text_seq` is replaced by
`text_tokens` (S, D), the captions' real tokens one after another, and `text_lengths` (K,), and
`facemogle.cache.store` restores the full (T, D) sequence on reading. Both enter the fingerprint.

Memory: a shard is streamed to disk as it is encoded (`ShardWriter`: the header first, from the
shapes known in advance, then each batch's rows at their place in the file, already in the
stored dtype), so a process holds one batch of encoder output, not the shard. The file's bytes
are those `save_file` writes for the same tensors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np
import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm import tqdm

from facemogle.cache.store import (
    CACHE_FORMAT,
    EMPTY,
    INDEX,
    STORE_DTYPE,
    TRIMMED_CACHE_FORMAT,
    shard_name,
)
from facemogle.core import labels, latents
from facemogle.core.io import atomic_path, open_image, read_jsonl, replace_path, write_json
from facemogle.data import layout

log = logging.getLogger(__name__)

Specs = dict[str, tuple[torch.dtype, tuple[int, ...]]]  # tensor name -> (dtype, shape)


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


# ----------------------------------------------------------------------------------------------
# Writing a safetensors file block by block
# ----------------------------------------------------------------------------------------------


def safetensors_header(specs: Specs, metadata: dict[str, str]) -> tuple[bytes, dict[str, int]]:
    """The header `save_file` writes for tensors of `specs` with `metadata` (length prefix
    included), and each tensor's byte offset in the data that follows it.

    The order of the tensors in the file (safetensors sorts them by dtype, then name) and the
    dtype names are taken from safetensors itself, by serialising one element of each.
    """
    probe = safetensors.torch.save({k: torch.zeros(1, dtype=d) for k, (d, _) in specs.items()})
    order = json.loads(probe[8:8 + int.from_bytes(probe[:8], "little")])  # file order
    header: dict = {"__metadata__": metadata}
    begin, end = {}, 0
    for key, entry in order.items():
        dtype, shape = specs[key]
        begin[key], end = end, end + math.prod(shape) * dtype.itemsize
        header[key] = {"dtype": entry["dtype"], "shape": list(shape),
                       "data_offsets": [begin[key], end]}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors pads
    return len(text).to_bytes(8, "little") + text, begin


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


class ShardWriter:
    """A safetensors file whose tensors are written in blocks of rows, each tensor's blocks in
    order, each at its place in the file: memory holds only the block being written. Every row of
    every tensor must be written before the file is closed. The bytes equal `save_file`'s for
    the same tensors and metadata (tests/test_cache_options.py)."""

    def __init__(self, path: str | Path, specs: Specs, metadata: dict[str, str]):
        header, self._begin = safetensors_header(specs, metadata)
        self._specs, self._data = specs, len(header)
        self._rows = dict.fromkeys(specs, 0)  # rows written so far, per tensor
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # as save_file
        _pwrite_all(self._fd, memoryview(header), 0)

    def write(self, key: str, block: Tensor) -> None:
        """Append `block` (rows, *shape[1:]) of the stored dtype to tensor `key`."""
        dtype, shape = self._specs[key]
        row = self._rows[key]
        if block.dtype != dtype or block.shape[1:] != shape[1:] or row + len(block) > shape[0]:
            raise ValueError(f"{key}: a {block.dtype} block {tuple(block.shape)} at row {row} "
                             f"does not fit {dtype} {shape}")
        raw = block.contiguous().view(-1).view(torch.uint8).numpy()  # (rows * row bytes,)
        row_bytes = math.prod(shape[1:]) * dtype.itemsize
        _pwrite_all(self._fd, memoryview(raw), self._data + self._begin[key] + row * row_bytes)
        self._rows[key] = row + len(block)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        os.close(self._fd)
        missing = {k: (n, self._specs[k][1][0]) for k, n in self._rows.items()
                   if n != self._specs[k][1][0]}
        if exc_type is None and missing:
            raise RuntimeError(f"shard closed with rows unwritten (written, expected): {missing}")


# ----------------------------------------------------------------------------------------------
# Encoding, batch by batch
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheOptions:
    """What of each image is stored (the `cache` section's `max_captions`, `trim_text_padding`)."""

    max_captions: int | None = None  # the first n captions of each image; None: all
    trim_text_padding: bool = False  # store each caption's real tokens only

    def stamp(self) -> dict:
        """Their part of the fingerprint: the shard format, and the options that are not at
        their default (so a default cache keeps the fingerprint, and bytes, it always had)."""
        options: dict = {"format": TRIMMED_CACHE_FORMAT if self.trim_text_padding
                         else CACHE_FORMAT}
        if self.max_captions is not None:
            options["max_captions"] = self.max_captions
        if self.trim_text_padding:
            options["trim_text_padding"] = True
        return options


@dataclass(frozen=True)
class _Inputs:
    """Where a shard's images, label maps and captions come from."""

    data_dir: Path
    labels_dir: Path
    captions: dict[str, list[str]]
    resolution: int
    batch_size: int  # images per VAE call
    text_batch_size: int = 32  # captions per text-encoder call
    precision: str = "float32"  # VAE autocast: float32 (off) or bfloat16


@dataclass(frozen=True)
class _Shard:
    """One shard's images and stored captions, and what is known of it before encoding."""

    ids: list[str]  # (N,)
    presence: np.ndarray  # (N, 20) bool: which mask slots are stored
    texts: list[str]  # (K,) the stored captions, image by image
    offsets: np.ndarray  # (N + 1,) int64: image n's captions are texts[offsets[n]:offsets[n+1]]
    lengths: list[int] | None  # (K,) real tokens of each caption (trim_text_padding), else None


def token_counts(encoder, texts: list[str]) -> list[int]:
    """How many leading positions of each text's encoded sequence are tokens, not padding
    (at most `encoder.max_tokens`): what `cache.trim_text_padding` stores.

    An encoder may say so itself (`encoder.token_counts(texts)`); otherwise its sequence
    tokenizer is asked, with the truncation its `encode` uses: `t5_tokenizer` (FLUX: T5 tokens
    and </s>) or `tokenizer` (the embedded MiniLM: [CLS] ... [SEP]).
    """
    if hasattr(encoder, "token_counts"):
        return [int(n) for n in encoder.token_counts(texts)]
    tokenizer = encoder.t5_tokenizer if hasattr(encoder, "t5_tokenizer") else encoder.tokenizer
    ids = tokenizer(texts, truncation=True, max_length=encoder.max_tokens)["input_ids"]
    return [len(row) for row in ids]


def _plan_shard(base, ids: list[str], inputs: _Inputs, options: CacheOptions) -> _Shard:
    maps = (labels.load_label_map(layout.mask_path(inputs.labels_dir, i)) for i in ids)
    presence = np.stack([labels.slot_presence(m) for m in maps])  # (N, 20), maps read one by one
    kept = [inputs.captions[i][:options.max_captions] for i in ids]
    texts = [c for image_captions in kept for c in image_captions]
    offsets = np.cumsum([0] + [len(c) for c in kept]).astype(np.int64)  # (N + 1,)
    lengths = token_counts(base.text_encoder, texts) if options.trim_text_padding else None
    return _Shard(ids, presence, texts, offsets, lengths)


def _latent_dims(vae, resolution: int) -> tuple[int, int]:
    """(L, C) of `latents.pack`'s tokens of one image: 2x2 patches of the x`down` latent grid."""
    down = 2 ** (len(vae.config.block_out_channels) - 1)
    return (resolution // down // 2) ** 2, 4 * vae.config.latent_channels


def _shard_specs(base, shard: _Shard, resolution: int) -> Specs:
    tokens, channels = _latent_dims(base.vae, resolution)
    encoder = base.text_encoder
    n, k = len(shard.ids), len(shard.texts)
    specs: Specs = {
        "image": (STORE_DTYPE, (n, tokens, channels)),
        "slot_latents": (STORE_DTYPE, (int(shard.presence.sum()), tokens, channels)),
        "slot_index": (torch.int64, shard.presence.shape),
        "text_pooled": (STORE_DTYPE, (k, encoder.pooled_dim)),
        "caption_offsets": (torch.int64, (n + 1,)),
    }
    if shard.lengths is None:
        specs["text_seq"] = (STORE_DTYPE, (k, encoder.max_tokens, encoder.seq_dim))
    else:
        specs["text_tokens"] = (STORE_DTYPE, (sum(shard.lengths), encoder.seq_dim))
        specs["text_lengths"] = (torch.int64, (k,))
    return specs


def _load_image01(path: Path) -> Tensor:
    array = np.asarray(open_image(path).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)  # (3, H, W)


def _face_batches(inputs: _Inputs, ids: list[str]) -> Iterator[Tensor]:
    for start in range(0, len(ids), inputs.batch_size):
        yield torch.stack([_load_image01(layout.image_path(inputs.data_dir, i))
                           for i in ids[start:start + inputs.batch_size]])  # (b, 3, H, W)


# The batch loops below `del` each batch once it is written, so that it is not held while the
# next one is made: one batch at a time is in memory. (The generators enter `torch.no_grad()`
# per call: as a decorator it would hold the last batch yielded while the next is made.)


def encode_images(vae, images01: Tensor, precision: str = "float32") -> Tensor:
    """(b, 3, H, W) images in [0, 1] -> (b, L, C) packed VAE posterior means in the stored dtype,
    on the CPU: how the cache encodes faces and mask slots. One call is one VAE batch (on CPU
    the VAE's rounding depends on the batch it runs in); `precision` "bfloat16" encodes under
    bfloat16 autocast."""
    autocast = {"device_type": vae.device.type, "dtype": torch.bfloat16,
                "enabled": precision == "bfloat16"}
    with torch.no_grad(), torch.autocast(**autocast):
        z = latents.encode(vae, images01.to(vae.device, vae.dtype))  # (b, C, h, w)
    return latents.pack(z).to(STORE_DTYPE).cpu()  # (b, L, 4C), elementwise as whole shard


def _encode_batches(vae, batches: Iterable[Tensor], precision: str = "float32"
                    ) -> Iterator[Tensor]:
    for batch in batches:  # (b, 3, H, W) in [0, 1]
        tokens = encode_images(vae, batch, precision)  # (b, L, C)
        del batch
        yield tokens
        del tokens


def _slot_image_batches(label_maps: Iterable[np.ndarray], batch_size: int) -> Iterator[Tensor]:
    """The slot images of the labels that occur, mask by mask, in batches of `batch_size` (a
    batch may span masks): one mask's 20 slot images and one batch are in memory at a time."""
    pending: list[Tensor] = []
    for label_map in label_maps:
        present = torch.from_numpy(labels.slot_presence(label_map))  # (20,)
        pending += labels.decouple(label_map)[present].unbind(0)  # s x (3, H, W)
        while len(pending) >= batch_size:
            batch = torch.stack(pending[:batch_size])  # (b, 3, H, W)
            del pending[:batch_size]
            yield batch
            del batch
    if pending:
        yield torch.stack(pending)  # (b, 3, H, W)


def encode_slots(vae, label_maps: Iterable[np.ndarray], *, batch_size: int = 1,
                 precision: str = "float32") -> Iterator[Tensor]:
    """The stored latents of the mask slots of `label_maps` whose label occurs (the others take
    the empty-slot latent, `empty_slot_latent`), mask by mask in slot order, as (b, L, C)
    blocks of `batch_size` VAE-encoded slot images (`encode_images`). The `cache_latents` stage
    and `FaceMoGLEPipeline` (one mask, batch size 1: `mask_latents`) both encode here."""
    return _encode_batches(vae, _slot_image_batches(label_maps, batch_size), precision)


def empty_slot_latent(vae, size: tuple[int, int]) -> Tensor:
    """(L, C) stored latent of the all-black slot image of `size` (H, W): a label that does not
    occur."""
    return encode_images(vae, torch.zeros(1, 3, *size))[0]  # (L, C)


def mask_latents(vae, label_map: np.ndarray, empty_slot: Tensor) -> Tensor:
    """(H, W) label map -> (20, L, C) slot latents with the values the cache holds: each slot
    image whose label occurs encoded on its own (so a mask's latents depend on that mask alone,
    and equal a cache built with batch size 1), `empty_slot` (L, C; `empty_slot_latent`) for
    the others. The result has `empty_slot`'s device and dtype."""
    present = torch.from_numpy(labels.slot_presence(label_map))  # (20,)
    out = empty_slot.expand(labels.NUM_SLOTS, *empty_slot.shape).clone()  # (20, L, C)
    encoded = torch.cat(list(encode_slots(vae, [label_map])))  # (S, L, C)
    out[present.to(out.device)] = encoded.to(out.device, out.dtype)
    return out


def encode_texts(encoder, texts: list[str]) -> tuple[Tensor, Tensor]:
    """(b, T, D) sequence and (b, P) pooled embeddings of `texts`, in the stored dtype on the CPU:
    how the cache encodes captions. One call is one text-encoder batch."""
    with torch.no_grad():
        seq, pooled = encoder.encode(texts)  # (b, T, D), (b, P)
    return seq.to(STORE_DTYPE).cpu(), pooled.to(STORE_DTYPE).cpu()  # float32 freed


def _text_batches(encoder, texts: list[str], batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    for start in range(0, len(texts), batch_size):
        seq, pooled = encode_texts(encoder, texts[start:start + batch_size])
        yield seq, pooled
        del seq, pooled


def _write_text(out: ShardWriter, encoder, shard: _Shard, batch_size: int) -> None:
    if shard.lengths is not None:
        out.write("text_lengths", torch.tensor(shard.lengths, dtype=torch.int64))  # (K,)
    start = 0  # the batch's first caption (not zip()ped: zip would hold the previous batch)
    for seq, pooled in _text_batches(encoder, shard.texts, batch_size):
        out.write("text_pooled", pooled)  # (b, P)
        if shard.lengths is None:
            out.write("text_seq", seq)  # (b, T, D)
        else:
            counts = shard.lengths[start:start + len(seq)]
            out.write("text_tokens", torch.cat([s[:n] for s, n in zip(seq, counts)]))  # (sum n, D)
        start += len(seq)
        del seq, pooled


def _write_shard(base, path: Path, shard: _Shard, inputs: _Inputs, stamp: str) -> None:
    """Encode `shard` into the safetensors file `path`, batch by batch."""
    slot_index = np.full(shard.presence.shape, -1, dtype=np.int64)  # (N, 20)
    slot_index[shard.presence] = np.arange(int(shard.presence.sum()))
    with atomic_path(path) as tmp:
        specs = _shard_specs(base, shard, inputs.resolution)
        with ShardWriter(tmp, specs, {"fingerprint": stamp}) as out:
            out.write("slot_index", torch.from_numpy(slot_index))  # (N, 20)
            out.write("caption_offsets", torch.from_numpy(shard.offsets))  # (N + 1,)
            faces = _face_batches(inputs, shard.ids)
            for block in _encode_batches(base.vae, faces, inputs.precision):
                out.write("image", block)  # (b, L, C)
                del block
            masks = (labels.load_label_map(layout.mask_path(inputs.labels_dir, i))
                     for i in shard.ids)  # read one by one
            for block in encode_slots(base.vae, masks, batch_size=inputs.batch_size,
                                      precision=inputs.precision):
                out.write("slot_latents", block)  # (b, L, C)
                del block
            _write_text(out, base.text_encoder, shard, inputs.text_batch_size)


def _empty_entries(base, resolution: int) -> dict[str, Tensor]:
    seq, pooled = next(_text_batches(base.text_encoder, [""], 1))  # (1, T, D), (1, P)
    return {
        "slot": empty_slot_latent(base.vae, (resolution, resolution)),  # (L, C)
        "text_seq": seq[0],  # (T, D)
        "text_pooled": pooled[0],  # (P,)
    }


# ----------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------


class SingleProcess:
    """The process-group interface `build_cache` needs, for one process (accelerate's
    `PartialState` provides the same attributes under `torchrun`)."""

    process_index, num_processes, is_main_process = 0, 1, True

    def wait_for_everyone(self) -> None:
        pass


def _clear_stale(base, out_dir: Path, stamp: str, resolution: int) -> None:
    """Main process: drop the index, every shard of another configuration and the temporary
    folders of writes cut short (a killed run's); write the empty entries."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / INDEX).unlink(missing_ok=True)  # rewritten when every shard is there
    for partial in out_dir.glob(".*"):  # `atomic_path` folders, .shard-NNNNN.safetensors.XXXX
        shutil.rmtree(partial, ignore_errors=True)
    for old in out_dir.glob("*.safetensors"):
        if _stamp_of(old) != stamp:
            old.unlink()  # made under another configuration, or unreadable
    empty_path = out_dir / EMPTY
    if not empty_path.exists():
        _save(empty_path, _empty_entries(base, resolution), stamp)


def _work_folder(out_dir: Path, work_dir: str | Path | None) -> Path:
    """`work_dir` as a Path (None: `out_dir`), refused inside `out_dir`, which replaces it."""
    work = out_dir if work_dir is None else Path(work_dir)
    if work.resolve() != out_dir.resolve() and work.resolve().is_relative_to(out_dir.resolve()):
        raise ValueError(f"the work folder {work} lies inside {out_dir}, which the finished "
                         "cache replaces: put it beside it")
    return work


def _publish(work_dir: Path, out_dir: Path) -> None:
    """Rename the finished `work_dir` to `out_dir`, replacing what `out_dir` held. Both are on
    one file system (the default work folder is beside `out_dir`): a rename, not a copy."""
    replace_path(work_dir, out_dir)
    log.info("cache_latents: %s finished, moved to %s", work_dir, out_dir)


def _index(stamp: str, shards: list[list[str]], split: dict, resolution: int,
           config: dict | None) -> dict:
    return {"fingerprint": stamp,
            "shards": [{"file": shard_name(n), "ids": s} for n, s in enumerate(shards)],
            "train": split["train"], "test": split["test"],
            "resolution": resolution, "latent_size": resolution // 8,
            "config": config or {}}


def build_cache(base, data_dir: str | Path, labels_dir: str | Path, out_dir: str | Path, *,
                resolution: int, shard_size: int = 256, batch_size: int = 32,
                text_batch_size: int = 32, precision: str = "float32",
                config: dict | None = None, processes=None,
                options: CacheOptions = CacheOptions(),
                work_dir: str | Path | None = None) -> None:
    """Encode every image, mask slot and caption of `data_dir` into shards under `out_dir`.

    Args:
        base: a loaded `facemogle.base.loader.Base` (its VAE and text encoder are used, frozen).
        data_dir: the `download` layout (images/, captions.jsonl, split.json).
        labels_dir: the `parse_masks` output (masks/{id}.png for every image).
        resolution: image size in pixels (square).
        batch_size: images per VAE call. On a CPU small batches are faster (4: 1.6x over 32 on
            a 2-core AMD EPYC, docs/speed.md) and give the same float16 latents per image.
        text_batch_size: captions per text-encoder call (no effect on the stored values).
        precision: "bfloat16" encodes faces and slots under bfloat16 autocast (part of the
            fingerprint; the empty slot stays float32).
        config: what the cache depends on; stored as a fingerprint to invalidate old shards.
        processes: an accelerate `PartialState` (or `SingleProcess`): process i encodes shards
            i, i + n, ...; the main process clears stale shards first and writes the index last.
            A shard's bytes do not depend on the number of processes.
        options: which captions and tokens are stored (part of the fingerprint).
        work_dir: where the shards are written and kept across interruptions; once the cache
            is whole the main process renames it to `out_dir`. None: `out_dir` itself (the
            shards are written in place and kept there).
    """
    processes = processes or SingleProcess()
    out_dir, labels_dir = Path(out_dir), Path(labels_dir)
    work_dir = _work_folder(out_dir, work_dir)
    split = json.loads(layout.split_path(labels_dir).read_text())  # ids that have a label map
    ids = list(split["train"]) + list(split["test"])
    captions = {row["id"]: row["captions"] for row in read_jsonl(layout.captions_path(data_dir))}
    inputs = _Inputs(Path(data_dir), labels_dir, captions, resolution, batch_size,
                     text_batch_size, precision)
    precision_stamp = {} if precision == "float32" else {"precision": precision}
    stamp = fingerprint({"config": config or {}, "ids": ids, "batch_size": batch_size,
                         "shard_size": shard_size, **options.stamp(), **precision_stamp})
    if processes.is_main_process:
        _clear_stale(base, work_dir, stamp, resolution)
    processes.wait_for_everyone()

    shards = [ids[s:s + shard_size] for s in range(0, len(ids), shard_size)]
    mine = range(processes.process_index, len(shards), processes.num_processes)
    log.info("process %d/%d: %d of %d shards (%d::%d)", processes.process_index + 1,
             processes.num_processes, len(mine), len(shards), mine.start, mine.step)
    for number in tqdm(mine, desc="cache_latents", unit="shard",
                       disable=not processes.is_main_process):
        path = work_dir / shard_name(number)
        if not path.exists():  # else finished before an interruption
            _write_shard(base, path, _plan_shard(base, shards[number], inputs, options), inputs,
                         stamp)
    processes.wait_for_everyone()
    if processes.is_main_process:
        write_json(work_dir / INDEX, _index(stamp, shards, split, resolution, config))
        if work_dir.resolve() != out_dir.resolve():
            _publish(work_dir, out_dir)
