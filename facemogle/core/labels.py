"""CelebAMask-HQ labels, palette, label-map conversions and mask decoupling.

The contracts are in docs/design.md, "Label palette and decoupling".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facemogle.core.io import InputError, open_image, save_png

# Index -> name, in CelebAMask-HQ / MM-CelebA-HQ order. "l_"/"r_" are the subject's left/right.
LABELS: tuple[str, ...] = (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)
NUM_LABELS = len(LABELS)  # 19
NUM_SLOTS = NUM_LABELS + 1  # slot 0: global colour mask; slots 1..19: binary masks of labels 0..18
LABEL_INDEX: dict[str, int] = {name: i for i, name in enumerate(LABELS)}

# The dataset palette (the one in MM-CelebA-HQ's "P" PNGs), index -> RGB.
PALETTE = np.array(
    [
        (0, 0, 0), (204, 0, 0), (76, 153, 0), (204, 204, 0), (51, 51, 255), (204, 0, 204),
        (0, 255, 255), (255, 204, 204), (102, 51, 0), (255, 0, 0), (102, 204, 0), (255, 255, 0),
        (0, 0, 153), (0, 0, 204), (255, 51, 153), (0, 204, 204), (0, 51, 0), (255, 153, 51),
        (0, 204, 0),
    ],
    dtype=np.uint8,
)  # (19, 3)


def _pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (...) int32 0xRRGGBB codes."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


# Packed 0xRRGGBB codes of the palette, sorted, with the label index of each (for searchsorted).
_PALETTE_CODES = _pack_rgb(PALETTE)  # (19,)
_CODE_ORDER = np.argsort(_PALETTE_CODES)  # (19,)
_SORTED_CODES = _PALETTE_CODES[_CODE_ORDER]  # (19,)
_MAX_LISTED = 10  # offending colours / values named in an error message


class MaskColorError(InputError):
    """A colour mask holds colours that are not (near) a palette colour."""


def _count_listing(values: list[str], counts: np.ndarray) -> str:
    """'v1 (n1 px), v2 (n2 px), ...' most frequent first, at most `_MAX_LISTED`, plus the rest."""
    order = np.argsort(-counts, kind="stable")
    shown = [f"{values[i]} ({int(counts[i])} px)" for i in order[:_MAX_LISTED]]
    more = len(values) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _check_indices(label_map: np.ndarray, ndim: tuple[int, ...], source: str) -> np.ndarray:
    """Validate an integer array of label indices 0..18 with one of `ndim` dims; return uint8."""
    arr = np.asarray(label_map)
    if arr.ndim not in ndim:
        raise InputError(f"{source}: expected a {' or '.join(f'{n}-D' for n in ndim)} array of "
                         f"label indices, got shape {arr.shape}")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{source}: expected integer label indices, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= NUM_LABELS):
        bad, counts = np.unique(arr[(arr < 0) | (arr >= NUM_LABELS)], return_counts=True)
        raise InputError(f"{source}: label indices must be in 0..{NUM_LABELS - 1}, found "
                         + _count_listing([str(int(v)) for v in bad], counts))
    return arr.astype(np.uint8, copy=False)


def check_label_map(label_map: np.ndarray, source: str = "label map") -> np.ndarray:
    """Validate an (H, W) integer label map with values 0..18 and return it as (H, W) uint8.

    Raises `InputError` naming `source` and the bad shape, dtype or values.
    """
    return _check_indices(label_map, (2,), source)


def label_map_to_color(label_map: np.ndarray) -> np.ndarray:
    """(H, W) label indices -> (H, W, 3) uint8 colour mask in the dataset palette."""
    return PALETTE[check_label_map(label_map)]  # (H, W, 3)


def _code_to_rgb(code: int) -> str:
    return f"({code >> 16}, {(code >> 8) & 255}, {code & 255})"


def _snap_codes(codes: np.ndarray, tolerance: int) -> np.ndarray:
    """Label index for each off-palette colour code, or -1 where it cannot snap.

    A colour snaps when its nearest palette colour (Chebyshev distance, i.e. max per channel)
    is unique and at most `tolerance` away; a tie is ambiguous and does not snap.
    """
    rgb = np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], axis=-1)  # (U, 3)
    dist = np.abs(rgb[:, None, :] - PALETTE[None].astype(np.int32)).max(axis=-1)  # (U, 19)
    nearest = dist.argmin(axis=1)  # (U,)
    best = dist.min(axis=1, keepdims=True)  # (U, 1)
    unique = (dist == best).sum(axis=1) == 1  # (U,)
    return np.where(unique & (best[:, 0] <= tolerance), nearest, -1)


def color_to_label_map(rgb: np.ndarray, tolerance: int = 0, source: str = "mask") -> np.ndarray:
    """(H, W, 3) uint8 colour mask -> (H, W) uint8 label indices by exact palette lookup.

    With `tolerance > 0` an off-palette colour whose unique nearest palette colour is within
    `tolerance` per channel snaps to it (for JPEG-damaged masks). Any other
    colour raises `MaskColorError` naming `source` and the colours with their pixel counts.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"{source}: expected an (H, W, 3) uint8 colour mask, "
                         f"got shape {rgb.shape} dtype {rgb.dtype}")
    if tolerance < 0:
        raise ValueError(f"{source}: colour tolerance must be >= 0, got {tolerance}")
    codes = _pack_rgb(rgb)  # (H, W)
    pos = np.clip(np.searchsorted(_SORTED_CODES, codes), 0, NUM_LABELS - 1)  # (H, W)
    found = _SORTED_CODES[pos] == codes  # (H, W)
    labels = _CODE_ORDER[pos].astype(np.uint8)  # (H, W)
    if found.all():
        return labels
    off, inverse, counts = np.unique(codes[~found], return_inverse=True, return_counts=True)
    snapped = _snap_codes(off, tolerance) if tolerance > 0 else np.full(len(off), -1)  # (U,)
    bad = snapped < 0
    if bad.any():
        listing = _count_listing([_code_to_rgb(int(c)) for c in off[bad]], counts[bad])
        hint = f"within tolerance {tolerance}" if tolerance > 0 else "(tolerance 0)"
        raise MaskColorError(f"{source}: {int(counts[bad].sum())} pixels have colours that are "
                             f"not palette colours {hint}: {listing}")
    labels[~found] = snapped[inverse].astype(np.uint8)
    return labels


