"""SynthFaces' `varied` layout against its target ranges, the `template` layout kept byte for
byte, and the off-distribution set (beyond the ranges, drawn masks, photos)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from facemogle.core.config import ConfigError, params_from_dict
from facemogle.core.labels import LABEL_INDEX
from facemogle.data import colours, layout, offdist
from facemogle.data import synthfaces as sf
from facemogle.data.synthfaces import stats
from facemogle.data.synthfaces.layout import BEYOND_KINDS, TARGETS, to_screen, to_surface

N = 240  # faces per layout (64 px)


@pytest.fixture(scope="module")
def varied() -> dict:
    return stats.collect(N, "varied", resolution=64)


def _values(collected: dict, key: str) -> np.ndarray:
    return np.array([f[key] for f in collected["faces"] if f.get(key) is not None])


def test_template_layout_keeps_its_bytes():
    """The first renderer's faces are unchanged by the layout machinery (hash of 3 faces)."""
    digest = hashlib.sha256()
    for i in range(3):
        face = sf.render(i, resolution=64, num_captions=2)
        digest.update(face.image.tobytes() + face.label_map.tobytes())
        digest.update(repr(face.captions).encode())
    assert digest.hexdigest()[:16] == "08f552caa8ee2b8c"


def test_varied_covers_the_target_ranges_and_goes_beyond_them(varied):
    template = stats.collect(N, "template", resolution=64)
    for key in ("interocular", "face_x", "roll_deg", "yaw_deg"):
        lo, hi = TARGETS[key]
        v = _values(varied, key)
        inside = np.mean((v >= lo) & (v <= hi))
        assert 0.55 <= inside <= 0.95, (key, inside)  # most in range, a margin beyond
        assert np.std(v) > 1.3 * np.std(_values(template, key)), key
    assert np.mean(np.abs(_values(varied, "roll_deg")) > 15) > 0.04
    yaw = np.abs(_values(varied, "yaw_deg"))
    assert np.mean(yaw > 35) > 0.15 and np.mean(yaw > 60) > 0.03  # three-quarter, near-profile
    # The eye line follows the rendered roll, the nose's offset the rendered yaw.
    pairs = np.array([(f["nose_offset"], f["yaw_deg"]) for f in varied["faces"]
                      if f.get("nose_offset") is not None])
    assert np.corrcoef(pairs.T)[0, 1] > 0.8


def test_varied_shares_match_celeba_within_sampling_noise(varied):
    for key, share in varied["shares"].items():
        lo, hi = TARGETS[key]
        noise = 2.5 * np.sqrt(0.25 / N)  # binomial, worst case
        assert lo - noise <= share <= hi + noise, (key, share)


def test_turned_heads_hide_one_ear_and_closed_eyes_are_slits():
    faces = [sf.render(i, resolution=64, layout="varied", num_captions=0) for i in range(120)]
    turned = [f for f in faces if abs(f.attributes["head_yaw_deg"]) > 30
              and f.attributes["ears_visible"]]
    assert turned and all(not ((f.label_map == LABEL_INDEX["l_ear"]).any()
                               and (f.label_map == LABEL_INDEX["r_ear"]).any()) for f in turned)
    area = {k: [int(np.isin(f.label_map, [LABEL_INDEX["l_eye"], LABEL_INDEX["r_eye"]]).sum())
                for f in faces if f.attributes["eyes_closed"] == k and
                abs(f.attributes["head_yaw_deg"]) < 20] for k in (True, False)}
    assert area[True] and np.median(area[True]) < 0.5 * np.median(area[False])


def test_no_two_outlines_are_one_template():
    """The same face (attributes and pose) with and without its warp: every region moves."""
    a = sf.render(3, resolution=128, layout="varied", num_captions=0).label_map
    b = sf.render(4, resolution=128, layout="varied", num_captions=0).label_map
    assert not np.array_equal(a, b)
    p, q = np.meshgrid(np.linspace(-1, 1, 5, dtype=np.float32), np.zeros(1, np.float32))
    assert np.allclose(to_surface(p, 0.0), p)  # no turn: identity on the face
    assert to_screen(0.0, np.deg2rad(30)) == pytest.approx(0.5)
    assert (to_surface(np.array([-0.99], np.float32), np.deg2rad(60)) < -1).all()  # far side


def test_varied_standard_never_renders_what_zeroshot_holds_out():
    for i in range(300):
        a = sf.render(i, resolution=32, layout="varied", num_captions=0).attributes
        assert a["hair_style"] not in sf.ZEROSHOT_ONLY["hair_style"]
        assert a["hair_color"] not in sf.ZEROSHOT_ONLY["hair_color"]
        for (ka, va), (kb, vb) in sf.HELD_OUT_PAIRS:
            assert not (a[ka] == va and a[kb] == vb)


def test_varied_colours_are_recovered_except_closed_eyes_and_hidden_parts():
    for i in range(60):
        face = sf.render(i, resolution=128, layout="varied", num_captions=0)
        for attr in colours.COLOR_ATTRIBUTES:
            value = face.attributes[attr]
            pixels = colours.region_pixels(face.image, face.label_map, attr)
            if value is None or len(pixels) == 0 or (attr == "eye_color"
                                                     and face.attributes["eyes_closed"]):
                continue
            assert colours.read_color(pixels, attr) == value, (i, attr)


