"""Measuring the embedded base's levers: short pretraining runs that change one thing each.

    python -m facemogle.evaluation.base_levers [--only NAME ...] [--out metrics/pretrain/levers]

A full pretraining run takes about an hour on two cores, so each lever is measured on the one
phase it acts on, on a shortened schedule, against the same shortened schedule of the shipped
recipe (`short`), and each phase's shipped weights (the full schedule) are measured by the same
code as a point on the schedule axis:

- transformer: the plain base's text-to-image samples of the 128 test faces (first caption,
  true CFG 3, 28 Euler steps, the shipped VAE and parser) scored by attribute accuracy as the
  `evaluate` stage scores them; levers: a second training seed (the noise), the text length,
  complete captions only, a loss weighted toward small regions, 16 x 16 image tokens, a wider
  model;
- parser: its mIoU on the real test faces, their reconstructions by the shipped VAE, and the
  reconstructions of the off-distribution set; lever: width;
- VAE: held-out PSNR; lever: width.

Each run writes `<out>/<name>.json` (configuration, training and evaluation seconds, the
machine, the metrics) and checkpoints under `data/pretrain/levers/<name>` so an interrupted run
resumes; a finished run is skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from facemogle.base.loader import Base
from facemogle.base.segmenter import FaceParser
from facemogle.base.text import MiniLMTextEncoder
from facemogle.core import flow, latents
from facemogle.core.config import load_params
from facemogle.core.io import read_jsonl, read_rgb, write_json
from facemogle.core.labels import LABEL_INDEX, load_label_map
from facemogle.core.machine import machine
from facemogle.data import colours
from facemogle.data.layout import ATTRIBUTES, image_path, mask_path, read_split
from facemogle.evaluation.evaluate import ACCESSORY_LABELS
from facemogle.evaluation.metrics.attributes import attribute_accuracy
from facemogle.pretrain.common import FaceSet, load_faces, phase_generator
from facemogle.pretrain.parser import parser_miou, train_parser
from facemogle.pretrain.phase_store import PhaseStore
from facemogle.pretrain.train_embedded import faces_for, load_folder
from facemogle.pretrain.transformer import caption_table, train_transformer
from facemogle.pretrain.vae import decode_faces, encode_faces, train_vae, vae_psnr

SHIPPED = Path("pretrained/embedded")
OFFDIST = Path("data/offdist")  # the off-distribution set as `dvc repro` writes it
CFG_SCALE, SAMPLE_STEPS, SAMPLE_SEED = 3.0, 28, 0  # the `base` sampling mode of params.yaml
# Regions smaller than a 16 x 16 px token at 128 px: what the small-region loss weights.
SMALL = ("l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r", "nose",
         "mouth", "u_lip", "l_lip", "neck_l")


@dataclass(frozen=True)
class Lever:
    """One run: `phase` trained for `steps` with `overrides` on its `params-pretrain.yaml`
    section (steps 0: measure the shipped weights)."""

    phase: str
    what: str
    steps: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 42
    complete_captions: bool = False  # train on caption 0 only, which names every attribute
    small_region_weight: float = 0.0  # extra loss weight of a token fully inside SMALL
    patch1: bool = False  # 16 x 16 tokens of 16 channels instead of 8 x 8 packed 2 x 2 tokens
    text_tokens: int = 0  # word pieces kept as the text sequence (0: base.text_max_tokens)


T_STEPS, P_STEPS, V_STEPS = 2000, 500, 1000
LEVERS: dict[str, Lever] = {
    "transformer_shipped": Lever("transformer", "the shipped transformer (full schedule)"),
    "transformer_short": Lever("transformer", "shipped recipe, short schedule", T_STEPS,
                               text_tokens=16),
    "transformer_short_seed43": Lever("transformer", "short schedule, training seed 43",
                                      T_STEPS, seed=43, text_tokens=16),
    "transformer_complete_captions": Lever(
        "transformer", "short schedule, trained on the complete caption only", T_STEPS,
        complete_captions=True, text_tokens=16),
    "transformer_text64": Lever(
        "transformer", "short schedule, 64 word pieces of text (every caption whole)", T_STEPS,
        text_tokens=64),
    "transformer_text64_complete": Lever(
        "transformer", "short schedule, 64 word pieces, complete caption only", T_STEPS,
        complete_captions=True, text_tokens=64),
    "transformer_small_regions": Lever(
        "transformer", "short schedule, loss weight 1 + 4 x small-region share per token",
        T_STEPS, small_region_weight=4.0, text_tokens=16),
    "transformer_tokens16": Lever(
        "transformer", "short schedule, 16 x 16 image tokens (patch 1, 16 channels)", T_STEPS,
        patch1=True, text_tokens=16),
    "transformer_wide": Lever("transformer", "short schedule, 8 heads (width 256)", T_STEPS,
                              {"num_attention_heads": 8}, text_tokens=16),
    "parser_shipped": Lever("parser", "shipped recipe, full schedule (1500 steps)"),
    "parser_short": Lever("parser", "shipped recipe, short schedule", P_STEPS),
    "parser_wide": Lever("parser", "short schedule, width 32", P_STEPS, {"width": 32}),
    "vae_shipped": Lever("vae", "shipped recipe, full schedule (4000 steps)"),
    "vae_short": Lever("vae", "shipped recipe, short schedule", V_STEPS),
    "vae_wide": Lever("vae", "short schedule, widths 32-256", V_STEPS,
                      {"block_out_channels": (32, 64, 128, 256)}),
}


def token_layout(z: Tensor, patch1: bool) -> tuple[Tensor, Tensor]:
    """(N, 16, h, w) latents -> tokens (N, L, C) and their position ids (L, 3)."""
    n, c, h, w = z.shape
    if patch1:  # one token per latent pixel; ids of a grid twice as large give h x w positions
        return z.permute(0, 2, 3, 1).reshape(n, h * w, c), latents.image_ids(2 * h, 2 * w)
    return latents.pack(z), latents.image_ids(h, w)


def from_tokens(tokens: Tensor, h: int, w: int, patch1: bool) -> Tensor:
    if patch1:
        return tokens.reshape(len(tokens), h, w, -1).permute(0, 3, 1, 2)
    return latents.unpack(tokens, h, w)


def small_region_share(label_maps: Tensor, tokens_per_side: int) -> Tensor:
    """(N, H, W) label maps -> (N, L) share of each token's pixels in a SMALL region."""
    small = torch.zeros(max(LABEL_INDEX.values()) + 1, dtype=torch.bool)
    small[[LABEL_INDEX[name] for name in SMALL]] = True
    share = F.adaptive_avg_pool2d(small[label_maps.long()].float()[:, None], tokens_per_side)
    return share.flatten(1)  # (N, L)


