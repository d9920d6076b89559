"""What `FaceMoGLEPipeline.__call__` accepts and returns: masks in any form, prompt, mask and
seed lists broadcast to one batch, per-image generators, and the output types."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from facemogle.core import labels
from facemogle.core.io import InputError
from facemogle.sampling.sheets import to_uint8

MaskInput = str | Path | Image.Image | np.ndarray | Tensor
OUTPUT_TYPES = ("pil", "np", "pt")


def _array_to_label_map(array: np.ndarray, tolerance: int, source: str) -> np.ndarray:
    if array.ndim == 2:
        return labels.check_label_map(array, source)  # (H, W) label indices
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        return labels.color_to_label_map(np.ascontiguousarray(array[..., :3]), tolerance, source)
    raise InputError(f"{source}: expected an (H, W) label map or an (H, W, 3) colour mask, got "
                     f"shape {array.shape}")


def mask_to_label_map(mask: MaskInput, *, size: tuple[int, int], resize: bool = False,
                      tolerance: int = 0, source: str = "mask") -> np.ndarray:
    """Any accepted mask -> an (H, W) uint8 label map of `size` (H, W).

    Accepted: a file path (palette / single-channel PNG of label indices, or a colour mask), a PIL
    image (same modes), an (H, W) integer array or tensor of label indices, or an (H, W, 3)
    uint8 colour mask. Colours must be palette colours (`labels.PALETTE`) or, with `tolerance`,
    within it of exactly one. A mask of another size is an error unless `resize` (nearest
    neighbour: label maps are categorical).
    """
    if isinstance(mask, (str, Path)):
        source = str(mask)
        label_map = labels.load_label_map(mask, tolerance)
    elif isinstance(mask, Image.Image):
        array = np.asarray(mask.convert("RGB") if mask.mode not in ("P", "L", "I", "I;16")
                           else mask)
        label_map = _array_to_label_map(array, tolerance, source)
    elif isinstance(mask, (np.ndarray, Tensor)):
        array = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else mask
        label_map = _array_to_label_map(array, tolerance, source)
    else:
        raise InputError(f"{source}: expected a path, PIL image, array or tensor, got "
                         f"{type(mask).__name__}")
    if label_map.shape != tuple(size):
        if not resize:
            raise InputError(f"{source}: the mask is {label_map.shape[1]}x{label_map.shape[0]} px,"
                             f" the model generates {size[1]}x{size[0]}; give a mask of that size"
                             f" or resize it (resize_mask=True, CLI --resize-mask: nearest)")
        label_map = labels.resize_label_map(label_map, size)
    return label_map


def _as_list(value: Any, kinds: tuple[type, ...]) -> list | None:
    """None -> None; a single value -> [value]; a list/tuple -> list."""
    if value is None:
        return None
    if isinstance(value, kinds) or not isinstance(value, (list, tuple)):
        return [value]
    return list(value)


def _broadcast(values: list | None, size: int) -> list:
    if values is None:
        return [None] * size
    return values * size if len(values) == 1 else values


def batch_inputs(prompt, mask, seed, generator) -> tuple[list, list]:
    """The per-sample prompts and masks (None where absent), of the batch size that the
    prompt, mask and seed/generator lists agree on (a single one is used for every sample)."""
    prompts = _as_list(prompt, (str,))
    masks = _as_list(mask, (str, Path, Image.Image, np.ndarray, Tensor))
    lists = (prompts, masks, _as_list(seed, (int,)), _as_list(generator, (torch.Generator,)))
    sizes = {len(x) for x in lists if x is not None and len(x) != 1}
    if len(sizes) > 1:
        raise ValueError(f"prompt, mask and seed/generator lists must have one length (or one "
                         f"element); got lengths {sorted(sizes)}")
    batch = sizes.pop() if sizes else 1
    return _broadcast(prompts, batch), _broadcast(masks, batch)


def generators(size: int, seed, generator) -> list[torch.Generator]:
    """One CPU generator per image: the given ones (one is drawn from by every image in turn),
    else seeded with `seed` (one int seeds image b with seed + b; None: a random seed)."""
    if seed is not None and generator is not None:
        raise ValueError("give either seed or generator, not both")
    if generator is not None:
        return _broadcast(_as_list(generator, (torch.Generator,)), size)
    seeds = _as_list(seed, (int,))
    if seeds is None:
        seeds = [int(torch.randint(0, 2 ** 62, (1,)).item())]
    if len(seeds) == 1:
        seeds = [seeds[0] + i for i in range(size)]
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def to_output(images01: Tensor, output_type: str):
    """(B, 3, H, W) images in [0, 1] as `output_type`: "pt" as they are, "np" a (B, H, W, 3)
    float array, "pil" a list of PIL images."""
    if output_type == "pt":
        return images01
    if output_type == "np":
        return images01.permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in to_uint8(images01)]
