"""Readers of the data sets the `download` stage accepts (`data.source`).

A reader lists `entries()` (id, split, the file that stands for the item) and `load(entry)`
returns a `Sample`; a bad item raises `ItemError` naming the file, so the stage can stop or skip
it (`data.on_error`). Layouts, as their authors distribute them:

- MM-CelebA-HQ (`mmcelebahq`): `face/{i}.jpg`, `mask/{i}.png` ("P" PNGs whose pixel values are the
  label indices 0..18), captions in `text/{i}.txt` (one per line) and/or `text.json`
  ({"{i}.jpg": [...]}). Ids 0..29999; train = ids below the split boundary (27,000), test = the
  rest (the official code trains on ids 0..26999).

A mask must have its image's size, or a size the image is an integer multiple of: CelebA-HQ
faces are 1024 px and the CelebAMask-HQ annotations 512 px, and copies of both data sets keep
them so; such a mask is aligned with its face and is resized with it.
- CelebAMask-HQ (`celebamaskhq`): `CelebA-HQ-img/{i}.jpg` (1024 px) and binary 512 px part masks
  `CelebAMask-HQ-mask-anno/{i // 2000}/{i:05d}_{part}.png`, combined into one label map; captions
  from an MM-CelebA-HQ `text/` folder or `text.json` added to the same directory.
- FFHQ-Text (`ffhq_text`): `images/{id}.png|jpg` with captions in `text/{id}.txt` and/or
  `text.json` ({"{id}.png": [...]} or {"{id}": [...]}); no masks (`parse_masks` parses them). It
  is the paper's zero-shot evaluation set, so every image is in the test split.
- SynthFaces (`synthfaces`): rendered by `facemogle.data.synthfaces`, exact label maps.

Real data sets come from `data.local_path`, or else from the hub dataset repo `data.hub_repo`
at `data.hub_revision` through `huggingface_hub.snapshot_download`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from facemogle.core.config import ConfigError, DataConfig
from facemogle.core.io import InputError
from facemogle.core.labels import LABELS, label_map_image
from facemogle.data.layout import Entry, ItemError, Sample, read_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MMCELEBAHQ_SPLIT = 27000  # the official code trains on ids < 27000


class Reader(Protocol):
    """What the `download` stage needs from a data set."""

    def entries(self) -> list[Entry]:
        """Every item, ids sorted, with its split."""

    def load(self, entry: Entry) -> Sample:
        """Read one item; raises `ItemError` naming the bad file."""


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _id_key(id_: str) -> tuple[int, int, str]:
    """Sort numeric ids by value, then the others by name."""
    return (0, int(id_), "") if id_.isdigit() else (1, 0, id_)


def list_images(folder: Path, numeric: bool) -> dict[str, Path]:
    """{id: path} of the images in `folder` (id = file stem), sorted by id.

    Raises `InputError` for a missing folder, two files with one id, or (with `numeric`) an image
    whose name is not a number.
    """
    if not folder.is_dir():
        raise InputError(f"{folder}: folder not found")
    found: dict[str, Path] = {}
    for path in folder.iterdir():
        if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
            continue
        if numeric and not path.stem.isdigit():
            raise InputError(f"{path}: expected a numeric image id as the file name")
        if path.stem in found:
            raise InputError(f"{path}: another image has the same id ({found[path.stem].name})")
        found[path.stem] = path
    return {k: found[k] for k in sorted(found, key=_id_key)}


def find_layout_root(root: Path, marker: str, layout: str) -> Path:
    """The directory holding `marker` (a folder): `root` itself or one of its subfolders.

    Hub snapshots often keep the data set one folder down (e.g. `MM-CelebA-HQ/face`).
    """
    if not root.is_dir():
        raise InputError(f"{root}: data set folder not found")
    candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    for candidate in candidates:
        if (candidate / marker).is_dir():
            return candidate
    raise InputError(f"{root}: no '{marker}/' folder in it or its subfolders; expected the "
                     f"{layout} layout (see facemogle/data/readers.py)")


class CaptionIndex:
    """Captions of a data set from `text/{id}.txt` (one per line) or `text.json`.

    A non-empty per-image text file wins over `text.json`; `text.json` is looked up by the image
    file name (MM-CelebA-HQ's keys are "{i}.jpg"), then by the bare id.
    """

    def __init__(self, root: Path, folder: str = "text", table: str = "text.json"):
        self.folder = root / folder
        self.table_path = root / table
        self.table = self._read_table(self.table_path) if self.table_path.is_file() else {}

    @staticmethod
    def _read_table(path: Path) -> dict:
        try:
            table = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"{path}: not valid UTF-8 JSON ({err})") from None
        if not isinstance(table, dict):
            raise InputError(f"{path}: expected an object mapping image names to caption lists")
        return table

    @property
    def available(self) -> bool:
        """Whether the data set has any caption source at all."""
        return self.folder.is_dir() or self.table_path.is_file()

    def _from_file(self, path: Path) -> list[str]:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ItemError(path, f"unreadable caption file ({err})") from None
        return [line.strip() for line in text.splitlines() if line.strip()]

    def _from_table(self, key: str) -> list[str]:
        value = self.table[key]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
            raise ItemError(self.table_path, f"entry '{key}' must be a list of strings")
        return [c.strip() for c in value if c.strip()]

    def get(self, id_: str, image: Path) -> list[str]:
        """The captions of image `id_`; none found raises `ItemError` naming the image."""
        text_file = self.folder / f"{id_}.txt"
        if text_file.is_file():
            captions = self._from_file(text_file)
            if captions:
                return captions
        for key in (image.name, id_):
            if key in self.table:
                captions = self._from_table(key)
                if captions:
                    return captions
        raise ItemError(image, f"no caption (looked for a non-empty {text_file} and an entry "
                               f"'{image.name}' in {self.table_path})")


def check_mask_size(mask: Path, mask_size: tuple[int, int], image: Path,
                    image_size: tuple[int, int], integer_scale: bool = False) -> None:
    """Raise `ItemError` unless the mask has the image's size (or, with `integer_scale`, the
    image is an integer multiple of it in both sides, as CelebAMask-HQ's 512 px masks of 1024 px
    images are)."""
    if mask_size == image_size:
        return
    if integer_scale:
        scale = image_size[0] // mask_size[0] if mask_size[0] else 0
        if scale >= 1 and (mask_size[0] * scale, mask_size[1] * scale) == image_size:
            return
    w, h = mask_size
    raise ItemError(mask, f"mask is {w}x{h} but its image {image} is "
                          f"{image_size[0]}x{image_size[1]}")


# ----------------------------------------------------------------------------------------------
# Real data sets
# ----------------------------------------------------------------------------------------------


class MMCelebAHQReader:
    """MM-CelebA-HQ as its authors distribute it (module docstring).

    Args:
        root: the folder holding `face/`, `mask/` and `text/` and/or `text.json`.
        split_at: ids below it are train, the others test (the paper: 27,000 of 30,000).
    """

    def __init__(self, root: str | Path, split_at: int = MMCELEBAHQ_SPLIT):
        self.root = Path(root)
        self.split_at = split_at
        self.images = list_images(self.root / "face", numeric=True)
        self.captions = CaptionIndex(self.root)

    def entries(self) -> list[Entry]:
        return [Entry(i, "train" if int(i) < self.split_at else "test", str(path))
                for i, path in self.images.items()]

    def load(self, entry: Entry) -> Sample:
        image_file = Path(entry.file)
        image = read_image(image_file, "RGB")
        mask_file = self.root / "mask" / f"{entry.id}.png"
        if not mask_file.is_file():
            raise ItemError(image_file, f"no mask: {mask_file} not found")
        mask = read_image(mask_file)
        check_mask_size(mask_file, mask.size, image_file, image.size, integer_scale=True)
        captions = self.captions.get(entry.id, image_file)
        return Sample(entry.id, image, captions, mask=mask)


# CelebAMask-HQ's own part list, in label order 1..18 (labels.LABELS[1:]). Its `g_mask.py`
# paints the parts in this order, so a later part overwrites an earlier one where two overlap
# (hair over skin, the lips over the mouth, cloth over neck): that order is the data set's
# precedence, and the label maps MM-CelebA-HQ ships were made that way.
CELEBAMASKHQ_PARTS: tuple[str, ...] = LABELS[1:]
CELEBAMASKHQ_FOLDER_SIZE = 2000  # annotation sub-folder k holds ids 2000 k .. 2000 k + 1999


class CelebAMaskHQReader:
    """The original CelebAMask-HQ annotation layout (module docstring).

    Args:
        root: the folder holding `CelebA-HQ-img/` and `CelebAMask-HQ-mask-anno/`, plus
            MM-CelebA-HQ's `text/` folder or `text.json` (CelebAMask-HQ itself has no captions).
        split_at: ids below it are train, the others test.
    """

    def __init__(self, root: str | Path, split_at: int = MMCELEBAHQ_SPLIT):
        self.root = Path(root)
        self.split_at = split_at
        self.images = list_images(self.root / "CelebA-HQ-img", numeric=True)
        self.anno = self.root / "CelebAMask-HQ-mask-anno"
        if not self.anno.is_dir():
            raise InputError(f"{self.anno}: folder not found (CelebAMask-HQ part masks)")
        self.captions = CaptionIndex(self.root)
        if not self.captions.available:
            raise InputError(f"{self.root}: no captions: CelebAMask-HQ ships none; add "
                             f"MM-CelebA-HQ's text/ folder or text.json to this folder")

    def entries(self) -> list[Entry]:
        return [Entry(i, "train" if int(i) < self.split_at else "test", str(path))
                for i, path in self.images.items()]

    def part_files(self, id_: str) -> dict[int, Path]:
        """{label index: part mask file} of the parts annotated for image `id_`."""
        folder = self.anno / str(int(id_) // CELEBAMASKHQ_FOLDER_SIZE)
        files = {label: folder / f"{int(id_):05d}_{part}.png"
                 for label, part in enumerate(CELEBAMASKHQ_PARTS, start=1)}
        return {label: path for label, path in files.items() if path.is_file()}

    def combine(self, id_: str, image_file: Path) -> tuple[np.ndarray, Path]:
        """(h, w) uint8 label map of image `id_` from its binary part masks, later parts on top,
        and the first part file (it stands for the mask in size errors)."""
        files = self.part_files(id_)
        if not files:
            raise ItemError(image_file, f"no part masks {int(id_):05d}_*.png under {self.anno}")
        first = next(iter(files.values()))
        label_map = None
        for label, path in files.items():
            part = np.asarray(read_image(path, "L")) >= 128  # (h, w) bool: binary 0/255 masks
            if label_map is None:
                label_map = np.zeros(part.shape, dtype=np.uint8)  # (h, w)
            elif part.shape != label_map.shape:
                raise ItemError(path, f"part mask is {part.shape[1]}x{part.shape[0]} but "
                                      f"{first.name} is {label_map.shape[1]}x{label_map.shape[0]}")
            label_map[part] = label
        return label_map, first

    def load(self, entry: Entry) -> Sample:
        image_file = Path(entry.file)
        image = read_image(image_file, "RGB")
        label_map, first_part = self.combine(entry.id, image_file)  # (h, w)
        check_mask_size(first_part, label_map.shape[::-1], image_file, image.size,
                        integer_scale=True)
        captions = self.captions.get(entry.id, image_file)
        return Sample(entry.id, image, captions, mask=label_map_image(label_map))


class FFHQTextReader:
    """FFHQ-Text: images and captions, no masks; every image is a test image (module docstring).

    Args:
        root: the folder holding `images/` and `text/` and/or `text.json`.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.images = list_images(self.root / "images", numeric=False)
        self.captions = CaptionIndex(self.root)

    def entries(self) -> list[Entry]:
        return [Entry(i, "test", str(path)) for i, path in self.images.items()]

    def load(self, entry: Entry) -> Sample:
        image_file = Path(entry.file)
        image = read_image(image_file, "RGB")
        return Sample(entry.id, image, self.captions.get(entry.id, image_file))


