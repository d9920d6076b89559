"""SynthFaces: determinism, exact and consistent label maps, class frequencies, colours that can
be read back from the pixels the label map names, captions, and the zero-shot shift."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from facemogle.core.labels import LABEL_INDEX, LABELS, NUM_LABELS, PALETTE
from facemogle.data import colours
from facemogle.data import synthfaces as sf

N_FREQ = 2000  # faces for the class-frequency test (64 px)
RARE = ("eye_g", "hat", "ear_r", "neck_l")
COMMON = ("background", "skin", "nose", "l_eye", "r_eye", "l_brow", "r_brow", "u_lip", "l_lip",
          "hair", "neck", "cloth")


@pytest.fixture(scope="module")
def faces64() -> list[sf.SynthFace]:
    return [sf.render(i, resolution=64) for i in range(N_FREQ)]


@pytest.fixture(scope="module")
def zeroshot64() -> list[sf.SynthFace]:
    return [sf.render(i, resolution=64, variant="zeroshot") for i in range(300)]


def _present(face: sf.SynthFace, name: str) -> bool:
    return bool((face.label_map == LABEL_INDEX[name]).any())


# ----------------------------------------------------------------------------------------------
# Determinism and arguments
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sf.VARIANTS)
def test_same_arguments_give_identical_bytes(variant):
    a = sf.render(7, seed=3, resolution=96, variant=variant)
    b = sf.render(7, seed=3, resolution=96, variant=variant)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.label_map.tobytes() == b.label_map.tobytes()
    assert a.captions == b.captions and a.attributes == b.attributes


def test_other_index_seed_or_variant_gives_another_face():
    base = sf.render(7, seed=3, resolution=64).image.tobytes()
    for other in (sf.render(8, seed=3, resolution=64), sf.render(7, seed=4, resolution=64),
                  sf.render(7, seed=3, resolution=64, variant="zeroshot")):
        assert other.image.tobytes() != base


def test_resolution_and_caption_count_do_not_change_the_face():
    a = sf.render(11, resolution=64, num_captions=1)
    b = sf.render(11, resolution=256, num_captions=6)
    assert a.attributes == b.attributes
    assert b.captions[:1] == a.captions and len(b.captions) == 6
    assert a.image.shape == (64, 64, 3) and b.label_map.shape == (256, 256)
    assert a.image.dtype == np.uint8 and a.label_map.dtype == np.uint8


@pytest.mark.parametrize("kwargs, word", [
    ({"variant": "ffhq"}, "variant"), ({"resolution": 16}, "resolution"),
    ({"resolution": 4096}, "resolution"), ({"seed": -1}, "seed"),
    ({"num_captions": -1}, "num_captions"),
])
def test_bad_arguments_are_refused_by_name(kwargs, word):
    with pytest.raises(ValueError, match=word):
        sf.render(0, **kwargs)


def test_attributes_are_json_and_absent_items_have_no_colour(faces64):
    for face in faces64[:300]:
        a = face.attributes
        assert json.loads(json.dumps(a)) == a
        assert (a["hat_color"] is None) == (not a["hat"])
        assert (a["hair_color"] is None) == (a["hair_style"] == "bald")
        assert a["lipstick"] == (a["lip_color"] != "natural")
        for key, vocab in colours.ATTRIBUTE_VOCAB.items():
            assert a[key] is None or a[key] in vocab


# ----------------------------------------------------------------------------------------------
# Label maps
# ----------------------------------------------------------------------------------------------


def test_every_class_appears_and_rare_classes_are_rare(faces64):
    present = np.array([np.bincount(f.label_map.ravel(), minlength=NUM_LABELS) > 0
                        for f in faces64])  # (N, 19)
    assert all(f.label_map.max() < NUM_LABELS for f in faces64)
    freq = dict(zip(LABELS, present.mean(0)))
    assert all(freq[name] > 0 for name in LABELS), freq
    assert all(freq[name] < 0.25 for name in RARE), freq
    assert all(freq[name] > 0.8 for name in COMMON), freq
    assert 0.2 < freq["mouth"] < 0.6 and 0.4 < freq["l_ear"] < 0.9, freq


def test_accessories_and_mouth_are_in_the_mask_exactly_when_in_the_attributes(faces64):
    pairs = {"hat": "hat", "eyeglasses": "eye_g", "earrings": "ear_r", "necklace": "neck_l",
             "mouth_open": "mouth", "ears_visible": "l_ear"}
    for face in faces64:
        for attr, label in pairs.items():
            assert face.attributes[attr] == _present(face, label), (attr, face.attributes)
        assert (face.attributes["hair_color"] is not None) == _present(face, "hair")


def test_geometry_is_the_same_at_every_resolution():
    for i in range(8):
        low = sf.render(i, resolution=64, num_captions=0).label_map
        high = sf.render(i, resolution=256, num_captions=0).label_map
        down = np.asarray(Image.fromarray(high).resize((64, 64), Image.NEAREST))
        assert (down == low).mean() > 0.95
        for name in ("skin", "hair", "cloth", "neck"):
            a, b = low == LABEL_INDEX[name], down == LABEL_INDEX[name]
            if a.sum() > 50:
                assert (a & b).sum() / (a | b).sum() > 0.85, name


def test_512_px_renders():
    face = sf.render(5, resolution=512, num_captions=0)
    assert face.image.shape == (512, 512, 3)
    assert set(np.unique(face.label_map)) >= {LABEL_INDEX[n] for n in ("skin", "l_eye", "u_lip")}


# ----------------------------------------------------------------------------------------------
# Colours read back from pixels
# ----------------------------------------------------------------------------------------------


def _recovery_failures(faces: list[sf.SynthFace]) -> list[tuple]:
    failures = []
    for face in faces:
        for attr in colours.COLOR_ATTRIBUTES:
            value = face.attributes[attr]
            if value is None:
                continue
            read = colours.read_color(colours.region_pixels(face.image, face.label_map, attr), attr)
            if read != value:
                failures.append((attr, value, read))
    return failures


def test_colours_are_recovered_from_the_named_regions_at_64_px(faces64, zeroshot64):
    assert _recovery_failures(faces64[:400] + zeroshot64) == []


def test_colours_are_recovered_from_the_named_regions_at_128_px():
    faces = [sf.render(i, resolution=128, variant=v, num_captions=0)
             for v in sf.VARIANTS for i in range(150)]
    assert _recovery_failures(faces) == []


def test_read_color_names_reference_colours_under_shading():
    for attr, vocab in colours.ATTRIBUTE_VOCAB.items():
        for name in vocab:
            ref = np.array(colours.COLORS[name], float)
            for gain in (0.85, 1.0, 1.1):
                pixels = np.clip(np.tile(ref * gain, (20, 1)), 0, 255).astype(np.uint8)
                assert colours.read_color(pixels, attr) == name, (attr, name, gain)


def test_read_color_ignores_sclera_and_pupil():
    iris = np.tile(colours.COLORS["blue"], (10, 1))
    white, black = np.tile((238, 236, 230), (12, 1)), np.tile((20, 16, 16), (8, 1))
    pixels = np.concatenate([iris, white, black]).astype(np.uint8)
    assert colours.read_color(pixels, "eye_color") == "blue"


def test_read_color_refuses_unknown_attribute_and_empty_region():
    with pytest.raises(KeyError, match="nose_color"):
        colours.read_color(np.zeros((3, 3), np.uint8), "nose_color")
    with pytest.raises(ValueError, match="hair_color"):
        colours.read_color(np.zeros((0, 3), np.uint8), "hair_color")
    with pytest.raises(ValueError, match="hair_color"):
        colours.read_color(np.zeros((4, 4, 3), np.uint8), "hair_color")


# ----------------------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------------------


def _mentions_colour(caption: str, attr: str, value: str) -> bool:
    if attr == "lip_color" and value == "natural":
        return "natural lips" in caption
    return re.search(rf"\b{value}\b", caption) is not None


def test_caption_zero_mentions_every_colour_and_accessory(faces64):
    accessories = {"hat": ("hat", "cap", "beanie"), "eyeglasses": ("glasses", "eyeglasses"),
                   "earrings": ("earrings",), "necklace": ("necklace",)}
    for face in faces64[:300]:
        caption, a = face.captions[0], face.attributes
        for attr in colours.COLOR_ATTRIBUTES:
            if a[attr] is not None:
                assert _mentions_colour(caption, attr, a[attr]), (attr, a[attr], caption)
        for item, words in accessories.items():
            named = any(re.search(rf"\b{w}\b", caption) for w in words)
            assert a[item] == named, (item, caption)
        assert caption.startswith(("The", "This", "A ")) and caption.endswith(".")


def test_captions_vary_and_mostly_keep_hair_cloth_background(faces64):
    captions = [c for f in faces64[:300] for c in f.captions[1:]]
    openings = {" ".join(c.split()[:2]) for c in captions}
    assert len(openings) >= 8  # "The woman", "This man", "A woman", ...
    assert len({c for f in faces64[:300] for c in f.captions}) > 0.95 * 4 * 300
    kept = {key: np.mean([_mentions_colour(c, key, f.attributes[key])
                          for f in faces64[:300] for c in f.captions[1:]
                          if f.attributes[key] is not None])
            for key in ("hair_color", "cloth_color", "background_color")}
    assert all(rate > 0.7 for rate in kept.values()), kept
    assert np.mean([_mentions_colour(c, "eye_color", f.attributes["eye_color"])
                    for f in faces64[:300] for c in f.captions[1:]]) < 0.9


# ----------------------------------------------------------------------------------------------
# Zero-shot variant
# ----------------------------------------------------------------------------------------------


def _has_pair(a: dict, pair) -> bool:
    return all(a[key] == value for key, value in pair)


def test_zeroshot_draws_from_a_shifted_distribution(faces64, zeroshot64):
    standard = [f.attributes for f in faces64]
    zeroshot = [f.attributes for f in zeroshot64]
    for key, values in sf.ZEROSHOT_ONLY.items():
        assert not any(a[key] in values for a in standard)
        assert all(any(a[key] == v for a in zeroshot) for v in values)
    for pair in sf.HELD_OUT_PAIRS:
        assert not any(_has_pair(a, pair) for a in standard)
        assert any(_has_pair(a, pair) for a in zeroshot)
    assert all(a["gender"] == "woman" for a in zeroshot)
    std_sizes = [a["head_size"] for a in standard]
    assert all(not min(std_sizes) <= a["head_size"] <= max(std_sizes) for a in zeroshot)
    assert np.mean([abs(a["head_tilt_deg"]) for a in zeroshot]) > \
        2 * np.mean([abs(a["head_tilt_deg"]) for a in standard])


# ----------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------


def test_sheet_command_writes_faces_beside_their_colour_masks(tmp_path):
    out = tmp_path / "sheet.png"
    sf.main(["sheet", "--out", str(out), "--n", "3", "--resolution", "64"])
    sheet = np.asarray(Image.open(out).convert("RGB"))
    assert sheet.shape == (64, 3 * 128, 3)
    face = sf.render(1, resolution=64, num_captions=0)
    assert (sheet[:, 128:192] == face.image).all()
    assert (sheet[:, 192:256] == PALETTE[face.label_map]).all()


def test_bench_command_records_the_machine(tmp_path):
    out = tmp_path / "bench.json"
    sf.main(["bench", "--out", str(out), "--n", "2", "--resolution", "64"])
    result = json.loads(out.read_text())
    assert result["n"] == 2 and result["seconds"] > 0 and result["images_per_s"] > 0
    assert {"platform", "cpu_count", "numpy"} <= set(result["machine"])
    assert len(result["loadavg_before"]) == 3


def test_off_distribution_layouts_move_the_face():
    """Scaled, tilted and shifted copies of a test mask, plus a drawn face with every accessory:
    label maps of the same size, background where the face moved away from."""
    from facemogle.sampling.off_distribution import layouts

    label_map = sf.render(3, resolution=64, num_captions=0).label_map
    pairs = layouts(label_map)
    assert [p[1].shape for p in pairs] == [(64, 64)] * 6 and pairs[0][1] is label_map
    skin = {name: int((m == LABEL_INDEX["skin"]).sum()) for name, m in pairs}
    large, small = pairs[1][0], pairs[2][0]
    assert skin[large] > 1.8 * skin[pairs[0][0]] > 1.8 * 1.8 * skin[small]
    tilted, left = pairs[3][1], pairs[4][1]
    assert not np.array_equal(tilted, label_map) and tilted.max() < 19
    columns = np.nonzero((left == LABEL_INDEX["skin"]).any(0))[0]
    original = np.nonzero((label_map == LABEL_INDEX["skin"]).any(0))[0]
    assert columns.mean() < original.mean() - 15  # pushed left by 0.3 x 64 px
    drawn = pairs[5][1]
    for accessory in ("hat", "eye_g", "ear_r", "neck_l"):
        assert (drawn == LABEL_INDEX[accessory]).any(), accessory
