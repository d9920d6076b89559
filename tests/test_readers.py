"""Readers of the real data sets on tiny fixture trees in their distributed layouts."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facemogle.core.config import ConfigError, DataConfig
from facemogle.core.io import InputError
from facemogle.core.labels import LABEL_INDEX, label_map_image
from facemogle.data import readers
from facemogle.data.layout import ItemError
from facemogle.data.readers import (
    CelebAMaskHQReader,
    FFHQTextReader,
    MMCelebAHQReader,
    find_layout_root,
    open_reader,
    source_root,
)

SIZE = 32


# ----------------------------------------------------------------------------------------------
# Fixture trees (also used by test_data_stages.py)
# ----------------------------------------------------------------------------------------------


def face_image(i: int, size: int = SIZE) -> np.ndarray:
    """A smooth (size, size, 3) uint8 image that differs per id."""
    ramp = np.linspace(0, 1, size)
    base = np.stack([np.outer(ramp, ramp), np.outer(ramp, 1 - ramp),
                     np.full((size, size), (i % 7) / 7)], axis=-1)
    return (base * 255).astype(np.uint8)


def label_map_for(i: int, size: int = SIZE) -> np.ndarray:
    """A (size, size) label map: hair on top, skin, a nose, and upper or lower lip by parity."""
    lm = np.zeros((size, size), dtype=np.uint8)
    lm[: size // 5] = LABEL_INDEX["hair"]
    lm[size // 4: size - 4, 6: size - 6] = LABEL_INDEX["skin"]
    lm[size // 2 - 2: size // 2 + 2, size // 2 - 2: size // 2 + 2] = LABEL_INDEX["nose"]
    lm[size - 8: size - 6, 10: size - 10] = LABEL_INDEX["u_lip" if i % 2 == 0 else "l_lip"]
    return lm


def captions_for(i: int | str) -> list[str]:
    return [f"a face number {i}", f"person {i} looks ahead"]


def write_mmcelebahq(root: Path, ids, json_ids=(), size: int = SIZE) -> dict[int, np.ndarray]:
    """MM-CelebA-HQ as distributed: face/{i}.jpg, mask/{i}.png ("P"), text/{i}.txt or text.json."""
    for folder in ("face", "mask", "text"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    maps, table = {}, {}
    for i in ids:
        Image.fromarray(face_image(i, size)).save(root / "face" / f"{i}.jpg", quality=95)
        maps[i] = label_map_for(i, size)
        label_map_image(maps[i]).save(root / "mask" / f"{i}.png")
        if i in json_ids:
            table[f"{i}.jpg"] = captions_for(i)
        else:
            (root / "text" / f"{i}.txt").write_text("\n".join(captions_for(i)) + "\n")
    if table:
        (root / "text.json").write_text(json.dumps(table))
    return maps


# CelebAMask-HQ parts of the fixture (rows, cols of a rectangle in a 32 px mask): they overlap so
# that the label order decides (hair over skin, nose over skin, cloth over neck and skin).
PARTS = {
    "skin": (slice(4, 28), slice(6, 26)),
    "nose": (slice(14, 18), slice(14, 18)),
    "hair": (slice(0, 10), slice(0, 32)),
    "neck": (slice(24, 30), slice(12, 20)),
    "cloth": (slice(26, 32), slice(0, 32)),
}


def write_celebamaskhq(root: Path, ids, with_text: bool = True) -> None:
    """CelebAMask-HQ: 64 px images, 32 px binary part masks in folders of 2000 ids."""
    (root / "CelebA-HQ-img").mkdir(parents=True, exist_ok=True)
    for i in ids:
        Image.fromarray(face_image(i, 2 * SIZE)).save(root / "CelebA-HQ-img" / f"{i}.jpg")
        folder = root / "CelebAMask-HQ-mask-anno" / str(i // 2000)
        folder.mkdir(parents=True, exist_ok=True)
        for part, (rows, cols) in PARTS.items():
            mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
            mask[rows, cols] = 255
            # The released part masks are 3-channel white-on-black; "L" must work too.
            image = Image.fromarray(mask).convert("RGB" if part == "skin" else "L")
            image.save(folder / f"{i:05d}_{part}.png")
        if with_text:
            (root / "text").mkdir(exist_ok=True)
            (root / "text" / f"{i}.txt").write_text("\n".join(captions_for(i)))


def write_ffhq_text(root: Path, ids) -> None:
    """FFHQ-Text: images/{id}.png and text/{id}.txt."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "text").mkdir(exist_ok=True)
    for n, i in enumerate(ids):
        Image.fromarray(face_image(n)).save(root / "images" / f"{i}.png")
        (root / "text" / f"{i}.txt").write_text("\n".join(captions_for(i)))