def train_transformer_lever(lever: Lever, cfg, train: FaceSet, vae, encoder, store: PhaseStore):
    z = encode_faces(vae, train)  # (N, 16, h, w)
    tokens, img_ids = token_layout(z, lever.patch1)
    keep = 1 if lever.complete_captions else cfg.captions_per_image
    text = caption_table(encoder, [caps[:keep] for caps in train.captions])
    weights = None
    if lever.small_region_weight:
        side = int(len(img_ids) ** 0.5)
        weights = 1 + lever.small_region_weight * small_region_share(train.label_maps, side)
    return train_transformer(cfg, tokens, img_ids, text, generator=phase_generator(lever.seed, 2),
                             store=store, token_weights=weights)


@torch.no_grad()
def sample_plain_base(transformer, vae, encoder, prompts: list[str], ids: list[str],
                      resolution: int, patch1: bool) -> Tensor:
    """Text-to-image samples (N, 3, H, W) in [0, 1] as the `base` sampling mode draws them:
    true CFG against the empty prompt, FLUX's Euler schedule, one noise generator per image id."""
    h = w = resolution // 8
    channels = transformer.config.in_channels
    num_tokens = h * w * 16 // channels
    img_ids = token_layout(torch.zeros(1, 16, h, w), patch1)[1]
    empty_seq, empty_pooled = encoder.encode([""])
    out = []
    for start in range(0, len(prompts), 32):
        seq, pooled = encoder.encode(prompts[start:start + 32])  # (B, T, D), (B, P)
        b = len(seq)
        seq = torch.cat([seq, empty_seq.expand_as(seq)])
        pooled = torch.cat([pooled, empty_pooled.expand_as(pooled)])
        txt_ids = latents.text_ids(seq.shape[1])

        def velocity(z_t: Tensor, sigma: Tensor) -> Tensor:
            v = transformer(hidden_states=torch.cat([z_t, z_t]), encoder_hidden_states=seq,
                            pooled_projections=pooled, timestep=torch.cat([sigma, sigma]),
                            img_ids=img_ids, txt_ids=txt_ids).sample  # (2B, L, C)
            return v[b:] + CFG_SCALE * (v[:b] - v[b:])

        noise = flow.initial_noise((num_tokens, channels),
                                   flow.generators_for(ids[start:start + 32], SAMPLE_SEED))
        z = flow.euler_sample(velocity, noise, SAMPLE_STEPS, image_seq_len=num_tokens)
        out.append(latents.decode(vae, from_tokens(z, h, w, patch1)).clamp(0, 1))
    return torch.cat(out)  # (N, 3, H, W)


