"""Where the matrix gate sends each face region, averaged over the test set (paper Fig. 5).

    python -m facemogle.app.gate_regions --model data/ablations/main-seed2/model \
        --params data/ablations/main-seed2/params.yaml --base data/base --latents data/latents \
        --labels data/labels --out metrics/gate_regions

Samples the test faces in multimodal mode exactly as `sample` does (same seeds, steps and
guidance), records the gate's weights at every step (`GatingRecorder`), and averages, per step,
each expert's weight over the tokens of each face region: a token counts for a region in
proportion to the region's share of its pixels in the face's label map. Writes
`gate_regions.json` (steps x experts x regions, and per local expert its weight on its own
region over its mean weight on all tokens) and `gate_regions.png` (one expert x region heat map
per shown step). A uniform gate would put 1 / (number of experts) in every cell; an expert whose
weight does not depend on the region under the token has an own-region ratio of 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from tqdm import tqdm

from facemogle.app.gate_maps import GatingRecorder, _pick_steps, colorize, expert_name
from facemogle.base.loader import load_base
from facemogle.cache.store import load_cache
from facemogle.core import flow, labels
from facemogle.core.config import load_params
from facemogle.core.io import InputError, atomic_path, write_json
from facemogle.data.layout import mask_path
from facemogle.sampling.sampler import generate_latents, mode_conditions, sampling_autocast
from facemogle.training.checkpoint import load_trained

SHOWN_STEPS = 3  # first, middle and last step in the picture
CELL = 14  # px per heat-map cell
MARGIN = 60  # px for the names left of and above each map


def token_regions(label_maps: np.ndarray, grid: tuple[int, int]) -> Tensor:
    """(B, H, W) label maps -> (B, L, R) share of each token's pixels in each of the R labels,
    tokens in row-major order of the (rows, cols) grid (H and W multiples of it)."""
    maps = torch.as_tensor(label_maps, dtype=torch.long)
    b, h, w = maps.shape
    rows, cols = grid
    if h % rows or w % cols:
        raise ValueError(f"label maps of {h}x{w} px do not tile a {rows}x{cols} token grid")
    one_hot = F.one_hot(maps, labels.NUM_LABELS).permute(0, 3, 1, 2).float()  # (B, R, H, W)
    shares = F.avg_pool2d(one_hot, (h // rows, w // cols))  # (B, R, rows, cols)
    return shares.flatten(2).transpose(1, 2)  # (B, L, R)


class RegionAverage:
    """Running per-step mean of each expert's weight over the tokens of each region."""

    def __init__(self) -> None:
        self.weighted: Tensor | None = None  # (S, E, R) sum of weight x region share
        self.share = torch.zeros(labels.NUM_LABELS, dtype=torch.float64)  # (R,)
        self.total: Tensor | None = None  # (S, E) sum of weights over all tokens
        self.tokens = 0
        self.images = 0

    def add(self, weights: Tensor, regions: Tensor) -> None:
        """weights (S, B, L, E) of one batch; regions (B, L, R) from `token_regions`."""
        w, r = weights.double(), regions.double()
        weighted = torch.einsum("sble,blr->ser", w, r)
        total = w.sum(dim=(1, 2))
        self.weighted = weighted if self.weighted is None else self.weighted + weighted
        self.total = total if self.total is None else self.total + total
        self.share += r.sum(dim=(0, 1))
        self.tokens += w.shape[1] * w.shape[2]
        self.images += w.shape[1]

    def per_region(self) -> Tensor:
        """(S, E, R) mean weight; NaN for a region no test face has."""
        return self.weighted / self.share.where(self.share > 0, torch.nan)

    def mean(self) -> Tensor:
        """(S, E) mean weight over all tokens."""
        return self.total / self.tokens


def nan_to_none(values: list) -> list:
    """Nested lists of floats with NaN as None (JSON has no NaN)."""
    return [nan_to_none(v) if isinstance(v, list) else None if np.isnan(v) else v for v in values]


def own_region_ratio(per_region: Tensor, mean: Tensor, slots: tuple[int, ...]) -> dict[str, list]:
    """Per local expert (slot i + 1 reads label i): its weight on its own region over its mean
    weight on all tokens, per step (None where no face has the region); the global expert has
    no region of its own."""
    return {expert_name(s): nan_to_none((per_region[:, e, s - 1] / mean[:, e]).tolist())
            for e, s in enumerate(slots) if s > 0}


def _vertical_text(text: str, font) -> Image.Image:
    image = Image.new("RGB", (MARGIN, 12), (255, 255, 255))
    ImageDraw.Draw(image).text((0, 0), text, fill=(0, 0, 0), font=font)
    return image.rotate(90, expand=True)