# ----------------------------------------------------------------------------------------------
# MM-CelebA-HQ
# ----------------------------------------------------------------------------------------------


def test_mmcelebahq_split_label_maps_and_captions(tmp_path):
    maps = write_mmcelebahq(tmp_path, ids=[0, 1, 2, 3, 4, 10], json_ids=(3, 10))
    reader = MMCelebAHQReader(tmp_path, split_at=3)
    entries = reader.entries()
    assert [e.id for e in entries] == ["0", "1", "2", "3", "4", "10"]  # numeric order
    assert [e.split for e in entries] == ["train"] * 3 + ["test"] * 3
    for entry in entries:
        sample = reader.load(entry)
        assert sample.image.mode == "RGB" and sample.image.size == (SIZE, SIZE)
        assert sample.mask.mode == "P"
        np.testing.assert_array_equal(np.asarray(sample.mask), maps[int(entry.id)])
        assert sample.captions == captions_for(entry.id)  # text/ file or text.json


def test_mmcelebahq_default_split_is_27000(tmp_path):
    write_mmcelebahq(tmp_path, ids=[26999, 27000, 29999])
    reader = MMCelebAHQReader(tmp_path)
    assert reader.split_at == 27000
    assert [(e.id, e.split) for e in reader.entries()] == [
        ("26999", "train"), ("27000", "test"), ("29999", "test")]


def test_text_file_wins_over_text_json(tmp_path):
    write_mmcelebahq(tmp_path, ids=[0])
    (tmp_path / "text.json").write_text(json.dumps({"0.jpg": ["from the json"]}))
    reader = MMCelebAHQReader(tmp_path)
    assert reader.load(reader.entries()[0]).captions == captions_for(0)
    (tmp_path / "text" / "0.txt").write_text("\n\n")  # empty file: falls back to the json
    assert reader.load(reader.entries()[0]).captions == ["from the json"]


def test_mmcelebahq_item_errors_name_the_file(tmp_path):
    write_mmcelebahq(tmp_path, ids=[0, 1, 2])
    (tmp_path / "face" / "0.jpg").write_bytes(b"not an image")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "mask" / "1.png")
    (tmp_path / "text" / "2.txt").unlink()
    reader = MMCelebAHQReader(tmp_path)
    entries = reader.entries()
    with pytest.raises(ItemError, match="corrupt") as err:
        reader.load(entries[0])
    assert err.value.file.endswith("face/0.jpg")
    with pytest.raises(ItemError, match="20x20") as err:
        reader.load(entries[1])
    assert err.value.file.endswith("mask/1.png")
    with pytest.raises(ItemError, match="no caption") as err:
        reader.load(entries[2])
    assert err.value.file.endswith("face/2.jpg")


def test_non_numeric_or_duplicate_ids_are_refused(tmp_path):
    write_mmcelebahq(tmp_path, ids=[0])
    Image.fromarray(face_image(0)).save(tmp_path / "face" / "0.png")
    with pytest.raises(InputError, match="same id"):
        MMCelebAHQReader(tmp_path)
    (tmp_path / "face" / "0.png").rename(tmp_path / "face" / "zero.png")
    with pytest.raises(InputError, match="numeric"):
        MMCelebAHQReader(tmp_path)


def test_malformed_text_json_is_refused(tmp_path):
    write_mmcelebahq(tmp_path, ids=[0])
    (tmp_path / "text.json").write_text("[1, 2")
    with pytest.raises(InputError, match="text.json"):
        MMCelebAHQReader(tmp_path)


# ----------------------------------------------------------------------------------------------
# CelebAMask-HQ
# ----------------------------------------------------------------------------------------------


