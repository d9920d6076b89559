"""The latent cache keeps only shards made under its current configuration."""

from __future__ import annotations

import json
import shutil

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from facemogle.cache.build import folder_fingerprint
from facemogle.cache.store import INDEX, load_cache, shard_name
from stages import cache_latents


def _stamp(path) -> str:
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()["fingerprint"]


def test_shards_of_another_base_are_remade_even_without_an_index(trained_run, tmp_path):
    """An interrupted run leaves shards but no index.json; after the base changed, a re-run
    must not reuse them (DVC keeps `persist` outputs when a dependency changes)."""
    out = tmp_path / "latents"
    shutil.copytree(trained_run.latents, out)
    shard = out / shard_name(0)
    good = _stamp(shard)
    save_file({"x": torch.zeros(1)}, str(shard), metadata={"fingerprint": "another-base"})
    (out / "truncated.safetensors").write_bytes(b"\x00\x01")
    (out / INDEX).unlink()
    assert cache_latents.main(["--data", str(trained_run.raw), "--labels",
                               str(trained_run.labels), "--base", str(trained_run.base),
                               "--out", str(out), "--params", str(trained_run.params)]) == 0
    assert _stamp(shard) == good
    # Byte for byte what the first build wrote (DVC hashes the bytes, not the tensors).
    assert shard.read_bytes() == (trained_run.latents / shard.name).read_bytes()
    assert not (out / "truncated.safetensors").exists()
    assert json.loads((out / INDEX).read_text())["fingerprint"] == good
    fresh, reference = load_cache(out), load_cache(trained_run.latents)
    assert fresh.ids == reference.ids
    assert torch.equal(fresh.image, reference.image)
    assert torch.equal(fresh.slot_latents, reference.slot_latents)


def test_folder_fingerprint_follows_content(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "w.bin").write_bytes(b"123")
    first = folder_fingerprint(tmp_path)
    (tmp_path / "a" / "w.bin").write_bytes(b"124")
    assert folder_fingerprint(tmp_path) != first
    (tmp_path / "a" / "w.bin").write_bytes(b"123")
    assert folder_fingerprint(tmp_path) == first


def test_mapped_rows_give_the_values_of_the_in_memory_cache(trained_run, monkeypatch):
    """A cache too large for memory is read per batch from the shards, with equal values."""
    from facemogle.cache import store as cache_module

    memory = load_cache(trained_run.latents, "train", in_memory=True)
    monkeypatch.setattr(cache_module, "IN_MEMORY_BYTES", 0)  # any split is "too large" now
    mapped = load_cache(trained_run.latents, "train")
    assert isinstance(mapped.text_seq, cache_module.MappedRows)
    assert isinstance(memory.text_seq, torch.Tensor)
    assert mapped.ids == memory.ids and mapped.text_seq.shape == memory.text_seq.shape
    rows = torch.tensor([3, 0, 3, len(memory.ids) - 1])
    choice = torch.tensor([1, 0, 0, 1])
    for got, want in ((mapped.slots(rows), memory.slots(rows)),
                      (mapped.image[rows], memory.image[rows]),
                      (*mapped.text(rows, choice), *memory.text(rows, choice))[::2],
                      (*mapped.text(rows, choice), *memory.text(rows, choice))[1::2]):
        assert got.dtype == want.dtype == torch.float32
        assert torch.equal(got, want)
    # Empty slots (index -1) come from the single stored empty-slot latent.
    index = memory.slot_index[rows]
    assert (index < 0).any()
    assert torch.equal(mapped.slots(rows)[index < 0],
                       memory.empty_slot.expand(int((index < 0).sum()), -1, -1))
