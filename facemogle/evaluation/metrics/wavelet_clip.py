"""Wavelet-CLIP deepfake detector (Baru et al. 2024), one of the paper's Table 6 detectors.

"Wavelet-Driven Generalizable Framework for Deepfake Face Forgery Detection": a frozen CLIP
ViT-L/14 image encoder (its pooled, layer-normed CLS feature, 1024 values) and a wavelet head.
As in the authors' released detector, the head takes a 3-level 1-D discrete wavelet transform
(Daubechies db6, zero padding) of the feature vector, maps the coarsest low-frequency band
through a linear layer (137 -> 137 for 1024 features), keeps the three high-frequency bands,
inverts the transform back to 1024 values and classifies them with a linear layer to two
logits (real, fake); the output is softmax's "fake" probability. Images are resized to the
encoder's size (224, bicubic) and normalised with mean = std = 0.5, the authors' settings.

The architecture is implemented here; the weights are the authors' (`clip_wavelet_best.pth`,
given by `evaluate.wavelet_clip_path`). The encoder is a transformers `CLIPVisionModel` from a
local folder (`evaluate.wavelet_clip_backbone`, e.g. a copy of openai/clip-vit-large-patch14);
the `backbone.*` weights of the checkpoint, when it has them, replace the folder's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import CLIPVisionModel

from facemogle.evaluation.metrics.checkpoints import (
    WeightsMismatch,
    load_strict,
    read_state_dict,
)
from facemogle.evaluation.metrics.common import (
    Images,
    MetricValue,
    batched,
    image_list,
    load_pretrained,
    resolve_device,
)
from facemogle.evaluation.metrics.detection import detection_metric_values, metric_names
from facemogle.evaluation.metrics.wavelets import DB6, WaveletTransform1d

METRIC_NAMES: tuple[str, ...] = metric_names("wavelet_clip")
LEVELS = 3
PIXEL_MEAN = PIXEL_STD = 0.5  # the authors' normalisation (not CLIP's own)
_BACKBONE, _FILTER_BUFFERS = "backbone.", ("dwt.h0", "dwt.h1", "idwt.g0", "idwt.g1")


class WaveletHead(nn.Module):
    """(B, D) CLIP features -> (B, 2) logits: DWT, linear map of the coarse band, inverse DWT,
    linear classifier. Parameter names match the authors' checkpoint (`slp`, `head`)."""

    def __init__(self, features: int, levels: int = LEVELS):
        super().__init__()
        self.dwt = WaveletTransform1d(DB6, levels)
        if features % 2:
            raise ValueError(f"Wavelet-CLIP head: the inverse DWT of {features} (odd) features "
                             f"has {features + 1} values; need an even feature width")
        coarse = self.dwt.lengths(features)[-1]  # 137 for 1024 features
        self.slp = nn.Linear(coarse, coarse)
        self.head = nn.Linear(features, 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, 2) logits (real, fake)."""
        low, highs = self.dwt(features[:, None, :])  # (B, 1, n_J), [(B, 1, n_j)] j = 1..J
        x = self.dwt.inverse(self.slp(low), highs)[:, 0, :]  # (B, D)
        return self.head(x)  # (B, 2)


def _check_filters(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """The checkpoint's wavelet filter buffers, when present, must be db6's (either order)."""
    expected = {"0": torch.tensor(DB6, dtype=torch.float64),
                "1": WaveletTransform1d.highpass(torch.tensor(DB6, dtype=torch.float64))}
    for key in _FILTER_BUFFERS:
        if key in state:
            got, want = state[key].double().flatten(), expected[key[-1]]
            if got.shape != want.shape or not (torch.allclose(got, want, atol=1e-5)
                                               or torch.allclose(got.flip(0), want, atol=1e-5)):
                raise WeightsMismatch(f"{path}: wavelet filter '{key}' ({got.numel()} taps) is "
                                      f"not db6: the head was trained with another wavelet")


def load_wavelet_clip_weights(backbone: CLIPVisionModel, head: WaveletHead,
                              path: str | Path) -> None:
    """Load the authors' detector checkpoint: `slp.*` and `head.*` into the head, `backbone.*`
    (when present) into the CLIP vision transformer. Any other key is a `WeightsMismatch`."""
    state = read_state_dict(path)
    _check_filters(state, path)
    encoder = {k[len(_BACKBONE):]: v for k, v in state.items() if k.startswith(_BACKBONE)}
    encoder.pop("embeddings.position_ids", None)  # a buffer older transformers saved
    rest = {k: v for k, v in state.items()
            if not k.startswith(_BACKBONE) and k not in _FILTER_BUFFERS}
    load_strict(head, rest, path, f"Wavelet-CLIP head ({head.head.in_features} features)")
    if encoder:  # transformers < 5 nests the vision transformer as `vision_model`
        target = getattr(backbone, "vision_model", backbone)
        load_strict(target, encoder, path, "Wavelet-CLIP backbone (CLIP vision)")


class WaveletClipDetector:
    """CLIP vision encoder + wavelet head on one device; `score` gives P(fake) per image."""

    def __init__(self, backbone: CLIPVisionModel, head: WaveletHead, backend: str, *,
                 batch_size: int = 16, device: torch.device | str | None = None):
        self.device = resolve_device(device)
        self.backbone = backbone.to(self.device).eval()
        self.head = head.to(self.device).eval()
        self.size = int(backbone.config.image_size)
        self.backend = backend
        self.batch_size = batch_size

    @classmethod
    def load(cls, path: str | Path, backbone_dir: str | Path, *, batch_size: int = 16,
             device: torch.device | str | None = None,
             dtype: torch.dtype = torch.float32) -> WaveletClipDetector:
        """The encoder from the local folder `backbone_dir`, then the authors' checkpoint."""
        if not Path(backbone_dir).is_dir():
            raise FileNotFoundError(f"{backbone_dir}: no such folder (Wavelet-CLIP's CLIP "
                                    f"ViT-L/14 encoder is read from a local folder)")
        backbone = load_pretrained(CLIPVisionModel, str(backbone_dir), dtype=dtype,
                                   local_files_only=True)
        head = WaveletHead(int(backbone.config.hidden_size))
        load_wavelet_clip_weights(backbone, head, path)
        return cls(backbone, head, f"wavelet-clip:{path} (encoder {backbone_dir})",
                   batch_size=batch_size, device=device)

    def _pixels(self, batch: list[np.ndarray]) -> torch.Tensor:
        """uint8 (H, W, 3) images -> (B, 3, S, S), bicubic to the encoder's size, mean/std 0.5."""
        out = []
        for array in batch:
            x = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, H, W)
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bicubic",
                                          align_corners=False)  # (1, 3, S, S)
            out.append((x.clamp(0.0, 1.0) - PIXEL_MEAN) / PIXEL_STD)
        return torch.cat(out).to(self.device, self.backbone.dtype)  # (B, 3, S, S)

    @torch.no_grad()
    def score(self, images: Images) -> np.ndarray:
        """Images (uint8, any size) -> (N,) float64 probabilities of being generated."""
        out = []
        for batch in batched(image_list(images), self.batch_size):
            pooled = self.backbone(pixel_values=self._pixels(list(batch))).pooler_output  # (B, D)
            logits = self.head(pooled.float())  # (B, 2)
            out.append(torch.softmax(logits.double(), dim=-1)[:, 1].cpu().numpy())  # (B,)
        return np.concatenate(out)


def wavelet_clip_metrics(detector: WaveletClipDetector, generated: Images, reference: Images
                         ) -> list[MetricValue]:
    """Wavelet-CLIP AUC / EER / AP (`METRIC_NAMES`), generated images as the positive class."""
    return detection_metric_values(detector.score(reference), detector.score(generated),
                                   detector.backend, prefix="wavelet_clip")
