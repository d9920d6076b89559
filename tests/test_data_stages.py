"""The `download` and `parse_masks` stages end to end on tiny trees, including every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from facemogle.bench.fake_layouts import (
    fake_face,
    write_celebamaskhq,
    write_ffhq_text,
    write_mmcelebahq,
)
from facemogle.core.config import ConfigError
from facemogle.core.io import InputError, read_jsonl, write_json, write_jsonl
from facemogle.core.labels import (
    LABEL_INDEX,
    NUM_SLOTS,
    PALETTE,
    label_map_image,
    slot_presence,
)
from facemogle.data import layout
from stages import download, parse_masks

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32  # the fixture faces' size (CelebAMask-HQ: its part masks'; its images are 2 * SIZE)
RES = 64  # the smallest data.resolution


def write_params(path: Path, data: dict | None = None, masks: dict | None = None) -> Path:
    """The project's params.yaml with `data` / `masks` keys overridden."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update({"resolution": RES, **(data or {})})
    params["masks"].update(masks or {})
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run_download(tmp_path: Path, *flags: str, out_name: str = "raw", **data) -> Path:
    out = tmp_path / out_name
    assert download.main(["--out", str(out), *flags, "--params",
                          str(write_params(tmp_path / "params.yaml", data))]) == 0
    return out


def run_parse(tmp_path: Path, raw: Path, data: dict | None = None, masks: dict | None = None,
              parser_dir: Path | None = None) -> tuple[Path, dict]:
    out, metrics = tmp_path / "labels", tmp_path / "metrics" / "classes.json"
    argv = ["--data", str(raw), "--out", str(out), "--metrics", str(metrics), "--params",
            str(write_params(tmp_path / "params.yaml", data, masks))]
    argv += ["--parser-dir", str(parser_dir)] if parser_dir else []
    assert parse_masks.main(argv) == 0
    return out, json.loads(metrics.read_text())


def assert_nothing_written(out: Path) -> None:
    """A failed stage leaves neither its output nor a temporary sibling."""
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def mm_data(root: Path, **extra) -> dict:
    return {"source": "mmcelebahq", "local_path": str(root), **extra}


# ----------------------------------------------------------------------------------------------
# download
# ----------------------------------------------------------------------------------------------


def test_download_synthfaces(tmp_path):
    out = run_download(tmp_path, source="synthfaces", num_train=3, num_test=2,
                       captions_per_image=2)
    ids = [f"{i:06d}" for i in range(5)]
    assert json.loads((out / layout.SPLIT).read_text()) == {"train": ids[:3], "test": ids[3:]}
    for i in ids:
        assert Image.open(layout.image_path(out, i)).size == (RES, RES)
        assert Image.open(layout.mask_path(out, i)).mode == "P"
    captions = read_jsonl(out / layout.CAPTIONS)
    assert [r["id"] for r in captions] == ids and all(len(r["captions"]) == 2 for r in captions)
    assert [r["id"] for r in read_jsonl(out / layout.ATTRIBUTES)] == ids
    assert json.loads((out / layout.SKIPPED).read_text()) == []


def test_download_zeroshot_set_reads_its_section_and_only_the_test_split(tmp_path):
    data = {"source": "synthfaces", "variant": "standard", "num_train": 2, "num_test": 3}
    standard = run_download(tmp_path, **data)
    params = write_params(tmp_path / "params.yaml", data)
    raw = yaml.safe_load(params.read_text())
    raw["zeroshot"].update({"source": "synthfaces", "variant": "zeroshot", "num_test": 2})
    params.write_text(yaml.safe_dump(raw))
    zeroshot = tmp_path / "zeroshot"
    assert download.main(["--set", "zeroshot", "--out", str(zeroshot), "--params",
                          str(params)]) == 0
    # Test faces only, as many as zeroshot.num_test, drawn from the zero-shot distribution.
    assert json.loads((zeroshot / layout.SPLIT).read_text()) == {"train": [],
                                                                 "test": ["000002", "000003"]}
    for i in (2, 3):
        ours, theirs = (np.asarray(Image.open(layout.image_path(out, f"{i:06d}")))
                        for out in (standard, zeroshot))
        assert not np.array_equal(ours, theirs)
    attributes = [json.loads(line)["attributes"]
                  for line in (zeroshot / layout.ATTRIBUTES).read_text().splitlines()]
    assert all(a["gender"] == "woman" for a in attributes)


