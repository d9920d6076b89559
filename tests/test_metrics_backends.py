"""Model backends of the metric library on tiny randomly initialised instances of the real
transformers classes, saved to temp dirs and loaded from there (nothing is downloaded), plus
the skipped-backend paths and the embedded detector."""

from __future__ import annotations

import functools
import importlib.util
import json
import string

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
)

from facemogle.core import labels
from facemogle.core.config import EvaluateConfig
from facemogle.core.io import write_jsonl
from facemogle.evaluation.evaluate import evaluate_mode
from facemogle.evaluation.metrics import BackendUnavailable, metrics_json
from facemogle.evaluation.metrics import suite as suite_module
from facemogle.evaluation.metrics.clip_score import ClipScorer, clip_score_metrics
from facemogle.evaluation.metrics.cmmd import ClipImageEmbedder, cmmd_metrics
from facemogle.evaluation.metrics.detection import (
    SmallDetector,
    cross_fit_scores,
    detection_metrics,
)
from facemogle.evaluation.metrics.dino import (
    PAPER_SUM_BATCH,
    DinoStructure,
    batch_sum_mean,
    dino_metrics,
    key_self_similarity,
)
from facemogle.evaluation.metrics.imagereward import ImageRewardScorer
from facemogle.evaluation.metrics.inception import InceptionFeatures, fid_kid_metrics
from facemogle.evaluation.metrics.suite import ModelSuite, small_detector_metrics

IMAGE = 32  # tiny models see 32 px images, patch 8: 16 patches + CLS
MAX_TOKENS = 16


