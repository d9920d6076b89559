"""The latent cache streamed to disk, `cache.max_captions`, `cache.trim_text_padding`, and the
peak memory of caching (`facemogle.bench.cache_memory`)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from facemogle.bench.cache_memory import (
    CacheScale,
    peak_memory,
    standin_base,
    write_standin_data,
)
from facemogle.cache import store
from facemogle.cache.build import CacheOptions, ShardWriter, build_cache, token_counts
from facemogle.cache.store import load_cache
from facemogle.data.layout import captions_path

# Captions of 3 to 40 words, sequences of 24 tokens: some captions are padded, some cut.
SCALE = CacheScale(images=6, captions=3, text_tokens=24, text_dim=32, pooled_dim=16,
                   resolution=64, batch_size=4)
SHARD_SIZE = 4  # two shards, the second one partly filled
OPTIONS = {"default": CacheOptions(), "two": CacheOptions(max_captions=2),
           "trim": CacheOptions(trim_text_padding=True),
           "both": CacheOptions(max_captions=2, trim_text_padding=True)}


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """A stand-in data set cached under each of `OPTIONS`: {name: cache folder}."""
    root = tmp_path_factory.mktemp("cache_options")
    data_dir, labels_dir = write_standin_data(root, SCALE)
    base = standin_base(SCALE)
    out = {}
    for name, options in OPTIONS.items():
        out[name] = root / name
        build_cache(base, data_dir, labels_dir, out[name], resolution=SCALE.resolution,
                    shard_size=SHARD_SIZE, batch_size=SCALE.batch_size, options=options,
                    config={"set": "standin"})
    return out


def _shard(folder, number=0) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / store.shard_name(number)), framework="pt") as handle:
        names = handle.keys()  # a list: a safe_open handle is not iterable
        return {key: handle.get_tensor(key) for key in names}


def _lengths(caches) -> list[int]:
    """Real tokens of every caption of the data set, in cache order."""
    path = captions_path(caches["default"].parent / "raw")
    texts = [c for line in path.open() for c in json.loads(line)["captions"]]
    return token_counts(standin_base(SCALE).text_encoder, texts)


def test_shard_writer_writes_the_bytes_of_save_file(tmp_path):
    generator = torch.Generator().manual_seed(0)
    tensors = {"b": torch.randn(5, 3, 2, generator=generator).half(),
               "a_long_name": torch.arange(7, dtype=torch.int64),
               "c": torch.randn(4, 6, generator=generator),
               "d": torch.randn(3, 5, generator=generator).bfloat16(),
               "empty": torch.zeros(0, 4, dtype=torch.float16)}
    for metadata in ({"fingerprint": "0123456789abcdef"}, {"fingerprint": "x"}):
        save_file(tensors, str(tmp_path / "reference"), metadata=metadata)
        specs = {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()}
        with ShardWriter(tmp_path / "streamed", specs, metadata) as out:
            for key in reversed(list(tensors)):  # any tensor order, blocks of 2 rows
                for start in range(0, max(len(tensors[key]), 1), 2):
                    out.write(key, tensors[key][start:start + 2])
        assert (tmp_path / "streamed").read_bytes() == (tmp_path / "reference").read_bytes()


def test_shard_writer_refuses_wrong_blocks_and_missing_rows(tmp_path):
    specs = {"x": (torch.float16, (4, 3))}
    with pytest.raises(ValueError, match="does not fit"), \
            ShardWriter(tmp_path / "f", specs, {}) as out:
        out.write("x", torch.zeros(2, 3))  # float32
    with pytest.raises(ValueError, match="does not fit"), \
            ShardWriter(tmp_path / "f", specs, {}) as out:
        out.write("x", torch.zeros(5, 3, dtype=torch.float16))  # too many rows
    with pytest.raises(RuntimeError, match="unwritten"), \
            ShardWriter(tmp_path / "f", specs, {}) as out:
        out.write("x", torch.zeros(3, 3, dtype=torch.float16))


def test_options_store_the_expected_shapes(caches):
    t, d = SCALE.text_tokens, SCALE.text_dim
    k = SHARD_SIZE * SCALE.captions
    lengths = _lengths(caches)[:k]  # shard 0's captions
    default, two, trim, both = (_shard(caches[name]) for name in OPTIONS)
    assert default["text_seq"].shape == (k, t, d) and "text_tokens" not in default
    assert two["text_seq"].shape == (SHARD_SIZE * 2, t, d)
    assert two["caption_offsets"].tolist() == [0, 2, 4, 6, 8]
    assert "text_seq" not in trim and trim["text_lengths"].tolist() == lengths
    assert trim["text_tokens"].shape == (sum(lengths), d)
    assert min(lengths) < t == max(lengths)  # some captions padded, some cut at T
    kept = [n for i in range(SHARD_SIZE) for n in lengths[3 * i:3 * i + 2]]
    assert both["text_lengths"].tolist() == kept and both["text_tokens"].shape == (sum(kept), d)
    for shard in (two, trim, both):  # images, slots and pooled vectors are those of the default
        for key in ("image", "slot_latents", "slot_index"):
            assert torch.equal(shard[key], default[key])
    assert torch.equal(trim["text_pooled"], default["text_pooled"])
    stamps = {json.loads((caches[n] / store.INDEX).read_text())["fingerprint"] for n in OPTIONS}
    assert len(stamps) == len(OPTIONS)  # both options are part of the fingerprint


@pytest.mark.parametrize("in_memory", [True, False])
def test_trimmed_text_reads_back_at_full_length(caches, in_memory):
    full = load_cache(caches["default"], in_memory=True)
    trim = load_cache(caches["trim"], in_memory=in_memory)
    assert isinstance(trim.text_seq, store.PaddedText)
    assert trim.text_seq.shape == full.text_seq.shape and trim.ids == full.ids
    rows = torch.arange(len(full.ids)).repeat_interleave(SCALE.captions)  # every caption
    choice = torch.arange(SCALE.captions).repeat(len(full.ids))
    got, pooled = trim.text(rows, choice)  # (K, T, D), (K, P)
    want, want_pooled = full.text(rows, choice)
    assert got.dtype == want.dtype == torch.float32 and torch.equal(pooled, want_pooled)
    lengths = torch.tensor(_lengths(caches))  # (K,)
    real = torch.arange(SCALE.text_tokens)[None] < lengths[:, None]  # (K, T)
    assert torch.equal(got[real], want[real])  # the stored tokens, as without trimming
    padding = trim.empty_text_seq.expand_as(got)[~real]  # the empty prompt's states there
    assert torch.equal(got[~real], padding)
    assert not torch.equal(want[~real], padding)  # what trimming drops: caption-dependent
    assert torch.equal(trim.slots(rows[:5]), full.slots(rows[:5]))


def test_max_captions_keeps_the_first_captions(caches):
    full = load_cache(caches["default"], "train")
    for name in ("two", "both"):
        cache = load_cache(caches[name], "train")
        rows = torch.arange(len(cache.ids))
        assert cache.ids == full.ids and cache.num_captions(rows).tolist() == [2] * len(rows)
        for choice in (torch.zeros_like(rows), torch.ones_like(rows)):
            got, want = cache.text(rows, choice), full.text(rows, choice)
            assert torch.equal(got[1], want[1])  # pooled
            if name == "two":
                assert torch.equal(got[0], want[0])
        assert torch.equal(cache.image, full.image)


def test_a_changed_option_remakes_the_shards(caches, tmp_path):
    """Shards of another option are not mixed in: the fingerprint differs, they are re-made."""
    import shutil

    out = tmp_path / "latents"
    shutil.copytree(caches["default"], out)
    data_dir, labels_dir = caches["default"].parent / "raw", caches["default"].parent / "labels"
    build_cache(standin_base(SCALE), data_dir, labels_dir, out, resolution=SCALE.resolution,
                shard_size=SHARD_SIZE, batch_size=SCALE.batch_size, options=OPTIONS["trim"],
                config={"set": "standin"})
    for f in sorted(caches["trim"].iterdir()):
        assert (out / f.name).read_bytes() == f.read_bytes()


def test_token_counts_of_minilm_are_its_real_tokens():
    from facemogle.base.text import MiniLMTextEncoder

    encoder = MiniLMTextEncoder(12)
    texts = ["a face", "", "a woman with long wavy blond hair, green eyes and a wide smile"]
    mask = encoder.tokenizer(texts, padding="max_length", truncation=True, max_length=12,
                             return_tensors="pt")["attention_mask"]  # (3, 12)
    assert token_counts(encoder, texts) == mask.sum(1).tolist() == [4, 2, 12]


def test_caching_memory_does_not_grow_with_the_shard():
    """A shard twice as large (images and captions) takes no more memory: it is on disk, and
    one batch is in memory (the old stage held the shard, twice, in float32)."""
    small = CacheScale(images=8, captions=4, text_tokens=256, text_dim=1024, pooled_dim=64,
                       resolution=64, batch_size=8)
    large = replace(small, images=16, captions=8)
    low, high = peak_memory(small), peak_memory(large)
    grown = large.stored_bytes() - small.stored_bytes()  # 96 MiB more in the shard
    assert high - low < 0.05 * grown, (low, high, grown)
    assert high < 0.5 * large.stored_bytes()
