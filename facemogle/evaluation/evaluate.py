"""The `evaluate` stage's work: every metric that can run, per mode, paired by image id.

Embedded metrics (docs/design.md, "Metrics") use the embedded base's fixed face parser: mask
mIoU (the parser's label map of each generated face vs its input mask), attribute accuracy
(colours read from the generated pixels in the parser's regions vs the caption's colours),
accessory accuracy (hat, glasses, earrings, necklace present as the caption says), and a Frechet
distance / KID in the parser's bottleneck feature space, named `fd_parser` / `kid_parser_x1000`
(never "FID"). Every parser metric's backend names the parser file's SHA-256, and each mode's
file carries the parser's ceilings: its own mIoU (and IoU per class) on the real test images and
on their VAE reconstructions against the same masks, the score a generator that reproduced the
test faces exactly would be measured at. The paper's model-backed metrics run when their
weights are configured (`facemogle.evaluation.metrics.suite`), and are reported skipped with the
reason otherwise.

Every mode gets every metric (the paper's Tables 1 and 2 fill every cell): it is scored against
the first caption, the mask and the real photo of its image id, whichever conditions it saw.
mask2face never saw the caption: its attribute accuracy, CLIP score and ImageReward are the
level a face reaches without the text (the baseline that multimodal and text2face are compared
with), as text2face's mIoU and DINO structure distance (against the real photo of the id) are
the level without the mask.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facemogle.core import labels, latents
from facemogle.core.config import EvaluateConfig
from facemogle.core.io import InputError, read_json, read_jsonl, read_rgb, write_json
from facemogle.data import colours, layout
from facemogle.evaluation.metrics.attributes import (
    attribute_accuracy,
    attribute_metric_values,
)
from facemogle.evaluation.metrics.common import (
    MetricValue,
    metrics_json,
    pair_by_id,
    skip_all,
)
from facemogle.evaluation.metrics.distances import feature_space_metrics
from facemogle.evaluation.metrics.segmentation import (
    confusion_matrix,
    mask_iou,
    mask_metric_values,
    overlap,
)
from facemogle.evaluation.metrics.suite import ModelSuite, small_detector_metrics
from facemogle.sampling import samples_folder

log = logging.getLogger(__name__)

# Accessories are judged by presence of their region in the parsed generated face.
ACCESSORY_LABELS = {"hat": "hat", "eyeglasses": "eye_g", "earrings": "ear_r",
                    "necklace": "neck_l"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")  # generated images of any method
PER_IMAGE = "per_image"  # folder of the per-image counts, beside the metrics files


def _images01(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


@torch.no_grad()
def _parse(parser, images: list[np.ndarray], batch_size: int) -> tuple[list, np.ndarray]:
    maps, feats = [], []
    device = next(parser.parameters()).device
    for start in range(0, len(images), batch_size):
        x = _images01(images[start:start + batch_size]).to(device)
        maps += list(parser.parse(x).cpu().numpy())
        feats.append(parser.features(x).float().cpu().numpy())
    return maps, np.concatenate(feats)


def per_image_overlap(pred_maps: list[np.ndarray], target_maps: list[np.ndarray]
                      ) -> dict[str, list[list[int]]]:
    """Per image and class, the pixel counts of intersection and union of predicted and target
    maps: summed over any subset of images they give that subset's mIoU (`mask_iou`)."""
    inter, union = [], []
    for pred, target in zip(pred_maps, target_maps):
        i, u = overlap(confusion_matrix([pred], [target]))  # (C,), (C,)
        inter.append(i.tolist())
        union.append(u.tolist())
    return {"mask_intersection": inter, "mask_union": union}


GROUP_KEY = "offdist_kind"  # the attribute that splits the off-distribution set into its kinds


def group_miou_values(gen_maps: list[np.ndarray], masks: list[np.ndarray],
                      attributes: list[dict] | None, backend: str) -> list[MetricValue]:
    """`mask_miou_<kind>`: the mIoU over the images of each kind, for a set whose attributes
    name one (`GROUP_KEY`, the off-distribution set: beyond, drawn, photo)."""
    groups: dict[str, list[int]] = {}
    for i, attrs in enumerate(attributes or []):
        if attrs.get(GROUP_KEY):
            groups.setdefault(attrs[GROUP_KEY], []).append(i)
    return [MetricValue(f"mask_miou_{kind}", mask_iou([gen_maps[i] for i in rows],
                                                      [masks[i] for i in rows]).mean_iou, backend)
            for kind, rows in groups.items()]


