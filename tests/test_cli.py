"""`facemogle generate`: every mode, --parse-face, --gating-out, and each error, on a tiny run."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from facemogle.app import cli
from facemogle.app.pipeline import FaceMoGLEPipeline
from facemogle.core import labels
from facemogle.data.layout import image_path, mask_path

STEPS = "2"


def generate(run, tmp_path, *flags: str, out: str = "face.png") -> tuple[int, str]:
    """Run `facemogle generate` in-process; (exit status, path of the output)."""
    target = tmp_path / out
    status = cli.main(["generate", "--checkpoint", str(run.model), "--seed", "3", "--steps",
                       STEPS, "--out", str(target), *flags])
    return status, target


def mask_file(run, image_id: str = "000009") -> str:
    return str(mask_path(run.labels, image_id))


@pytest.mark.parametrize("flags", [
    ("--prompt", "a face", "--mask", "MASK"),  # multimodal
    ("--mask", "MASK"),  # mask2face
    ("--prompt", "a face"),  # text2face
    (),  # neither: unconditional
], ids=["multimodal", "mask2face", "text2face", "unconditional"])
def test_each_mode_writes_the_pipelines_image(trained_run, tmp_path, flags):
    flags = [mask_file(trained_run) if f == "MASK" else f for f in flags]
    status, out = generate(trained_run, tmp_path, *flags)
    assert status == 0
    pipe = FaceMoGLEPipeline.from_pretrained(trained_run.model)
    args = dict(zip(flags[::2], flags[1::2]))
    expected = pipe(prompt=args.get("--prompt"), mask=args.get("--mask"), seed=3,
                    num_inference_steps=int(STEPS)).images[0]
    np.testing.assert_array_equal(np.asarray(Image.open(out)), np.asarray(expected))


def test_console_entry_point_shows_progress(trained_run, tmp_path):
    out = tmp_path / "face.jpg"
    result = subprocess.run(
        [sys.executable, "-m", "facemogle.app.cli", "generate",
         "--checkpoint", str(trained_run.model),
         "--prompt", "a face", "--seed", "1", "--steps", STEPS, "--out", str(out)],
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{STEPS}/{STEPS}" in result.stderr  # the sampler's progress bar
    assert Image.open(out).format == "JPEG" and Image.open(out).size == (64, 64)


def test_parse_face_makes_the_mask_with_the_bases_parser(trained_run, tmp_path):
    photo = image_path(trained_run.raw, "000010")
    big = tmp_path / "photo.png"
    Image.open(photo).resize((100, 80)).save(big)  # not square, not the model's size
    status, out = generate(trained_run, tmp_path, "--parse-face", str(big), "--save-mask",
                           str(tmp_path / "parsed.png"), "--gating-out", str(tmp_path / "g.png"))
    assert status == 0 and Image.open(out).size == (64, 64)
    parsed = labels.load_label_map(tmp_path / "parsed.png")
    assert parsed.shape == (64, 64)
    assert Image.open(tmp_path / "g.png").size[0] > 84


def test_parse_face_with_mediapipe_on_a_real_photo(trained_run, tmp_path):
    mediapipe = pytest.importorskip("mediapipe")
    if not hasattr(mediapipe, "solutions"):
        pytest.skip("needs mediapipe 0.10.21 (the face mesh solutions API)")
    cbook = pytest.importorskip("matplotlib.cbook")
    photo = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)  # 600x512 portrait
    status, out = generate(trained_run, tmp_path, "--parse-face", str(photo), "--parser",
                           "mediapipe", "--save-mask", str(tmp_path / "parsed.png"))
    assert status == 0 and out.exists()
    counts = np.bincount(labels.load_label_map(tmp_path / "parsed.png").ravel(), minlength=19)
    for name in ("skin", "nose", "hair", "cloth"):
        assert counts[labels.LABEL_INDEX[name]] > 0, name
    assert counts[labels.LABEL_INDEX["skin"]] > 64 * 64 // 20


def test_gating_out_writes_the_expert_maps(trained_run, tmp_path):
    status, _ = generate(trained_run, tmp_path, "--mask", mask_file(trained_run),
                         "--gating-out", str(tmp_path / "gating.png"))
    assert status == 0
    grid = np.asarray(Image.open(tmp_path / "gating.png"))
    assert grid.shape == (30 + 6 * 66, 84 + 2 * 66, 3)  # 6 experts x 2 steps


def test_mask_of_another_size_is_refused_unless_resized(trained_run, tmp_path, capsys):
    small = tmp_path / "small.png"
    label_map = labels.load_label_map(mask_file(trained_run))
    labels.save_label_map(small, labels.resize_label_map(label_map, 32))
    status, out = generate(trained_run, tmp_path, "--mask", str(small))
    assert status == 2 and not out.exists()
    assert "32x32 px, the model generates 64x64" in capsys.readouterr().err
    status, out = generate(trained_run, tmp_path, "--mask", str(small), "--resize-mask")
    assert status == 0 and out.exists()


@pytest.mark.parametrize("case", ["missing checkpoint", "off-palette mask", "missing mask",
                                  "gating without mask", "unknown extension"])
def test_errors_are_one_clear_line(trained_run, tmp_path, capsys, case):
    color = labels.label_map_to_color(labels.load_label_map(mask_file(trained_run)))
    color[:2, :2] = (1, 2, 3)
    Image.fromarray(color).save(tmp_path / "off.png")
    argv = {
        "missing checkpoint": (["--checkpoint", str(tmp_path / "nope")], "no such folder"),
        "off-palette mask": (["--mask", str(tmp_path / "off.png")], "(1, 2, 3) (4 px)"),
        "missing mask": (["--mask", str(tmp_path / "none.png")], "none.png: file not found"),
        "gating without mask": (["--prompt", "x", "--gating-out", str(tmp_path / "g.png")],
                                "--gating-out needs a mask"),
        "unknown extension": (["--out", str(tmp_path / "face.xyz")], "unknown image extension"),
    }
    flags, message = argv[case]
    base = ["generate", "--checkpoint", str(trained_run.model), "--seed", "0", "--steps", "1",
            "--out", str(tmp_path / "face.png")]
    assert cli.main(base + flags) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after any model-loading progress bars
    assert last.startswith("facemogle generate: error:") and message in last
    assert "Traceback" not in err
    assert not (tmp_path / "face.png").exists()


def test_bad_numbers_are_refused_by_the_argument_parser(trained_run, tmp_path, capsys):
    for flag, value in (("--size", "72"), ("--steps", "0"), ("--color-tolerance", "-1")):
        with pytest.raises(SystemExit) as exit_info:
            generate(trained_run, tmp_path, flag, value)
        assert exit_info.value.code == 2
        assert flag in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["generate", "--checkpoint", "x", "--out", "y", "--mask", "a",
                  "--parse-face", "b"])
    assert "not allowed with argument" in capsys.readouterr().err