# ----------------------------------------------------------------------------------------------
# SynthFaces (the embedded default)
# ----------------------------------------------------------------------------------------------


class SynthFacesReader:
    """Procedurally rendered faces with exact label maps (`facemogle.data.synthfaces`).

    Indices 0..num_train-1 are train, the next num_test test; ids are zero-padded indices.
    """

    def __init__(self, num_train: int, num_test: int, *, seed: int = 0, resolution: int = 128,
                 variant: str = "standard", num_captions: int = 4, layout: str = "template"):
        from facemogle.data import synthfaces  # the renderer, imported only when used

        self._render = synthfaces.render
        self.num_train, self.num_test = num_train, num_test
        self.options = dict(seed=seed, resolution=resolution, variant=variant,
                            num_captions=num_captions, layout=layout)

    def entries(self) -> list[Entry]:
        total = self.num_train + self.num_test
        return [Entry(f"{i:06d}", "train" if i < self.num_train else "test", f"synthfaces:{i}")
                for i in range(total)]

    def load(self, entry: Entry) -> Sample:
        face = self._render(int(entry.id), **self.options)
        return Sample(entry.id, Image.fromarray(face.image), list(face.captions),
                      mask=label_map_image(face.label_map), attributes=dict(face.attributes))


# ----------------------------------------------------------------------------------------------
# Where a real data set comes from
# ----------------------------------------------------------------------------------------------