def parser_metrics(parser, generated: list[np.ndarray], reference: list[np.ndarray],
                   input_masks: list[np.ndarray], attributes: list[dict] | None,
                   cfg: EvaluateConfig, *, seed: int, backend: str
                   ) -> tuple[list[MetricValue], dict[str, Any]]:
    """mIoU, attribute accuracy and the parser-feature-space Frechet distance / KID; and the
    per-image counts behind mIoU and attribute accuracy (for intervals over test images)."""
    gen_maps, gen_feats = _parse(parser, generated, cfg.batch_size)
    _, ref_feats = _parse(parser, reference, cfg.batch_size)
    values = mask_metric_values(mask_iou(gen_maps, input_masks), backend)
    values += group_miou_values(gen_maps, input_masks, attributes, backend)
    per_image: dict[str, Any] = per_image_overlap(gen_maps, input_masks)
    values += feature_space_metrics("parser", gen_feats, ref_feats, subsets=cfg.kid_subsets,
                                    subset_size=cfg.kid_subset_size, seed=seed, backend=backend)
    if attributes is None:
        values += skip_all(["attribute_acc", "accessory_acc"], backend,
                           "the data set has no attribute annotations")
    else:
        result = attribute_accuracy(generated, gen_maps, attributes,
                                    read_color=colours.read_color,
                                    color_attributes=colours.COLOR_ATTRIBUTES,
                                    accessory_labels=ACCESSORY_LABELS)
        values += attribute_metric_values(result, backend)
        per_image.update(attributes=result["per_image"],
                         color_attributes=result["color_attributes"])
    return values, per_image


def parser_ceilings(parser, vae, images: list[np.ndarray], masks: list[np.ndarray],
                    batch_size: int, backend: str) -> list[MetricValue]:
    """The parser's mIoU and IoU per class on real images (H, W, 3) and on their VAE
    reconstructions, against `masks`: `parser_ceiling_{miou,iou_<class>}_{real,recon}`."""
    real = _images01(images)  # (N, 3, H, W)
    sets = {"real": real}
    if vae is not None:
        device = next(vae.parameters()).device
        sets["recon"] = torch.cat([
            latents.decode(vae, latents.encode_batched(vae, real[i:i + batch_size].to(device),
                                                       batch_size)).float().cpu()
            for i in range(0, len(real), batch_size)])  # (N, 3, H, W)
    values = []
    for name, x in sets.items():
        as_uint8 = [(im.permute(1, 2, 0) * 255).round().byte().numpy() for im in x]
        scores = mask_iou(_parse(parser, as_uint8, batch_size)[0], masks)
        values.append(MetricValue(f"parser_ceiling_miou_{name}", scores.mean_iou, backend))
        values += [MetricValue(f"parser_ceiling_iou_{name}_{cls}", iou, backend)
                   for cls, iou in scores.per_class.items() if iou is not None]
    return values


def evaluate_mode(mode: str, samples_dir: Path, data_dir: Path, labels_dir: Path,
                  expected_ids: list[str], cfg: EvaluateConfig, *, parser, suite: ModelSuite,
                  seed: int, parser_name: str = "face parser",
                  ceilings: list[MetricValue] = ()) -> tuple[list[MetricValue], dict[str, Any]]:
    """All metrics of one mode, generated and reference images paired by id; and the per-image
    counts behind mIoU and attribute accuracy ({} without a parser).

    `expected_ids` are the test ids the sample stage generated; a generated file missing for one
    of them, or an extra file, is an error listing the ids (never pairing by sorted names).
    """
    generated = {p.stem: p for p in samples_folder.mode_dir(samples_dir, mode).iterdir()
                 if p.suffix.lower() in IMAGE_SUFFIXES}
    reference = {i: layout.image_path(data_dir, i) for i in expected_ids}
    ids = pair_by_id(generated, reference)
    gen_images = [read_rgb(generated[i]) for i in ids]
    ref_images = [read_rgb(reference[i]) for i in ids]
    for i, gen, ref in zip(ids, gen_images, ref_images):
        if gen.shape != ref.shape:
            raise InputError(f"{generated[i]}: {gen.shape[1]}x{gen.shape[0]} px, expected the "
                             f"test image's {ref.shape[1]}x{ref.shape[0]} (data.resolution)")
    masks = [labels.load_label_map(layout.mask_path(labels_dir, i)) for i in ids]
    captions = {r["id"]: r["captions"][0] for r in read_jsonl(layout.captions_path(data_dir))}
    attributes_path = layout.attributes_path(data_dir)
    attributes = None
    if attributes_path.exists():
        table = {r["id"]: r["attributes"] for r in read_jsonl(attributes_path)}
        attributes = [table[i] for i in ids]  # every mode is scored against the caption
    values: list[MetricValue] = []
    if parser is None:
        reason = "no face parser (base stage output has no parser/)"
        values += skip_all(["mask_miou", "fd_parser", "kid_parser_x1000", "attribute_acc",
                            "accessory_acc"], "parser", reason)
        per_image: dict[str, Any] = {"ids": ids, "skipped": reason}
    else:
        parsed, counts = parser_metrics(parser, gen_images, ref_images, masks, attributes,
                                        cfg, seed=seed, backend=parser_name)
        values += parsed + list(ceilings)
        per_image = {"ids": ids, **counts}
    prompts = [captions[i] for i in ids]  # every mode, like the attributes above
    values += suite.evaluate(gen_images, ref_images, prompts, seed=seed)
    values += small_detector_metrics(ref_images, gen_images, cfg, seed=seed)
    return values, per_image


