"""The paper's Table 6 detectors (NPR, Wavelet-CLIP) on random weights: architectures, weight
files (round trip, refusal of the wrong file), the wavelet transform, and the suite's cells."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModel

from facemogle.core.config import EvaluateConfig
from facemogle.evaluation.metrics import metrics_json
from facemogle.evaluation.metrics.checkpoints import WeightsMismatch
from facemogle.evaluation.metrics.npr import NPRDetector, NPRNet, npr_residual
from facemogle.evaluation.metrics.suite import ModelSuite
from facemogle.evaluation.metrics.wavelet_clip import WaveletClipDetector, WaveletHead
from facemogle.evaluation.metrics.wavelets import DB6, WaveletTransform1d

HIDDEN = 32  # tiny CLIP width: db6 bands of 21, 16, 13 values


def _images(n: int, seed: int, size: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _npr_net(seed: int = 0, **kwargs) -> NPRNet:
    torch.manual_seed(seed)
    net = NPRNet(**kwargs)
    for m in net.modules():  # non-trivial BatchNorm statistics, as in trained weights
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture(scope="module")
def npr_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("npr") / "NPR.pth"
    torch.save(_npr_net().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    config = CLIPVisionConfig(hidden_size=HIDDEN, intermediate_size=37, num_hidden_layers=2,
                              num_attention_heads=4, image_size=32, patch_size=8)
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("clip_vision")
    CLIPVisionModel(config).save_pretrained(path)
    return path


def _authors_checkpoint(clip_dir, seed: int = 2) -> dict[str, torch.Tensor]:
    """A detector state dict laid out as the authors' (`backbone.*`, `slp`, `head`, filters)."""
    torch.manual_seed(seed)
    backbone = CLIPVisionModel.from_pretrained(clip_dir)
    for p in backbone.parameters():  # differs from the folder's weights
        p.data.add_(0.01 * torch.randn_like(p))
    encoder = getattr(backbone, "vision_model", backbone)  # transformers < 5 nests it
    state = {f"backbone.{k}": v for k, v in encoder.state_dict().items()}
    state.update(WaveletHead(HIDDEN).state_dict())
    rec_lo = torch.tensor(DB6)
    rec_hi = WaveletTransform1d.highpass(rec_lo)
    for key, filt in (("dwt.h0", rec_lo), ("dwt.h1", rec_hi), ("idwt.g0", rec_lo),
                      ("idwt.g1", rec_hi)):
        state[key] = filt.view(1, 1, -1)
    return state


@pytest.fixture(scope="module")
def wavelet_file(tmp_path_factory, clip_dir):
    path = tmp_path_factory.mktemp("wavelet") / "clip_wavelet_best.pth"
    torch.save(_authors_checkpoint(clip_dir), path)
    return path


# --- NPR ------------------------------------------------------------------------------------------


def test_npr_residual_equals_hand_computation():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0],
                      [5.0, 6.0, 7.0, 8.0],
                      [9.0, 10.0, 11.0, 12.0],
                      [13.0, 14.0, 15.0, 16.0]])[None, None]  # (1, 1, 4, 4)
    # Each 2 x 2 cell minus its top-left pixel (nearest down- then up-sampling by 2).
    expected = torch.tensor([[0.0, 1.0, 0.0, 1.0],
                             [4.0, 5.0, 4.0, 5.0],
                             [0.0, 1.0, 0.0, 1.0],
                             [4.0, 5.0, 4.0, 5.0]])[None, None]
    assert torch.equal(npr_residual(x), expected)
    official = torch.nn.functional.interpolate(x, scale_factor=0.5, mode="nearest",
                                               recompute_scale_factor=True)
    official = x - torch.nn.functional.interpolate(official, scale_factor=2.0, mode="nearest")
    assert torch.equal(npr_residual(x), official)


def test_npr_architecture_is_resnet50_trimmed_to_layer2():
    net = NPRNet()
    assert net.fc1.in_features == 512 and len(net.layer1) == 3 and len(net.layer2) == 4
    assert sum(p.numel() for p in net.parameters()) == 1_437_761  # the paper: 1.44 M
    assert not hasattr(net, "layer3")


