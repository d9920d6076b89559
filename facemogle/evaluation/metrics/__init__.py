"""The metric suite of paper section 4.3 plus the metrics the embedded setting measures exactly.

One small module per family, each a pure function over images or features plus, where a model
is needed, a backend that loads it (docs/design.md, "Metrics"):

- `distances`: Frechet distance, KID, RBF MMD over features; `feature_space_metrics`.
- `inception`: FID / KID x1000 (Inception-V3 pool3 through torchmetrics/torch-fidelity).
- `cmmd`: CMMD on CLIP ViT-L/14-336 image embeddings.
- `clip_score`: 100 x cos(CLIP ViT-B/16 image, caption).
- `dino`: DINO ViT-B/8 key self-similarity structure distance, per image (and, on request,
  under the official release's batch-summed protocol).
- `imagereward`: ImageReward v1.0 (optional package and weights).
- `detection`: deepfake-detection AUC / EER / AP; `SmallDetector` for offline runs.
- `npr`, `wavelet_clip`: the paper's pretrained detectors (NPR; CLIP + wavelet head, with the
  DWT of `wavelets`); `checkpoints`: safe, strict loading of their weight files.
- `segmentation`: mask mIoU / pixel accuracy of parsed label maps.
- `attributes`: caption attributes read back from the generated pixels.
- `report`: paper-style Markdown tables; `suite`: the model metrics for a stage.
"""

from facemogle.evaluation.metrics.common import (
    INCEPTION_NAMES,
    BackendUnavailable,
    MetricValue,
    feature_space_names,
    metrics_json,
    pair_by_id,
)
from facemogle.evaluation.metrics.distances import (
    feature_space_metrics,
    frechet_distance,
    kid,
    rbf_mmd2,
)

__all__ = [
    "INCEPTION_NAMES",
    "BackendUnavailable",
    "MetricValue",
    "feature_space_metrics",
    "feature_space_names",
    "frechet_distance",
    "kid",
    "metrics_json",
    "pair_by_id",
    "rbf_mmd2",
]
