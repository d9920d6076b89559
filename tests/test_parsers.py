"""Face parser backends: registry, mediapipe on a real face, SegFormer and tiny at toy size."""

from __future__ import annotations

import json
import sys
import typing

import numpy as np
import pytest
import torch

from facemogle.core.config import ConfigError, MasksConfig
from facemogle.core.io import InputError
from facemogle.core.labels import LABEL_INDEX, LABELS, NUM_LABELS
from facemogle.masks import face_parsers as parsers
from facemogle.masks.face_parsers import (
    MissingExtraError,
    class_table,
    load_parser,
    parse_image,
    person_regions,
)


def test_registry_matches_the_config_choices():
    choices = typing.get_args(typing.get_type_hints(MasksConfig)["parser"])
    assert set(parsers.PARSERS) == set(choices)
    assert load_parser("none") is None
    with pytest.raises(ConfigError, match="masks.parser"):
        load_parser("bisenet")


# ----------------------------------------------------------------------------------------------
# mediapipe
# ----------------------------------------------------------------------------------------------


def _centroid_row(label_map: np.ndarray, *names: str) -> float:
    rows, _ = np.nonzero(np.isin(label_map, [LABEL_INDEX[n] for n in names]))
    assert len(rows) > 0, f"no {names} pixels"
    return float(rows.mean())


def test_mediapipe_on_a_real_face():
    pytest.importorskip("mediapipe", reason="the 'mediapipe' extra is not installed")
    skimage_data = pytest.importorskip("skimage.data",
                                       reason="scikit-image (dev dependency) is not installed")
    image = skimage_data.astronaut()  # (512, 512, 3) uint8, one frontal face
    parser = load_parser("mediapipe")
    try:
        lm = parse_image(parser, image)
    finally:
        parser.close()
    assert lm.shape == image.shape[:2]
    brows = _centroid_row(lm, "l_brow", "r_brow")
    eyes = _centroid_row(lm, "l_eye", "r_eye")
    nose = _centroid_row(lm, "nose")
    lips = _centroid_row(lm, "u_lip", "l_lip", "mouth")
    assert brows < eyes < nose < lips
    assert _centroid_row(lm, "u_lip") < _centroid_row(lm, "l_lip")
    # The subject's left eye is on the image's right.
    assert np.nonzero(lm == LABEL_INDEX["l_eye"])[1].mean() > \
        np.nonzero(lm == LABEL_INDEX["r_eye"])[1].mean()
    # Skin covers the face centre: the middle third of the face box is mostly skin.
    face = np.isin(lm, [LABEL_INDEX[n] for n in ("skin", "nose", "l_eye", "r_eye", "l_brow",
                                                 "r_brow", "u_lip", "l_lip", "mouth")])
    rows, cols = np.nonzero(face)
    r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
    h, w = r1 - r0, c1 - c0
    centre = lm[r0 + h // 3: r1 - h // 3, c0 + w // 3: c1 - w // 3]
    assert np.bincount(centre.ravel(), minlength=NUM_LABELS).argmax() == LABEL_INDEX["skin"]
    assert (lm == LABEL_INDEX["hair"]).sum() > 0
    assert _centroid_row(lm, "hair") < brows


def test_mediapipe_finds_no_face_in_a_flat_image():
    pytest.importorskip("mediapipe", reason="the 'mediapipe' extra is not installed")
    parser = load_parser("mediapipe")
    try:
        with pytest.raises(parsers.NoFaceError, match="no face"):
            parser(np.full((64, 64, 3), 128, np.uint8))
    finally:
        parser.close()


def test_missing_mediapipe_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import mediapipe -> ImportError
    with pytest.raises(MissingExtraError, match=r"facemogle\[mediapipe\]"):
        load_parser("mediapipe")


def test_person_regions_hair_above_the_chin_neck_and_cloth_below():
    faces = np.zeros((40, 40), np.uint8)
    faces[10:20, 15:25] = LABEL_INDEX["skin"]
    oval = np.array([[15, 10], [25, 10], [15, 20], [25, 20]], dtype=float)  # face box, x then y
    person = np.ones((40, 40), bool)
    person[:, :2] = False
    out = person_regions(faces, person, oval)
    assert out[15, 20] == LABEL_INDEX["skin"]  # face parts are kept
    assert out[5, 20] == LABEL_INDEX["hair"] and out[15, 5] == LABEL_INDEX["hair"]
    assert out[23, 20] == LABEL_INDEX["neck"]
    assert out[23, 5] == LABEL_INDEX["cloth"] and out[38, 20] == LABEL_INDEX["cloth"]
    assert out[15, 0] == LABEL_INDEX["background"]  # not the person


# ----------------------------------------------------------------------------------------------
# segformer (a tiny, randomly initialised model saved locally: no download)
# ----------------------------------------------------------------------------------------------


def _tiny_segformer(directory, id2label: dict[int, str]) -> None:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    config = SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
                             hidden_sizes=[8, 16], patch_sizes=[7, 3], strides=[4, 2],
                             num_attention_heads=[1, 1], mlp_ratios=[2, 2],
                             decoder_hidden_size=16, num_labels=len(id2label),
                             id2label=id2label, label2id={v: k for k, v in id2label.items()})
    SegformerForSemanticSegmentation(config).save_pretrained(directory)


