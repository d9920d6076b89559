"""Formula tests of the metric library against independent references (NumPy loops, SciPy,
scikit-learn, torchmetrics' own kernels) and hand-computed cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from torchmetrics.image.fid import _compute_fid
from torchmetrics.image.kid import poly_mmd

from facemogle.core.io import InputError
from facemogle.core.labels import LABEL_INDEX, LABELS
from facemogle.evaluation.metrics import (
    MetricValue,
    feature_space_metrics,
    feature_space_names,
    frechet_distance,
    kid,
    metrics_json,
    pair_by_id,
    rbf_mmd2,
)
from facemogle.evaluation.metrics.attributes import (
    attribute_accuracy,
    attribute_metric_values,
)
from facemogle.evaluation.metrics.cmmd import cmmd
from facemogle.evaluation.metrics.detection import detection_metrics, equal_error_rate
from facemogle.evaluation.metrics.distances import polynomial_mmd2
from facemogle.evaluation.metrics.segmentation import mask_iou, mask_metric_values
from facemogle.evaluation.report import markdown_report, markdown_table, write_report


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# --- Frechet distance ---------------------------------------------------------------------------


def _frechet_reference(x: np.ndarray, y: np.ndarray) -> float:
    """tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2), a symmetric PSD matrix: eigenvalues only."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    w, v = np.linalg.eigh(s1)
    s1_half = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(s1_half @ s2 @ s1_half)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2)
                 - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


def test_frechet_distance_of_a_set_with_itself_is_zero(rng):
    x = rng.normal(size=(200, 16))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_matches_eigenvalue_reference_and_torchmetrics(rng):
    x = rng.normal(size=(300, 12))
    y = rng.normal(size=(250, 12)) @ rng.normal(size=(12, 12)) * 0.5 + 0.3
    ours = frechet_distance(x, y)
    assert ours > 1.0
    assert ours == pytest.approx(_frechet_reference(x, y), rel=1e-8)
    theirs = _compute_fid(torch.tensor(x.mean(0)), torch.tensor(np.cov(x, rowvar=False)),
                          torch.tensor(y.mean(0)), torch.tensor(np.cov(y, rowvar=False)))
    assert ours == pytest.approx(float(theirs), rel=1e-6)


def test_frechet_distance_of_a_shifted_set_is_the_squared_shift(rng):
    x = rng.normal(size=(100, 6))
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0, 1.0])
    assert frechet_distance(x, x + shift) == pytest.approx((shift**2).sum(), rel=1e-8)


def test_frechet_distance_rejects_bad_features(rng):
    with pytest.raises(ValueError, match="feature sizes differ"):
        frechet_distance(rng.normal(size=(10, 3)), rng.normal(size=(10, 4)))
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(rng.normal(size=(1, 3)), rng.normal(size=(10, 3)))


# --- KID and MMD ----------------------------------------------------------------------------------


def _poly_mmd_loops(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1.0) ** 3  # noqa: E731
    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_polynomial_mmd_matches_loops_and_torchmetrics(rng):
    x, y = rng.normal(size=(15, 5)), rng.normal(size=(15, 5)) + 0.4
    ours = polynomial_mmd2(x, y)
    assert ours == pytest.approx(_poly_mmd_loops(x, y), rel=1e-10)
    assert ours == pytest.approx(float(poly_mmd(torch.tensor(x), torch.tensor(y))), rel=1e-8)


