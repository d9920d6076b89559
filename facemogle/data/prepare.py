"""The `download` and `parse_masks` stages as library functions (DESIGN.md sections 4 and 5).

`download` reads a data set (`facemogle.data.readers`) into the normalized layout
(`facemogle.data.layout`): faces resized to `data.resolution` (centre square crop, Lanczos), masks
resized with nearest-neighbour only, captions, split. `parse_masks` gives every image a validated
palette label map: the data set's own mask (palette, index or colour mask, checked against the
palette with `masks.color_tolerance`) or, where there is none, a face parser's
(`facemogle.data.parsers`); it writes per-image slot presence and class statistics.

Bad items (corrupt or unreadable files, a mask whose size differs from its image, an unknown
mask colour, an image with no caption) stop the stage with an error naming the file, or with
`data.on_error: skip` are left out and listed with their reason in `skipped.json`. Both stages
build their output in a temporary sibling folder and rename it at the end, so a failed run
leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from facemogle.config import ConfigError, DataConfig, MasksConfig
from facemogle.data import layout
from facemogle.data.layout import Entry, ItemError, Sample, item_error
from facemogle.data.parsers import FaceParser, load_parser, parse_image
from facemogle.data.readers import Reader, open_reader, read_image
from facemogle.io import InputError, atomic_path, write_json, write_jsonl
from facemogle.labels import LABELS, NUM_LABELS, load_label_map, save_label_map, slot_presence

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Shared: resizing and the stop-or-skip loop
# ----------------------------------------------------------------------------------------------


def centre_square(size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the largest centred square in a (width, height) image."""
    w, h = size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return left, top, left + side, top + side


def fit_image(image: Image.Image, resolution: int) -> Image.Image:
    """Centre square crop, then Lanczos resize to `resolution` (RGB faces)."""
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.LANCZOS,
                             box=centre_square(image.size))
    return image


def fit_mask(mask: Image.Image, resolution: int) -> Image.Image:
    """Centre square crop, then nearest-neighbour resize: label indices and palette colours are
    categories, so an interpolating filter would invent labels along region edges."""
    if mask.size != (resolution, resolution):
        mask = mask.resize((resolution, resolution), Image.Resampling.NEAREST,
                           box=centre_square(mask.size))
    return mask


def run_items(items: Iterable, work: Callable, *, on_error: str, file_of: Callable,
              desc: str) -> list[dict]:
    """Call `work(item)` for each item with a progress bar; returns the skip report.

    An `InputError` stops the run (`on_error` "stop") or is recorded as {file, reason} and the
    item left out ("skip").
    """
    skipped: list[dict] = []
    for item in tqdm(list(items), desc=desc, unit="img", mininterval=1.0):
        try:
            work(item)
        except InputError as err:
            file = getattr(err, "file", None) or file_of(item)
            reason = getattr(err, "reason", None) or str(err)
            if on_error != "skip":
                log.error("%s: %s (set data.on_error: skip to leave bad items out)", file, reason)
                raise
            log.warning("skipped %s: %s", file, reason)
            skipped.append({"file": str(file), "reason": reason})
    return skipped


def _check_not_empty(written: int, skipped: list[dict], what: str) -> None:
    if written == 0:
        shown = "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:3])
        raise InputError(f"{what}: no usable images ({len(skipped)} skipped"
                         f"{': ' + shown if shown else ''})")


# ----------------------------------------------------------------------------------------------
# download
# ----------------------------------------------------------------------------------------------


def select_entries(entries: list[Entry], data: DataConfig) -> list[Entry]:
    """Cap a real data set: the first `data.num_test` test ids, and at most `data.max_images`
    ids per split (SynthFaces renders exactly num_train + num_test and is not capped)."""
    if data.source == "synthfaces":
        return entries
    caps = {"train": data.max_images, "test": min(data.num_test, data.max_images or data.num_test)}
    kept, counts = [], {"train": 0, "test": 0}
    for entry in entries:
        cap = caps[entry.split]
        if cap is None or counts[entry.split] < cap:
            kept.append(entry)
            counts[entry.split] += 1
    return kept


@dataclass
class _Collected:
    """What `download` gathers besides the image files."""

    captions: list[dict] = field(default_factory=list)
    attributes: list[dict] = field(default_factory=list)
    split: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in layout.SPLITS})