def test_segformer_backend_maps_classes_by_name(tmp_path):
    order = list(LABELS[::-1])  # a model whose classes are CelebAMask-HQ's, in another order
    _tiny_segformer(tmp_path, dict(enumerate(order)))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "SegformerImageProcessor", "size": {"height": 32, "width": 32}}))
    parser = load_parser("segformer", str(tmp_path), device=torch.device("cpu"))
    image = np.random.default_rng(0).integers(0, 256, (24, 20, 3), dtype=np.uint8)
    lm = parse_image(parser, image)
    assert lm.shape == (24, 20) and lm.dtype == np.uint8
    # The output is the model's arg-max class, renamed to our index.
    with torch.no_grad():
        inputs = parser.processor(images=image, return_tensors="pt")
        logits = parser.model(**inputs).logits
        logits = torch.nn.functional.interpolate(logits, size=(24, 20), mode="bilinear",
                                                 align_corners=False)
    expected = np.array([LABEL_INDEX[order[c]] for c in logits.argmax(1)[0].ravel().tolist()])
    np.testing.assert_array_equal(lm.ravel(), expected)


def test_segformer_without_preprocessor_config_uses_defaults(tmp_path):
    _tiny_segformer(tmp_path, {i: f"LABEL_{i}" for i in range(NUM_LABELS)})
    parser = load_parser("segformer", str(tmp_path), device=torch.device("cpu"))
    np.testing.assert_array_equal(parser.table.numpy(), np.arange(NUM_LABELS))
    assert parse_image(parser, np.zeros((16, 16, 3), np.uint8)).shape == (16, 16)


def test_class_table_refuses_a_non_face_parser():
    with pytest.raises(ConfigError, match="masks.parser_path"):
        class_table({0: "road", 1: "car"}, "some/cityscapes-model")
    assert class_table({0: "Background", 1: "hair"}, "x").tolist() == [0, LABEL_INDEX["hair"]]


# ----------------------------------------------------------------------------------------------
# tiny (the base stage's parser)
# ----------------------------------------------------------------------------------------------


def test_tiny_backend_loads_the_base_stage_parser(tmp_path):
    from facemogle.base.segmenter import FaceParser, save_parser

    torch.manual_seed(0)
    model = FaceParser(width=4)
    save_parser(model, tmp_path / "parser")
    parser = load_parser("tiny", str(tmp_path / "parser"), device=torch.device("cpu"))
    image = np.random.default_rng(1).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    lm = parse_image(parser, image)
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    np.testing.assert_array_equal(lm, model.eval().parse(pixels)[0].numpy())


def test_tiny_backend_errors(tmp_path):
    with pytest.raises(ConfigError, match="--parser-dir"):
        load_parser("tiny", None)
    with pytest.raises(InputError, match="face parser config not found"):
        load_parser("tiny", str(tmp_path))


def test_parse_image_checks_the_parser_output():
    with pytest.raises(ValueError, match="face parser"):
        parse_image(lambda image: np.zeros((3, 3), np.uint8), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="0..18"):
        parse_image(lambda image: np.full((4, 4), 30, np.uint8), np.zeros((4, 4, 3), np.uint8))
