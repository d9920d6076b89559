"""The paper's model-backed metrics as one object, for the `evaluate` stage.

`ModelSuite(cfg)` loads each configured model once (on first use) and evaluates one mode's
paired images at a time. A metric whose model is not configured or not available is reported
skipped with the reason. A model that *is* configured but fails to load (wrong path, incomplete
checkpoint) raises: a typo must not turn into a quietly skipped column.

Typical stage use, per mode (ids paired with `pair_by_id` first):

    suite = ModelSuite(params.evaluate)
    values = suite.evaluate(generated, reference, captions, seed=params.seed)
    values += small_detector_metrics(reference, generated, params.evaluate, seed=params.seed)
    write_json(path, metrics_json(values))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from facemogle.core.config import EvaluateConfig
from facemogle.evaluation.metrics import (
    clip_score,
    cmmd,
    dino,
    imagereward,
    inception,
    npr,
    wavelet_clip,
)
from facemogle.evaluation.metrics.common import (
    BackendUnavailable,
    Images,
    MetricValue,
    skip_all,
)
from facemogle.evaluation.metrics.detection import (
    SmallDetector,
    cross_fit_scores,
    detection_metric_values,
)

# Backend -> (params key of its weights, what the weights are). Inception alone also looks in
# torch hub's cache, where torch-fidelity keeps its weights, when its key is null.
WEIGHTS: dict[str, tuple[str, str]] = {
    "inception": ("inception_path", "Inception-V3 FID"),
    "cmmd": ("cmmd_model", "CLIP ViT-L/14-336"),
    "clip_score": ("clip_score_model", "CLIP ViT-B/16"),
    "dino": ("dino_model", "DINO ViT-B/8"),
    "image_reward": ("imagereward_path", "ImageReward"),
    "npr": ("npr_path", "NPR detector"),
    "wavelet_clip": ("wavelet_clip_path", "Wavelet-CLIP detector"),
}
_MODEL_LOADERS = {"cmmd": cmmd.ClipImageEmbedder.load, "clip_score": clip_score.ClipScorer.load,
                  "dino": dino.DinoStructure.load, "npr": npr.NPRDetector.load}


class ModelSuite:
    """FID/KID, CMMD, CLIP score, DINO structure distance, ImageReward and the NPR and
    Wavelet-CLIP detectors (Table 6) for paired images."""

    def __init__(self, cfg: EvaluateConfig, *, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32):
        self.cfg = cfg
        self.device = device
        self.dtype = dtype
        self._backends: dict[str, object] = {}

    def _load(self, name: str) -> object:
        key, what = WEIGHTS[name]
        path = getattr(self.cfg, key)
        if name == "inception":
            return inception.InceptionFeatures.load(path, batch_size=self.cfg.batch_size,
                                                    device=self.device)
        if path is None:
            raise BackendUnavailable(f"evaluate.{key} is null: no {what} weights configured")
        if name == "image_reward":
            return imagereward.ImageRewardScorer.load(path, device=self.device)
        if name == "wavelet_clip":
            if self.cfg.wavelet_clip_backbone is None:  # half configured: an error, not a skip
                raise ValueError("evaluate.wavelet_clip_path is set but "
                                 "evaluate.wavelet_clip_backbone (local CLIP ViT-L/14 folder) "
                                 "is null")
            return wavelet_clip.WaveletClipDetector.load(
                path, self.cfg.wavelet_clip_backbone, batch_size=self.cfg.batch_size,
                device=self.device, dtype=self.dtype)
        return _MODEL_LOADERS[name](path, batch_size=self.cfg.batch_size, device=self.device,
                                    dtype=self.dtype)

    def backend(self, name: str) -> object:
        """The loaded backend `name`, or the `BackendUnavailable` saying why there is none."""
        if name not in self._backends:
            try:
                self._backends[name] = self._load(name)
            except BackendUnavailable as err:
                self._backends[name] = err
        return self._backends[name]

    def _run(self, name: str, names: Sequence[str], compute: Callable[[object], list],
             skip_reason: str | None = None) -> list[MetricValue]:
        if skip_reason is not None:
            return skip_all(names, name, skip_reason)
        backend = self.backend(name)
        if isinstance(backend, BackendUnavailable):
            return skip_all(names, name, str(backend))
        return compute(backend)

    def evaluate(self, generated: Images, reference: Images, captions: Sequence[str] | None,
                 *, structure: bool = True, seed: int = 0) -> list[MetricValue]:
        """All model metrics of generated vs reference images, paired by position.

        captions: the caption of each image's id (the `evaluate` stage passes it in every
        mode, mask2face included: the text level a face reaches without the text), or None
        when there is none (text metrics skipped). structure=False skips the DINO distance,
        which needs the reference photo of each generated image's id (FID, KID and CMMD only
        compare the two sets).
        """
        cfg = self.cfg
        no_text = None if captions is not None else "no caption given"
        no_mask = None if structure else "the reference images are not paired by id"
        return [
            *self._run("inception", inception.METRIC_NAMES, lambda b: inception.fid_kid_metrics(
                b, generated, reference, subsets=cfg.kid_subsets,
                subset_size=cfg.kid_subset_size, seed=seed)),
            *self._run("cmmd", cmmd.METRIC_NAMES, lambda b: cmmd.cmmd_metrics(
                b, generated, reference, estimator=cfg.cmmd_estimator)),
            *self._run("clip_score", clip_score.METRIC_NAMES,
                       lambda b: clip_score.clip_score_metrics(b, generated, captions), no_text),
            *self._run("dino", dino.metric_names(cfg.dino_protocol),
                       lambda b: dino.dino_metrics(b, generated, reference,
                                                   protocol=cfg.dino_protocol), no_mask),
            *self._run("image_reward", imagereward.METRIC_NAMES,
                       lambda b: imagereward.image_reward_metrics(b, generated, captions),
                       no_text),
            # Table 6 detectors: real = reference, fake = generated
            *self._run("npr", npr.METRIC_NAMES,
                       lambda b: npr.npr_metrics(b, generated, reference)),
            *self._run("wavelet_clip", wavelet_clip.METRIC_NAMES,
                       lambda b: wavelet_clip.wavelet_clip_metrics(b, generated, reference)),
        ]


def small_detector_metrics(real: Images, generated: Images, cfg: EvaluateConfig, *,
                           seed: int = 0, device: torch.device | str | None = None
                           ) -> list[MetricValue]:
    """Detection AUC / EER / AP from the embedded `SmallDetector`, cross-fitted over folds."""
    def make(fold: int) -> SmallDetector:
        return SmallDetector(size=cfg.detector_size, steps=cfg.detector_steps, seed=seed + fold,
                             device=device)

    real_scores, fake_scores = cross_fit_scores(real, generated, make,
                                                folds=cfg.detector_folds, seed=seed)
    backend = (f"small-cnn ({cfg.detector_folds}-fold cross-fit, {cfg.detector_steps} steps, "
               f"{cfg.detector_size} px)")
    return detection_metric_values(real_scores, fake_scores, backend)
