"""The normalized data layout written by `download` and `parse_masks` (docs/design.md, "Stages").

`download --out DIR` writes::

    DIR/images/{id}.png      RGB faces at data.resolution
    DIR/masks/{id}.png       the data set's own masks at data.resolution (absent without masks)
    DIR/captions.jsonl       {"id": ..., "captions": [...]} per line
    DIR/split.json           {"train": [ids], "test": [ids]}
    DIR/attributes.jsonl     {"id": ..., "attributes": {...}} per line (SynthFaces only)
    DIR/skipped.json         [{"file": ..., "reason": ...}] (empty list when nothing was skipped)

`parse_masks --out DIR` writes `masks/{id}.png` (canonical palette label maps), `presence.json`
({id: [20 bools]}), `split.json` (the ids that got a label map) and `skipped.json`.

Ids are strings: SynthFaces ids are zero-padded indices ("000042"), real data sets keep their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from facemogle.core.io import InputError, open_image, read_json, read_jsonl

IMAGES = "images"
MASKS = "masks"
CAPTIONS = "captions.jsonl"
SPLIT = "split.json"
ATTRIBUTES = "attributes.jsonl"
SKIPPED = "skipped.json"
PRESENCE = "presence.json"
SPLITS: tuple[str, ...] = ("train", "test")


class ItemError(InputError):
    """One item of a data set is bad: `file` names the offending file, `reason` the problem.

    With `data.on_error: skip` a stage records (file, reason) and goes on; otherwise it stops.
    """

    def __init__(self, file: str | Path, reason: str):
        self.file = str(file)
        self.reason = reason
        super().__init__(f"{file}: {reason}")


def item_error(path: str | Path, err: Exception) -> ItemError:
    """An `ItemError` for `path` from an error whose message may already start with the path."""
    message = str(err)
    prefix = f"{path}: "
    return ItemError(path, message[len(prefix):] if message.startswith(prefix) else message)


@dataclass
class Sample:
    """One face of a data set, as read from its source, before resizing.

    `mask` keeps the data set's own encoding: a "P"/"L" image of label indices or an "RGB" colour
    mask; `parse_masks` validates it against the palette (it owns `masks.color_tolerance`).
    """

    id: str
    image: Image.Image  # RGB
    captions: list[str]
    mask: Image.Image | None = None
    attributes: dict[str, Any] | None = None


@dataclass(frozen=True)
class Entry:
    """An item a reader can load: its id, its split and the file that stands for it in reports."""

    id: str
    split: str
    file: str


def image_path(root: str | Path, id_: str) -> Path:
    """`root/images/{id}.png`."""
    return Path(root) / IMAGES / f"{id_}.png"


def mask_path(root: str | Path, id_: str) -> Path:
    """`root/masks/{id}.png`."""
    return Path(root) / MASKS / f"{id_}.png"


def split_path(root: str | Path) -> Path:
    """`root/split.json`."""
    return Path(root) / SPLIT


def captions_path(root: str | Path) -> Path:
    """`root/captions.jsonl`."""
    return Path(root) / CAPTIONS


def attributes_path(root: str | Path) -> Path:
    """`root/attributes.jsonl` (SynthFaces only)."""
    return Path(root) / ATTRIBUTES


def read_split(root: str | Path) -> dict[str, list[str]]:
    """Read `root/split.json`: {"train": [ids], "test": [ids]}, ids unique strings."""
    path = split_path(root)
    split = read_json(path, missing="not found (run the download stage first)")
    if not isinstance(split, dict) or set(split) != set(SPLITS):
        raise InputError(f"{path}: expected an object with keys {list(SPLITS)}")
    ids = [i for name in SPLITS for i in split[name]]
    if not all(isinstance(i, str) for i in ids):
        raise InputError(f"{path}: ids must be strings")
    if len(set(ids)) != len(ids):
        raise InputError(f"{path}: an id appears more than once")
    return {name: list(split[name]) for name in SPLITS}


def read_captions(root: str | Path) -> dict[str, list[str]]:
    """Read `root/captions.jsonl` as {id: [captions]}."""
    path = captions_path(root)
    if not path.is_file():
        raise InputError(f"{path}: not found (run the download stage first)")
    return {row["id"]: list(row["captions"]) for row in read_jsonl(path)}


def read_image(path: Path, mode: str | None = None) -> Image.Image:
    """Fully decode an image (converted to `mode` if given); a bad file raises `ItemError`."""
    try:
        image = open_image(path)
    except InputError as err:
        raise item_error(path, err) from None
    return image.convert(mode) if mode is not None and image.mode != mode else image
