"""ImageReward v1.0 (the paper's "IR" column): a human-preference score of (prompt, image).

Optional: needs the `image-reward` package (module `ImageReward`, which imports torchvision)
and its `ImageReward.pt` checkpoint. No wheel ships the weights;
`evaluate.imagereward_path` names the checkpoint file (or the package's model name,
which the package fetches from the hub). The package also builds its BLIP text side from hub
files, so offline use needs those in the Hugging Face cache. Without package or weights the
metric is skipped with the reason.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from facemogle.evaluation.metrics.common import (
    BackendUnavailable,
    Images,
    MetricValue,
    image_list,
    resolve_device,
)

METRIC_NAMES: tuple[str, ...] = ("image_reward",)


class ImageRewardScorer:
    """Per-pair ImageReward scores."""

    def __init__(self, model: object, backend: str):
        self.model = model
        self.backend = backend

    @classmethod
    def load(cls, path: str, *, device: torch.device | str | None = None) -> ImageRewardScorer:
        """`ImageReward.load(path)`; `BackendUnavailable` when the package cannot be imported."""
        try:
            reward = importlib.import_module("ImageReward")
        except Exception as err:  # ImportError, or a broken torchvision's RuntimeError
            raise BackendUnavailable(f"ImageReward package import failed: "
                                     f"{type(err).__name__}: {err}") from None
        model = reward.load(path, device=str(resolve_device(device)))
        return cls(model, f"image-reward:{path}")

    @torch.no_grad()
    def score(self, images: Images, prompts: Sequence[str]) -> np.ndarray:
        """(N,) scores, one per (image, prompt) pair."""
        arrays = image_list(images)
        if len(prompts) != len(arrays):
            raise ValueError(f"image reward: {len(arrays)} images but {len(prompts)} prompts")
        return np.array([float(self.model.score(p, [Image.fromarray(a)]))
                         for a, p in zip(arrays, prompts)])


def image_reward_metrics(scorer: ImageRewardScorer, images: Images, prompts: Sequence[str]
                         ) -> list[MetricValue]:
    """Mean ImageReward score (`METRIC_NAMES`)."""
    return [MetricValue("image_reward", float(scorer.score(images, prompts).mean()),
                        scorer.backend)]