def expected_test_ids(samples_dir: Path, labels_dir: Path, ids_file: Path | None) -> list[str]:
    """The ids a folder of generated images must hold: `ids_file` if given (another folder's
    `ids.json`, to score a baseline on the sample stage's ids), else the folder's own `ids.json`
    (the sample stage writes one), else the whole test split."""
    test_ids = read_json(layout.split_path(labels_dir))["test"]
    path = ids_file or samples_folder.ids_path(samples_dir)
    if ids_file is None and not path.exists():
        return list(test_ids)
    expected = read_json(path)
    unknown = [i for i in expected if i not in set(test_ids)]
    if unknown:
        raise InputError(f"{path}: ids not in the test split: {unknown[:10]}")
    return expected


def evaluate(samples_dir: str | Path, data_dir: str | Path, labels_dir: str | Path,
             out_dir: str | Path, cfg: EvaluateConfig, *, modes: list[str], parser, seed: int,
             device: torch.device | None = None, ids_file: str | Path | None = None,
             vae=None, parser_name: str = "face parser") -> dict[str, dict]:
    """Write `out_dir/<mode>.json` for each mode (`stages.report` lays them out as tables), and
    `out_dir/per_image/<mode>.json`: the test ids and per-image counts behind mIoU and attribute
    accuracy (`facemogle.evaluation.uncertainty` resamples them); without a face parser, the
    ids and why there are no counts (the stage's declared output exists either way).

    `samples_dir/<mode>/<id>.png` are the sample stage's images or any other method's (PNG,
    JPEG or WebP named by test id, at `data.resolution`), paired with the test images by id.
    `parser_name` (the backend of every parser metric) should name the parser file's hash;
    with `vae`, the parser's ceilings include VAE reconstructions.
    """
    samples_dir, data_dir, labels_dir, out_dir = map(Path, (samples_dir, data_dir, labels_dir,
                                                             out_dir))
    expected_ids = expected_test_ids(samples_dir, labels_dir,
                                     None if ids_file is None else Path(ids_file))
    suite = ModelSuite(cfg, device=device)
    ceilings = [] if parser is None else parser_ceilings(
        parser, vae, [read_rgb(layout.image_path(data_dir, i)) for i in expected_ids],
        [labels.load_label_map(layout.mask_path(labels_dir, i)) for i in expected_ids],
        cfg.batch_size, parser_name)
    results = {}
    for mode in modes:
        values, per_image = evaluate_mode(mode, samples_dir, data_dir, labels_dir, expected_ids,
                                          cfg, parser=parser, suite=suite, seed=seed,
                                          parser_name=parser_name, ceilings=ceilings)
        results[mode] = metrics_json(values)
        write_json(out_dir / f"{mode}.json", results[mode])
        write_json(out_dir / PER_IMAGE / f"{mode}.json", per_image)
        ran = [v.name for v in values if v.skipped is None]
        skipped = {v.name: v.skipped for v in values if v.skipped is not None}
        log.info("%s: computed %s", mode, ", ".join(ran))
        for name, reason in skipped.items():
            log.info("%s: skipped %s (%s)", mode, name, reason)
    return results