def _images(n: int, seed: int, size: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _tokenizer() -> CLIPTokenizer:
    """A character-level CLIP BPE tokenizer (no merges) built from a vocabulary written here."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + ".,":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    tokenizer = _tokenizer()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer.get_vocab()), hidden_size=32,
                         intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=MAX_TOKENS, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4, image_size=IMAGE, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clip")
    CLIPModel(config).save_pretrained(path)
    processor = CLIPImageProcessor(size={"shortest_edge": IMAGE},
                                   crop_size={"height": IMAGE, "width": IMAGE})
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=37, image_size=IMAGE, patch_size=8)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("dino")
    ViTModel(config, add_pooling_layer=False).save_pretrained(path)
    ViTImageProcessor(size={"height": IMAGE, "width": IMAGE}).save_pretrained(path)
    return str(path)


# --- CMMD -----------------------------------------------------------------------------------------


def test_cmmd_embedder_loads_a_full_clip_checkpoint(clip_dir):
    embedder = ClipImageEmbedder.load(clip_dir, batch_size=3, device="cpu")
    images = _images(5, 0)
    emb = embedder.embed(images)
    assert emb.shape == (5, 16)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-12)
    # Same numbers as the full CLIPModel: the vision tower and projection really loaded.
    clip = CLIPModel.from_pretrained(clip_dir).eval()
    pixels = CLIPImageProcessor.from_pretrained(clip_dir)(images=list(images),
                                                          return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref = clip.get_image_features(pixel_values=pixels).pooler_output.double()
    ref = torch.nn.functional.normalize(ref, dim=-1).numpy()
    np.testing.assert_allclose(emb, ref, atol=1e-5)
    values = cmmd_metrics(embedder, images, images)
    assert values[0].name == "cmmd" and values[0].value == pytest.approx(0.0, abs=1e-9)
    assert cmmd_metrics(embedder, images, _images(4, 1))[0].value > 0


def test_cmmd_embedder_loads_a_vision_only_checkpoint(clip_dir, tmp_path):
    config = CLIPConfig.from_pretrained(clip_dir)
    vision = config.vision_config
    vision.projection_dim = config.projection_dim  # not carried by a nested vision config
    CLIPVisionModelWithProjection.from_pretrained(clip_dir, config=vision).save_pretrained(tmp_path)
    CLIPImageProcessor.from_pretrained(clip_dir).save_pretrained(tmp_path)
    a = ClipImageEmbedder.load(str(tmp_path), device="cpu").embed(_images(2, 0))
    b = ClipImageEmbedder.load(clip_dir, device="cpu").embed(_images(2, 0))
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_incomplete_checkpoint_is_refused(clip_dir, tmp_path):
    # A vision tower without the projection must not load with a random projection.
    CLIPVisionModel.from_pretrained(clip_dir).save_pretrained(tmp_path)
    CLIPImageProcessor.from_pretrained(clip_dir).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="visual_projection"):
        ClipImageEmbedder.load(str(tmp_path), device="cpu")


# --- CLIP score -----------------------------------------------------------------------------------


def test_clip_score_shapes_range_and_truncation_count(clip_dir):
    scorer = ClipScorer.load(clip_dir, batch_size=2, device="cpu")
    assert scorer.max_tokens == MAX_TOKENS
    captions = ["a red hat", "blue eyes", "a woman with long black hair and a very long caption",
                "short"]
    images = _images(4, 2)
    scores = scorer.score(images, captions)
    assert scores.shape == (4,) and np.isfinite(scores).all()
    assert np.all(np.abs(scores) <= 100.0 + 1e-9)
    assert scorer.count_truncated(captions) == 1
    # Truncation keeps the end-of-text token CLIP pools from.
    ids = scorer.processor.tokenizer(captions[2:3], truncation=True,
                                     max_length=MAX_TOKENS)["input_ids"][0]
    assert len(ids) == MAX_TOKENS and ids[-1] == scorer.processor.tokenizer.eos_token_id
    values = {v.name: v.value for v in clip_score_metrics(scorer, images, captions)}
    assert values["clip_score"] == pytest.approx(scores.mean())
    assert values["clip_truncated_captions"] == 1.0
    # Batching does not change a pair's score.
    np.testing.assert_allclose(ClipScorer.load(clip_dir, batch_size=4, device="cpu")
                               .score(images, captions), scores, atol=1e-5)
    with pytest.raises(ValueError, match="captions"):
        scorer.score(images, captions[:3])


# --- DINO -----------------------------------------------------------------------------------------


def test_dino_self_distance_is_zero_and_matches_manual_keys(dino_dir):
    backend = DinoStructure.load(dino_dir, batch_size=4, device="cpu")
    images = _images(3, 3)
    sim = backend.self_similarity(list(images))
    assert sim.shape == (3, 17, 17)
    # The hook reads the last layer's keys: recompute them from that layer's input.
    pixels = ViTImageProcessor.from_pretrained(dino_dir)(images=list(images),
                                                         return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden = backend.model(pixel_values=pixels, output_hidden_states=True).hidden_states
        last = backend.model.layers[-1]
        keys = last.attention.k_proj(last.layernorm_before(hidden[-2]))
    torch.testing.assert_close(sim, key_self_similarity(keys.double()))
    np.testing.assert_array_equal(backend.distances(images, images), np.zeros(3))
    assert dino_metrics(backend, images, images)[0].value == 0.0


def test_dino_average_is_per_image_whatever_the_batch_size(dino_dir):
    generated, reference = _images(7, 4), _images(7, 5, size=48)
    per_image = {b: DinoStructure.load(dino_dir, batch_size=b, device="cpu")
                 .distances(generated, reference) for b in (1, 3, 7)}
    for b in (3, 7):
        np.testing.assert_allclose(per_image[b], per_image[1], rtol=1e-6)
    assert (per_image[1] > 0).all()
    value = dino_metrics(DinoStructure.load(dino_dir, batch_size=3, device="cpu"),
                         generated, reference)[0].value
    assert value == pytest.approx(per_image[1].mean(), rel=1e-6)


def _paper_keys_by_hand(model: ViTModel, images: np.ndarray) -> torch.Tensor:
    """The official input (raw [0, 1] pixels, no normalisation, no resize) and the last layer's
    keys recomputed from that layer's input: (N, T, D)."""
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        hidden = model(pixel_values=pixels, output_hidden_states=True,
                       interpolate_pos_encoding=True).hidden_states
        last = model.layers[-1]
        return last.attention.k_proj(last.layernorm_before(hidden[-2]))


def test_dino_paper_protocol_sums_per_image_mses_per_batch_of_64_at_its_resolution(dino_dir):
    # 70 pairs at 48 px (the tiny model's pretraining size is 32): 6 x 6 patches + CLS, and two
    # of the official batches (64 + 6), so the number is the sum of the MSEs over 2.
    n, size = 70, 48
    generated, reference = _images(n, 10, size=size), _images(n, 11, size=size)
    backend = DinoStructure.load(dino_dir, batch_size=16, device="cpu", paper_resolution=size)
    sim_g = key_self_similarity(_paper_keys_by_hand(backend.model, generated).double())
    sim_r = key_self_similarity(_paper_keys_by_hand(backend.model, reference).double())
    assert sim_g.shape == (n, 37, 37)
    mse = (sim_g - sim_r).pow(2).mean(dim=(1, 2)).numpy()  # (N,) per-image MSE
    np.testing.assert_allclose(backend.distances(generated, reference, protocol="paper"), mse,
                               rtol=1e-6)
    by_hand = (mse[:64].sum() + mse[64:].sum()) / 2
    assert PAPER_SUM_BATCH == 64 and batch_sum_mean(mse) == pytest.approx(by_hand, rel=1e-12)
    values = {v.name: v for v in dino_metrics(backend, generated, reference, protocol="both")}
    assert values["dino_structure_paper"].value == pytest.approx(by_hand, rel=1e-6)
    assert "48 px" in values["dino_structure_paper"].backend
    # The corrected number beside it: the per-image mean after the model's processor (resize
    # to 32, ImageNet mean/std), a different number on another scale.
    corrected = backend.distances(generated, reference)
    assert values["dino_structure"].value == pytest.approx(corrected.mean(), rel=1e-6)
    assert not np.allclose(corrected, mse)
    # The compute batch is not the protocol's: any batch size gives the same number.
    other = DinoStructure.load(dino_dir, batch_size=70, device="cpu", paper_resolution=size)
    assert dino_metrics(other, generated, reference, protocol="both")[1].value == pytest.approx(
        by_hand, rel=1e-6)


def test_dino_paper_protocol_resizes_other_sizes_to_its_resolution(dino_dir):
    backend = DinoStructure.load(dino_dir, batch_size=4, device="cpu", paper_resolution=48)
    generated, reference = _images(3, 12, size=40), _images(3, 13, size=48)
    resized = np.stack([np.asarray(Image.fromarray(g).resize((48, 48), Image.BICUBIC))
                        for g in generated])
    np.testing.assert_allclose(backend.distances(generated, reference, protocol="paper"),
                               backend.distances(resized, reference, protocol="paper"))
    assert backend.self_similarity(list(generated), protocol="paper").shape == (3, 37, 37)
    with pytest.raises(ValueError, match="protocol"):
        backend.distances(generated, reference, protocol="official")
    with pytest.raises(ValueError, match="dino_protocol"):
        dino_metrics(backend, generated, reference, protocol="paper")


# --- Inception (FID / KID) ------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is not None,
                    reason="torch-fidelity is installed here")
