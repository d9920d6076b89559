"""The `evaluate` stage on a tiny trained run: deterministic, strict about ids, honest about
skips."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
import yaml

from facemogle.core.io import InputError
from facemogle.data.layout import image_path
from facemogle.sampling.samples_folder import ids_path, sample_path
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


def test_mask_metrics_name_the_parser_hash_and_carry_its_ceilings(trained_run, evaluated):
    """Every mode's file names the parser file by its SHA-256 and holds the parser's own mIoU on
    the real test images and on their VAE reconstructions, overall and per class, measured
    once for the set (identical in every mode)."""
    from facemogle.base.loader import parts_dir, read_manifest
    from facemogle.core.io import file_sha256

    parser_file = parts_dir(trained_run.base, read_manifest(trained_run.base)) / "parser" / \
        "model.safetensors"
    ceilings = None
    for mode in ("multimodal", "mask2face", "text2face", "base"):
        metrics = json.loads((evaluated / "first" / f"{mode}.json").read_text())
        for name in ("mask_miou", "attribute_acc", "parser_ceiling_miou_real",
                     "parser_ceiling_miou_recon"):
            assert file_sha256(parser_file) in metrics["backends"][name], (mode, name)
        mine = {k: v for k, v in metrics.items() if k.startswith("parser_ceiling_")}
        assert 0.0 <= mine["parser_ceiling_miou_real"] <= 1.0
        assert 0.0 <= mine["parser_ceiling_miou_recon"] <= 1.0
        assert "parser_ceiling_iou_real_background" in mine
        assert "parser_ceiling_iou_recon_skin" in mine
        assert ceilings is None or mine == ceilings
        ceilings = mine


def test_sample_stage_writes_the_off_distribution_sheet(evaluated):
    from PIL import Image

    sheet = Image.open(evaluated / "sheets" / "off_distribution.png")
    assert sheet.height > 6 * 64  # six layouts, one row each


def test_metrics_without_a_backend_are_skipped_with_the_reason(evaluated):
    metrics = json.loads((evaluated / "first" / "multimodal.json").read_text())
    assert "clip_score" not in metrics and "null" in metrics["skipped"]["clip_score"]
    # Every mode is asked for every metric: mask2face's text metrics and text2face's DINO
    # distance are skipped only for want of weights, never for the mode.
    for mode, name in (("mask2face", "clip_score"), ("mask2face", "image_reward"),
                       ("text2face", "dino_structure")):
        skipped = json.loads((evaluated / "first" / f"{mode}.json").read_text())["skipped"]
        assert skipped[name].startswith("evaluate.") and "is null" in skipped[name], mode
    if importlib.util.find_spec("torch_fidelity") is None:  # as on the development machine
        assert "fid" not in metrics and "torch-fidelity" in metrics["skipped"]["fid"]


def test_a_missing_generated_image_is_an_error_naming_its_id(trained_run, evaluated, tmp_path):
    samples = tmp_path / "samples"
    shutil.copytree(evaluated / "samples", samples)
    missing = json.loads(ids_path(samples).read_text())[1]
    sample_path(samples, "mask2face", missing).unlink()
    with pytest.raises((InputError, ValueError), match=missing):
        _evaluate(trained_run, samples, tmp_path / "out", evaluated)
    assert not (tmp_path / "out" / "mask2face.json").exists()


def test_another_methods_folder_is_scored_and_reported_beside_face_mogle(trained_run, evaluated,
                                                                         tmp_path):
    """A folder of images named by test id (here the real photos, one as JPEG) is scored with
    the same metrics on the sample stage's ids, and enters the report as its own row."""
    from PIL import Image

    from stages import report

    ids = json.loads(ids_path(evaluated / "samples").read_text())
    folder = tmp_path / "real-photos" / "mask2face"
    folder.mkdir(parents=True)
    for n, i in enumerate(ids):
        image = Image.open(image_path(trained_run.raw, i)).convert("RGB")
        image.save(folder / (f"{i}.jpg" if n == 0 else f"{i}.png"), quality=95)
    out = tmp_path / "real-photos-eval"
    assert evaluate.main(["--samples", str(folder.parent), "--data", str(trained_run.raw),
                          "--labels", str(trained_run.labels), "--base", str(trained_run.base),
                          "--out", str(out), "--ids", str(ids_path(evaluated / "samples")),
                          "--params", str(evaluated / "params.yaml")]) == 0
    scored = json.loads((out / "mask2face.json").read_text())
    ours = json.loads((evaluated / "first" / "mask2face.json").read_text())
    per_class = {k for k in (*scored, *ours) if k.startswith("mask_iou_")}  # classes present
    assert set(scored) - per_class == set(ours) - per_class
    assert scored["skipped"] == ours["skipped"]
    assert sorted(p.name for p in out.iterdir()) == ["mask2face.json", "per_image"]
    assert sorted(p.name for p in (out / "per_image").iterdir()) == ["mask2face.json"]
    assert scored["mask_miou"] != ours["mask_miou"]  # other images, other numbers

    md = tmp_path / "report.md"
    assert report.main(["--eval", f"in-distribution={evaluated / 'first'}", "--baseline",
                        f"Real photos={out}", "--out", str(md)]) == 0
    tables = md.read_text().split("## ")
    mask2face = next(t for t in tables if t.startswith("mask2face"))
    assert "| Real photos |" in mask2face and "| Face-MoGLE (in-distribution) |" in mask2face
    assert not any("Real photos" in t for t in tables if not t.startswith("mask2face"))


def test_an_image_of_another_size_is_refused_naming_it(trained_run, evaluated, tmp_path):
    ids = json.loads(ids_path(evaluated / "samples").read_text())
    folder = tmp_path / "small" / "mask2face"
    folder.mkdir(parents=True)
    for i in ids:
        shutil.copy(sample_path(evaluated / "samples", "mask2face", i), folder / f"{i}.png")
    from PIL import Image

    Image.new("RGB", (16, 16)).save(folder / f"{ids[0]}.png")
    with pytest.raises(InputError, match=rf"{ids[0]}\.png: 16x16 px, expected"):
        evaluate.main(["--samples", str(folder.parent), "--data", str(trained_run.raw),
                       "--labels", str(trained_run.labels), "--base", str(trained_run.base),
                       "--out", str(tmp_path / "out"), "--ids",
                       str(ids_path(evaluated / "samples")), "--params",
                       str(evaluated / "params.yaml")])
    assert not (tmp_path / "out").exists()
