"""Shared pieces of the metric suite: metric values, skipping, id pairing, image batches.

Every metric is a `MetricValue`. A metric whose model or package is not available is *skipped*
with the reason (`value is None`), never reported as a number (docs/design.md, "Metrics"). The
metrics JSON a stage writes is `metrics_json(values)`: `{name: value, ..., "backends": {...},
"skipped": {...}}`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

T = TypeVar("T")

# Image batches: uint8 (N, H, W, 3) arrays or sequences of PIL images / (H, W, 3) uint8 arrays.
Images = np.ndarray | Sequence[Image.Image | np.ndarray]

# The Inception-V3 metrics keep their paper names; any other feature space is named for itself,
# so a Frechet distance on, e.g., face-parser features is never mistaken for FID.
INCEPTION_NAMES: tuple[str, str] = ("fid", "kid_x1000")


class BackendUnavailable(RuntimeError):
    """A metric's model, weights or package cannot be had here; the message is the reason."""


@dataclass(frozen=True)
class MetricValue:
    """One reported number, or the reason it was not computed.

    `value` is None exactly when `skipped` holds the reason. `backend` names what produced it
    (model id or path, feature space, detector).
    """

    name: str
    value: float | None
    backend: str
    skipped: str | None = None

    def __post_init__(self) -> None:
        if (self.value is None) == (self.skipped is None):
            raise ValueError(f"metric '{self.name}': give a value or a skip reason, not both "
                             f"or neither (value={self.value!r}, skipped={self.skipped!r})")
        if self.value is not None and not math.isfinite(self.value):
            raise ValueError(f"metric '{self.name}': value must be finite, got {self.value!r}")

    @classmethod
    def skip(cls, name: str, backend: str, reason: str) -> MetricValue:
        """A skipped metric with its reason."""
        return cls(name=name, value=None, backend=backend, skipped=reason)


def skip_all(names: Sequence[str], backend: str, reason: str) -> list[MetricValue]:
    """The same skip reason for every metric a backend would have produced."""
    return [MetricValue.skip(name, backend, reason) for name in names]


def metrics_json(values: Sequence[MetricValue]) -> dict[str, Any]:
    """The metrics file: `{name: value}` for computed metrics, plus `backends` and `skipped`.

    Skipped metrics appear only under `skipped` (with their reason), so `dvc metrics` never
    shows a placeholder number for them. Duplicate names are an error.
    """
    names = [v.name for v in values]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate metric names: {duplicates}")
    out: dict[str, Any] = {v.name: float(v.value) for v in values if v.value is not None}
    out["backends"] = {v.name: v.backend for v in values}
    out["skipped"] = {v.name: v.skipped for v in values if v.skipped is not None}
    return out


def feature_space_names(space: str) -> tuple[str, str]:
    """Names of the Frechet distance and KID x1000 in a feature space.

    "inception" gives the paper's ("fid", "kid_x1000"); any other space gives
    ("fd_<space>", "kid_<space>_x1000"), e.g. "fd_parser", "kid_parser_x1000".
    """
    if not space.isidentifier():
        raise ValueError(f"feature space name must be an identifier, got {space!r}")
    if space == "inception":
        return INCEPTION_NAMES
    return f"fd_{space}", f"kid_{space}_x1000"


def _preview(ids: list[str], limit: int = 10) -> str:
    shown = ", ".join(map(str, ids[:limit]))
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def pair_by_id(generated: Mapping[str, Any], reference: Mapping[str, Any]) -> list[str]:
    """The ids shared by both sets, in the reference's order.

    Every generated image must have a reference and vice versa: a missing or extra id is a
    `ValueError` listing them (the official scripts paired sorted file names and silently
    truncated the longer list; docs/design.md, bug B7).
    """
    missing = [i for i in reference if i not in generated]
    extra = [i for i in generated if i not in reference]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} reference ids have no generated image: "
                         f"{_preview(missing)}")
        if extra:
            parts.append(f"{len(extra)} generated ids have no reference: {_preview(extra)}")
        raise ValueError("cannot pair generated and reference images by id; " + "; ".join(parts))
    if not reference:
        raise ValueError("cannot pair generated and reference images: both sets are empty")
    return list(reference)


def image_list(images: Images, what: str = "images") -> list[np.ndarray]:
    """Validate a batch of images and return it as a list of (H, W, 3) uint8 arrays."""
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"{what}: expected a uint8 array of shape (N, H, W, 3), got "
                             f"{images.dtype} {images.shape}")
        return list(images)
    out = []
    for n, image in enumerate(images):
        array = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else image
        if not (isinstance(array, np.ndarray) and array.dtype == np.uint8 and array.ndim == 3
                and array.shape[-1] == 3):
            got = f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray) else type(array)
            raise ValueError(f"{what}[{n}]: expected a PIL image or a uint8 (H, W, 3) array, "
                             f"got {got}")
        out.append(array)
    if not out:
        raise ValueError(f"{what}: no images")
    return out


def batched(items: Sequence[T], batch_size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most `batch_size` items."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    for start in range(0, len(items), batch_size):
        yield items[start:start + batch_size]


def resolve_device(device: torch.device | str | None) -> torch.device:
    """The given device, or CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class PretrainedFeatures:
    """A frozen pretrained model and its processor on one device, run `batch_size` images at a
    time; `backend` names it in every metric value it produces."""

    def __init__(self, model: torch.nn.Module, processor: object, backend: str,
                 batch_size: int = 16, device: torch.device | str | None = None):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.backend = backend
        self.batch_size = batch_size


def load_pretrained(model_cls: Any, model_id: str, **kwargs: Any) -> Any:
    """`model_cls.from_pretrained(model_id, **kwargs)` in eval mode, refusing incomplete
    checkpoints.

    `from_pretrained` only logs missing or mismatched weights and leaves them random; a metric
    computed on a half-random network would be a silent wrong number, so both are an error.
    """
    model, info = model_cls.from_pretrained(model_id, output_loading_info=True, **kwargs)
    missing = sorted(info.get("missing_keys", ()))
    mismatched = sorted(str(m[0] if isinstance(m, tuple) else m)
                        for m in info.get("mismatched_keys", ()))
    if missing or mismatched:
        raise ValueError(f"{model_id}: checkpoint lacks weights of {model_cls.__name__} "
                         f"(missing: {_preview(missing) or 'none'}; size mismatch: "
                         f"{_preview(mismatched) or 'none'})")
    return model.eval()