def region_picture(per_region: np.ndarray, sigmas: list[float], names: list[str],
                   steps: list[int]) -> Image.Image:
    """One expert x region heat map per step in `steps`, side by side, one colour scale."""
    vmax = float(np.nanmax(per_region[steps]))
    experts, regions = per_region.shape[1:]
    width, height = MARGIN + regions * CELL, MARGIN + experts * CELL
    canvas = Image.new("RGB", (len(steps) * (width + 10), height + 24), (255, 255, 255))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    draw.text((4, height + 8), f"mean gate weight per region (rows: experts, columns: regions); "
              f"colour scale 0 to {vmax:.3f}; uniform gate: {1 / experts:.3f}", fill=(0, 0, 0),
              font=font)
    for k, step in enumerate(steps):
        x0 = k * (width + 10)
        cells = colorize(np.nan_to_num(per_region[step]), vmax)  # (E, R, 3)
        canvas.paste(Image.fromarray(cells).resize((regions * CELL, experts * CELL),
                                                   Image.NEAREST), (x0 + MARGIN, MARGIN))
        draw.text((x0 + 4, 2), f"s={sigmas[step]:.2f}", fill=(0, 0, 0), font=font)
        for e, name in enumerate(names):
            draw.text((x0 + 4, MARGIN + e * CELL + 1), name[:9], fill=(0, 0, 0), font=font)
        for r, name in enumerate(labels.LABELS):
            canvas.paste(_vertical_text(name, font), (x0 + MARGIN + r * CELL + 1, 0))
    return canvas


def measure(model, base, cache, label_dir: Path, cfg, seed: int, max_images: int | None
            ) -> tuple[RegionAverage, list[float], tuple[int, ...]]:
    """Sample the test faces in multimodal mode and average the recorded gate weights."""
    count = len(cache.ids) if max_images is None else min(max_images, len(cache.ids))
    if count < 1:
        raise InputError(f"gate regions: no test images to sample (max images {max_images})")
    grid = (cache.latent_size // 2, cache.latent_size // 2)
    device = next(model.parameters()).device
    average, sigmas = RegionAverage(), []
    for start in tqdm(range(0, count, cfg.batch_size), desc="gate regions"):
        rows = torch.arange(start, min(start + cfg.batch_size, count))
        ids = [cache.ids[int(r)] for r in rows]
        cond = mode_conditions(cache, rows, "multimodal", device)
        recorder = GatingRecorder(model.mogle, cond.cond_latents, grid)
        with sampling_autocast(base.transformer.dtype, device):
            generate_latents(model, cond, [flow.seed_for(i, seed) for i in ids],
                             latent_size=cache.latent_size, steps=cfg.steps,
                             guidance=cfg.guidance, cfg_scale=cfg.cfg_scale,
                             scheduler_config=base.scheduler_config, callback=recorder)
        trace = recorder.trace()
        maps = np.stack([labels.load_label_map(mask_path(label_dir, i)) for i in ids])
        average.add(trace.weights, token_regions(maps, grid))
        sigmas = trace.sigmas.tolist()
    return average, sigmas, trace.slots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("model", "base", "latents", "labels", "out"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--max-images", type=int, default=None)
    args = parser.parse_args(argv)
    params = load_params(args.params, sections=("seed", "gating", "experts", "model", "lora",
                                                "sample"))
    if params.gating != "matrix":
        raise InputError(f"{args.params}: gating is {params.gating!r}; the per-token region "
                         f"maps are of the matrix gate")
    base = load_base(args.base, device=torch.device("cpu"), load_text_encoder=False)
    model = load_trained(base.transformer, args.model, params)
    cache = load_cache(args.latents, "test")
    average, sigmas, slots = measure(model, base, cache, Path(args.labels), params.sample,
                                     params.seed, args.max_images)
    per_region, mean = average.per_region(), average.mean()
    names = [expert_name(s) for s in slots]
    steps = _pick_steps(len(sigmas), SHOWN_STEPS)
    with atomic_path(args.out) as out:
        out.mkdir()
        write_json(out / "gate_regions.json", {
            "model": str(args.model), "images": average.images,
            "sigmas": sigmas, "experts": names, "regions": list(labels.LABELS),
            "mean_weight": mean.tolist(),
            "per_region": nan_to_none(per_region.tolist()),
            "own_region_ratio": own_region_ratio(per_region, mean, slots)})
        region_picture(per_region.numpy(), sigmas, names, steps).save(out / "gate_regions.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
