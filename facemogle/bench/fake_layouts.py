"""Stand-in data sets written in the real data sets' on-disk layouts.

A handful of SynthFaces (`facemogle.data.synthfaces.render`: image, exact label map, captions)
written as MM-CelebA-HQ, CelebAMask-HQ or FFHQ-Text distribute their files (the layouts that
`facemogle.data.readers` reads, module docstring there), so that the readers and the `download`
and `parse_masks` stages can be tested on them, and the full setting rehearsed on a CPU with its
params unchanged: the ids, the face size (CelebA-HQ: 1024 px JPEG), the mask size (CelebAMask-HQ:
512 px) and the number of captions per face (MM-CelebA-HQ: 10) are the caller's.

A face is a pure function of (id, seed, variant): a numeric id is the SynthFaces index, any
other id is hashed to one, and the label map is rendered at the mask size from the same geometry,
so it is aligned with the face at every integer ratio of the two sizes.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from facemogle.core.labels import label_map_image
from facemogle.data.readers import (
    CELEBAMASKHQ_FOLDER_SIZE,
    CELEBAMASKHQ_PARTS,
    MMCELEBAHQ_SPLIT,
)
from facemogle.data.synthfaces import SynthFace, render

LAYOUT = "varied"  # SynthFaces' poses and expressions in the ranges of real portrait masks
JPEG_QUALITY = 95


def split_ids(num_train: int, num_test: int, split_at: int = MMCELEBAHQ_SPLIT) -> list[int]:
    """Ids 0..num_train-1 (train) and split_at..split_at+num_test-1 (test): a few faces on both
    sides of MM-CelebA-HQ's split boundary, so `data.num_train` can stay the paper's 27,000."""
    if not 0 <= num_train <= split_at or num_test < 0:
        raise ValueError(f"split_ids: need 0 <= num_train <= {split_at} and num_test >= 0, got "
                         f"{num_train}, {num_test}")
    return list(range(num_train)) + list(range(split_at, split_at + num_test))


def face_index(id_: int | str) -> int:
    """The SynthFaces index of an id: the id itself if numeric, else a CRC-32 of its name."""
    text = str(id_)
    return int(text) if text.isdigit() else zlib.crc32(text.encode("utf-8"))


def fake_face(id_: int | str, size: int = 32, mask_size: int | None = None, *,
              num_captions: int = 2, variant: str = "standard", seed: int = 0) -> SynthFace:
    """SynthFace `face_index(id_)`: a (size, size, 3) uint8 image, its (mask_size, mask_size)
    uint8 label map (0..18; `mask_size` defaults to `size` and must divide it) and
    `num_captions` captions."""
    mask_size = size if mask_size is None else mask_size
    if mask_size <= 0 or size % mask_size:
        raise ValueError(f"fake_face: the mask size must divide the face size, got {mask_size} "
                         f"and {size}")
    options = dict(seed=seed, variant=variant, layout=LAYOUT)
    face = render(face_index(id_), resolution=size, num_captions=num_captions, **options)
    if mask_size != size:
        small = render(face_index(id_), resolution=mask_size, num_captions=0, **options)
        face = dataclasses.replace(face, label_map=small.label_map)
    return face


def _write_captions(path: Path, captions: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(captions) + "\n", encoding="utf-8")


def write_mmcelebahq(root: Path, ids: Iterable[int], *, json_ids: Iterable[int] = (),
                     size: int = 32, mask_size: int | None = None, num_captions: int = 2,
                     variant: str = "standard", seed: int = 0) -> dict[int, SynthFace]:
    """MM-CelebA-HQ as distributed, under `root`:

    - `face/{i}.jpg`: the (size, size) RGB face, JPEG;
    - `mask/{i}.png`: its (mask_size, mask_size) label map as a "P" PNG whose pixel values are
      the label indices 0..18;
    - `text/{i}.txt`: the captions, one per line; for the ids in `json_ids` instead an entry
      "{i}.jpg": [captions] of `text.json` (written only if `json_ids` holds any of `ids`).

    Returns {id: the face written} (`fake_face`).
    """
    root = Path(root)
    for folder in ("face", "mask", "text"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    json_ids, faces, table = set(json_ids), {}, {}
    for i in ids:
        faces[i] = face = fake_face(i, size, mask_size, num_captions=num_captions,
                                    variant=variant, seed=seed)
        Image.fromarray(face.image).save(root / "face" / f"{i}.jpg", quality=JPEG_QUALITY)
        label_map_image(face.label_map).save(root / "mask" / f"{i}.png")
        if i in json_ids:
            table[f"{i}.jpg"] = face.captions
        else:
            _write_captions(root / "text" / f"{i}.txt", face.captions)
    if table:
        (root / "text.json").write_text(json.dumps(table, indent=1), encoding="utf-8")
    return faces


def _grow(mask: np.ndarray) -> np.ndarray:
    """(h, w) bool `mask` grown by one pixel (3x3 dilation)."""
    h, w = mask.shape
    padded = np.pad(mask, 1)
    return np.logical_or.reduce([padded[r:r + h, c:c + w] for r in range(3) for c in range(3)])


def part_masks(label_map: np.ndarray) -> dict[str, np.ndarray]:
    """{part: (h, w) uint8 0/255 mask} of the parts present in `label_map`, named and ordered as
    CelebAMask-HQ's (`CELEBAMASKHQ_PARTS`, labels 1..18). Each mask also covers the one-pixel
    ring of parts painted after it (skin under the edge of hair, nose, eyes, ...), so the masks
    overlap as the released ones do and only combining them in label order, later parts on top,
    gives `label_map` back."""
    masks = {}
    for label, part in enumerate(CELEBAMASKHQ_PARTS, start=1):
        own = label_map == label
        if own.any():
            covered = own | (_grow(own) & (label_map > label))
            masks[part] = np.where(covered, 255, 0).astype(np.uint8)
    return masks


def write_celebamaskhq(root: Path, ids: Iterable[int], *, with_text: bool = True,
                       size: int = 64, mask_size: int | None = 32, num_captions: int = 2,
                       variant: str = "standard", seed: int = 0) -> dict[int, SynthFace]:
    """CelebAMask-HQ as distributed, under `root`:

    - `CelebA-HQ-img/{i}.jpg`: the (size, size) RGB face, JPEG;
    - `CelebAMask-HQ-mask-anno/{i // 2000}/{i:05d}_{part}.png`: a white-on-black
      (mask_size, mask_size) mask per part present (`part_masks`: they overlap); `skin` as a
      3-channel RGB PNG like the released masks, the other parts as 8-bit grey ("L") PNGs, so a
      reader is seen to accept both;
    - with `with_text`, MM-CelebA-HQ's `text/{i}.txt` (captions, one per line) beside them
      (CelebAMask-HQ ships no captions).

    Returns {id: the face written}, its label map the one the part masks combine to.
    """
    root = Path(root)
    (root / "CelebA-HQ-img").mkdir(parents=True, exist_ok=True)
    faces = {}
    for i in ids:
        faces[i] = face = fake_face(i, size, mask_size, num_captions=num_captions,
                                    variant=variant, seed=seed)
        Image.fromarray(face.image).save(root / "CelebA-HQ-img" / f"{i}.jpg",
                                         quality=JPEG_QUALITY)
        folder = root / "CelebAMask-HQ-mask-anno" / str(i // CELEBAMASKHQ_FOLDER_SIZE)
        folder.mkdir(parents=True, exist_ok=True)
        for part, mask in part_masks(face.label_map).items():
            image = Image.fromarray(mask).convert("RGB" if part == "skin" else "L")
            image.save(folder / f"{i:05d}_{part}.png")
        if with_text:
            _write_captions(root / "text" / f"{i}.txt", face.captions)
    return faces


def write_ffhq_text(root: Path, ids: Iterable[str], *, size: int = 32, suffix: str = ".png",
                    num_captions: int = 2, variant: str = "zeroshot",
                    seed: int = 0) -> dict[str, SynthFace]:
    """FFHQ-Text as distributed, under `root`:

    - `images/{id}{suffix}`: the (size, size) RGB face (`suffix` ".png" or ".jpg");
    - `text/{id}.txt`: its captions, one per line; no masks.

    The faces default to SynthFaces' `zeroshot` variant, as FFHQ-Text is the paper's zero-shot
    test set. Returns {id: the face written} (its label map unused by the layout).
    """
    if suffix not in (".png", ".jpg"):
        raise ValueError(f"write_ffhq_text: suffix must be '.png' or '.jpg', got {suffix!r}")
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    faces = {}
    for i in ids:
        faces[i] = face = fake_face(i, size, num_captions=num_captions, variant=variant,
                                    seed=seed)
        Image.fromarray(face.image).save(root / "images" / f"{i}{suffix}", quality=JPEG_QUALITY)
        _write_captions(root / "text" / f"{i}.txt", face.captions)
    return faces
