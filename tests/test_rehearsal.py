"""The CPU rehearsal of the full setting: its params differ from params-flux.yaml only where the
rehearsal says so, its FLUX.1-dev folder only in depth, and what its writer puts on disk is read
by the full setting's own loaders (written here at toy widths; the rehearsal itself writes the
real ones)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import ROOT, flat_params
from facemogle.base.flux import check_flux_dir
from facemogle.base.standin import TINY_TRANSFORMER, TINY_VAE
from facemogle.base.text import FluxTextEncoder
from facemogle.bench.rehearsal import (
    FLUX_DEV_CLIP_TEXT,
    FLUX_DEV_T5,
    REHEARSAL_DEPTH,
    SEGFORMER_B5,
    rehearsal_configs,
    write_rehearsal,
)
from facemogle.core.config import DataConfig
from facemogle.core.flux import FLUX_DEV_TRANSFORMER, FLUX_DEV_VAE
from facemogle.data.readers import open_reader
from facemogle.masks.face_parsers import load_segformer
from test_pipeline import DVC, _run, make_smoke_repo

# Every key where params-rehearsal.yaml differs from params-flux.yaml: where the folders are, and
# how many images, steps and evaluation models; none of them sets a shape.
REHEARSAL_KEYS = {
    "data.local_path", "zeroshot.local_path", "zeroshot.parser_path", "offdist.num_beyond",
    "offdist.num_drawn", "offdist.photos", "base.flux_path", "train.steps",
    "train.checkpoint_every", "train.log_every", "sample.steps", "sample.max_images",
    "evaluate.clip_score_model", "evaluate.cmmd_model", "evaluate.dino_model",
    "evaluate.detector_folds",
}


def test_the_rehearsal_params_are_the_full_settings_but_for_paths_and_counts():
    flux = flat_params(ROOT / "params-flux.yaml")
    rehearsal = flat_params(ROOT / "params-rehearsal.yaml")
    assert flux.keys() == rehearsal.keys()
    assert {k for k in flux if flux[k] != rehearsal[k]} == REHEARSAL_KEYS
    assert rehearsal["base.flux_path"].startswith("data/rehearsal/")


def test_the_rehearsal_model_is_flux_dev_but_for_its_depth():
    configs = rehearsal_configs()
    real = {"transformer": FLUX_DEV_TRANSFORMER, "vae": FLUX_DEV_VAE, "clip": FLUX_DEV_CLIP_TEXT,
            "t5": FLUX_DEV_T5}
    for part, config in configs.items():
        changed = {k for k in config if config[k] != real[part][k]}
        assert changed == set(REHEARSAL_DEPTH.get(part, {})), part
        assert config.keys() == real[part].keys()
    assert configs["transformer"]["attention_head_dim"] * configs["transformer"][
        "num_attention_heads"] == 3072


# SegFormer-B5's 19-class head on a toy backbone.
TOY_SEGFORMER = {"depths": [1, 1, 1, 1], "hidden_sizes": [8, 8, 8, 8],
                 "num_attention_heads": [1, 1, 1, 1], "decoder_hidden_size": 8}


# The rehearsal's folders at toy widths: the same classes and layouts, in seconds.
TOY_CONFIGS = {
    "transformer": {**TINY_TRANSFORMER, "joint_attention_dim": 32, "pooled_projection_dim": 32,
                    "guidance_embeds": True},
    "vae": TINY_VAE,
    "clip": {**FLUX_DEV_CLIP_TEXT, "hidden_size": 32, "intermediate_size": 64,
             "num_hidden_layers": 1, "num_attention_heads": 2, "projection_dim": 32,
             "vocab_size": 64},
    "t5": {**FLUX_DEV_T5, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_heads": 2,
           "vocab_size": 64}}


def test_what_the_rehearsal_writes_is_read_by_the_full_settings_loaders(tmp_path):
    out = write_rehearsal(tmp_path / "rehearsal", configs=TOY_CONFIGS,
                          segformer={**SEGFORMER_B5, **TOY_SEGFORMER})
    flux = out / "FLUX.1-dev"
    check_flux_dir(flux, "base.flux_path")
    text = FluxTextEncoder(str(flux), max_tokens=16, dtype=torch.float32)
    tokens, pooled = text.encode(["a face"])
    assert tokens.shape == (1, 16, 32) and pooled.shape == (1, 32)
    parser = load_segformer(str(out / "face-parsing"), device=torch.device("cpu"))
    faces = open_reader(DataConfig(source="mmcelebahq", resolution=64, num_train=27000,
                                   num_test=3000, local_path=str(out / "mmcelebahq")))
    splits = [e.split for e in faces.entries()]
    assert splits.count("train") >= 3 and splits.count("test") >= 2
    zeroshot = open_reader(DataConfig(source="ffhq_text", resolution=64, variant="zeroshot",
                                      local_path=str(out / "ffhq-text")))
    entries = zeroshot.entries()
    assert len(entries) >= 2 and {e.split for e in entries} == {"test"}
    image = np.asarray(zeroshot.load(entries[0]).image)  # (H, W, 3)
    assert parser(image).shape == image.shape[:2]


@pytest.mark.slow
def test_the_rehearsal_pipeline_runs_every_stage_at_toy_widths(tmp_path_factory, embedded_base):
    """The shortened rehearsal: `dvc repro` with params-rehearsal.yaml as it is (512 px, 512 T5
    tokens, the full setting's readers, parser path and stages) on its folders written at toy
    widths. The real rehearsal (FLUX.1-dev's widths) takes about an hour on 2 cores."""
    repo = make_smoke_repo(tmp_path_factory.mktemp("rehearsal") / "repo", embedded_base, {})
    shutil.copy2(ROOT / "params-rehearsal.yaml", repo / "params.yaml")
    write_rehearsal(repo / "data" / "rehearsal", configs=TOY_CONFIGS,
                    segformer={**SEGFORMER_B5, **TOY_SEGFORMER})
    _run(["git", "commit", "-qam", "rehearsal params"], repo)
    _run(DVC + ["repro"], repo, timeout=1800)
    for mode in ("multimodal", "mask2face", "text2face", "base"):
        metrics = json.loads((repo / "metrics" / "eval" / f"{mode}.json").read_text())
        assert metrics["detect_auc"] is not None
        # FLUX.1-dev ships no face parser: the parser metrics are skipped, and say so
        per_image = json.loads((repo / "metrics" / "eval" / "per_image" / f"{mode}.json")
                               .read_text())
        assert "no face parser" in per_image["skipped"] and len(per_image["ids"]) == 2
        assert len(list((repo / "data" / "samples" / mode).glob("*.png"))) == 2
    assert len(list((repo / "data" / "zeroshot" / "samples" / "text2face").glob("*.png"))) == 2
    assert _run(DVC + ["status"], repo).stdout.strip().endswith("up to date.")