def _write_sample(sample: Sample, split: str, out: Path, resolution: int, max_captions: int | None,
                  collected: _Collected) -> None:
    fit_image(sample.image, resolution).save(layout.image_path(out, sample.id), format="PNG")
    if sample.mask is not None:
        fit_mask(sample.mask, resolution).save(layout.mask_path(out, sample.id), format="PNG")
    collected.captions.append({"id": sample.id, "captions": sample.captions[:max_captions]})
    if sample.attributes is not None:
        collected.attributes.append({"id": sample.id, "attributes": sample.attributes})
    collected.split[split].append(sample.id)


def write_layout(reader: Reader, out: str | Path, *, resolution: int, on_error: str = "stop",
                 max_captions: int | None = None, entries: list[Entry] | None = None
                 ) -> list[dict]:
    """Read `entries` (default: all) of `reader` into the normalized layout at `out`, atomically,
    keeping the first `max_captions` captions of each image (default: all).

    Returns the skip report (also written to `out/skipped.json`).
    """
    entries = reader.entries() if entries is None else entries
    collected = _Collected()
    with atomic_path(out) as tmp:
        (tmp / layout.IMAGES).mkdir(parents=True)
        (tmp / layout.MASKS).mkdir()

        def work(entry: Entry) -> None:
            _write_sample(reader.load(entry), entry.split, tmp, resolution, max_captions,
                          collected)

        skipped = run_items(entries, work, on_error=on_error, file_of=lambda e: e.file,
                            desc="download")
        _check_not_empty(len(collected.captions), skipped, str(out))
        if not any((tmp / layout.MASKS).iterdir()):
            (tmp / layout.MASKS).rmdir()  # a data set without masks: parse_masks parses them
        write_jsonl(tmp / layout.CAPTIONS, collected.captions)
        write_json(tmp / layout.SPLIT, collected.split)
        if collected.attributes:
            write_jsonl(tmp / layout.ATTRIBUTES, collected.attributes)
        write_json(tmp / layout.SKIPPED, skipped)
    return skipped


def download(data: DataConfig, out: str | Path, *, variant: str | None = None,
             splits: tuple[str, ...] = layout.SPLITS) -> list[dict]:
    """The `download` stage: the `splits` of `data.source` -> the normalized layout at `out`.

    `variant` overrides `data.variant` for SynthFaces. The zero-shot entry passes
    `splits=("test",)`: only test faces are read (or rendered). Each image keeps its first
    `data.captions_per_image` captions. Returns the skip report.
    """
    reader = open_reader(data, variant=variant)
    entries = [e for e in select_entries(reader.entries(), data) if e.split in splits]
    if not entries:
        raise InputError(f"data set {data.source!r} has no images in split(s) {list(splits)}")
    skipped = write_layout(reader, out, resolution=data.resolution, on_error=data.on_error,
                           max_captions=data.captions_per_image, entries=entries)
    log.info("download: wrote %d images to %s, skipped %d%s", len(entries) - len(skipped), out,
             len(skipped), f" (see {Path(out) / layout.SKIPPED})" if skipped else "")
    return skipped


# ----------------------------------------------------------------------------------------------
# parse_masks
# ----------------------------------------------------------------------------------------------


@dataclass
class ClassStats:
    """Per-class pixel and image counts over the label maps of a data set."""

    pixels: np.ndarray = field(default_factory=lambda: np.zeros(NUM_LABELS, dtype=np.int64))
    images: np.ndarray = field(default_factory=lambda: np.zeros(NUM_LABELS, dtype=np.int64))
    num_images: int = 0

    def add(self, label_map: np.ndarray) -> None:
        counts = np.bincount(label_map.reshape(-1), minlength=NUM_LABELS)  # (19,)
        self.pixels += counts
        self.images += counts > 0
        self.num_images += 1

    def summary(self) -> dict[str, dict[str, float]]:
        """{label: {"pixel_share": share of all pixels, "image_frequency": share of images}}."""
        total = max(int(self.pixels.sum()), 1)
        n = max(self.num_images, 1)
        return {name: {"pixel_share": round(float(self.pixels[i]) / total, 6),
                       "image_frequency": round(float(self.images[i]) / n, 6)}
                for i, name in enumerate(LABELS)}


def _parser_path(masks: MasksConfig, parser_dir: str | Path | None) -> str | None:
    if masks.parser == "tiny":
        return None if parser_dir is None else str(parser_dir)
    return masks.parser_path