def hub_snapshot(repo: str, revision: str | None) -> Path:
    """Download (or reuse the cached) hub dataset repo; unreachable hub: an error that says to
    set `data.local_path`."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    where = f"{repo}@{revision or 'main'}"
    try:
        return Path(snapshot_download(repo_id=repo, repo_type="dataset", revision=revision))
    except RepositoryNotFoundError:
        raise ConfigError(f"params: 'data.hub_repo': dataset repo {repo!r} not found on the "
                          f"hub (or it is gated/private)") from None
    except RevisionNotFoundError:
        raise ConfigError(f"params: 'data.hub_revision': revision {revision!r} not found in "
                          f"dataset repo {repo!r}") from None
    except ValueError as err:  # huggingface_hub's HFValidationError: a malformed repo id
        raise ConfigError(f"params: 'data.hub_repo' must be a hub repo id such as 'owner/name', "
                          f"got {repo!r} ({err})") from None
    except OSError as err:  # offline mode, DNS, timeouts, HTTP errors: no data from the hub
        first_line = (str(err).splitlines() or [""])[0]
        raise InputError(f"cannot download dataset {where} from the Hugging Face hub "
                         f"({type(err).__name__}: {first_line}). Download the data set yourself "
                         f"and set 'data.local_path' to its folder (e.g. dvc exp run -S "
                         f"data.local_path=/data/mmcelebahq)") from None


def source_root(data: DataConfig) -> Path:
    """The folder of a real data set: `data.local_path` if set, else a hub snapshot."""
    if data.local_path is not None:
        root = Path(data.local_path).expanduser()
        if not root.is_dir():
            raise ConfigError(f"params: 'data.local_path' must be an existing folder, got "
                              f"{data.local_path!r}")
        return root
    if data.hub_repo is None:
        raise ConfigError(f"params: data.source {data.source!r} needs 'data.local_path' (a "
                          f"folder) or 'data.hub_repo' (a hub dataset repo id); both are null")
    return hub_snapshot(data.hub_repo, data.hub_revision)


# data.source -> (layout marker folder, reader factory)
REAL_SOURCES = {
    "mmcelebahq": ("face", lambda root, data: MMCelebAHQReader(root, split_at=data.num_train)),
    "celebamaskhq": ("CelebA-HQ-img",
                     lambda root, data: CelebAMaskHQReader(root, split_at=data.num_train)),
    "ffhq_text": ("images", lambda root, data: FFHQTextReader(root)),  # noqa: ARG005 (same factory signature)
}


def open_reader(data: DataConfig, variant: str | None = None) -> Reader:
    """The reader for `data.source`; `variant` overrides `data.variant` (SynthFaces only).

    For real data sets the split boundary is `data.num_train` (ids below it are train).
    """
    if data.source == "synthfaces":
        return SynthFacesReader(data.num_train, data.num_test, seed=data.seed,
                                resolution=data.resolution, variant=variant or data.variant,
                                num_captions=data.captions_per_image, layout=data.layout)
    marker, factory = REAL_SOURCES[data.source]
    root = find_layout_root(source_root(data), marker, data.source)
    return factory(root, data)