def test_fid_backend_is_unavailable_without_torch_fidelity():
    with pytest.raises(BackendUnavailable, match="torch-fidelity is not installed"):
        InceptionFeatures.load()
    with pytest.raises(BackendUnavailable, match="torch-fidelity"):
        InceptionFeatures.load("/no/such/weights.pth")


class _PoolFeatures(torch.nn.Module):
    """A stand-in extractor with the FID network's interface: uint8 (B, 3, 299, 299) -> (B, F)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 5, stride=4)
        self.seen: list[tuple] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((x.dtype, tuple(x.shape)))
        return self.conv(x.float() / 255).mean(dim=(2, 3))


def test_inception_features_clean_resize_and_batching():
    extractor = _PoolFeatures()
    backend = InceptionFeatures(extractor, "test-extractor", batch_size=4, device="cpu")
    feats = backend.features(_images(6, 6, size=50))
    assert feats.shape == (6, 8) and feats.dtype == np.float64
    assert extractor.seen == [(torch.uint8, (4, 3, 299, 299)), (torch.uint8, (2, 3, 299, 299))]
    values = fid_kid_metrics(backend, _images(6, 6, size=50), _images(5, 7, size=64),
                             subsets=3, subset_size=4, seed=0)
    assert [v.name for v in values] == ["fid", "kid_x1000", "kid_x1000_std"]
    assert all(v.value is not None and v.backend == "test-extractor" for v in values)


# --- Suite: skipped and configured backends -------------------------------------------------------


def test_suite_with_nothing_configured_reports_every_model_metric_skipped():
    values = ModelSuite(EvaluateConfig(), device="cpu").evaluate(
        _images(4, 0), _images(4, 1), ["a face"] * 4)
    assert all(v.value is None and v.skipped for v in values)
    reasons = {v.name: v.skipped for v in values}
    assert set(reasons) == {"fid", "kid_x1000", "kid_x1000_std", "cmmd", "clip_score",
                            "clip_truncated_captions", "dino_structure", "image_reward",
                            "npr_auc", "npr_eer", "npr_ap", "wavelet_clip_auc",
                            "wavelet_clip_eer", "wavelet_clip_ap"}
    if importlib.util.find_spec("torch_fidelity") is None:
        assert "torch-fidelity is not installed" in reasons["fid"]
    assert reasons["cmmd"] == "evaluate.cmmd_model is null: no CLIP ViT-L/14-336 weights configured"
    assert "evaluate.dino_model is null" in reasons["dino_structure"]
    out = metrics_json(values)
    assert set(out) == {"backends", "skipped"}


def test_suite_computes_configured_backends_and_skips_by_mode(clip_dir, dino_dir):
    cfg = EvaluateConfig(batch_size=2, cmmd_model=clip_dir, clip_score_model=clip_dir,
                         dino_model=dino_dir, imagereward_path="/weights/ImageReward.pt")
    suite = ModelSuite(cfg, device="cpu")
    generated, reference = _images(3, 0), _images(3, 1)
    values = {v.name: v for v in suite.evaluate(generated, reference, ["a", "b", "c"], seed=1)}
    for name in ("cmmd", "clip_score", "clip_truncated_captions", "dino_structure"):
        assert values[name].value is not None and np.isfinite(values[name].value), name
    if importlib.util.find_spec("ImageReward") is None:
        assert "ImageReward package import failed" in values["image_reward"].skipped
    unpaired = {v.name: v for v in suite.evaluate(generated, reference, None, structure=False)}
    assert unpaired["clip_score"].skipped == "no caption given"
    assert unpaired["dino_structure"].skipped == "the reference images are not paired by id"
    assert unpaired["cmmd"].value == pytest.approx(values["cmmd"].value)
    assert "dino_structure_paper" not in values  # dino_protocol "corrected" (the default)


def test_suite_writes_the_paper_protocol_beside_the_corrected_one(dino_dir, monkeypatch):
    skipped = ModelSuite(EvaluateConfig(dino_protocol="both"), device="cpu").evaluate(
        _images(2, 0), _images(2, 1), ["a", "b"])
    assert {"dino_structure", "dino_structure_paper"} <= {v.name for v in skipped if v.skipped}
    # The tiny model at 32 px instead of the protocol's 512 (4097 tokens), to stay small.
    monkeypatch.setitem(suite_module._MODEL_LOADERS, "dino",
                        functools.partial(DinoStructure.load, paper_resolution=IMAGE))
    cfg = EvaluateConfig(batch_size=2, dino_model=dino_dir, dino_protocol="both")
    generated, reference = _images(3, 0), _images(3, 1)
    values = {v.name: v.value for v in ModelSuite(cfg, device="cpu").evaluate(
        generated, reference, None)}
    backend = DinoStructure.load(dino_dir, device="cpu", paper_resolution=IMAGE)
    assert values["dino_structure"] == pytest.approx(
        backend.distances(generated, reference).mean(), rel=1e-6)
    assert values["dino_structure_paper"] == pytest.approx(
        backend.distances(generated, reference, protocol="paper").sum(), rel=1e-6)


def _write_eval_inputs(root, ids: list[str], modes: list[str]) -> dict:
    """samples/<mode>/<id>.png, raw/images, raw/captions.jsonl (two captions per id, rows in
    another order than `ids`) and labels/masks for a 3-id evaluation; returns the arrays."""
    arrays = {"real": _images(len(ids), 20, size=IMAGE)}
    for n, mode in enumerate(modes):
        arrays[mode] = _images(len(ids), 21 + n, size=IMAGE)
    for name, images in arrays.items():
        folder = root / ("raw/images" if name == "real" else f"samples/{name}")
        folder.mkdir(parents=True)
        for i, image in zip(ids, images):
            Image.fromarray(image).save(folder / f"{i}.png")
    (root / "labels/masks").mkdir(parents=True)
    for i in ids:
        labels.save_label_map(root / "labels/masks" / f"{i}.png", np.zeros((IMAGE, IMAGE),
                                                                           np.uint8))
    write_jsonl(root / "raw/captions.jsonl",
                [{"id": i, "captions": [f"caption of {i}", f"other {i} text"]}
                 for i in sorted(ids)])
    (root / "samples/ids.json").write_text(json.dumps(ids))
    return arrays


def test_every_mode_gets_text_and_structure_metrics_against_its_id(clip_dir, dino_dir,
                                                                     tmp_path):
    ids = ["b", "c", "a"]
    arrays = _write_eval_inputs(tmp_path, ids, ["mask2face", "text2face"])
    cfg = EvaluateConfig(batch_size=2, clip_score_model=clip_dir, dino_model=dino_dir,
                         kid_subsets=1, kid_subset_size=2, detector_folds=2, detector_steps=1,
                         detector_size=8)
    suite = ModelSuite(cfg, device="cpu")
    by_mode = {mode: {v.name: v for v in evaluate_mode(
        mode, tmp_path / "samples", tmp_path / "raw", tmp_path / "labels", ids, cfg,
        parser=None, suite=suite, seed=0)[0]} for mode in ("mask2face", "text2face")}
    scorer = ClipScorer.load(clip_dir, device="cpu")
    dino_backend = DinoStructure.load(dino_dir, device="cpu")
    for mode, values in by_mode.items():
        assert values["clip_score"].skipped is None and values["dino_structure"].skipped is None
        # mask2face never saw the caption: scored against caption 0 of its id all the same.
        first = scorer.score(arrays[mode], [f"caption of {i}" for i in ids])
        assert values["clip_score"].value == pytest.approx(first.mean(), rel=1e-6)
        other = scorer.score(arrays[mode], [f"other {i} text" for i in ids])
        assert values["clip_score"].value != pytest.approx(other.mean(), rel=1e-6)
        # text2face never saw the mask: its structure is compared with the real photo of its id.
        structure = dino_backend.distances(arrays[mode], arrays["real"])
        assert values["dino_structure"].value == pytest.approx(structure.mean(), rel=1e-6)
    # ImageReward is asked for in mask2face too: skipped only for want of weights.
    assert by_mode["mask2face"]["image_reward"].skipped == (
        "evaluate.imagereward_path is null: no ImageReward weights configured")


def test_configured_model_that_does_not_exist_raises(tmp_path):
    suite = ModelSuite(EvaluateConfig(dino_model=str(tmp_path / "missing")), device="cpu")
    with pytest.raises(OSError):
        suite.evaluate(_images(2, 0), _images(2, 1), None)


@pytest.mark.skipif(importlib.util.find_spec("ImageReward") is not None,
                    reason="ImageReward is installed here")
def test_image_reward_without_package_is_unavailable():
    with pytest.raises(BackendUnavailable, match="ImageReward package import failed"):
        ImageRewardScorer.load("ImageReward-v1.0")


# --- Embedded detector ----------------------------------------------------------------------------


def _separable_sets(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (n, 48, 48, 3), dtype=np.uint8)  # noise
    colours = rng.integers(0, 256, (n, 1, 1, 3), dtype=np.uint8)
    fake = np.broadcast_to(colours, (n, 48, 48, 3)).copy()  # flat colour
    return real, fake


def test_small_detector_separates_noise_from_flat_colour_out_of_fold():
    real, fake = _separable_sets(18)
    make = lambda fold: SmallDetector(size=32, width=8, steps=100, seed=fold,  # noqa: E731
                                      device="cpu")
    real_scores, fake_scores = cross_fit_scores(real, fake, make, folds=3, seed=0)
    assert real_scores.shape == (18,) and fake_scores.shape == (18,)
    assert detection_metrics(real_scores, fake_scores)["auc"] > 0.95
    again = cross_fit_scores(real, fake, make, folds=3, seed=0)
    np.testing.assert_array_equal(again[0], real_scores)


def test_small_detector_metrics_from_config():
    real, fake = _separable_sets(8)
    cfg = EvaluateConfig(detector_folds=2, detector_steps=20, detector_size=16)
    values = small_detector_metrics(real, fake, cfg, seed=0, device="cpu")
    assert [v.name for v in values] == ["detect_auc", "detect_eer", "detect_ap"]
    assert "2-fold" in values[0].backend
    with pytest.raises(ValueError, match="folds"):
        cross_fit_scores(real[:1], fake, lambda f: SmallDetector(), folds=2)