def test_download_mmcelebahq_resizes_and_splits(tmp_path):
    faces = write_mmcelebahq(tmp_path / "mm", ids=range(6), json_ids=(4,))
    out = run_download(tmp_path, **mm_data(tmp_path / "mm", num_train=3, num_test=2))
    assert json.loads((out / layout.SPLIT).read_text()) == {"train": ["0", "1", "2"],
                                                            "test": ["3", "4"]}
    for i in range(5):
        image = Image.open(layout.image_path(out, str(i)))
        assert image.mode == "RGB" and image.size == (RES, RES)
        mask = Image.open(layout.mask_path(out, str(i)))
        # 32 -> 64 px nearest-neighbour: every label pixel becomes a 2x2 block, no new labels.
        np.testing.assert_array_equal(np.asarray(mask),
                                      faces[i].label_map.repeat(2, 0).repeat(2, 1))
    assert {r["id"]: r["captions"] for r in read_jsonl(out / layout.CAPTIONS)} == {
        str(i): faces[i].captions for i in range(5)}
    assert not (out / layout.ATTRIBUTES).exists()


def test_download_accepts_masks_at_an_integer_fraction_of_the_image_size(tmp_path):
    # CelebA-HQ faces are 1024 px and their masks 512 px: aligned, resized with the face.
    faces = write_mmcelebahq(tmp_path / "mm", ids=[0, 1], size=2 * SIZE, mask_size=SIZE)
    out = run_download(tmp_path, **mm_data(tmp_path / "mm", num_train=1, num_test=1))
    np.testing.assert_array_equal(np.asarray(Image.open(layout.mask_path(out, "0"))),
                                  faces[0].label_map.repeat(2, 0).repeat(2, 1))
    assert Image.open(layout.image_path(out, "0")).size == (RES, RES)


def test_download_caps_images_per_split_and_captions_per_image(tmp_path):
    faces = write_mmcelebahq(tmp_path / "mm", ids=range(8))
    out = run_download(tmp_path, **mm_data(tmp_path / "mm", num_train=4, num_test=4,
                                           max_images=2, captions_per_image=1))
    assert json.loads((out / layout.SPLIT).read_text()) == {"train": ["0", "1"],
                                                            "test": ["4", "5"]}
    assert [r["captions"] for r in read_jsonl(out / layout.CAPTIONS)] == [
        faces[i].captions[:1] for i in (0, 1, 4, 5)]


def test_download_celebamaskhq(tmp_path):
    faces = write_celebamaskhq(tmp_path / "cm", ids=[0, 1, 2], size=2 * SIZE, mask_size=SIZE)
    out = run_download(tmp_path, source="celebamaskhq", local_path=str(tmp_path / "cm"),
                       num_train=2, num_test=1)
    assert json.loads((out / layout.SPLIT).read_text()) == {"train": ["0", "1"], "test": ["2"]}
    mask = np.asarray(Image.open(layout.mask_path(out, "2")))  # 32 px parts -> 64 px
    assert mask.shape == (RES, RES)
    np.testing.assert_array_equal(mask, faces[2].label_map.repeat(2, 0).repeat(2, 1))
    assert Image.open(layout.image_path(out, "2")).size == (RES, RES)  # 64 px image kept


def test_download_ffhq_text_has_no_masks(tmp_path):
    write_ffhq_text(tmp_path / "ff", ids=["a1", "b2"])
    out = run_download(tmp_path, source="ffhq_text", local_path=str(tmp_path / "ff"))
    assert json.loads((out / layout.SPLIT).read_text()) == {"train": [], "test": ["a1", "b2"]}
    assert not (out / layout.MASKS).exists()


