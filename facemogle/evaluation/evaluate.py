"""The `evaluate` stage's work: every metric that can run, per mode, paired by image id.

Embedded metrics (docs/design.md, "Metrics") use the face parser trained by the `base` stage: mask
mIoU (the parser's label map of each generated face vs its input mask), attribute accuracy
(colours read from the generated pixels in the parser's regions vs the caption's colours),
accessory accuracy (hat, glasses, earrings, necklace present as the caption says), and a Frechet
distance / KID in the parser's bottleneck feature space, named `fd_parser` / `kid_parser_x1000`
(never "FID"). The paper's model-backed metrics run when their
weights are configured (`facemogle.evaluation.metrics.suite`), and are reported skipped with the reason
otherwise.

Every mode is scored against the caption of its image id, including mask2face, which never saw
it: its attribute accuracy is the level a face reaches without the text (the baseline that
multimodal and text2face are compared with), as its mIoU is for text2face.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from facemogle.core import labels
from facemogle.core.config import EvaluateConfig
from facemogle.core.io import read_jsonl, read_rgb, write_json
from facemogle.data import colours
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
from facemogle.evaluation.metrics.segmentation import mask_iou, mask_metric_values
from facemogle.evaluation.metrics.suite import ModelSuite, small_detector_metrics

log = logging.getLogger(__name__)

# Accessories are judged by presence of their region in the parsed generated face.
ACCESSORY_LABELS = {"hat": "hat", "eyeglasses": "eye_g", "earrings": "ear_r",
                    "necklace": "neck_l"}
MASK_MODES = ("multimodal", "mask2face")
TEXT_MODES = ("multimodal", "text2face")


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


def parser_metrics(parser, generated: list[np.ndarray], reference: list[np.ndarray],
                   input_masks: list[np.ndarray], attributes: list[dict] | None,
                   cfg: EvaluateConfig, *, seed: int, backend: str) -> list[MetricValue]:
    """mIoU, attribute accuracy and the parser-feature-space Frechet distance / KID."""
    gen_maps, gen_feats = _parse(parser, generated, cfg.batch_size)
    _, ref_feats = _parse(parser, reference, cfg.batch_size)
    values = mask_metric_values(mask_iou(gen_maps, input_masks), backend)
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
    return values


def evaluate_mode(mode: str, samples_dir: Path, data_dir: Path, labels_dir: Path,
                  expected_ids: list[str], cfg: EvaluateConfig, *, parser, suite: ModelSuite,
                  seed: int) -> list[MetricValue]:
    """All metrics of one mode; generated and reference images are paired by id.

    `expected_ids` are the test ids the sample stage generated; a generated file missing for one
    of them, or an extra file, is an error listing the ids (never pairing by sorted names).
    """
    generated = {p.stem: p for p in (samples_dir / mode).glob("*.png")}
    reference = {i: data_dir / "images" / f"{i}.png" for i in expected_ids}
    ids = pair_by_id(generated, reference)
    gen_images = [read_rgb(generated[i]) for i in ids]
    ref_images = [read_rgb(reference[i]) for i in ids]
    masks = [labels.load_label_map(labels_dir / "masks" / f"{i}.png") for i in ids]
    captions = {r["id"]: r["captions"][0] for r in read_jsonl(data_dir / "captions.jsonl")}
    attributes_path = data_dir / "attributes.jsonl"
    attributes = None
    if attributes_path.exists():
        table = {r["id"]: r["attributes"] for r in read_jsonl(attributes_path)}
        attributes = [table[i] for i in ids]  # every mode is scored against the caption
    values: list[MetricValue] = []
    if parser is None:
        values += skip_all(["mask_miou", "fd_parser", "kid_parser_x1000", "attribute_acc",
                            "accessory_acc"],
                           "parser", "no face parser (base stage output has no parser/)")
    else:
        values += parser_metrics(parser, gen_images, ref_images, masks, attributes, cfg,
                                 seed=seed, backend="facemogle tiny parser (base stage)")
    prompts = [captions[i] for i in ids] if mode in TEXT_MODES else None
    values += suite.evaluate(gen_images, ref_images, prompts, structure=mode in MASK_MODES,
                             seed=seed)
    values += small_detector_metrics(ref_images, gen_images, cfg, seed=seed)
    return values


def evaluate(samples_dir: str | Path, data_dir: str | Path, labels_dir: str | Path,
             out_dir: str | Path, cfg: EvaluateConfig, *, modes: list[str], parser, seed: int,
             device: torch.device | None = None) -> dict[str, dict]:
    """Write `out_dir/<mode>.json` for each mode (`stages.report` lays them out as tables)."""
    samples_dir, data_dir, labels_dir, out_dir = map(Path, (samples_dir, data_dir, labels_dir,
                                                             out_dir))
    test_ids = set(json.loads((labels_dir / "split.json").read_text())["test"])
    expected_ids = json.loads((samples_dir / "ids.json").read_text())
    unknown = [i for i in expected_ids if i not in test_ids]
    if unknown:
        raise ValueError(f"{samples_dir / 'ids.json'}: ids not in the test split: {unknown[:10]}")
    suite = ModelSuite(cfg, device=device)
    results = {}
    for mode in modes:
        values = evaluate_mode(mode, samples_dir, data_dir, labels_dir, expected_ids, cfg,
                               parser=parser, suite=suite, seed=seed)
        results[mode] = metrics_json(values)
        write_json(out_dir / f"{mode}.json", results[mode])
        ran = [v.name for v in values if v.skipped is None]
        skipped = {v.name: v.skipped for v in values if v.skipped is not None}
        log.info("%s: computed %s", mode, ", ".join(ran))
        for name, reason in skipped.items():
            log.info("%s: skipped %s (%s)", mode, name, reason)
    return results
