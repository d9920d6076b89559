"""The `evaluate` stage on a tiny trained run: deterministic, strict about ids, honest about skips."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
import yaml

from facemogle.core.io import InputError
from stages import evaluate, sample

EVAL = {"kid_subsets": 5, "kid_subset_size": 2, "detector_folds": 2, "detector_steps": 3,
        "batch_size": 2}


@pytest.fixture(scope="module")
def evaluated(trained_run, tmp_path_factory):
    """Samples of the run, a params file for a 2-image evaluation, and one evaluation."""
    root = tmp_path_factory.mktemp("evaluated")
    params = yaml.safe_load(trained_run.params.read_text())
    params["evaluate"].update(EVAL)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    r = trained_run
    assert sample.main(["--latents", str(r.latents), "--labels", str(r.labels), "--data",
                        str(r.raw), "--base", str(r.base), "--model", str(r.model), "--out",
                        str(root / "samples"), "--sheets", str(root / "sheets"), "--params",
                        str(root / "params.yaml")]) == 0
    assert _evaluate(r, root / "samples", root / "first", root) == 0
    return root


def _evaluate(run, samples, out, root) -> int:
    return evaluate.main(["--samples", str(samples), "--data", str(run.raw), "--labels",
                          str(run.labels), "--base", str(run.base), "--out", str(out),
                          "--params", str(root / "params.yaml")])


def test_running_evaluate_twice_gives_identical_numbers(trained_run, evaluated):
    assert _evaluate(trained_run, evaluated / "samples", evaluated / "second", evaluated) == 0
    for mode in ("multimodal", "mask2face", "text2face"):
        first = json.loads((evaluated / "first" / f"{mode}.json").read_text())
        second = json.loads((evaluated / "second" / f"{mode}.json").read_text())
        assert first == second
        assert isinstance(first["mask_miou"], float) and isinstance(first["detect_auc"], float)


def test_metrics_without_a_backend_are_skipped_with_the_reason(evaluated):
    metrics = json.loads((evaluated / "first" / "multimodal.json").read_text())
    assert "clip_score" not in metrics and "null" in metrics["skipped"]["clip_score"]
    if importlib.util.find_spec("torch_fidelity") is None:  # as on the development machine
        assert "fid" not in metrics and "torch-fidelity" in metrics["skipped"]["fid"]


def test_a_missing_generated_image_is_an_error_naming_its_id(trained_run, evaluated, tmp_path):
    samples = tmp_path / "samples"
    shutil.copytree(evaluated / "samples", samples)
    missing = json.loads((samples / "ids.json").read_text())[1]
    (samples / "mask2face" / f"{missing}.png").unlink()
    with pytest.raises((InputError, ValueError), match=missing):
        _evaluate(trained_run, samples, tmp_path / "out", evaluated)
    assert not (tmp_path / "out" / "mask2face.json").exists()