def test_npr_gives_probabilities_for_mixed_sizes_whatever_the_batch(npr_file):
    images = [*_images(3, 0), *_images(2, 1, size=32)]
    scores = NPRDetector.load(npr_file, batch_size=2, device="cpu").score(images)
    assert scores.shape == (5,) and ((scores >= 0) & (scores <= 1)).all()
    again = NPRDetector.load(npr_file, batch_size=16, device="cpu").score(images)
    np.testing.assert_allclose(again, scores, rtol=1e-5, atol=1e-7)


def test_npr_weights_round_trip_as_pth_safetensors_and_wrapped(npr_file, tmp_path):
    net = _npr_net()
    images = _images(3, 2)
    expected = NPRDetector(net, "in-memory", device="cpu").score(images)
    state = net.state_dict()
    save_file(state, tmp_path / "npr.safetensors")
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "total_steps": 7},
               tmp_path / "trainer.pth")
    for path in (npr_file, tmp_path / "npr.safetensors", tmp_path / "trainer.pth"):
        got = NPRDetector.load(path, device="cpu").score(images)
        np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=str(path))


class _NotWeights:
    pass


def test_a_mismatched_or_unsafe_npr_file_is_refused_with_its_name(tmp_path):
    wide = tmp_path / "resnet_other_width.pth"
    torch.save(NPRNet(width=32).state_dict(), wide)
    with pytest.raises(WeightsMismatch, match=r"resnet_other_width\.pth.*fc1\.weight"):
        NPRDetector.load(wide)
    partial = tmp_path / "partial.safetensors"
    save_file({k: v for k, v in NPRNet().state_dict().items() if "layer2" not in k}, partial)
    with pytest.raises(WeightsMismatch, match=r"partial\.safetensors.*missing: layer2"):
        NPRDetector.load(partial)
    pickled = tmp_path / "pickled_object.pth"
    torch.save({"conv1.weight": torch.zeros(1), "extra": _NotWeights()}, pickled)
    with pytest.raises(WeightsMismatch, match=r"pickled_object\.pth: not a weights-only"):
        NPRDetector.load(pickled)
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        NPRDetector.load(tmp_path / "absent.pth")


# --- Wavelet transform and Wavelet-CLIP -----------------------------------------------------------


def test_db6_is_an_orthonormal_wavelet_with_six_vanishing_moments():
    h = torch.tensor(DB6, dtype=torch.float64)
    assert h.sum().item() == pytest.approx(math.sqrt(2.0), abs=1e-12)
    for shift in range(0, 12, 2):
        assert torch.dot(h[shift:], h[:12 - shift]).item() == pytest.approx(
            1.0 if shift == 0 else 0.0, abs=1e-12)
    rec_hi, k = WaveletTransform1d.highpass(h), torch.arange(12, dtype=torch.float64)
    for moment in range(6):
        assert torch.dot(k ** moment, rec_hi).item() == pytest.approx(0.0, abs=1e-7)


def test_wavelet_transform_follows_pywavelets_zero_mode_and_reconstructs():
    haar = WaveletTransform1d((1 / math.sqrt(2.0),) * 2, levels=1)
    low, (high,) = haar(torch.tensor([[[1.0, 2.0, 3.0, 4.0]]]))  # pywt.dwt(x, "db1", "zero")
    torch.testing.assert_close(low, torch.tensor([[[3.0, 7.0]]]) / math.sqrt(2.0))
    torch.testing.assert_close(high, torch.tensor([[[-1.0, -1.0]]]) / math.sqrt(2.0))
    db6 = WaveletTransform1d(DB6, levels=3)
    assert db6.lengths(1024) == [517, 264, 137]  # Wavelet-CLIP's Linear(137, 137)
    x = torch.randn(2, 3, 1024, dtype=torch.float64)  # (B, C, N)
    low, highs = db6(x)
    assert low.shape == (2, 3, 137) and [h.shape[-1] for h in highs] == [517, 264, 137]
    torch.testing.assert_close(db6.inverse(low, highs), x, atol=1e-9, rtol=0)
    assert WaveletHead(1024).slp.in_features == 137
    assert not WaveletHead(HIDDEN).dwt.state_dict()  # filters are not checkpoint weights


