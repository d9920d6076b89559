"""NPR deepfake detector (Tan et al., CVPR 2024), one of the paper's Table 6 detectors.

"Rethinking the Up-Sampling Operations in CNN-based Generative Network for Generalizable
Deepfake Detection": up-sampling layers of generators tie each pixel to its neighbours in
2 x 2 cells. NPR (neighbouring pixel relationships) is the image minus its nearest-neighbour
down- and up-sampled copy (`npr_residual`); the classifier is the start of a ResNet-50 (3 x 3
stride-2 stem, max-pool, bottleneck stages layer1 and layer2, 512 channels) with a global
average pool and one logit, fed 2/3 x NPR of the ImageNet-normalised image.

The architecture is implemented here; the weights are the authors' (their `NPR.pth`, a plain
state dict) given by `evaluate.npr_path`. The authors test same-sized images at their own
resolution (no resize, no crop), as `NPRDetector` does; images of different sizes are batched
by size. The output is sigmoid(logit), the probability that an image is generated.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facemogle.evaluation.metrics.checkpoints import load_strict, read_state_dict
from facemogle.evaluation.metrics.common import (
    Images,
    MetricValue,
    batched,
    image_list,
    resolve_device,
)
from facemogle.evaluation.metrics.detection import (
    detection_metric_values,
    metric_names,
    neighbor_residual,
)

METRIC_NAMES: tuple[str, ...] = metric_names("npr")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NPR_SCALE = 2.0 / 3.0  # the authors' factor on the residual before the stem
PAPER_WIDTH, PAPER_BLOCKS = 64, (3, 4)  # ResNet-50's stem width and layer1/layer2 depths

# x - nearest_up(nearest_down(x)) by a factor 2: (B, C, H, W) -> (B, C, H, W).
npr_residual = neighbor_residual


class _Bottleneck(nn.Module):
    """ResNet-50 bottleneck (1x1, 3x3 with the stride, 1x1 to 4 x planes), torchvision's names."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride,
                                                      bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, inplanes, H, W) -> (B, 4 x planes, H / stride, W / stride)."""
        y = self.relu(self.bn1(self.conv1(x)))  # (B, planes, H, W)
        y = self.relu(self.bn2(self.conv2(y)))  # (B, planes, H / s, W / s)
        y = self.bn3(self.conv3(y))  # (B, 4 planes, H / s, W / s)
        skip = x if self.downsample is None else self.downsample(x)
        return self.relu(y + skip)


def _stage(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [_Bottleneck(inplanes, planes, stride)]
    layers += [_Bottleneck(planes * _Bottleneck.expansion, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class NPRNet(nn.Module):
    """NPR classifier; parameter names match the authors' state dict (`conv1`, `layer1.0.conv1`,
    `fc1`, ...). width / blocks other than the paper's (64, (3, 4)) only make small test nets."""

    def __init__(self, width: int = PAPER_WIDTH, blocks: tuple[int, int] = PAPER_BLOCKS):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = _stage(width, width, blocks[0], 1)
        self.layer2 = _stage(width * 4, width * 2, blocks[1], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(width * 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) ImageNet-normalised images -> (B,) logits (higher = generated)."""
        y = self.relu(self.bn1(self.conv1(NPR_SCALE * npr_residual(x))))  # (B, w, H/2, W/2)
        y = self.layer2(self.layer1(self.maxpool(y)))  # (B, 8w, H/8, W/8)
        return self.fc1(self.avgpool(y).flatten(1)).squeeze(1)  # (B,)


def _normalised(batch: list[np.ndarray], device: torch.device, dtype: torch.dtype
                ) -> torch.Tensor:
    """Same-sized uint8 (H, W, 3) images -> (B, 3, H, W) ImageNet-normalised."""
    x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float() / 255.0  # (B, 3, H, W)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).to(device, dtype)


class NPRDetector:
    """The NPR network on one device; `score` gives each image's probability of being fake."""

    def __init__(self, model: NPRNet, backend: str, *, batch_size: int = 16,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        self.device = resolve_device(device)
        self.dtype = dtype
        self.model = model.to(self.device, dtype).eval()
        self.backend = backend
        self.batch_size = batch_size

    @classmethod
    def load(cls, path: str | Path, *, batch_size: int = 16,
             device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
             width: int = PAPER_WIDTH, blocks: tuple[int, int] = PAPER_BLOCKS) -> NPRDetector:
        """The authors' weights (`.pth` state dict or `.safetensors`) in the NPR architecture;
        a file of another architecture is a `WeightsMismatch` naming it."""
        model = NPRNet(width, blocks)
        load_strict(model, read_state_dict(path), path, "NPR (ResNet-50 stem + layer1-2)")
        return cls(model, f"npr:{path}", batch_size=batch_size, device=device, dtype=dtype)

    @torch.no_grad()
    def score(self, images: Images) -> np.ndarray:
        """Images (uint8, any sizes) -> (N,) float64 probabilities of being generated."""
        arrays = image_list(images)
        by_size: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, array in enumerate(arrays):
            by_size[array.shape].append(i)
        out = np.zeros(len(arrays))
        for indices in by_size.values():
            for chunk in batched(indices, self.batch_size):
                x = _normalised([arrays[i] for i in chunk], self.device, self.dtype)
                out[list(chunk)] = torch.sigmoid(self.model(x).double()).cpu().numpy()  # (B,)
        return out


def npr_metrics(detector: NPRDetector, generated: Images, reference: Images
                ) -> list[MetricValue]:
    """NPR AUC / EER / AP (`METRIC_NAMES`) with the generated images as the positive class."""
    return detection_metric_values(detector.score(reference), detector.score(generated),
                                   detector.backend, prefix="npr")
