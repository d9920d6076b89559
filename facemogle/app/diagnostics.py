"""What MoGLE hands the transformer, per noise level: the scale of its tokens, how much of them
depends on the position after `x_embedder`, and where the gate puts its weight.

    python -m facemogle.app.diagnostics --model data/model --params params.yaml \
        --base data/base --latents data/latents --labels data/labels \
        --out metrics/diagnostics/main.json
    python -m facemogle.app.diagnostics --experiment gating-none-seed0 --base data/base \
        --latents data/latents --labels data/labels --out metrics/diagnostics/gating-none-0.json

(`--experiment`: a DVC experiment of the repository, such as a run of the ablation grid; its
model comes from the DVC cache and its params from its commit.)

For the first `--images` test faces (multimodal conditions: caption and mask) and each flow time
in `--sigmas`, the face's latent is noised to that time with a seeded draw and MoGLE runs once.
Per noise level the JSON holds:

- `mogle_norm`: the mean L2 norm of MoGLE's output tokens (B, L, 64);
- after `x_embedder` with its LoRA (`embed_condition`): the mean norm of a token's
  position-dependent part (token minus the mean over the image's tokens), of the constant part
  (that mean), and the norm of the layer's bias, which every token shares;
- `gate_entropy`: the mean entropy of each token's expert weights normalised to sum to 1 (in
  nats; `gate_entropy_max` = log of the number of experts is a uniform gate);
- `weight_sum`: the mean sum of a token's weights (1 for a convex gate, the number of experts for
  a plain sum);
- `per_region`: each expert's mean weight over the tokens of each face region (a token counts in
  proportion to the region's share of its pixels), and `mean_weight` over all tokens.

Run it on each variant's model to compare them (`gating`, `experts` come from `--params`).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from facemogle.app.gate_maps import expert_name
from facemogle.app.gate_regions import RegionAverage, nan_to_none, token_regions
from facemogle.base.loader import load_base
from facemogle.cache.store import load_cache
from facemogle.core import flow, labels
from facemogle.core.config import load_params
from facemogle.core.io import InputError, write_json
from facemogle.data.layout import mask_path
from facemogle.evaluation.ablations import experiment_commit, experiment_params, fetched_output
from facemogle.models.condition import embed_condition
from facemogle.sampling.sampler import mode_conditions
from facemogle.training.checkpoint import load_trained

SIGMAS: tuple[float, ...] = (1.0, 0.8, 0.6, 0.4, 0.2, 0.05)


class NoiseLevel:
    """Running sums of the per-token figures at one flow time."""

    def __init__(self) -> None:
        self.sums = {"mogle_norm": 0.0, "position_norm": 0.0, "constant_norm": 0.0,
                     "gate_entropy": 0.0, "weight_sum": 0.0}
        self.tokens = 0

    def add(self, out: torch.Tensor, embedded: torch.Tensor, weights: torch.Tensor) -> None:
        """out (B, L, C) MoGLE tokens, embedded (B, L, D) after x_embedder, weights (B, L, E)."""
        constant = embedded.mean(dim=1, keepdim=True)  # (B, 1, D)
        p = weights / weights.sum(-1, keepdim=True).clamp_min(1e-12)  # (B, L, E)
        entropy = -(p * p.clamp_min(1e-12).log()).sum(-1)  # (B, L)
        n = out.shape[0] * out.shape[1]
        self.sums["mogle_norm"] += out.norm(dim=-1).sum().item()
        self.sums["position_norm"] += (embedded - constant).norm(dim=-1).sum().item()
        self.sums["constant_norm"] += constant.norm(dim=-1).sum().item() * out.shape[1]
        self.sums["gate_entropy"] += entropy.sum().item()
        self.sums["weight_sum"] += weights.sum(-1).sum().item()
        self.tokens += n

    def means(self) -> dict[str, float]:
        return {k: v / self.tokens for k, v in self.sums.items()}


@torch.no_grad()
def measure(model, cache, label_dir: Path, sigmas: tuple[float, ...], count: int, seed: int,
            batch_size: int = 16) -> dict:
    """The figures of the module docstring over the first `count` test faces."""
    count = min(count, len(cache.ids))
    if count < 1:
        raise InputError("diagnostics: the latent cache's test split holds no image")
    grid = (cache.latent_size // 2, cache.latent_size // 2)
    levels, regions = [NoiseLevel() for _ in sigmas], RegionAverage()
    for start in tqdm(range(0, count, batch_size), desc="diagnostics"):
        rows = torch.arange(start, min(start + batch_size, count))
        ids = [cache.ids[int(r)] for r in rows]
        slots = mode_conditions(cache, rows, "multimodal", torch.device("cpu")).cond_latents
        x0 = cache.image[rows].float()  # (B, L, C)
        noise = torch.stack([torch.randn(x0.shape[1:], generator=g)
                             for g in flow.generators_for(ids, seed)])  # (B, L, C)
        batch_weights = []
        for level, s in zip(levels, sigmas, strict=True):
            sigma = torch.full((len(ids),), s)
            z_t = flow.add_noise(x0, noise, sigma)  # (B, L, C)
            out, weights = model.mogle(slots, z_t, sigma, return_weights=True)
            level.add(out, embed_condition(model.transformer, out), weights)
            batch_weights.append(weights)
        maps = np.stack([labels.load_label_map(mask_path(label_dir, i)) for i in ids])
        regions.add(torch.stack(batch_weights), token_regions(maps, grid))
    bias = model.transformer.x_embedder.base_layer.bias
    slots_read = model.mogle.slots
    return {"images": count, "sigmas": list(sigmas),
            "experts": [expert_name(s) for s in slots_read], "regions": list(labels.LABELS),
            "x_embedder_bias_norm": None if bias is None else bias.norm().item(),
            "gate_entropy_max": math.log(len(slots_read)),
            "levels": [lv.means() for lv in levels],
            "mean_weight": regions.mean().tolist(),
            "per_region": nan_to_none(regions.per_region().tolist())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("base", "latents", "labels", "out"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--model", default=None, help="a trained model folder (or --experiment)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--experiment", default=None,
                        help="a DVC experiment of this repository (e.g. gating-none-seed0): its "
                             "data/model from the DVC cache and its params.yaml, in place of "
                             "--model and --params")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--sigmas", default=",".join(map(str, SIGMAS)),
                        help="comma-separated flow times in [0, 1]")
    args = parser.parse_args(argv)
    try:
        sigmas = tuple(float(s) for s in args.sigmas.split(","))
    except ValueError:
        parser.error(f"--sigmas must be comma-separated numbers in [0, 1], got {args.sigmas!r}")
    if not all(0.0 <= s <= 1.0 for s in sigmas):
        parser.error(f"--sigmas must lie in [0, 1], got {args.sigmas}")
    if (args.model is None) == (args.experiment is None):
        parser.error("give either --model (with --params) or --experiment")
    with _model_and_params(args) as (model_dir, params_path):
        params = load_params(params_path, sections=("seed", "gating", "experts", "model", "lora"))
        base = load_base(args.base, device=torch.device("cpu"), load_text_encoder=False)
        model = load_trained(base.transformer, model_dir, params)
    result = measure(model, load_cache(args.latents, "test"), Path(args.labels), sigmas,
                     args.images, params.seed)
    write_json(args.out, {"model": args.experiment or str(args.model), "gating": params.gating,
                          "experts": params.experts, **result})
    return 0


@contextlib.contextmanager
def _model_and_params(args):
    """(model folder, params file): as given, or those of the experiment `args.experiment`."""
    if args.experiment is None:
        yield Path(args.model), Path(args.params)
        return
    commit = experiment_commit(Path("."), args.experiment)
    with tempfile.TemporaryDirectory() as work, \
            fetched_output(Path("."), commit, "data/model", Path(work) / "model") as model:
        Path(work, "params.yaml").write_text(experiment_params(Path("."), commit))
        yield model, Path(work, "params.yaml")


if __name__ == "__main__":
    raise SystemExit(main())
