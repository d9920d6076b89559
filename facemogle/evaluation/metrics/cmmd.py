"""CMMD: MMD between CLIP image embeddings with a Gaussian RBF kernel (paper section 4.3).

CMMD (Jayasumana et al. 2024, "Rethinking FID") embeds both image sets with CLIP ViT-L/14-336
(`openai/clip-vit-large-patch14-336`), L2-normalises the projected image embeddings and reports
1000 x MMD^2 with k(a, b) = exp(-|a - b|^2 / (2 sigma^2)), sigma = 10; the paper's reference code
uses the biased estimator (diagonals included), which is the default here.

Preprocessing is the loaded model's own CLIP image processor: bicubic resize of the short side
to the model's size (336) and a centre crop, then CLIP's mean/std, as the CMMD code does.
The model may be a full `CLIPModel` checkpoint (as on the hub) or a vision-only one.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from transformers import AutoConfig, AutoImageProcessor, CLIPVisionModelWithProjection

from facemogle.evaluation.metrics.common import (
    Images,
    MetricValue,
    PretrainedFeatures,
    batched,
    image_list,
    load_pretrained,
)
from facemogle.evaluation.metrics.distances import rbf_mmd2

CMMD_SIGMA = 10.0
CMMD_SCALE = 1000.0
METRIC_NAMES: tuple[str, ...] = ("cmmd",)
Estimator = Literal["biased", "unbiased"]


def _vision_config(model_id: str) -> object:
    """The vision config of a CLIP checkpoint, with the projection size of the full model.

    A `CLIPConfig`'s nested vision config may not carry `projection_dim`; without it the
    projection would be built at the default size and fail to load.
    """
    config = AutoConfig.from_pretrained(model_id)
    if not hasattr(config, "vision_config"):
        return config
    vision = config.vision_config
    vision.projection_dim = config.projection_dim
    return vision


class ClipImageEmbedder(PretrainedFeatures):
    """L2-normalised CLIP image embeddings (`CLIPVisionModelWithProjection.image_embeds`)."""

    @classmethod
    def load(cls, model_id: str, *, batch_size: int = 16,
             device: torch.device | str | None = None,
             dtype: torch.dtype = torch.float32) -> ClipImageEmbedder:
        """Load the vision tower + projection and the image processor from a hub id or path."""
        model = load_pretrained(CLIPVisionModelWithProjection, model_id,
                                config=_vision_config(model_id), dtype=dtype)
        processor = AutoImageProcessor.from_pretrained(model_id)
        return cls(model, processor, f"clip-vision:{model_id}", batch_size, device)

    @torch.no_grad()
    def embed(self, images: Images) -> np.ndarray:
        """Images (uint8, any size) -> (N, P) float64 unit-norm embeddings."""
        out = []
        for batch in batched(image_list(images), self.batch_size):
            pixels = self.processor(images=list(batch), return_tensors="pt")["pixel_values"]
            pixels = pixels.to(self.device, self.model.dtype)  # (B, 3, S, S)
            emb = self.model(pixel_values=pixels).image_embeds.double()  # (B, P)
            out.append(torch.nn.functional.normalize(emb, dim=-1).cpu().numpy())
        return np.concatenate(out)


def cmmd(generated: np.ndarray, reference: np.ndarray, *, sigma: float = CMMD_SIGMA,
         estimator: Estimator = "biased") -> float:
    """1000 x RBF MMD^2 between embeddings (N, P) and (M, P) (the CMMD value)."""
    return CMMD_SCALE * rbf_mmd2(generated, reference, sigma=sigma,
                                 biased=estimator == "biased")


def cmmd_metrics(embedder: ClipImageEmbedder, generated: Images, reference: Images, *,
                 estimator: Estimator = "biased") -> list[MetricValue]:
    """CMMD of generated vs reference images (`METRIC_NAMES`)."""
    value = cmmd(embedder.embed(generated), embedder.embed(reference), estimator=estimator)
    return [MetricValue("cmmd", value, f"{embedder.backend} ({estimator} MMD, sigma "
                                       f"{CMMD_SIGMA:g})")]