def test_kid_with_full_subsets_equals_direct_mmd(rng):
    # A subset as large as both sets is a permutation of them: every subset gives the full MMD.
    x, y = rng.normal(size=(12, 4)), rng.normal(size=(12, 4)) * 1.5
    mean, std = kid(x, y, subsets=7, subset_size=1000, seed=3)
    assert mean == pytest.approx(_poly_mmd_loops(x, y), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_is_seeded_and_subsets_differ(rng):
    x, y = rng.normal(size=(60, 4)), rng.normal(size=(50, 4)) + 0.2
    assert kid(x, y, 10, 20, seed=5) == kid(x, y, 10, 20, seed=5)
    mean, std = kid(x, y, 10, 20, seed=5)
    assert std > 0 and kid(x, y, 10, 20, seed=6)[0] != mean


def _rbf_loops(x, y, sigma, biased):
    k = lambda a, b: np.exp(-((a - b) ** 2).sum() / (2 * sigma**2))  # noqa: E731
    n, m = len(x), len(y)
    if biased:
        xx = sum(k(a, b) for a in x for b in x) / n**2
        yy = sum(k(a, b) for a in y for b in y) / m**2
    else:
        xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    return xx + yy - 2 * sum(k(a, b) for a in x for b in y) / (n * m)


@pytest.mark.parametrize("biased", [True, False])
def test_rbf_mmd_matches_loops(rng, biased):
    x = rng.normal(size=(10, 6)) * 8
    y = rng.normal(size=(13, 6)) * 8 + 2
    assert rbf_mmd2(x, y, sigma=10, biased=biased) == pytest.approx(
        _rbf_loops(x, y, 10.0, biased), rel=1e-10)


def test_cmmd_is_1000_biased_rbf_mmd_and_zero_on_itself(rng):
    x = rng.normal(size=(20, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = rng.normal(size=(20, 8)) + 1
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    assert cmmd(x, x) == pytest.approx(0.0, abs=1e-12)
    assert cmmd(x, y) == pytest.approx(1000 * _rbf_loops(x, y, 10.0, True), rel=1e-10)
    assert cmmd(x, y, estimator="unbiased") == pytest.approx(
        1000 * _rbf_loops(x, y, 10.0, False), rel=1e-10)


def test_feature_space_metrics_are_named_for_their_space(rng):
    x, y = rng.normal(size=(30, 4)), rng.normal(size=(30, 4))
    values = feature_space_metrics("parser", x, y, subsets=5, subset_size=10, seed=0,
                                   backend="parser:test")
    assert [v.name for v in values] == ["fd_parser", "kid_parser_x1000", "kid_parser_x1000_std"]
    assert values[0].value == pytest.approx(frechet_distance(x, y))
    assert values[1].value == pytest.approx(1000 * kid(x, y, 5, 10, 0)[0])
    assert feature_space_names("inception") == ("fid", "kid_x1000")
    with pytest.raises(ValueError):
        feature_space_names("bad name")


# --- Detection ------------------------------------------------------------------------------------


def test_detection_metrics_equal_sklearn_on_known_scores(rng):
    real, fake = rng.normal(size=40), rng.normal(size=30) + 1.0
    labels = np.r_[np.zeros(40), np.ones(30)]
    scores = np.r_[real, fake]
    out = detection_metrics(real, fake)
    assert out["auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert out["ap"] == pytest.approx(average_precision_score(labels, scores))
    fpr, tpr, _ = roc_curve(labels, scores)
    eer_ref = brentq(lambda f: 1.0 - f - interp1d(fpr, tpr)(f), 0.0, 1.0)
    assert out["eer"] == pytest.approx(eer_ref, abs=1e-9)


def test_detection_metrics_hand_cases():
    perfect = detection_metrics(np.array([0.1, 0.2, 0.3]), np.array([0.7, 0.8]))
    assert perfect == {"auc": 1.0, "eer": 0.0, "ap": 1.0}
    inverted = detection_metrics(np.array([0.7, 0.8]), np.array([0.1, 0.2, 0.3]))
    assert inverted["auc"] == 0.0 and inverted["eer"] == 1.0
    # Threshold in (3.5, 4]: one of four real images passes, one of four generated fails.
    overlap = detection_metrics(np.array([1.0, 2.0, 3.0, 4.0]), np.array([3.5, 5.0, 6.0, 7.0]))
    assert overlap["eer"] == pytest.approx(0.25)
    assert overlap["auc"] == pytest.approx(15 / 16)


def test_equal_error_rate_at_chance_is_one_half():
    labels = np.array([0, 1] * 50)
    assert equal_error_rate(labels, np.zeros(100)) == pytest.approx(0.5)


def test_detection_metrics_reject_empty_or_nan():
    with pytest.raises(ValueError, match="real_scores"):
        detection_metrics(np.array([]), np.array([1.0]))
    with pytest.raises(ValueError, match="fake_scores"):
        detection_metrics(np.array([1.0]), np.array([np.nan]))


# --- Segmentation ---------------------------------------------------------------------------------


def test_mask_iou_known_case():
    pred = np.array([[0, 0], [1, 1]])
    target = np.array([[0, 1], [1, 1]])
    scores = mask_iou([pred], [target])
    assert scores.per_class["background"] == pytest.approx(1 / 2)
    assert scores.per_class["skin"] == pytest.approx(2 / 3)
    assert all(scores.per_class[name] is None for name in LABELS[2:])
    assert scores.mean_iou == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert scores.pixel_accuracy == pytest.approx(3 / 4)


def test_mask_iou_sums_over_the_set_not_per_image():
    # Image A: class 1 fully right on 1 pixel; image B: class 1 predicted on 3 pixels, 1 true.
    a_pred, a_tgt = np.array([[1, 0, 0, 0]]), np.array([[1, 0, 0, 0]])
    b_pred, b_tgt = np.array([[1, 1, 1, 0]]), np.array([[1, 0, 0, 0]])
    scores = mask_iou([a_pred, b_pred], [a_tgt, b_tgt], num_classes=2)
    assert scores.per_class["1"] == pytest.approx(2 / 4)  # not the mean of 1 and 1/3
    assert scores.per_class["0"] == pytest.approx(4 / 6)


def test_mask_iou_rejects_mismatched_maps():
    with pytest.raises(ValueError, match="pair 0"):
        mask_iou([np.zeros((2, 2), int)], [np.zeros((2, 3), int)])
    with pytest.raises(ValueError, match="labels in"):
        mask_iou([np.full((2, 2), 19)], [np.zeros((2, 2), int)])


def test_mask_metric_values_name_present_classes():
    values = mask_metric_values(mask_iou([np.array([[0, 13]])], [np.array([[0, 13]])]), "p")
    assert {v.name: v.value for v in values} == {
        "mask_miou": 1.0, "mask_pixel_acc": 1.0, "mask_iou_background": 1.0, "mask_iou_hair": 1.0}


# --- Attributes -----------------------------------------------------------------------------------

COLORS = {"red": (200, 0, 0), "blue": (0, 0, 200), "black": (10, 10, 10)}


def _read_color(pixels: np.ndarray, attribute: str) -> str:
    mean = pixels.reshape(-1, 3).mean(0)
    return min(COLORS, key=lambda c: np.abs(mean - COLORS[c]).sum())


def _face(hair: str, hat: bool) -> tuple[np.ndarray, np.ndarray]:
    image = np.zeros((8, 8, 3), np.uint8)
    labels = np.zeros((8, 8), np.int64)
    labels[:3] = LABEL_INDEX["hair"]
    image[:3] = COLORS[hair]
    labels[3:, :] = LABEL_INDEX["skin"]
    if hat:
        labels[0, :2] = LABEL_INDEX["hat"]
    return image, labels


def test_attribute_accuracy_known_case():
    faces = [_face("red", True), _face("blue", False), _face("black", False)]
    images = np.stack([f[0] for f in faces])
    maps = [f[1] for f in faces]
    maps[2][:3] = LABEL_INDEX["skin"]  # third face shows no hair at all
    attributes = [
        {"hair_color": "red", "hat": True},  # both right
        {"hair_color": "red", "hat": True},  # colour wrong, hat missing
        {"hair_color": "black", "hat": None},  # hair region absent: wrong; hat unstated
    ]
    out = attribute_accuracy(images, maps, attributes, read_color=_read_color,
                             color_attributes={"hair_color": ("hair",)},
                             accessory_labels={"hat": "hat"})
    assert out["per_attribute"] == {"hair_color": pytest.approx(1 / 3), "hat": 0.5}
    assert out["counts"] == {"hair_color": 3, "hat": 2}
    assert (out["color_mean"], out["accessory_mean"]) == (pytest.approx(1 / 3), 0.5)
    values = {v.name: v for v in attribute_metric_values(out, "parser")}
    assert values["attribute_acc"].value == pytest.approx(1 / 3)
    assert values["accessory_acc"].value == 0.5


def test_attribute_accuracy_unstated_attribute_is_skipped_not_zero():
    image, labels = _face("red", False)
    out = attribute_accuracy([image], [labels], [{"hair_color": "red"}], read_color=_read_color,
                             color_attributes={"hair_color": "hair"},
                             accessory_labels={"eyeglasses": ("eye_g",)})
    assert out["per_attribute"] == {"hair_color": 1.0, "eyeglasses": None}
    skipped = [v for v in attribute_metric_values(out, "p") if v.skipped]
    assert [v.name for v in skipped] == ["accessory_acc", "attribute_acc_eyeglasses"]


def test_attribute_accuracy_rejects_unknown_labels():
    image, labels = _face("red", False)
    with pytest.raises(ValueError, match="beard"):
        attribute_accuracy([image], [labels], [{}], read_color=_read_color,
                           color_attributes={"hair_color": "beard"}, accessory_labels={})


# --- Base: values, pairing, JSON ------------------------------------------------------------------


def test_metric_value_is_a_number_or_a_reason():
    with pytest.raises(ValueError):
        MetricValue("fid", None, "x")
    with pytest.raises(ValueError):
        MetricValue("fid", 1.0, "x", skipped="why")
    with pytest.raises(ValueError):
        MetricValue("fid", float("nan"), "x")


def test_metrics_json_lists_skipped_metrics_with_reasons_never_as_numbers():
    values = [MetricValue("fd_parser", 3.5, "parser:ckpt"),
              MetricValue.skip("fid", "inception", "torch-fidelity is not installed")]
    out = metrics_json(values)
    assert out["fd_parser"] == 3.5 and "fid" not in out
    assert out["skipped"] == {"fid": "torch-fidelity is not installed"}
    assert out["backends"] == {"fd_parser": "parser:ckpt", "fid": "inception"}
    json.dumps(out)
    with pytest.raises(ValueError, match="duplicate"):
        metrics_json(values + values[:1])


def test_pair_by_id_follows_reference_order_and_lists_mismatches():
    reference = {"b": 1, "a": 2, "c": 3}
    assert pair_by_id({"a": 0, "c": 0, "b": 0}, reference) == ["b", "a", "c"]
    with pytest.raises(ValueError) as err:
        pair_by_id({"a": 0, "x": 0, "y": 0}, reference)
    message = str(err.value)
    assert "b, c" in message and "x, y" in message


# --- Report ---------------------------------------------------------------------------------------


def test_report_shows_the_paper_protocol_dino_distance_next_to_mask_when_reported():
    rows = {"corrected only": {"dino_structure": 0.01},
            "both": {"dino_structure": 0.02, "dino_structure_paper": 1.25}}
    header, _, first, second = markdown_table(rows).splitlines()
    assert header == "| Method | FID ↓ | KID ↓ | CMMD ↓ | Mask ↓ | Mask-paper ↓ | Text ↑ | IR ↑ |"
    assert first == "| corrected only | - | - | - | 0.0100 | - | - | - |"
    assert second == "| both | - | - | - | 0.0200 | 1.2500 | - | - |"
    assert "Mask-paper" not in markdown_table({"corrected only": rows["corrected only"]})


def test_report_table_shows_values_dashes_and_extra_columns(tmp_path):
    full = {"fid": 12.345, "cmmd": 0.5, "fd_parser": 1.5, "mask_miou": 0.75,
            "skipped": {"clip_score": "no CLIP weights"}}
    table = markdown_table({"ours": full})
    header, _, row = table.splitlines()
    assert header.split(" | ")[1:7] == ["FID ↓", "KID ↓", "CMMD ↓", "Mask ↓", "Text ↑", "IR ↑"]
    assert "FD-parser ↓" in header and "mIoU ↑" in header and "Det-AUC" not in header
    assert "| ours | 12.35 | - | 0.500 | - | - | - | 1.50 | - | 0.750 |" == row
    zeroshot = {**full, "fid": 20.0}
    for folder, values in (("test", full), ("zs", zeroshot)):
        for mode in ("multimodal", "text2face"):
            (tmp_path / folder).mkdir(exist_ok=True)
            (tmp_path / folder / f"{mode}.json").write_text(json.dumps(values))
    write_report({"in-distribution": tmp_path / "test", "zero-shot": tmp_path / "zs"},
                 tmp_path / "report.md", modes=("multimodal", "text2face"))
    text = (tmp_path / "report.md").read_text()
    assert "## multimodal" in text and "## text2face" in text
    assert "| Face-MoGLE (zero-shot) | 20.00 |" in text
    assert "- skipped clip_score: no CLIP weights" in text
    assert text == markdown_report({m: {"Face-MoGLE (in-distribution)": full,
                                        "Face-MoGLE (zero-shot)": zeroshot}
                                    for m in ("multimodal", "text2face")})
    with pytest.raises(InputError, match="mask2face.json"):
        write_report({"in-distribution": tmp_path / "test"}, tmp_path / "r.md")


def test_report_shows_the_papers_detector_columns_when_a_row_has_them():
    """Table 6: NPR and Wavelet-CLIP columns appear when a detector ran, not for skips."""
    ran = {"npr_auc": 0.61, "npr_eer": 0.42, "npr_ap": 0.6, "skipped": {
        "wavelet_clip_auc": "evaluate.wavelet_clip_path is null"}}
    skipped = {"skipped": {"npr_auc": "evaluate.npr_path is null"}}
    header, _, first, second = markdown_table({"ours": ran, "other": skipped}).splitlines()
    assert "NPR-AUC ↓" in header and "NPR-EER ↑" in header and "WavCLIP" not in header
    assert "| 0.610 | 0.420 | 0.600 |" in first and second.endswith("| - | - | - |")
    assert "NPR" not in markdown_table({"other": skipped})
