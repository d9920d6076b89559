"""Attribute accuracy: does the generated face show the colours and accessories of its caption?

The embedded stand-in for the CLIP "Text" column (docs/design.md, "Metrics"). For every image, a
face parser's label map of the generated face says where each region is; for each colour attribute
the caption states (e.g. hair colour), `read_color` names the colour of the pixels in that
attribute's regions, compared with the caption's word; for each accessory the caption states
(hat, eyeglasses, earrings, necklace), its presence in the label map is compared with the
caption's yes/no.

Rules: an attribute the caption leaves unstated (missing or None) is not scored. A colour whose
regions have fewer than `min_pixels` pixels in the label map counts as wrong: the face failed to
show the region the caption describes. The tables (`read_color`, which regions carry which
colour attribute, which labels are which accessory) come from the data set's vocabulary and are
passed in, so this module knows no particular data set.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from facemogle.core.labels import LABEL_INDEX
from facemogle.evaluation.metrics.common import Images, MetricValue, image_list

ReadColor = Callable[[np.ndarray, str], str]


def _label_ids(table: Mapping[str, str | Sequence[str]], what: str) -> dict[str, list[int]]:
    """Attribute -> label indices, from attribute -> label name(s)."""
    out = {}
    for attr, names in table.items():
        names = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in names if n not in LABEL_INDEX]
        if unknown or not names:
            raise ValueError(f"{what}['{attr}']: unknown or no label names {unknown}; valid: "
                             f"{list(LABEL_INDEX)}")
        out[attr] = [LABEL_INDEX[n] for n in names]
    return out


def _judge_image(image: np.ndarray, label_map: np.ndarray, attrs: Mapping[str, Any],
                 colors: dict[str, list[int]], accessories: dict[str, list[int]],
                 read_color: ReadColor, min_pixels: int) -> dict[str, bool]:
    """Attribute -> correct? for the attributes this image's caption states."""
    verdicts = {}
    for attr, ids in colors.items():
        expected = attrs.get(attr)
        if expected is None:
            continue
        region = np.isin(label_map, ids)  # (H, W)
        verdicts[attr] = bool(region.sum() >= min_pixels
                              and read_color(image[region], attr) == expected)
    for attr, ids in accessories.items():
        expected = attrs.get(attr)
        if expected is None:
            continue
        present = int(np.isin(label_map, ids).sum()) >= min_pixels
        verdicts[attr] = present == bool(expected)
    return verdicts


def attribute_accuracy(images: Images, label_maps: Sequence[np.ndarray],
                       attributes: Sequence[Mapping[str, Any]], *, read_color: ReadColor,
                       color_attributes: Mapping[str, str | Sequence[str]],
                       accessory_labels: Mapping[str, str | Sequence[str]],
                       min_pixels: int = 1) -> dict[str, Any]:
    """Per-attribute accuracy over the images whose captions state that attribute.

    images: N uint8 (H, W, 3); label_maps: N (H, W) label indices of the generated faces;
    attributes: N mappings attribute -> colour name / bool / None. `read_color(pixels (K, 3)
    uint8, attribute) -> colour name`. Returns {"per_attribute": {attr: accuracy or None if no
    caption states it}, "counts": {attr: images scored}, "color_mean" and "accessory_mean": the
    mean of the per-attribute accuracies of each group (each attribute weighs the same), None
    when nothing in the group was scored, "per_image": per image {attr: judged correct} of the
    attributes scored on it, "color_attributes": the colour group's names}.
    """
    arrays = image_list(images)
    if not (len(arrays) == len(label_maps) == len(attributes)):
        raise ValueError(f"attribute accuracy: {len(arrays)} images, {len(label_maps)} label "
                         f"maps and {len(attributes)} attribute sets must match")
    colors = _label_ids(color_attributes, "color_attributes")
    accessories = _label_ids(accessory_labels, "accessory_labels")
    correct = {attr: 0 for attr in (*colors, *accessories)}
    counts = dict.fromkeys(correct, 0)
    per_image = []
    for n, (image, label_map, attrs) in enumerate(zip(arrays, label_maps, attributes)):
        label_map = np.asarray(label_map)
        if label_map.shape != image.shape[:2]:
            raise ValueError(f"attribute accuracy: label map {n} has shape {label_map.shape}, "
                             f"image {image.shape[:2]}")
        judged = _judge_image(image, label_map, attrs, colors, accessories, read_color,
                              min_pixels)
        per_image.append({attr: bool(ok) for attr, ok in judged.items()})
        for attr, ok in judged.items():
            counts[attr] += 1
            correct[attr] += ok
    per_attribute = {a: (correct[a] / counts[a] if counts[a] else None) for a in correct}

    def mean(names) -> float | None:
        scored = [per_attribute[a] for a in names if per_attribute[a] is not None]
        return float(np.mean(scored)) if scored else None

    return {"per_attribute": per_attribute, "counts": counts, "color_mean": mean(colors),
            "accessory_mean": mean(accessories), "per_image": per_image,
            "color_attributes": list(colors)}


def attribute_metric_values(result: Mapping[str, Any], backend: str) -> list[MetricValue]:
    """"attribute_acc" (mean over colours: what only the caption says), "accessory_acc" (mean
    over accessories: the mask draws them too) and "attribute_acc_<attr>" per attribute;
    unscored: skipped."""
    def value(name: str, v: float | None) -> MetricValue:
        if v is None:
            return MetricValue.skip(name, backend, "no caption states this attribute")
        return MetricValue(name, float(v), backend)

    values = [value("attribute_acc", result["color_mean"]),
              value("accessory_acc", result["accessory_mean"])]
    values += [value(f"attribute_acc_{a}", v) for a, v in result["per_attribute"].items()]
    return values
