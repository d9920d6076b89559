"""DINO structure distance (the paper's "Mask" column), from Splice (Tumanyan et al. 2022).

For each image, the keys of the last ViT layer's self-attention (DINO ViT-B/8,
`facebook/dino-vitb8`) give one vector per token; their cosine self-similarity matrix over all
tokens, CLS included, describes the image's structure. The distance of a generated face is the
MSE between its matrix and that of the reference photo with the same id; the metric is the mean
of these per-image MSEs.

Two faults of the official script are avoided (docs/design.md, bug B6): it summed the
per-image MSEs within each batch of 64 before averaging over batches, and it skipped the
model's preprocessing. Here every image goes through the model's own image processor (DINO:
resize to 224, ImageNet mean/std) and the mean is over images, independent of batch size.
"""

from __future__ import annotations

import numpy as np
import torch
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


class DinoStructure(PretrainedFeatures):
    """Per-image DINO key self-similarity distances."""

    @classmethod
    def load(cls, model_id: str, *, batch_size: int = 16,
             device: torch.device | str | None = None,
             dtype: torch.dtype = torch.float32) -> DinoStructure:
        """Load `ViTModel` (no pooler: unused) and its image processor from a hub id or path."""
        model = load_pretrained(ViTModel, model_id, add_pooling_layer=False, dtype=dtype)
        return cls(model, AutoImageProcessor.from_pretrained(model_id), f"dino:{model_id}",
                   batch_size, device)

    @torch.no_grad()
    def self_similarity(self, images: list[np.ndarray]) -> torch.Tensor:
        """A batch of images -> (B, T, T) float64 key self-similarity, T = patches + 1 (CLS)."""
        captured: list[torch.Tensor] = []
        hook = last_key_projection(self.model).register_forward_hook(
            lambda module, args, output: captured.append(output))
        try:
            pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
            self.model(pixel_values=pixels.to(self.device, self.model.dtype))  # (B, 3, S, S)
        finally:
            hook.remove()
        return key_self_similarity(captured[0].double())  # keys (B, T, D) -> (B, T, T)

    def distances(self, generated: Images, reference: Images) -> np.ndarray:
        """(N,) MSE between the self-similarity matrices of each generated/reference pair."""
        gen, ref = image_list(generated, "generated"), image_list(reference, "reference")
        if len(gen) != len(ref):
            raise ValueError(f"dino structure: {len(gen)} generated vs {len(ref)} reference "
                             f"images; pair them by id first")
        out = []
        for g, r in zip(batched(gen, self.batch_size), batched(ref, self.batch_size)):
            diff = self.self_similarity(list(g)) - self.self_similarity(list(r))  # (B, T, T)
            out.append(diff.pow(2).mean(dim=(1, 2)).cpu().numpy())  # (B,)
        return np.concatenate(out)


def dino_metrics(backend: DinoStructure, generated: Images, reference: Images
                 ) -> list[MetricValue]:
    """Mean over images of the per-image DINO structure distance (`METRIC_NAMES`)."""
    return [MetricValue("dino_structure", float(backend.distances(generated, reference).mean()),
                        backend.backend)]