def text_following(images01: Tensor, test: FaceSet, parser, attributes: list[dict]
                   ) -> dict[str, Any]:
    """Attribute accuracy of generated faces as `evaluate` measures it (colours read in the
    parser's regions; accessories by presence)."""
    maps = [parser.parse(images01[i:i + 64]).numpy() for i in range(0, len(images01), 64)]
    maps = list(np.concatenate(maps))
    pixels = [(im.permute(1, 2, 0) * 255).round().byte().numpy() for im in images01]
    result = attribute_accuracy(pixels, maps, attributes, read_color=colours.read_color,
                                color_attributes=colours.COLOR_ATTRIBUTES,
                                accessory_labels=ACCESSORY_LABELS)
    per = {a: (round(v, 4) if v is not None else None) for a, v in result["per_attribute"].items()}
    return {"attribute_acc": result["color_mean"], "accessory_acc": result["accessory_mean"],
            "per_attribute": per,
            "mask_miou_without_mask": parser_miou(parser, images01, test.label_maps)}


def offdist_faces() -> tuple[Tensor, Tensor]:
    """The off-distribution set's images (N, 3, H, W) in [0, 1] and label maps (N, H, W)."""
    ids = read_split(OFFDIST / "labels")["test"]
    images = np.stack([read_rgb(image_path(OFFDIST / "raw", i)) for i in ids])
    maps = np.stack([load_label_map(mask_path(OFFDIST / "labels", i)) for i in ids])
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255,
            torch.from_numpy(maps))


@dataclass(frozen=True)
class LeverRun:
    """What the phases of one lever's run share: its configuration, the faces, the shipped base
    and parser, and the checkpoint store."""

    name: str
    lever: Lever
    cfg: Any  # the phase's section of params-pretrain.yaml with the lever's overrides
    text_tokens: int
    raw: Path
    train: FaceSet
    test: FaceSet
    base: Base
    parser: FaceParser
    store: PhaseStore


def prepare_lever(name: str, lever: Lever, params, raw: Path, work: Path) -> LeverRun:
    """Load the faces and the shipped weights, and open the lever's checkpoint store."""
    train, test = load_faces(raw, "train"), load_faces(raw, "test")
    base, parser = load_folder(SHIPPED)
    section = getattr(params.pretrain, lever.phase)
    cfg = dataclasses.replace(section, **lever.overrides,
                              **({"steps": lever.steps} if lever.steps else {}))
    text_tokens = lever.text_tokens or params.base.text_max_tokens
    store = PhaseStore(work / name, params.pretrain.checkpoint_every,
                       {"lever": name, "seed": lever.seed, "cfg": dataclasses.asdict(cfg),
                        "text_tokens": text_tokens})
    return LeverRun(name, lever, cfg, text_tokens, raw, train, test, base, parser, store)