def test_celebamaskhq_parts_combine_in_label_order(tmp_path):
    write_celebamaskhq(tmp_path, ids=[0, 1, 2000])
    reader = CelebAMaskHQReader(tmp_path, split_at=2)
    entries = reader.entries()
    assert [(e.id, e.split) for e in entries] == [("0", "train"), ("1", "train"),
                                                  ("2000", "test")]
    sample = reader.load(entries[2])  # its parts live in sub-folder 1 (2000 // 2000)
    lm = np.asarray(sample.mask)
    assert sample.mask.mode == "P" and lm.shape == (SIZE, SIZE)  # masks keep their 512-like size
    expected = {(2, 0): "hair", (5, 10): "hair", (16, 16): "nose", (20, 8): "skin",
                (25, 16): "neck", (27, 16): "cloth", (31, 0): "cloth", (12, 2): "background"}
    for (r, c), name in expected.items():
        assert lm[r, c] == LABEL_INDEX[name], (r, c, name)
    assert sample.captions == captions_for(2000)


def test_celebamaskhq_needs_captions_and_part_masks(tmp_path):
    write_celebamaskhq(tmp_path, ids=[0], with_text=False)
    with pytest.raises(InputError, match="no captions"):
        CelebAMaskHQReader(tmp_path)
    write_celebamaskhq(tmp_path, ids=[0, 1])
    for path in (tmp_path / "CelebAMask-HQ-mask-anno" / "0").glob("00001_*.png"):
        path.unlink()
    reader = CelebAMaskHQReader(tmp_path)
    with pytest.raises(ItemError, match="no part masks"):
        reader.load(reader.entries()[1])


def test_celebamaskhq_part_mask_of_wrong_size(tmp_path):
    write_celebamaskhq(tmp_path, ids=[0])
    bad = tmp_path / "CelebAMask-HQ-mask-anno" / "0" / "00000_cloth.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(bad)
    reader = CelebAMaskHQReader(tmp_path)
    with pytest.raises(ItemError, match="20x20") as err:
        reader.load(reader.entries()[0])
    assert err.value.file == str(bad)


# ----------------------------------------------------------------------------------------------
# FFHQ-Text, sources, registry
# ----------------------------------------------------------------------------------------------


def test_ffhq_text_has_no_masks_and_is_all_test(tmp_path):
    write_ffhq_text(tmp_path, ids=["00007", "00012"])
    reader = FFHQTextReader(tmp_path)
    entries = reader.entries()
    assert [(e.id, e.split) for e in entries] == [("00007", "test"), ("00012", "test")]
    sample = reader.load(entries[1])
    assert sample.mask is None and sample.captions == captions_for("00012")


def test_layout_root_may_be_one_folder_down(tmp_path):
    write_mmcelebahq(tmp_path / "MM-CelebA-HQ", ids=[0])
    assert find_layout_root(tmp_path, "face", "mmcelebahq") == tmp_path / "MM-CelebA-HQ"
    with pytest.raises(InputError, match="'mask_dir/'"):
        find_layout_root(tmp_path, "mask_dir", "mmcelebahq")


def test_open_reader_from_local_path_uses_num_train_as_split(tmp_path):
    write_mmcelebahq(tmp_path, ids=[0, 1, 2])
    data = DataConfig(source="mmcelebahq", local_path=str(tmp_path), num_train=1)
    reader = open_reader(data)
    assert isinstance(reader, MMCelebAHQReader)
    assert [e.split for e in reader.entries()] == ["train", "test", "test"]


def test_source_errors_name_the_params(tmp_path):
    with pytest.raises(ConfigError, match="data.local_path"):
        source_root(DataConfig(source="mmcelebahq", local_path=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="data.hub_repo"):
        source_root(DataConfig(source="mmcelebahq"))


def test_unreachable_hub_says_to_set_local_path(monkeypatch, tmp_path):
    import huggingface_hub.constants

    # Offline mode makes huggingface_hub refuse any request: the test never touches the network.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    data = DataConfig(source="mmcelebahq", hub_repo="someone/mm-celeba-hq", hub_revision="v1")
    with pytest.raises(InputError, match="someone/mm-celeba-hq@v1") as err:
        source_root(data)
    assert "'data.local_path'" in str(err.value)


def test_every_configured_source_has_a_reader():
    sources = typing.get_args(typing.get_type_hints(DataConfig)["source"])
    assert set(sources) == {"synthfaces", *readers.REAL_SOURCES}
