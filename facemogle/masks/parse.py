"""The `parse_masks` stage as a library function (docs/design.md, "Stages").

log = logging.getLogger(__name__)

`parse_masks` gives every image a validated palette label map: the data set's own mask (palette,
index or colour mask, checked against the palette with `masks.color_tolerance`) or, where there
is none, a face parser's (`facemogle.masks.face_parsers`); it writes per-image slot presence and
class statistics. Bad items (an unknown mask colour, a mask whose size differs from its image)
stop the stage with an error naming the file, or with `data.on_error: skip` are left out and
listed in `skipped.json`. The output is written atomically.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facemogle.core.config import ConfigError, MasksConfig
from facemogle.core.io import InputError, atomic_path, write_json
from facemogle.core.labels import (
    LABELS,
    NUM_LABELS,
    load_label_map,
    save_label_map,
    slot_presence,
)
from facemogle.data import layout
from facemogle.data.items import check_not_empty, run_items
from facemogle.data.layout import ItemError, item_error, read_image
from facemogle.masks.face_parsers import FaceParser, load_parser, parse_image

log = logging.getLogger(__name__)


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
        check_not_empty(len(presence), skipped, str(data_dir))
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
