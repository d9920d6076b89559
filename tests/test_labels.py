"""Label maps: validation, palette conversions, files, resizing and the 20-slot decoupling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from facemogle.core.io import InputError
from facemogle.core.labels import (
    NUM_LABELS,
    NUM_SLOTS,
    PALETTE,
    MaskColorError,
    check_label_map,
    color_to_label_map,
    decouple,
    label_map_image,
    label_map_to_color,
    load_label_map,
    recombine,
    resize_label_map,
    save_label_map,
    slot_presence,
)


@pytest.fixture
def label_map() -> np.ndarray:
    """A 24 x 20 map with every label, in blocks, so each label covers several pixels."""
    rng = np.random.default_rng(0)
    lm = rng.integers(0, NUM_LABELS, size=(6, 5))
    lm[0, :] = np.arange(5)
    lm.flat[5:NUM_LABELS + 5] = np.arange(NUM_LABELS)
    return np.kron(lm, np.ones((4, 4), dtype=np.int64)).astype(np.uint8)


def test_palette_is_19_distinct_colours():
    assert PALETTE.shape == (NUM_LABELS, 3)
    assert len({tuple(c) for c in PALETTE}) == NUM_LABELS


def test_check_label_map_accepts_integer_maps(label_map):
    out = check_label_map(label_map.astype(np.int64))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, label_map)


@pytest.mark.parametrize("bad, needle", [
    (np.zeros((4, 4), dtype=np.float32), "dtype float32"),
    (np.zeros((4, 4), dtype=bool), "dtype bool"),
    (np.zeros((2, 4, 4), dtype=np.uint8), "shape (2, 4, 4)"),
    (np.full((4, 4), 19, dtype=np.int32), "19 (16 px)"),
    (np.full((4, 4), -1, dtype=np.int32), "-1 (16 px)"),
])
def test_check_label_map_rejects(bad, needle):
    with pytest.raises(InputError, match="my.png") as err:
        check_label_map(bad, source="my.png")
    assert needle in str(err.value)


def test_color_round_trip(label_map):
    colour = label_map_to_color(label_map)
    assert colour.shape == (*label_map.shape, 3) and colour.dtype == np.uint8
    np.testing.assert_array_equal(color_to_label_map(colour), label_map)


def test_unknown_colours_are_listed_with_counts(label_map):
    colour = label_map_to_color(label_map)
    colour[0, :3] = (1, 2, 3)
    colour[1, 0] = (200, 100, 50)
    with pytest.raises(MaskColorError) as err:
        color_to_label_map(colour, source="masks/7.png")
    msg = str(err.value)
    assert "masks/7.png" in msg and "4 pixels" in msg
    assert msg.index("(1, 2, 3) (3 px)") < msg.index("(200, 100, 50) (1 px)")


def test_many_unknown_colours_are_summarised():
    colour = np.stack(np.meshgrid(np.arange(1, 16), np.arange(1, 3), [7], indexing="ij"), -1)
    with pytest.raises(MaskColorError, match="and 20 more"):
        color_to_label_map(colour.reshape(15, 2, 3).astype(np.uint8))


def test_tolerance_snaps_near_colours_only(label_map):
    colour = label_map_to_color(label_map).astype(np.int16)
    damaged = np.clip(colour + np.random.default_rng(1).integers(-6, 7, colour.shape), 0, 255)
    damaged = damaged.astype(np.uint8)
    with pytest.raises(MaskColorError):
        color_to_label_map(damaged)
    np.testing.assert_array_equal(color_to_label_map(damaged, tolerance=6), label_map)
    damaged[2, 2] = (128, 128, 128)  # 76+ per channel from every palette colour
    with pytest.raises(MaskColorError, match=r"\(128, 128, 128\) \(1 px\)"):
        color_to_label_map(damaged, tolerance=6)


def test_tolerance_does_not_snap_ties():
    # (0, 0, 178) is 25 from l_lip (0, 0, 153) and 26 from hair (0, 0, 204); (0, 0, 178.5) ties
    near = np.array([[[0, 0, 178]]], dtype=np.uint8)
    assert color_to_label_map(near, tolerance=30)[0, 0] == 12
    tie = np.array([[[51, 0, 0]]], dtype=np.uint8)  # 51 from black and from (102, 51, 0)
    with pytest.raises(MaskColorError):
        color_to_label_map(tie, tolerance=60)


def test_palette_p_l_and_rgb_files_load_alike(tmp_path, label_map):
    save_label_map(tmp_path / "p.png", label_map)
    Image.fromarray(label_map).save(tmp_path / "l.png")
    Image.fromarray(label_map_to_color(label_map)).save(tmp_path / "rgb.png")
    rgba = np.concatenate([label_map_to_color(label_map), np.full((*label_map.shape, 1), 255,
                                                                   np.uint8)], axis=-1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    for name in ("p.png", "l.png", "rgb.png", "rgba.png"):
        np.testing.assert_array_equal(load_label_map(tmp_path / name), label_map)


def test_saved_palette_png_shows_palette_colours(tmp_path, label_map):
    save_label_map(tmp_path / "p.png", label_map)
    rgb = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    np.testing.assert_array_equal(rgb, label_map_to_color(label_map))
    assert not list(tmp_path.glob(".*"))  # atomic write left no temporary behind


def test_palette_index_out_of_range_names_file(tmp_path):
    image = label_map_image(np.zeros((4, 4), dtype=np.uint8))
    image.putpixel((0, 0), 19)
    image.putpixel((1, 0), 200)
    image.save(tmp_path / "bad.png")
    with pytest.raises(InputError, match=r"bad\.png.*19 \(1 px\), 200 \(1 px\)"):
        load_label_map(tmp_path / "bad.png")


def test_rgb_file_with_unknown_colour_names_file(tmp_path):
    Image.fromarray(np.full((3, 3, 3), 9, np.uint8)).save(tmp_path / "c.png")
    with pytest.raises(MaskColorError, match=r"c\.png.*\(9, 9, 9\) \(9 px\)"):
        load_label_map(tmp_path / "c.png")


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(InputError, match="nope.png"):
        load_label_map(tmp_path / "nope.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="junk.png"):
        load_label_map(tmp_path / "junk.png")


def test_resize_is_nearest_neighbour(label_map):
    up = resize_label_map(label_map, 48)
    assert up.shape == (48, 48) and up.dtype == np.uint8
    assert set(np.unique(up)) <= set(np.unique(label_map))
    down = resize_label_map(label_map, (6, 5))
    np.testing.assert_array_equal(down, label_map[2::4, 2::4])  # block centres
    np.testing.assert_array_equal(resize_label_map(down, (24, 20)), label_map)
    with pytest.raises(ValueError, match="size"):
        resize_label_map(label_map, (0, 4))


def test_decouple_slots(label_map):
    slots = decouple(label_map)
    h, w = label_map.shape
    assert slots.shape == (NUM_SLOTS, 3, h, w) and slots.dtype == torch.float32
    assert slots.min() >= 0 and slots.max() <= 1
    expected_colour = torch.from_numpy(label_map_to_color(label_map)).permute(2, 0, 1) / 255.0
    torch.testing.assert_close(slots[0], expected_colour)
    binary = slots[1:]
    assert torch.equal(binary[:, 0], binary[:, 1]) and torch.equal(binary[:, 0], binary[:, 2])
    assert set(binary.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(binary[:, 0].sum(0), torch.ones(h, w))  # exactly one region per pixel
    assert torch.equal(slots[5, 0], torch.from_numpy(label_map == 4).float())  # slot i+1: label i


def test_decouple_recombine_round_trip(label_map):
    np.testing.assert_array_equal(recombine(decouple(label_map)), label_map)
    batch = np.stack([label_map, label_map[::-1].copy()])
    slots = decouple(torch.from_numpy(batch))
    assert slots.shape == (2, NUM_SLOTS, 3, *label_map.shape)
    torch.testing.assert_close(slots[1], decouple(batch[1]))
    np.testing.assert_array_equal(recombine(slots), batch)


def test_decouple_rejects_bad_maps():
    with pytest.raises(InputError, match="19"):
        decouple(np.full((4, 4), 19))
    with pytest.raises(ValueError, match="slots"):
        recombine(torch.zeros(19, 3, 4, 4))


def test_slot_presence():
    lm = np.array([[0, 1], [1, 13]], dtype=np.uint8)
    presence = slot_presence(lm)
    assert presence.dtype == bool and presence.shape == (NUM_SLOTS,)
    assert np.flatnonzero(presence).tolist() == [0, 1, 2, 14]
    assert slot_presence(np.stack([lm, np.zeros_like(lm)])).sum(axis=1).tolist() == [4, 2]
