"""CLIP score (the paper's "Text" column): 100 x cos(CLIP image embedding, text embedding).

The paper and the official script use CLIP ViT-B/16 (`openai/clip-vit-base-patch16`) and
`logit_scale.exp()` (= 100) x cosine, averaged over (image, caption) pairs, without clipping
negative cosines at zero (unlike Hessel et al.'s CLIPScore). Images go through the model's own
CLIP processor (resize + centre crop to 224).

Long captions: CLIP's text encoder has `max_position_embeddings` (77) positions. MM-CelebA-HQ
captions can be longer; the official script's `clip.tokenize` raises on them. Here the tokenizer
truncates to the model's positions with `truncation=True`, which keeps the end-of-text token
that CLIP pools from (slicing token ids, as torchmetrics does, would drop it), and the number
of truncated captions is reported as `clip_truncated_captions`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import AutoProcessor, CLIPModel

from facemogle.evaluation.metrics.common import (
    Images,
    MetricValue,
    PretrainedFeatures,
    batched,
    image_list,
    load_pretrained,
)

CLIP_SCORE_SCALE = 100.0
METRIC_NAMES: tuple[str, ...] = ("clip_score", "clip_truncated_captions")


def _pooled(output: object) -> torch.Tensor:
    # transformers 5 returns a ModelOutput whose pooler_output is the projected embedding;
    # older versions return the tensor itself.
    return output.pooler_output if hasattr(output, "pooler_output") else output


class ClipScorer(PretrainedFeatures):
    """Per-pair CLIP scores of images and captions."""

    def __init__(self, model: CLIPModel, processor: object, backend: str, batch_size: int = 16,
                 device: torch.device | str | None = None):
        super().__init__(model, processor, backend, batch_size, device)
        self.max_tokens = model.config.text_config.max_position_embeddings

    @classmethod
    def load(cls, model_id: str, *, batch_size: int = 16,
             device: torch.device | str | None = None,
             dtype: torch.dtype = torch.float32) -> ClipScorer:
        """Load `CLIPModel` and its processor (tokenizer + image processor) from an id or path."""
        model = load_pretrained(CLIPModel, model_id, dtype=dtype)
        return cls(model, AutoProcessor.from_pretrained(model_id), f"clip:{model_id}",
                   batch_size, device)

    def count_truncated(self, captions: Sequence[str]) -> int:
        """How many captions have more tokens (with start/end tokens) than the model's positions."""
        ids = self.processor.tokenizer(list(captions), truncation=False)["input_ids"]
        return sum(len(x) > self.max_tokens for x in ids)

    @torch.no_grad()
    def _scores(self, images: list[np.ndarray], captions: list[str]) -> torch.Tensor:
        inputs = self.processor(text=captions, images=images, return_tensors="pt", padding=True,
                                truncation=True, max_length=self.max_tokens)
        pixels = inputs["pixel_values"].to(self.device, self.model.dtype)  # (B, 3, S, S)
        image_emb = _pooled(self.model.get_image_features(pixel_values=pixels))  # (B, P)
        text_emb = _pooled(self.model.get_text_features(
            input_ids=inputs["input_ids"].to(self.device),
            attention_mask=inputs["attention_mask"].to(self.device)))  # (B, P)
        cos = torch.nn.functional.cosine_similarity(image_emb.double(), text_emb.double(), dim=-1)
        return CLIP_SCORE_SCALE * cos  # (B,)

    def score(self, images: Images, captions: Sequence[str]) -> np.ndarray:
        """(N,) scores, one per (image, caption) pair."""
        arrays = image_list(images)
        captions = list(captions)
        if len(captions) != len(arrays):
            raise ValueError(f"clip score: {len(arrays)} images but {len(captions)} captions")
        bad = [n for n, c in enumerate(captions) if not isinstance(c, str)]
        if bad:
            raise ValueError(f"clip score: captions must be strings (entries {bad[:10]})")
        out = [self._scores(list(imgs), list(caps)).cpu().numpy()
               for imgs, caps in zip(batched(arrays, self.batch_size),
                                     batched(captions, self.batch_size))]
        return np.concatenate(out)


def clip_score_metrics(scorer: ClipScorer, images: Images, captions: Sequence[str]
                       ) -> list[MetricValue]:
    """Mean CLIP score and the count of captions truncated to fit (`METRIC_NAMES`)."""
    scores = scorer.score(images, captions)
    return [
        MetricValue("clip_score", float(scores.mean()), scorer.backend),
        MetricValue("clip_truncated_captions", float(scorer.count_truncated(captions)),
                    f"{scorer.backend} (max {scorer.max_tokens} tokens)"),
    ]