class _Labeler:
    """Label map of one image: its own mask if it has one, else the face parser's."""

    def __init__(self, data_dir: Path, tolerance: int, parser: FaceParser | None):
        self.data_dir, self.tolerance, self.parser = data_dir, tolerance, parser
        self.from_dataset = 0
        self.from_parser = 0

    def __call__(self, id_: str) -> np.ndarray:
        image_file = layout.image_path(self.data_dir, id_)
        mask_file = layout.mask_path(self.data_dir, id_)
        image = read_image(image_file, "RGB")
        if mask_file.is_file():
            label_map = self._own_mask(mask_file, image_file, image.size)  # (H, W)
            self.from_dataset += 1
            return label_map
        if self.parser is None:
            raise ItemError(image_file, f"no mask ({mask_file} not found) and masks.parser is "
                                        f"'none'")
        try:
            label_map = parse_image(self.parser, np.asarray(image))  # (H, W)
        except InputError as err:
            raise item_error(image_file, err) from None
        self.from_parser += 1
        return label_map

    def _own_mask(self, mask_file: Path, image_file: Path, size: tuple[int, int]) -> np.ndarray:
        """The data set's mask, validated against the palette, of the image's (width, height)."""
        try:
            label_map = load_label_map(mask_file, self.tolerance)  # (H, W)
        except InputError as err:
            raise item_error(mask_file, err) from None
        if label_map.shape[::-1] != size:
            raise ItemError(mask_file, f"mask is {label_map.shape[1]}x{label_map.shape[0]} but "
                                       f"its image {image_file} is {size[0]}x{size[1]}")
        return label_map


def _open_parser(masks: MasksConfig, data_dir: Path, ids: list[str],
                 parser_dir: str | Path | None) -> FaceParser | None:
    """Load the face parser if some image has no mask (and a parser is configured)."""
    unmasked = sum(not layout.mask_path(data_dir, i).is_file() for i in ids)
    if unmasked == 0:
        return None
    if masks.parser == "none" and not (data_dir / layout.MASKS).is_dir():
        raise ConfigError(f"params: 'masks.parser' is 'none' but {data_dir / layout.MASKS} does "
                          f"not exist (this data set has no masks): choose mediapipe, segformer "
                          f"or tiny")
    if masks.parser != "none":
        log.info("parse_masks: %d of %d images have no mask: parsing them with %s", unmasked,
                 len(ids), masks.parser)
    return load_parser(masks.parser, _parser_path(masks, parser_dir))


def parse_masks(data_dir: str | Path, out: str | Path, metrics: str | Path, *,
                masks: MasksConfig, on_error: str = "stop",
                parser_dir: str | Path | None = None) -> dict:
    """The `parse_masks` stage: a validated label map for every image of the `download` layout.

    Writes `out/masks/{id}.png`, `out/presence.json` ({id: 20 bools}), `out/split.json` (the ids
    that got a label map), `out/skipped.json`, and the class statistics to `metrics`.
    Returns the metrics.
    """
    data_dir = Path(data_dir)
    split = layout.read_split(data_dir)
    ids = [i for name in layout.SPLITS for i in split[name]]
    stats, presence = ClassStats(), {}
    with contextlib.ExitStack() as stack:
        parser = _open_parser(masks, data_dir, ids, parser_dir)
        if parser is not None:
            stack.callback(parser.close)
        labeler = _Labeler(data_dir, masks.color_tolerance, parser)
        tmp = stack.enter_context(atomic_path(out))  # committed before the parser is closed
        (tmp / layout.MASKS).mkdir(parents=True)

        def work(id_: str) -> None:
            label_map = labeler(id_)  # (H, W)
            save_label_map(layout.mask_path(tmp, id_), label_map)
            presence[id_] = slot_presence(label_map).tolist()
            stats.add(label_map)

        skipped = run_items(ids, work, on_error=on_error,
                            file_of=lambda i: layout.image_path(data_dir, i), desc="parse_masks")
        _check_not_empty(len(presence), skipped, str(data_dir))
        write_json(tmp / layout.PRESENCE, presence)
        write_json(tmp / layout.SPLIT, {s: [i for i in split[s] if i in presence]
                                        for s in layout.SPLITS})
        write_json(tmp / layout.SKIPPED, skipped)
    result = {"parser": masks.parser, "num_images": len(presence), "num_skipped": len(skipped),
              "from_dataset": labeler.from_dataset, "from_parser": labeler.from_parser,
              "classes": stats.summary()}
    write_json(metrics, result)
    log.info("parse_masks: %d label maps (%d from the data set, %d parsed), skipped %d",
             len(presence), labeler.from_dataset, labeler.from_parser, len(skipped))
    return result
