"""Readers of the real data sets on tiny trees in their distributed layouts (`fake_layouts`)."""

from __future__ import annotations

import json
import typing

import numpy as np
import pytest
from PIL import Image

from facemogle.bench.fake_layouts import write_celebamaskhq, write_ffhq_text, write_mmcelebahq
from facemogle.core.config import ConfigError, DataConfig
from facemogle.core.io import InputError
from facemogle.core.labels import LABEL_INDEX
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

SIZE = 32  # the faces' size; CelebAMask-HQ's part masks are SIZE, its images 2 * SIZE


# ----------------------------------------------------------------------------------------------
# MM-CelebA-HQ
# ----------------------------------------------------------------------------------------------


def test_mmcelebahq_split_label_maps_and_captions(tmp_path):
    faces = write_mmcelebahq(tmp_path, ids=[0, 1, 2, 3, 4, 10], json_ids=(3, 10))
    reader = MMCelebAHQReader(tmp_path, split_at=3)
    entries = reader.entries()
    assert [e.id for e in entries] == ["0", "1", "2", "3", "4", "10"]  # numeric order
    assert [e.split for e in entries] == ["train"] * 3 + ["test"] * 3
    for entry in entries:
        sample = reader.load(entry)
        assert sample.image.mode == "RGB" and sample.image.size == (SIZE, SIZE)
        assert sample.mask.mode == "P"
        np.testing.assert_array_equal(np.asarray(sample.mask), faces[int(entry.id)].label_map)
        assert sample.captions == faces[int(entry.id)].captions  # text/ file or text.json


def test_mmcelebahq_default_split_is_27000(tmp_path):
    write_mmcelebahq(tmp_path, ids=[26999, 27000, 29999])
    reader = MMCelebAHQReader(tmp_path)
    assert reader.split_at == 27000
    assert [(e.id, e.split) for e in reader.entries()] == [
        ("26999", "train"), ("27000", "test"), ("29999", "test")]


def test_text_file_wins_over_text_json(tmp_path):
    faces = write_mmcelebahq(tmp_path, ids=[0])
    (tmp_path / "text.json").write_text(json.dumps({"0.jpg": ["from the json"]}))
    reader = MMCelebAHQReader(tmp_path)
    assert reader.load(reader.entries()[0]).captions == faces[0].captions
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
    faces = write_mmcelebahq(tmp_path, ids=[0])
    Image.fromarray(faces[0].image).save(tmp_path / "face" / "0.png")
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
    faces = write_celebamaskhq(tmp_path, ids=[0, 1, 2000], size=2 * SIZE, mask_size=SIZE)
    reader = CelebAMaskHQReader(tmp_path, split_at=2)
    entries = reader.entries()
    assert [(e.id, e.split) for e in entries] == [("0", "train"), ("1", "train"),
                                                  ("2000", "test")]
    sample = reader.load(entries[2])  # its parts live in sub-folder 1 (2000 // 2000)
    lm = np.asarray(sample.mask)
    assert sample.mask.mode == "P" and lm.shape == (SIZE, SIZE)  # masks keep their 512-like size
    np.testing.assert_array_equal(lm, faces[2000].label_map)
    # The part masks overlap (skin runs under the edges of hair, nose, eyes, ...), so only
    # painting later parts on top gives the label map back. The released masks are 3-channel
    # (skin here), "L" must work too (the other parts).
    skin_file = reader.part_files("2000")[LABEL_INDEX["skin"]]
    assert Image.open(skin_file).mode == "RGB"
    skin = np.asarray(Image.open(skin_file).convert("L")) >= 128  # (SIZE, SIZE) bool
    assert (skin & (lm > LABEL_INDEX["skin"])).any()
    assert sample.captions == faces[2000].captions


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
    faces = write_ffhq_text(tmp_path, ids=["00007", "00012"])
    reader = FFHQTextReader(tmp_path)
    entries = reader.entries()
    assert [(e.id, e.split) for e in entries] == [("00007", "test"), ("00012", "test")]
    sample = reader.load(entries[1])
    assert sample.mask is None and sample.captions == faces["00012"].captions


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
