"""Shared fixtures: a tiny embedded base trained by the real pretraining command, and a tiny
Face-MoGLE checkpoint trained on it through the real stages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

TINY_DATA = {"resolution": 64, "num_train": 8, "num_test": 4, "captions_per_image": 2}


# The tiny profile of `python -m stages.pretrain`: toy sizes of the real classes, a few steps.
TINY_PRETRAIN_PARAMS = {
    "data": TINY_DATA,
    "base": {"text_max_tokens": 8},
    "pretrain": {
        "checkpoint_every": 10,
        "vae": {"block_out_channels": [8, 16, 16, 16], "steps": 20, "batch_size": 8,
                "warmup_steps": 2, "crop_size": 32},
        "transformer": {"num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16,
                        "num_attention_heads": 2, "axes_dims_rope": [4, 6, 6], "steps": 20,
                        "batch_size": 8, "warmup_steps": 2},
        "parser": {"width": 8, "steps": 10, "batch_size": 8, "warmup_steps": 2},
    },
}


# 12 SynthFaces at 64 px on the tiny embedded base.
TINY_RUN_PARAMS = {
    "data": TINY_DATA,
    "base": {"text_max_tokens": 8},
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


def merge(base: dict, override: dict) -> dict:
    """`base` with `override` merged in, mapping into mapping (a copy; neither is changed).

    A mapping in `override` may name a section `base` lacks (the section's defaults apply
    there, e.g. one params.yaml leaves out); an unknown key still fails where the params are
    loaded, as `load_params` rejects it.
    """
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def params_file(path: Path, override: dict, defaults: str = "params.yaml") -> Path:
    """Write the repository's `defaults` params file with `override` merged in, to `path`."""
    path.write_text(yaml.safe_dump(merge(yaml.safe_load((ROOT / defaults).read_text()),
                                          override), sort_keys=False))
    return path


def flat_params(path: Path) -> dict:
    """A params file as {"section.key": value}."""
    def flat(tree: dict, prefix: str) -> dict:
        out = {}
        for key, value in tree.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict)
                       else {f"{prefix}{key}": value})
        return out
    return flat(yaml.safe_load(Path(path).read_text()), "")


@pytest.fixture(scope="session")
def embedded_base(tmp_path_factory) -> Path:
    """A tiny embedded base written by `python -m stages.pretrain` (about 10 s)."""
    from stages import pretrain

    root = tmp_path_factory.mktemp("embedded")
    params = params_file(root / "params-pretrain.yaml", TINY_PRETRAIN_PARAMS,
                         "params-pretrain.yaml")
    assert pretrain.main(["--params", str(params), "--work", str(root / "work"), "--out",
                          str(root / "embedded"), "--metrics-dir", str(root / "metrics")]) == 0
    return root / "embedded"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, embedded_base) -> TrainedRun:
    """download -> base -> parse_masks -> cache_latents -> train at toy size (about 20 s)."""
    from stages import base, cache_latents, download, parse_masks, train

    root = tmp_path_factory.mktemp("trained_run")
    params = params_file(root / "params.yaml", merge(TINY_RUN_PARAMS, {
        "base": {"tiny_path": str(embedded_base)}}))
    run = TrainedRun(root, params, root / "raw", root / "base", root / "labels",
                     root / "latents", root / "model")
    p = ["--params", str(params)]
    assert download.main(["--out", str(run.raw), *p]) == 0
    assert base.main(["--out", str(run.base), *p]) == 0
    assert parse_masks.main(["--data", str(run.raw), "--out", str(run.labels), "--metrics",
                             str(root / "metrics" / "classes.json"), *p]) == 0
    assert cache_latents.main(["--data", str(run.raw), "--labels", str(run.labels), "--base",
                               str(run.base), "--out", str(run.latents), *p]) == 0
    assert train.main(["--latents", str(run.latents), "--base", str(run.base), "--out",
                       str(run.model), "--metrics-dir", str(root / "metrics" / "train"), *p]) == 0
    return run