def test_download_from_an_unreachable_hub_names_local_path(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(InputError, match="data.local_path"):
        run_download(tmp_path, source="mmcelebahq", hub_repo="someone/mm-celeba-hq")
    assert_nothing_written(tmp_path / "raw")


def _corrupt_image(root: Path) -> str:
    (root / "face" / "1.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    return "face/1.jpg"


def _corrupt_mask(root: Path) -> str:
    (root / "mask" / "1.png").write_bytes(b"\x89PNG broken")
    return "mask/1.png"


def _small_mask(root: Path) -> str:
    label_map_image(fake_face(1, SIZE).label_map[:20, :20]).save(root / "mask" / "1.png")
    return "mask/1.png"


def _no_caption(root: Path) -> str:
    (root / "text" / "1.txt").unlink()
    return "face/1.jpg"


def _no_mask(root: Path) -> str:
    (root / "mask" / "1.png").unlink()
    return "face/1.jpg"


DOWNLOAD_CASES = {
    "corrupt image": (_corrupt_image, "corrupt"),
    "corrupt mask": (_corrupt_mask, "corrupt"),
    "mask size differs": (_small_mask, "20x20"),
    "no caption": (_no_caption, "no caption"),
    "no mask": (_no_mask, "no mask"),
}


@pytest.mark.parametrize("case", DOWNLOAD_CASES)
def test_download_bad_input_stops_and_writes_nothing(tmp_path, case):
    spoil, problem = DOWNLOAD_CASES[case]
    write_mmcelebahq(tmp_path / "mm", ids=[0, 1, 2])
    bad = spoil(tmp_path / "mm")
    with pytest.raises(InputError, match=problem) as err:
        run_download(tmp_path, **mm_data(tmp_path / "mm", num_train=2, num_test=1))
    assert bad in str(err.value)
    assert_nothing_written(tmp_path / "raw")


@pytest.mark.parametrize("case", DOWNLOAD_CASES)
def test_download_bad_input_is_skipped_and_reported(tmp_path, case):
    spoil, problem = DOWNLOAD_CASES[case]
    write_mmcelebahq(tmp_path / "mm", ids=[0, 1, 2])
    bad = spoil(tmp_path / "mm")
    out = run_download(tmp_path, **mm_data(tmp_path / "mm", num_train=2, num_test=1,
                                           on_error="skip"))
    skipped = json.loads((out / layout.SKIPPED).read_text())
    assert len(skipped) == 1 and skipped[0]["file"].endswith(bad)
    assert problem in skipped[0]["reason"]
    assert json.loads((out / layout.SPLIT).read_text()) == {"train": ["0"], "test": ["2"]}
    assert [r["id"] for r in read_jsonl(out / layout.CAPTIONS)] == ["0", "2"]
    assert not layout.image_path(out, "1").exists()


def test_download_with_every_item_bad_fails_even_when_skipping(tmp_path):
    write_mmcelebahq(tmp_path / "mm", ids=[0])
    (tmp_path / "mm" / "text" / "0.txt").unlink()
    with pytest.raises(InputError, match="no usable images"):
        run_download(tmp_path, **mm_data(tmp_path / "mm", on_error="skip"))
    assert_nothing_written(tmp_path / "raw")


# ----------------------------------------------------------------------------------------------
# parse_masks
# ----------------------------------------------------------------------------------------------


def write_raw(root: Path, ids: list[str], masks: bool = True) -> dict[str, np.ndarray]:
    """A `download` layout written directly: 32 px images, "P" masks, captions, split; the
    face at position n is `fake_face(n, SIZE)`."""
    (root / layout.IMAGES).mkdir(parents=True)
    maps, captions = {}, []
    for n, i in enumerate(ids):
        face = fake_face(n, SIZE)
        Image.fromarray(face.image).save(layout.image_path(root, i))
        maps[i] = face.label_map
        if masks:
            (root / layout.MASKS).mkdir(exist_ok=True)
            label_map_image(maps[i]).save(layout.mask_path(root, i))
        captions.append({"id": i, "captions": face.captions})
    write_jsonl(root / layout.CAPTIONS, captions)
    write_json(root / layout.SPLIT, {"train": ids[:-1], "test": ids[-1:]})
    write_json(root / layout.SKIPPED, [])
    return maps


def test_parse_masks_from_dataset_masks(tmp_path):
    maps = write_raw(tmp_path / "raw", ["a", "b", "c", "d"])
    out, metrics = run_parse(tmp_path, tmp_path / "raw")
    presence = json.loads((out / layout.PRESENCE).read_text())
    for i, lm in maps.items():
        saved = Image.open(layout.mask_path(out, i))
        assert saved.mode == "P"
        np.testing.assert_array_equal(np.asarray(saved), lm)
        assert presence[i] == slot_presence(lm).tolist() and len(presence[i]) == NUM_SLOTS
    assert json.loads((out / layout.SPLIT).read_text()) == {"train": ["a", "b", "c"],
                                                            "test": ["d"]}
    assert metrics["num_images"] == 4 and metrics["from_dataset"] == 4
    classes = metrics["classes"]
    assert sum(c["pixel_share"] for c in classes.values()) == pytest.approx(1.0, abs=1e-4)
    assert classes["skin"]["image_frequency"] == 1.0
    all_maps = np.stack(list(maps.values()))  # (4, SIZE, SIZE)
    for name, label in LABEL_INDEX.items():
        assert classes[name]["pixel_share"] == pytest.approx((all_maps == label).mean(),
                                                             abs=1e-6), name
        assert classes[name]["image_frequency"] == pytest.approx(
            (all_maps == label).any(axis=(1, 2)).mean(), abs=1e-6), name
    # Frequencies count images, not pixels; labels absent from every face are listed as zeros.
    assert any(0 < c["image_frequency"] < 1 for c in classes.values())
    assert {"pixel_share": 0.0, "image_frequency": 0.0} in classes.values()


def test_parse_masks_colour_masks_and_tolerance(tmp_path):
    maps = write_raw(tmp_path / "raw", ["a", "b"])
    colour = PALETTE[maps["a"]].astype(np.int16)
    colour[maps["a"] == LABEL_INDEX["skin"]] += np.array([3, 0, 0], dtype=np.int16)  # (207,0,0)
    Image.fromarray(colour.astype(np.uint8)).save(layout.mask_path(tmp_path / "raw", "a"))
    with pytest.raises(InputError, match=r"\(207, 0, 0\)"):
        run_parse(tmp_path, tmp_path / "raw")
    out, _ = run_parse(tmp_path, tmp_path / "raw", masks={"color_tolerance": 4})
    np.testing.assert_array_equal(np.asarray(Image.open(layout.mask_path(out, "a"))), maps["a"])


def _unknown_colour(raw: Path) -> tuple[str, str]:
    colour = PALETTE[fake_face(1, SIZE).label_map].copy()
    colour[:4, :4] = (1, 2, 3)
    Image.fromarray(colour).save(layout.mask_path(raw, "b"))
    return "masks/b.png", "(1, 2, 3)"


def _corrupt_label_map(raw: Path) -> tuple[str, str]:
    layout.mask_path(raw, "b").write_bytes(b"garbage")
    return "masks/b.png", "corrupt"


def _label_map_size(raw: Path) -> tuple[str, str]:
    label_map_image(fake_face(1, SIZE).label_map[::2, ::2]).save(layout.mask_path(raw, "b"))
    return "masks/b.png", "16x16"


def _corrupt_raw_image(raw: Path) -> tuple[str, str]:
    layout.image_path(raw, "b").write_bytes(b"garbage")
    return "images/b.png", "corrupt"


def _missing_label_map(raw: Path) -> tuple[str, str]:
    layout.mask_path(raw, "b").unlink()
    return "images/b.png", "masks.parser is 'none'"


PARSE_CASES = {
    "unknown mask colour": _unknown_colour,
    "corrupt mask": _corrupt_label_map,
    "mask size differs": _label_map_size,
    "corrupt image": _corrupt_raw_image,
    "no mask and no parser": _missing_label_map,
}


@pytest.mark.parametrize("case", PARSE_CASES)
def test_parse_masks_bad_input_stops_and_writes_nothing(tmp_path, case):
    write_raw(tmp_path / "raw", ["a", "b", "c"])
    bad, problem = PARSE_CASES[case](tmp_path / "raw")
    with pytest.raises(InputError) as err:
        run_parse(tmp_path, tmp_path / "raw")
    assert bad in str(err.value) and problem in str(err.value)
    assert_nothing_written(tmp_path / "labels")
    assert not (tmp_path / "metrics" / "classes.json").exists()


@pytest.mark.parametrize("case", PARSE_CASES)
def test_parse_masks_bad_input_is_skipped_and_reported(tmp_path, case):
    write_raw(tmp_path / "raw", ["a", "b", "c"])
    bad, problem = PARSE_CASES[case](tmp_path / "raw")
    out, metrics = run_parse(tmp_path, tmp_path / "raw", data={"on_error": "skip"})
    skipped = json.loads((out / layout.SKIPPED).read_text())
    assert len(skipped) == 1 and skipped[0]["file"].endswith(bad)
    assert problem in skipped[0]["reason"]
    assert set(json.loads((out / layout.PRESENCE).read_text())) == {"a", "c"}
    assert json.loads((out / layout.SPLIT).read_text()) == {"train": ["a"], "test": ["c"]}
    assert not layout.mask_path(out, "b").exists()
    assert metrics["num_images"] == 2 and metrics["num_skipped"] == 1
    assert metrics["from_dataset"] == 2


def test_parse_masks_without_masks_needs_a_parser(tmp_path):
    write_raw(tmp_path / "raw", ["a", "b"], masks=False)
    with pytest.raises(ConfigError, match="masks.parser"):
        run_parse(tmp_path, tmp_path / "raw")
    assert_nothing_written(tmp_path / "labels")


def test_parse_masks_with_the_tiny_parser(tmp_path):
    from facemogle.base.segmenter import FaceParser, save_parser

    torch.manual_seed(0)
    save_parser(FaceParser(width=4), tmp_path / "base" / "parser")
    write_ffhq_text(tmp_path / "ff", ids=["x", "y"])
    raw = run_download(tmp_path, source="ffhq_text", local_path=str(tmp_path / "ff"))
    out, metrics = run_parse(tmp_path, raw, masks={"parser": "tiny"},
                             parser_dir=tmp_path / "base" / "parser")
    assert metrics["parser"] == "tiny" and metrics["from_parser"] == 2
    for i in ("x", "y"):
        lm = np.asarray(Image.open(layout.mask_path(out, i)))
        assert lm.shape == (RES, RES) and lm.max() < len(PALETTE)


def test_parse_masks_tiny_without_parser_dir(tmp_path):
    write_raw(tmp_path / "raw", ["a"], masks=False)
    with pytest.raises(ConfigError, match="--parser-dir"):
        run_parse(tmp_path, tmp_path / "raw", masks={"parser": "tiny"})
    assert_nothing_written(tmp_path / "labels")
