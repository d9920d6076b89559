"""Masks outside the training distribution, and a sheet of what the model makes of them.

SynthFaces (and CelebAMask-HQ) faces are upright, centred and of one size. The layouts here are
not: one test mask scaled up until the face fills the frame, scaled down, tilted, pushed to the
side, and one face drawn from scratch with every accessory at once. The sheet shows how far mask
control reaches beyond what training showed.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from facemogle.core import flow, labels, latents
from facemogle.core.labels import LABEL_INDEX
from facemogle.models.facemogle import FaceMoGLE
from facemogle.sampling.sampler import Conditions, generate_images, residual_cache
from facemogle.sampling.sheets import to_uint8


def _affine(label_map: np.ndarray, *, scale: float = 1.0, angle: float = 0.0,
            shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Scale about the centre, rotate (degrees, counter-clockwise) and shift (fractions of the
    side) a (H, W) label map; uncovered pixels become background (label 0)."""
    h, w = label_map.shape
    image = Image.fromarray(label_map)
    if scale != 1.0:
        size = (round(w * scale), round(h * scale))
        scaled = image.resize(size, Image.Resampling.NEAREST)
        canvas = Image.new("L", (w, h), 0)
        canvas.paste(scaled, ((w - size[0]) // 2, (h - size[1]) // 2))
        image = canvas
    image = image.rotate(angle, resample=Image.Resampling.NEAREST, fillcolor=0,
                         translate=(round(shift[0] * w), round(shift[1] * h)))
    return np.asarray(image, dtype=np.uint8)


def drawn_face(size: int) -> np.ndarray:
    """A (size, size) label map drawn from scratch: a round face low in the frame under a wide
    hat, with glasses, earrings and a necklace all at once (rare together in training)."""
    image = Image.new("L", (100, 100), LABEL_INDEX["background"])
    draw = ImageDraw.Draw(image)
    for label, shape, box in (
        ("cloth", "ellipse", (10, 86, 90, 140)),
        ("neck", "rectangle", (41, 70, 59, 92)),
        ("neck_l", "ellipse", (40, 84, 60, 92)),
        ("hair", "ellipse", (24, 30, 76, 80)),
        ("l_ear", "ellipse", (25, 52, 33, 64)),
        ("r_ear", "ellipse", (67, 52, 75, 64)),
        ("ear_r", "ellipse", (26, 64, 31, 70)),
        ("ear_r", "ellipse", (69, 64, 74, 70)),
        ("skin", "ellipse", (31, 38, 69, 82)),
        ("l_brow", "rectangle", (37, 51, 47, 53)),
        ("r_brow", "rectangle", (53, 51, 63, 53)),
        ("eye_g", "rectangle", (35, 54, 65, 63)),
        ("l_eye", "ellipse", (39, 56, 45, 60)),
        ("r_eye", "ellipse", (55, 56, 61, 60)),
        ("nose", "polygon", ((50, 60), (46, 70), (54, 70))),
        ("u_lip", "ellipse", (43, 73, 57, 76)),
        ("l_lip", "ellipse", (43, 76, 57, 79)),
        ("hat", "ellipse", (8, 30, 92, 42)),
        ("hat", "rectangle", (30, 12, 70, 36)),
    ):
        getattr(draw, shape)(box, fill=LABEL_INDEX[label])
    return np.asarray(image.resize((size, size), Image.Resampling.NEAREST), dtype=np.uint8)


def layouts(label_map: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(name, (H, W) label map) pairs: `label_map` as it is, then the off-distribution layouts
    made from it, then `drawn_face`."""
    return [
        ("test mask as it is", label_map),
        ("face scaled x1.6 (fills the frame)", _affine(label_map, scale=1.6)),
        ("face scaled x0.5 (small)", _affine(label_map, scale=0.5)),
        ("head tilted 35 degrees", _affine(label_map, angle=35.0)),
        ("face pushed to the left", _affine(label_map, shift=(-0.3, 0.0))),
        ("drawn: wide hat, glasses, earrings, necklace", drawn_face(label_map.shape[0])),
    ]


@torch.no_grad()
def encode_slots(vae, label_map: np.ndarray, empty_slot: Tensor) -> Tensor:
    """(H, W) label map -> (20, L, C) packed slot latents: present labels' slot images encoded
    (posterior mean), absent ones `empty_slot` (L, C), as in the latent cache."""
    slots = labels.decouple(label_map)  # (20, 3, H, W)
    present = torch.from_numpy(labels.slot_presence(label_map))  # (20,)
    out = empty_slot.expand(labels.NUM_SLOTS, *empty_slot.shape).clone()  # (20, L, C)
    encoded = latents.pack(latents.encode(vae, slots[present].to(vae.device, vae.dtype)))
    out[present] = encoded.to(out.dtype).cpu()  # (S, L, C)
    return out


def sample_layouts(model: FaceMoGLE, base, cache, row: int, label_map: np.ndarray, cfg, *,
                   seed: int, caption: str) -> list[dict]:
    """Contact-sheet rows: the cached test image `row`'s first caption (`caption`, its text)
    with each of `layouts(label_map)`, multimodal, all from the same noise (the id's seed)."""
    device = next(model.parameters()).device
    pairs = layouts(label_map)
    n = len(pairs)
    text, pooled = cache.text(torch.tensor([row]), torch.zeros(1, dtype=torch.long))
    cond_latents = torch.stack([encode_slots(base.vae, m, cache.empty_slot) for _, m in pairs])
    cond = Conditions(text.expand(n, -1, -1).to(device), pooled.expand(n, -1).to(device),
                      cond_latents.to(device), cache.empty_text_seq.to(device),
                      cache.empty_text_pooled.to(device), cache.empty_slot.to(device))
    seeds = [flow.seed_for(cache.ids[row], seed)] * n
    images = to_uint8(generate_images(
        model, base.vae, cond, seeds, latent_size=cache.latent_size,
        base_dtype=base.transformer.dtype, steps=cfg.steps, guidance=cfg.guidance,
        cfg_scale=cfg.cfg_scale, scheduler_config=base.scheduler_config,
        residual_cache=residual_cache(cfg.cache_threshold)))
    return [{"id": name, "mask": m, "image": image, "prompt": caption}
            for (name, m), image in zip(pairs, images)]