def load_label_map(path: str | Path, tolerance: int = 0) -> np.ndarray:
    """Read a mask file as an (H, W) uint8 label map.

    "P" PNGs and single-channel ("L", "I", "I;16") images hold label indices directly (the
    MM-CelebA-HQ convention); "RGB"/"RGBA" images are colour masks in the palette (alpha is
    ignored) and go through `color_to_label_map` with `tolerance`.
    """
    image = open_image(path)
    if image.mode in ("P", "L", "I", "I;16"):
        return check_label_map(np.asarray(image), source=str(path))
    if image.mode in ("RGB", "RGBA"):
        return color_to_label_map(np.asarray(image.convert("RGB")), tolerance, source=str(path))
    raise InputError(f"{path}: a mask must be a palette, single-channel or RGB image, "
                     f"got mode {image.mode!r}")


def label_map_image(label_map: np.ndarray) -> Image.Image:
    """(H, W) label indices -> "P" PIL image: pixel values are the indices, with the palette."""
    arr = np.ascontiguousarray(check_label_map(label_map))  # (H, W) uint8
    image = Image.frombytes("P", (arr.shape[1], arr.shape[0]), arr.tobytes())
    image.putpalette(PALETTE.reshape(-1).tolist())
    return image


def save_label_map(path: str | Path, label_map: np.ndarray) -> None:
    """Write a label map as a palette PNG, atomically."""
    save_png(path, label_map_image(label_map))


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(hw) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in hw):
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    return int(hw[0]), int(hw[1])


def resize_label_map(label_map: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) label map to `size` (int: square, or (h, w)).

    Only nearest-neighbour is valid: label indices are categories, so any interpolating filter
    would invent labels between neighbours (e.g. 1 and 13 blending to 7) along region edges.
    Each output pixel takes the input pixel under its centre.
    """
    arr = check_label_map(label_map)  # (H, W)
    h, w = _size_hw(size)
    rows = np.minimum(((np.arange(h) + 0.5) * arr.shape[0] / h).astype(np.int64), arr.shape[0] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * arr.shape[1] / w).astype(np.int64), arr.shape[1] - 1)
    return arr[rows[:, None], cols[None, :]]  # (h, w)


def decouple(label_map: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Label map -> the 20 condition images of Face-MoGLE (paper section 3).

    Args:
        label_map: (H, W) or (B, H, W) integer label indices 0..18.
    Returns:
        (20, 3, H, W) or (B, 20, 3, H, W) float32 in [0, 1] on CPU: slot 0 is the colour mask
        (palette RGB / 255), slot i + 1 is the binary mask of label i (1 where the pixel has
        label i), replicated to 3 channels so that every slot is an RGB image for the VAE.
    """
    if isinstance(label_map, torch.Tensor):
        label_map = label_map.detach().cpu().numpy()
    idx = torch.from_numpy(_check_indices(label_map, (2, 3), "label map").astype(np.int64))
    palette = torch.from_numpy(PALETTE).float() / 255.0  # (19, 3)
    colour = palette[idx].movedim(-1, -3)  # (..., 3, H, W)
    binary = torch.nn.functional.one_hot(idx, NUM_LABELS).movedim(-1, -3).float()  # (..., 19, H, W)
    binary = binary.unsqueeze(-3).expand(*binary.shape[:-2], 3, *binary.shape[-2:])
    # binary: (..., 19, 3, H, W)
    return torch.cat([colour.unsqueeze(-4), binary], dim=-4)  # (..., 20, 3, H, W)


def recombine(slots: np.ndarray | torch.Tensor) -> np.ndarray:
    """Inverse of `decouple` from the binary slots: (20, 3, H, W) -> (H, W) uint8 label map.

    Each pixel gets the label whose binary slot (1..19, first channel) is largest, so slightly
    noisy slots (e.g. decoded from latents) still recombine. A (B, 20, 3, H, W) batch gives
    (B, H, W).
    """
    slots = torch.as_tensor(slots)
    if slots.ndim not in (4, 5) or slots.shape[-4] != NUM_SLOTS or slots.shape[-3] != 3:
        raise ValueError(f"expected slots of shape (20, 3, H, W) or (B, 20, 3, H, W), "
                         f"got {tuple(slots.shape)}")
    return slots[..., 1:, 0, :, :].argmax(dim=-3).to(torch.uint8).cpu().numpy()  # (..., H, W)


def slot_presence(label_map: np.ndarray) -> np.ndarray:
    """(20,) bool: slot 0 (global mask) always True, slot i + 1 True iff label i occurs.

    A (B, H, W) batch gives (B, 20).
    """
    arr = _check_indices(label_map, (2, 3), "label map")
    flat = arr.reshape(-1, arr.shape[-2] * arr.shape[-1])  # (N, H*W)
    present = np.stack([np.bincount(row, minlength=NUM_LABELS) > 0 for row in flat])  # (N, 19)
    out = np.concatenate([np.ones((len(flat), 1), dtype=bool), present], axis=1)  # (N, 20)
    return out[0] if arr.ndim == 2 else out
