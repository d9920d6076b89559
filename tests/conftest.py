"""Shared fixtures: a tiny Face-MoGLE checkpoint trained through the real stages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Toy sizes of the real classes: 12 SynthFaces at 64 px, a 1+1-block transformer, a few steps.
TINY_RUN_PARAMS = {
    "data": {"resolution": 64, "num_train": 8, "num_test": 4, "captions_per_image": 2},
    "base": {
        "text_max_tokens": 8,
        "vae": {"block_out_channels": [8, 16, 16, 16], "steps": 20, "batch_size": 8,
                "warmup_steps": 2},
        "transformer": {"num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16,
                        "num_attention_heads": 2, "axes_dims_rope": [4, 6, 6], "steps": 20,
                        "batch_size": 8, "warmup_steps": 2},
        "parser": {"width": 8, "steps": 10, "batch_size": 8, "warmup_steps": 2},
    },
    # One image and caption per encoder call: VAE and text-encoder numerics depend on the batch
    # they run in, so cached conditions equal the pipeline's (one image at a time) bit for bit.
    "cache": {"batch_size": 1},
    "train": {"steps": 6, "batch_size": 4, "checkpoint_every": 3, "log_every": 2},
    # One image per sampler batch: on CPU the transformer's numerics depend on the batch size,
    # so the sample stage's images are comparable bit for bit with single pipeline calls.
    "sample": {"steps": 3, "batch_size": 1, "max_images": 2},
}


@dataclass(frozen=True)
class TrainedRun:
    """Folders of one tiny pipeline run: the stages' outputs, in the DVC layout."""

    root: Path
    params: Path  # the params file every stage read
    raw: Path  # download
    base: Path  # base
    labels: Path  # parse_masks
    latents: Path  # cache_latents
    model: Path  # train: the checkpoint folder (lora/mogle safetensors + config.json)


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) else value
    return out


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> TrainedRun:
    """download -> base -> parse_masks -> cache_latents -> train at toy size (about 20 s)."""
    from stages import base, cache_latents, download, parse_masks, train

    root = tmp_path_factory.mktemp("trained_run")
    params = root / "params.yaml"
    defaults = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.write_text(yaml.safe_dump(_merge(defaults, TINY_RUN_PARAMS), sort_keys=False))
    run = TrainedRun(root, params, root / "raw", root / "base", root / "labels",
                     root / "latents", root / "model")
    p = ["--params", str(params)]
    assert download.main(["--out", str(run.raw), *p]) == 0
    assert base.main(["--data", str(run.raw), "--out", str(run.base), *p]) == 0
    assert parse_masks.main(["--data", str(run.raw), "--out", str(run.labels), "--metrics",
                             str(root / "metrics" / "classes.json"), *p]) == 0
    assert cache_latents.main(["--data", str(run.raw), "--labels", str(run.labels), "--base",
                               str(run.base), "--out", str(run.latents), *p]) == 0
    assert train.main(["--latents", str(run.latents), "--base", str(run.base), "--out",
                       str(run.model), "--metrics-dir", str(root / "metrics" / "train"), *p]) == 0
    return run