def test_wavelet_clip_gives_probabilities_and_its_weights_round_trip(clip_dir, wavelet_file,
                                                                     tmp_path):
    detector = WaveletClipDetector.load(wavelet_file, clip_dir, batch_size=2, device="cpu")
    scores = detector.score([*_images(3, 0), *_images(2, 1, size=56)])
    assert scores.shape == (5,) and ((scores >= 0) & (scores <= 1)).all()
    state = _authors_checkpoint(clip_dir)
    encoder = getattr(detector.backbone, "vision_model", detector.backbone).state_dict()
    for key, value in encoder.items():  # the checkpoint's encoder replaced the folder's
        torch.testing.assert_close(value, state[f"backbone.{key}"])
    for key, value in detector.head.state_dict().items():
        torch.testing.assert_close(value, state[key])
    ddp = {f"module.{k}": v.clone() for k, v in state.items()}
    save_file(ddp, tmp_path / "wavelet.safetensors")
    again = WaveletClipDetector.load(tmp_path / "wavelet.safetensors", clip_dir, device="cpu")
    np.testing.assert_allclose(again.score(_images(2, 3)), detector.score(_images(2, 3)),
                               rtol=1e-6)


def test_a_mismatched_wavelet_clip_file_is_refused_with_its_name(clip_dir, npr_file, tmp_path):
    with pytest.raises(WeightsMismatch, match=r"NPR\.pth: does not match the Wavelet-CLIP head"):
        WaveletClipDetector.load(npr_file, clip_dir)
    state = _authors_checkpoint(clip_dir)
    wide = {k: v for k, v in state.items() if not k.startswith(("slp", "head"))}
    wide.update(WaveletHead(2 * HIDDEN).state_dict())
    torch.save(wide, tmp_path / "vit_base_head.pth")
    with pytest.raises(WeightsMismatch, match=r"vit_base_head\.pth.*head\.weight \(2, 64\)"):
        WaveletClipDetector.load(tmp_path / "vit_base_head.pth", clip_dir)
    haar = dict(state, **{"dwt.h0": torch.ones(1, 1, 2)})
    torch.save(haar, tmp_path / "haar.pth")
    with pytest.raises(WeightsMismatch, match=r"haar\.pth: wavelet filter 'dwt\.h0'"):
        WaveletClipDetector.load(tmp_path / "haar.pth", clip_dir)
    with pytest.raises(FileNotFoundError, match="no_clip_here"):
        WaveletClipDetector.load(npr_file, tmp_path / "no_clip_here")


# --- The suite's cells ----------------------------------------------------------------------------


def test_suite_reports_configured_detectors_and_skips_unconfigured_ones(npr_file, clip_dir,
                                                                        wavelet_file):
    generated, reference = _images(4, 0, size=32), _images(4, 1, size=32)
    configured = EvaluateConfig(batch_size=3, npr_path=str(npr_file),
                                wavelet_clip_path=str(wavelet_file),
                                wavelet_clip_backbone=str(clip_dir))
    values = {v.name: v for v in ModelSuite(configured, device="cpu").evaluate(
        generated, reference, None, structure=False)}
    for name in ("npr_auc", "npr_eer", "npr_ap", "wavelet_clip_auc", "wavelet_clip_eer",
                 "wavelet_clip_ap"):
        assert values[name].skipped is None and 0.0 <= values[name].value <= 1.0, name
    assert values["npr_auc"].backend == f"npr:{npr_file}"
    assert values["wavelet_clip_ap"].backend.startswith(f"wavelet-clip:{wavelet_file}")
    plain = metrics_json(ModelSuite(EvaluateConfig(), device="cpu").evaluate(
        generated, reference, None, structure=False))
    assert not {"npr_auc", "wavelet_clip_auc"} & set(plain)
    assert plain["skipped"]["npr_auc"] == ("evaluate.npr_path is null: no NPR detector weights "
                                           "configured")
    assert plain["skipped"]["wavelet_clip_eer"] == ("evaluate.wavelet_clip_path is null: no "
                                                    "Wavelet-CLIP detector weights configured")
    half = EvaluateConfig(wavelet_clip_path=str(wavelet_file))
    with pytest.raises(ValueError, match="wavelet_clip_backbone"):
        ModelSuite(half, device="cpu").evaluate(generated, reference, None)
