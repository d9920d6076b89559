"""Where the time goes (`facemogle.bench.parts`), on the tiny trained run of conftest."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facemogle.bench import parts
from facemogle.core import labels
from facemogle.core.config import load_params
from facemogle.core.io import read_json
from facemogle.data.layout import mask_path, split_path

SECTIONS = {
    "cache": ("host_faces", "host_masks", "vae_faces", "vae_slots", "text"),
    "train_step": (*parts.FORWARD_PARTS, "rest", "data", "backward", "optimizer"),
    "sample_step": (*parts.FORWARD_PARTS, "rest"),
}


@pytest.fixture(scope="module")
def profiled(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("parts")
    run = trained_run
    argv = ["--base", str(run.base), "--model", str(run.model), "--latents", str(run.latents),
            "--data", str(run.raw), "--labels", str(run.labels), "--params", str(run.params),
            "--repeats", "1", "--peak-size", "256", "--out", str(out / "parts.json"),
            "--markdown", str(out / "parts.md")]
    assert parts.main(argv) == 0
    return run, json.loads((out / "parts.json").read_text()), (out / "parts.md").read_text()


def test_every_part_is_timed_and_shares_add_up(profiled):
    _, r, _ = profiled
    m = r["machine"]
    assert m["peak_flops_per_s"] > 0 and m["torch_threads"] >= 1 and m["cpu"]
    assert isinstance(m["avx512_bf16"], bool) and isinstance(m["amx_bf16"], bool)
    for section, names in SECTIONS.items():
        got = r[section]["parts"]
        assert list(got) == list(names), section
        assert all(p["seconds"] > 0 for p in got.values()), section
        assert sum(p["share"] for p in got.values()) <= 1 + 1e-6
        assert r[section]["seconds"] == pytest.approx(sum(p["seconds"] for p in got.values()))
        for p in got.values():
            if p["flops_per_s"] is not None:
                assert p["flops_per_s"] == pytest.approx(p["flops"] / p["seconds"])
                assert p["peak_fraction"] == pytest.approx(p["flops_per_s"] / m["peak_flops_per_s"])


def test_flops_where_the_work_is(profiled):
    _, r, _ = profiled
    sample, train = r["sample_step"]["parts"], r["train_step"]["parts"]
    # Attention runs the CPU SDPA kernel, which FlopCounterMode alone counts as 0.
    for name in ("mogle_experts", "mogle_gate", "attention", "mlp", "linear"):
        assert sample[name]["flops"] > 0 and train[name]["flops"] > 0
    assert r["cache"]["parts"]["vae_faces"]["flops"] > 0
    assert r["cache"]["parts"]["host_faces"]["flops_per_s"] is None
    # A frozen base: the backward needs input gradients only, yet more than nothing.
    assert 0 < train["backward"]["flops"] < 3 * sum(train[n]["flops"] for n in SECTIONS[
        "sample_step"])


def test_condition_stream_costs_time_and_flops(profiled):
    _, r, _ = profiled
    s = r["sample_step"]["streams"]
    assert s["condition_s"] > 0 and 0 < s["condition_share"] < 1
    assert s["with_condition_flops"] > s["without_condition_flops"] > 0
    assert 0 < s["text_flops_share"] < 1


def test_cache_projection_uses_the_shards_real_averages(profiled):
    run, r, _ = profiled
    params = load_params(run.params)
    split = read_json(split_path(run.labels))
    ids = (split["train"] + split["test"])[:params.cache.shard_size]
    stored = np.mean([labels.slot_presence(labels.load_label_map(
        mask_path(run.labels, i))).sum() for i in ids])
    c = r["cache"]
    assert c["slots_per_image"] == pytest.approx(stored)
    assert c["captions_per_image"] == params.data.captions_per_image
    shard = params.cache.shard_size
    assert c["parts"]["vae_slots"]["items_per_shard"] == pytest.approx(shard * stored)
    for p in c["parts"].values():
        assert p["seconds"] == pytest.approx(p["per_item_s"] * p["items_per_shard"])


def test_markdown_names_every_part(profiled):
    _, r, table = profiled
    assert table == parts.markdown_table(r)
    for names in SECTIONS.values():
        assert all(f"| {n} |" in table for n in names)
    assert "Condition stream" in table and "GFLOP/s" in table
