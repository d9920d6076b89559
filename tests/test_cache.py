"""The latent cache keeps only shards made under its current configuration."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import merge
from facemogle.cache import build
from facemogle.cache.build import folder_fingerprint
from facemogle.cache.store import INDEX, load_cache, shard_name
from stages import cache_latents


def _stamp(path) -> str:
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()["fingerprint"]


def _stage(run, out, *extra, params=None) -> int:
    return cache_latents.main(["--data", str(run.raw), "--labels", str(run.labels), "--base",
                               str(run.base), "--out", str(out), "--params",
                               str(params or run.params), *extra])


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_shards_of_another_base_are_remade_even_without_an_index(trained_run, tmp_path):
    """An interrupted run leaves shards but no index.json in its work folder, which is not a
    DVC output and so outlives a change of dependency; after the base changed, a re-run must
    not reuse them."""
    out = tmp_path / "latents"
    work = tmp_path / ".resume" / "latents"  # the stage's default work folder for `out`
    shutil.copytree(trained_run.latents, work)
    shard = work / shard_name(0)
    good = _stamp(shard)
    save_file({"x": torch.zeros(1)}, str(shard), metadata={"fingerprint": "another-base"})
    (work / "truncated.safetensors").write_bytes(b"\x00\x01")
    (work / INDEX).unlink()
    assert _stage(trained_run, out) == 0
    assert not work.exists()  # renamed to `out` once whole
    shard = out / shard_name(0)
    assert _stamp(shard) == good
    # Byte for byte what the first build wrote (DVC hashes the bytes, not the tensors).
    assert shard.read_bytes() == (trained_run.latents / shard.name).read_bytes()
    assert not (out / "truncated.safetensors").exists()
    assert json.loads((out / INDEX).read_text())["fingerprint"] == good
    fresh, reference = load_cache(out), load_cache(trained_run.latents)
    assert fresh.ids == reference.ids
    assert torch.equal(fresh.image, reference.image)
    assert torch.equal(fresh.slot_latents, reference.slot_latents)


def test_an_interrupted_cache_resumes_from_its_work_folder(trained_run, tmp_path, monkeypatch):
    """Stopped after its first shard, the stage leaves `--out` absent (DVC would delete it
    anyway: a plain output) and the shard in `--resume-dir`; the re-run encodes only the
    missing shards (a killed writer's temporary folder is dropped) and moves a folder
    byte-identical to an uninterrupted build into `--out`, replacing an earlier `--out`."""
    params = tmp_path / "params.yaml"  # 3 shards of 4 images
    params.write_text(yaml.safe_dump(merge(yaml.safe_load(trained_run.params.read_text()),
                                           {"cache": {"shard_size": 4}})))
    assert _stage(trained_run, tmp_path / "straight", params=params) == 0
    out, work = tmp_path / "latents", tmp_path / "work" / "latents"
    written = []
    real = build._write_shard

    def stop_after_one(base, path, *args):
        if written:
            raise KeyboardInterrupt
        written.append(path.name)
        real(base, path, *args)

    monkeypatch.setattr(build, "_write_shard", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        _stage(trained_run, out, "--resume-dir", str(work), params=params)
    assert not out.exists() and sorted(p.name for p in work.glob("shard-*")) == written
    first = (work / written[0]).stat().st_mtime_ns
    cut_short = work / ".shard-00001.safetensors.k1ll3d"  # a killed writer's temporary folder
    cut_short.mkdir()
    (cut_short / "shard-00001.safetensors").write_bytes(b"half a shard")
    out.mkdir()
    (out / "stale.safetensors").write_bytes(b"from an earlier run")
    remade = []
    monkeypatch.setattr(build, "_write_shard",
                        lambda base, path, *args: (remade.append(path.name),
                                                   real(base, path, *args)))
    assert _stage(trained_run, out, "--resume-dir", str(work), params=params) == 0
    assert not work.exists() and written[0] not in remade and len(remade) == 2
    assert (out / written[0]).stat().st_mtime_ns == first  # moved, not written again
    assert _files(out) == _files(tmp_path / "straight")
    assert not any((tmp_path / ".resume").iterdir())  # the straight build's work folder is gone


def test_a_work_folder_inside_the_output_is_refused(trained_run, tmp_path):
    with pytest.raises(ValueError, match="lies inside"):
        _stage(trained_run, tmp_path / "latents", "--resume-dir",
               str(tmp_path / "latents" / "work"))


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
