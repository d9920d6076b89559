"""The `download` stage as a library function (docs/design.md, "Stages").

`download` reads a data set (`facemogle.data.readers`) into the normalized layout
(`facemogle.data.layout`): faces resized to `data.resolution` (centre square crop, Lanczos), masks
resized with nearest-neighbour only, captions, split.

Bad items (corrupt or unreadable files, a mask whose size differs from its image, an image with
no caption) stop the stage with an error naming the file, or with `data.on_error: skip` are left
out and listed with their reason in `skipped.json`. The output is built in a temporary sibling
folder and renamed at the end, so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from facemogle.core.config import DataConfig, OffDistConfig
from facemogle.core.io import InputError, atomic_path, write_json, write_jsonl
from facemogle.data import layout
from facemogle.data.items import check_not_empty, run_items
from facemogle.data.layout import Entry, Sample
from facemogle.data.offdist import OffDistributionReader
from facemogle.data.readers import Reader, open_reader

log = logging.getLogger(__name__)


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
        check_not_empty(len(collected.captions), skipped, str(out))
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


def download_offdist(data: DataConfig, offdist: OffDistConfig, out: str | Path) -> list[dict]:
    """The `download` stage for the off-distribution entry: the `offdist` set at `data`'s
    resolution, data seed and caption count, every item in the test split."""
    reader = OffDistributionReader(num_beyond=offdist.num_beyond, num_drawn=offdist.num_drawn,
                                   photos=offdist.photos, seed=data.seed,
                                   resolution=data.resolution,
                                   num_captions=data.captions_per_image)
    skipped = write_layout(reader, out, resolution=data.resolution, on_error=data.on_error,
                           max_captions=data.captions_per_image)
    log.info("download: wrote the off-distribution set (%d items) to %s, skipped %d",
             len(reader.entries()) - len(skipped), out, len(skipped))
    return skipped
