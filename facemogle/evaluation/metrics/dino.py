"""DINO structure distance (the paper's "Mask" column), from Splice (Tumanyan et al. 2022).

For each image, the keys of the last ViT layer's self-attention (DINO ViT-B/8,
`facebook/dino-vitb8`) give one vector per token; their cosine self-similarity matrix over all
tokens, CLS included, describes the image's structure. The distance of a generated face is the
MSE between its matrix and that of the reference photo with the same id.

Two protocols (docs/design.md, "Metrics" and bug B6):

- corrected (`dino_structure`, always): every image goes through the model's own image
  processor (DINO: resize to 224, ImageNet mean/std) and the metric is the mean of the
  per-image MSEs, independent of batch size.
- paper (`dino_structure_paper`, on request): the official release's numbers. Its script skips
  the preprocessing it defines: raw [0, 1] pixels, no ImageNet normalisation, no resize of the
  512 px faces, so 64 x 64 patches + CLS = 4097 tokens (the position embeddings are interpolated
  to that grid, as DINO's own model does). It sums the per-image MSEs within each batch of 64
  and averages those sums over the batches: sum / ceil(N / 64), about 64 x the per-image mean,
  skewed by the last partial batch. Here images of another size are resized (PIL bicubic) to
  512 px first, so the token grid and the scale are the paper's.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, ViTModel

from facemogle.evaluation.metrics.common import (
    Images,
    MetricValue,
    PretrainedFeatures,
    batched,
    image_list,
    load_pretrained,
)

METRIC_NAMES: tuple[str, ...] = ("dino_structure",)
PAPER_METRIC_NAMES: tuple[str, ...] = ("dino_structure_paper",)
PROTOCOLS: tuple[str, ...] = ("corrected", "paper")
PAPER_RESOLUTION = 512  # px: the official script's generated and real faces, never resized
PAPER_SUM_BATCH = 64  # images whose MSEs the official script sums before averaging


def metric_names(protocol: str = "corrected") -> tuple[str, ...]:
    """The metric names `dino_metrics` writes for `evaluate.dino_protocol` ("corrected" or
    "both": the corrected distance and the paper-protocol one)."""
    return METRIC_NAMES + (PAPER_METRIC_NAMES if protocol == "both" else ())


def last_key_projection(model: ViTModel) -> torch.nn.Module:
    """The key projection of the last attention layer (transformers 5: `layers[-1].attention
    .k_proj`; 4.x: `encoder.layer[-1].attention.attention.key`)."""
    if hasattr(model, "layers"):
        return model.layers[-1].attention.k_proj
    return model.encoder.layer[-1].attention.attention.key


def key_self_similarity(keys: torch.Tensor) -> torch.Tensor:
    """(B, T, D) token keys -> (B, T, T) cosine similarity between every pair of tokens."""
    unit = torch.nn.functional.normalize(keys, dim=-1)  # (B, T, D)
    return unit @ unit.transpose(1, 2)  # (B, T, T)


def paper_pixels(images: list[np.ndarray], resolution: int = PAPER_RESOLUTION) -> torch.Tensor:
    """The official script's input: (B, 3, R, R) raw [0, 1] pixels, no normalisation; an image
    of another size is resized to R x R (PIL bicubic), one of R x R is left as it is."""
    out = []
    for image in images:
        if image.shape[:2] != (resolution, resolution):
            image = np.asarray(Image.fromarray(image).resize((resolution, resolution),
                                                             Image.BICUBIC))
        out.append(image)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255.0  # (B, 3, R, R)


def batch_sum_mean(per_image: np.ndarray, batch: int = PAPER_SUM_BATCH) -> float:
    """The official aggregation: the values summed within consecutive batches of `batch`, those
    sums averaged over the batches, i.e. sum / ceil(N / batch)."""
    return float(per_image.sum() / math.ceil(len(per_image) / batch))


class DinoStructure(PretrainedFeatures):
    """Per-image DINO key self-similarity distances, under either protocol."""

    def __init__(self, model: ViTModel, processor: object, backend: str, batch_size: int = 16,
                 device: torch.device | str | None = None, *,
                 paper_resolution: int = PAPER_RESOLUTION):
        super().__init__(model, processor, backend, batch_size, device)
        self.paper_resolution = paper_resolution

    @classmethod
    def load(cls, model_id: str, *, batch_size: int = 16,
             device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
             paper_resolution: int = PAPER_RESOLUTION) -> DinoStructure:
        """Load `ViTModel` (no pooler: unused) and its image processor from a hub id or path."""
        model = load_pretrained(ViTModel, model_id, add_pooling_layer=False, dtype=dtype)
        return cls(model, AutoImageProcessor.from_pretrained(model_id), f"dino:{model_id}",
                   batch_size, device, paper_resolution=paper_resolution)

    def _pixels(self, images: list[np.ndarray], protocol: str) -> torch.Tensor:
        if protocol == "paper":
            return paper_pixels(images, self.paper_resolution)
        if protocol != "corrected":
            raise ValueError(f"dino structure: protocol must be one of {PROTOCOLS}, "
                             f"got {protocol!r}")
        return self.processor(images=images, return_tensors="pt")["pixel_values"]

    @torch.no_grad()
    def self_similarity(self, images: list[np.ndarray], *, protocol: str = "corrected"
                        ) -> torch.Tensor:
        """A batch of images -> (B, T, T) float64 key self-similarity, T = patches + 1 (CLS)."""
        pixels = self._pixels(images, protocol)  # (B, 3, S, S)
        captured: list[torch.Tensor] = []
        hook = last_key_projection(self.model).register_forward_hook(
            lambda module, args, output: captured.append(output))  # noqa: ARG005 (torch forward hook signature)
        try:
            self.model(pixel_values=pixels.to(self.device, self.model.dtype),
                       interpolate_pos_encoding=protocol == "paper")
        finally:
            hook.remove()
        return key_self_similarity(captured[0].double())  # keys (B, T, D) -> (B, T, T)

    def distances(self, generated: Images, reference: Images, *, protocol: str = "corrected"
                  ) -> np.ndarray:
        """(N,) MSE between the self-similarity matrices of each generated/reference pair."""
        gen, ref = image_list(generated, "generated"), image_list(reference, "reference")
        if len(gen) != len(ref):
            raise ValueError(f"dino structure: {len(gen)} generated vs {len(ref)} reference "
                             f"images; pair them by id first")
        out = []
        for g, r in zip(batched(gen, self.batch_size), batched(ref, self.batch_size)):
            diff = (self.self_similarity(list(g), protocol=protocol)
                    - self.self_similarity(list(r), protocol=protocol))  # (B, T, T)
            out.append(diff.pow_(2).mean(dim=(1, 2)).cpu().numpy())  # (B,)
        return np.concatenate(out)


def dino_metrics(backend: DinoStructure, generated: Images, reference: Images, *,
                 protocol: str = "corrected") -> list[MetricValue]:
    """`metric_names(protocol)`: the mean over images of the corrected per-image distance and,
    for protocol "both", the official release's batch-summed number at its resolution."""
    values = [MetricValue("dino_structure", float(backend.distances(generated, reference).mean()),
                          backend.backend)]
    if protocol == "both":
        per_image = backend.distances(generated, reference, protocol="paper")
        values.append(MetricValue(
            "dino_structure_paper", batch_sum_mean(per_image), f"{backend.backend} (official "
            f"protocol: {backend.paper_resolution} px, no normalisation, MSEs summed per "
            f"batch of {PAPER_SUM_BATCH})"))
    elif protocol != "corrected":
        raise ValueError(f"evaluate.dino_protocol must be 'corrected' or 'both', got {protocol!r}")
    return values
