"""FID and KID x1000: Inception-V3 pool3 features (paper section 4.3).

The network is the standard FID Inception-V3 (the TensorFlow 2015-12-05 weights as ported by
torch-fidelity), taken from torchmetrics, which needs torch-fidelity and hence torchvision.
Neither can be imported on a CPU-only machine without a CPU torchvision build; there, and when
the weights are not on disk, `InceptionFeatures.load` raises `BackendUnavailable` with the
reason, and the metrics are reported skipped. Weights are never downloaded here.

Images get the clean-fid resize: PIL bicubic to 299 x 299 (with antialiasing), quantised back to
uint8 because the extractor takes uint8; the extractor's own bilinear resize is then the
identity. The distances are `distances.frechet_distance` and `distances.kid`, computed once
from the features with a seeded subset draw (torchmetrics' KID draws from the global RNG).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facemogle.evaluation.metrics.common import (
    INCEPTION_NAMES,
    BackendUnavailable,
    Images,
    MetricValue,
    batched,
    image_list,
    resolve_device,
)
from facemogle.evaluation.metrics.distances import feature_space_metrics

INCEPTION_SIZE = 299
# torch-fidelity's file name; torchmetrics would fetch it into torch hub's checkpoint directory.
WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
METRIC_NAMES: tuple[str, ...] = (*INCEPTION_NAMES, f"{INCEPTION_NAMES[1]}_std")


def default_weights_path() -> Path:
    """Where torch-fidelity/torchmetrics cache the Inception weights (torch hub checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_NAME


def _missing_packages() -> list[str]:
    reasons = []
    if importlib.util.find_spec("torch_fidelity") is None:
        reasons.append("torch-fidelity is not installed")
    try:
        import torchvision  # noqa: F401
    except Exception as err:  # a broken build raises RuntimeError, not ImportError
        reasons.append(f"torchvision import failed: {type(err).__name__}: {err}")
    return reasons


def clean_resize(image: np.ndarray, size: int = INCEPTION_SIZE) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8 with PIL bicubic (clean-fid's resize)."""
    resized = Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(resized)


class InceptionFeatures:
    """2048-d pool3 features of the FID Inception-V3.

    `extractor` maps uint8 (B, 3, 299, 299) to (B, 2048); `load` builds torchmetrics' one.
    """

    def __init__(self, extractor: torch.nn.Module, backend: str, batch_size: int = 16,
                 device: torch.device | str | None = None):
        self.device = resolve_device(device)
        self.extractor = extractor.to(self.device).eval()
        self.backend = backend
        self.batch_size = batch_size

    @classmethod
    def load(cls, weights_path: str | None = None, *, batch_size: int = 16,
             device: torch.device | str | None = None) -> InceptionFeatures:
        """torchmetrics' FID Inception-V3 with weights from `weights_path` or the torch hub cache.

        Raises `BackendUnavailable` when torch-fidelity/torchvision cannot be imported or the
        cached weights are absent; a `weights_path` that does not exist is a FileNotFoundError.
        """
        reasons = _missing_packages()
        if reasons:
            raise BackendUnavailable("; ".join(reasons))
        if weights_path is not None:
            path = Path(weights_path)
            if not path.is_file():
                raise FileNotFoundError(f"Inception weights not found at {path}")
        else:
            path = default_weights_path()
            if not path.is_file():
                raise BackendUnavailable(f"Inception weights not found at {path} (set "
                                         f"evaluate.inception_path; nothing is downloaded)")
        from torchmetrics.image.fid import FrechetInceptionDistance

        metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(path))
        return cls(metric.inception, f"inception-v3-fid:{path}", batch_size, device)

    @torch.no_grad()
    def features(self, images: Images) -> np.ndarray:
        """Images (uint8, any size) -> (N, 2048) float64 pool3 features."""
        arrays = [clean_resize(a) for a in image_list(images)]
        out = []
        for batch in batched(arrays, self.batch_size):
            x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)  # (B, 3, 299, 299) uint8
            out.append(self.extractor(x.to(self.device)).double().cpu().numpy())  # (B, 2048)
        return np.concatenate(out)


def fid_kid_metrics(backend: InceptionFeatures, generated: Images, reference: Images, *,
                    subsets: int, subset_size: int, seed: int) -> list[MetricValue]:
    """FID, KID x1000 and its std (`METRIC_NAMES`) of generated vs reference images."""
    return feature_space_metrics("inception", backend.features(generated),
                                 backend.features(reference), subsets=subsets,
                                 subset_size=subset_size, seed=seed, backend=backend.backend)