def test_stats_command_writes_summary_and_figure(tmp_path):
    stats.main(["--n", "12", "--resolution", "32", "--out", str(tmp_path / "v.json"),
                "--plot", str(tmp_path / "v.png")])
    import json

    summary = json.loads((tmp_path / "v.json").read_text())
    assert [s["layout"] for s in summary["sets"]] == ["template", "varied"]
    assert summary["sets"][0]["measures"]["yaw_deg"]["quantiles_5_25_50_75_95"] == [0.0] * 5
    assert (tmp_path / "v.png").stat().st_size > 10_000


# ----------------------------------------------------------------------------------------------
# The off-distribution set
# ----------------------------------------------------------------------------------------------


def test_beyond_faces_leave_the_training_ranges(varied):
    kinds = {k: [] for k in BEYOND_KINDS}
    for i in range(20):
        face = sf.render(offdist.INDEX_OFFSET + i, resolution=64, layout="beyond",
                         num_captions=0)
        kinds[BEYOND_KINDS[(offdist.INDEX_OFFSET + i) % 5]].append(face)
    skin = [f["area_skin"] for f in varied["faces"]]
    assert min(stats.measure(f.label_map)["area_skin"] for f in kinds["larger"]) > \
        np.percentile(skin, 97)
    assert max(stats.measure(f.label_map)["area_skin"] for f in kinds["smaller"]) < \
        np.percentile(skin, 5)
    assert all(abs(f.attributes["head_tilt_deg"]) >= 32 for f in kinds["tilted"])
    assert all(abs(stats.measure(f.label_map)["face_x"]) > 0.2 for f in kinds["off-centre"])
    for f in kinds["every accessory"]:
        assert all((f.label_map == LABEL_INDEX[n]).any() for n in ("hat", "eye_g", "neck_l"))


def test_offdist_reader_lists_every_kind_and_draws_flat_masks():
    reader = offdist.OffDistributionReader(num_beyond=3, num_drawn=2, photos=False,
                                           resolution=64)
    entries = reader.entries()
    assert [e.id for e in entries] == [f"{i:06d}" for i in range(5)]
    assert {e.split for e in entries} == {"test"}
    drawn = reader.load(entries[3])
    assert drawn.attributes["offdist_kind"] == "drawn" and drawn.captions
    label_map = np.asarray(drawn.mask)
    for name in ("skin", "l_eye", "r_eye", "nose", "u_lip", "neck", "cloth"):
        assert (label_map == LABEL_INDEX[name]).any(), name
    image = np.asarray(drawn.image)
    for attr in ("skin_tone", "cloth_color", "background_color"):
        read = colours.read_color(colours.region_pixels(image, label_map, attr), attr)
        assert read == drawn.attributes[attr], attr


def test_offdist_photos_come_without_a_mask():
    pytest.importorskip("skimage")
    pytest.importorskip("matplotlib")
    reader = offdist.OffDistributionReader(num_beyond=0, num_drawn=0, photos=True,
                                           resolution=64)
    samples = [reader.load(e) for e in reader.entries()]
    assert len(samples) == 8 and all(s.mask is None for s in samples)
    assert {s.attributes["photo"] for s in samples} == set(offdist.PHOTOS)
    first, mirrored = (np.asarray(s.image, np.int16) for s in samples[:2])
    assert first.shape == (64, 64, 3) and np.abs(first[:, ::-1] - mirrored).mean() < 12


@pytest.mark.parametrize("values, word", [({"num_beyond": -1}, "num_beyond"),
                                          ({"num_beyond": 0, "num_drawn": 0, "photos": False},
                                           "at least one item"),
                                          ({"parser": "segformer"}, "parser_path")])
def test_offdist_params_are_checked(values, word):
    with pytest.raises(ConfigError, match=word):
        params_from_dict({"offdist": values})


def test_offdist_mIoU_is_reported_per_kind():
    from facemogle.evaluation.evaluate import group_miou_values

    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = LABEL_INDEX["skin"]
    wrong = np.zeros_like(mask)
    values = group_miou_values([mask, wrong, mask], [mask, mask, mask],
                               [{"offdist_kind": "drawn"}, {"offdist_kind": "photo"},
                                {"offdist_kind": "drawn"}], "parser")
    by_name = {v.name: v.value for v in values}
    assert by_name["mask_miou_drawn"] == 1.0 and by_name["mask_miou_photo"] < 0.5
    assert group_miou_values([mask], [mask], [{"hair_color": "red"}], "parser") == []


def test_offdist_photos_are_parsed_by_the_face_mesh_at_128_px(tmp_path):
    """The default resolution: `parse_masks@offdist` gives every photo crop a face."""
    pytest.importorskip("mediapipe")
    pytest.importorskip("skimage")
    from facemogle.core.config import params_from_dict
    from facemogle.data.download import download_offdist
    from facemogle.masks.parse import parse_masks

    params = params_from_dict({"data": {"resolution": 128, "captions_per_image": 1},
                               "offdist": {"num_beyond": 0, "num_drawn": 0}})
    download_offdist(params.data, params.offdist, tmp_path / "raw")
    parse_masks(tmp_path / "raw", tmp_path / "labels", tmp_path / "classes.json",
                masks=params.offdist.masks_config(params.masks))
    from facemogle.core.labels import load_label_map

    for mask in sorted((tmp_path / "labels" / layout.MASKS).glob("*.png")):
        label_map = load_label_map(mask)
        for name in ("skin", "nose", "l_eye", "r_eye", "u_lip", "hair"):
            assert (label_map == LABEL_INDEX[name]).any(), (mask.name, name)