def train_lever(run: LeverRun, encoder: MiniLMTextEncoder | None) -> torch.nn.Module | None:
    """The lever's phase trained on its schedule; None when it measures the shipped weights."""
    lever, cfg, train, vae = run.lever, run.cfg, run.train, run.base.vae
    if not lever.steps:
        return None
    if lever.phase == "transformer":
        return train_transformer_lever(lever, cfg, train, vae, encoder, run.store)
    if lever.phase == "parser":
        decoded = (decode_faces(vae, train) * 255).round().byte()
        return train_parser(cfg, train, decoded, generator=phase_generator(lever.seed, 3),
                            store=run.store)
    if lever.phase == "vae":
        return train_vae(cfg, train, generator=phase_generator(lever.seed, 1), store=run.store)
    return None


def evaluate_lever(run: LeverRun, model: torch.nn.Module, encoder: MiniLMTextEncoder | None
                   ) -> dict[str, Any]:
    """The metrics of the lever's phase: attribute accuracy of text-to-image samples, parser
    mIoU, or VAE PSNR."""
    base, test = run.base, run.test
    if run.lever.phase == "transformer":
        by_id = {r["id"]: r["attributes"] for r in read_jsonl(run.raw / ATTRIBUTES)}
        images = sample_plain_base(model, base.vae, encoder, [c[0] for c in test.captions],
                                   test.ids, test.resolution, run.lever.patch1)
        return text_following(images, test, run.parser, [by_id[i] for i in test.ids])
    if run.lever.phase == "parser":
        off_images, off_maps = offdist_faces()
        off = FaceSet([""] * len(off_maps), (off_images * 255).round().byte(), off_maps, [])
        recon = decode_faces(base.vae, off)
        return {"parser_miou": parser_miou(model, test.images01(slice(None)), test.label_maps),
                "parser_miou_decoded": parser_miou(model, decode_faces(base.vae, test),
                                                   test.label_maps),
                "parser_miou_offdist_decoded": parser_miou(model, recon, off_maps)}
    return vae_psnr(model, test)


def lever_record(run: LeverRun, model: torch.nn.Module, train_s: float, eval_start: float,
                 metrics: dict[str, Any]) -> dict[str, Any]:
    """The `<out>/<name>.json` record; evaluation seconds are counted from `eval_start`."""
    lever = run.lever
    return {"lever": run.name, "phase": lever.phase, "what": lever.what, "seed": lever.seed,
            "config": {**dataclasses.asdict(run.cfg), **{k: getattr(lever, k) for k in (
                "complete_captions", "small_region_weight", "patch1")},
                "text_tokens": run.text_tokens},
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_s": round(train_s, 1), "eval_s": round(time.monotonic() - eval_start, 1),
            "machine": machine(), "metrics": metrics}


def run_lever(name: str, lever: Lever, params, raw: Path, work: Path) -> dict[str, Any]:
    """Train (unless `lever.steps` is 0) and measure one lever: its record."""
    run = prepare_lever(name, lever, params, raw, work)
    torch.manual_seed(lever.seed)
    encoder = MiniLMTextEncoder(run.text_tokens) if lever.phase == "transformer" else None
    model = train_lever(run, encoder)
    train_s = run.store.elapsed if lever.steps else 0.0
    shipped = {"transformer": run.base.transformer, "parser": run.parser, "vae": run.base.vae}
    model = model or shipped[lever.phase]
    start = time.monotonic()
    metrics = evaluate_lever(run, model, encoder)
    return lever_record(run, model, train_s, start, metrics)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params-pretrain.yaml")
    parser.add_argument("--work", default="data/pretrain")
    parser.add_argument("--out", default="metrics/pretrain/levers")
    parser.add_argument("--only", nargs="+", choices=sorted(LEVERS), default=list(LEVERS))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    raw = faces_for(params.data, Path(args.work))
    for name in args.only:
        out = Path(args.out) / f"{name}.json"
        if out.is_file():
            continue
        record = run_lever(name, LEVERS[name], params, raw, Path(args.work) / "levers")
        write_json(out, record)
        print(f"{name}: {record['metrics']} (train {record['train_s']} s)", flush=True)


if __name__ == "__main__":
    main()
