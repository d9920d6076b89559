"""What MoGLE hands the transformer, per noise level: the scale of its tokens, how much of them
depends on the position after `x_embedder`, and where the gate puts its weight.

    python -m facemogle.app.diagnostics --model data/model --params params.yaml \
        --base data/base --latents data/latents --labels data/labels \
        --out metrics/diagnostics/main.json
    python -m facemogle.app.diagnostics --experiment gating-none-seed0 --base data/base \
        --latents data/latents --labels data/labels --out metrics/diagnostics/gating-none-0.json

    python -m facemogle.app.diagnostics --records metrics/ablations --base data/base \
        --latents data/latents --labels data/labels

(`--experiment`: a DVC experiment of the repository, such as a run of the ablation grid; its
model comes from the DVC cache and its params from its commit. `--records`: every run recorded
in that folder (`<variant>-seed<k>.json`, as the ablation and study tools write them) that has
no `diagnostics/<variant>-seed<k>.json` there yet (its model from the record's experiment
commit), then `diagnostics/summary.md`: per variant
the means over its seeds.)

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
- `expert_weight`: each expert's mean weight per token at that noise level;
- (once per run) `image_latent_norm`, `global_slot_norm`, `local_slot_norm`: the mean norm of
  a clean image latent token and of a raw VAE token of the global and of the local mask slots,
  the scales of MoGLE's input and of what the frozen `x_embedder` was trained on;
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
from facemogle.core.io import InputError, read_json, write_json, write_text
from facemogle.data.layout import mask_path
from facemogle.evaluation.ablations import (
    EXPERIMENT,
    experiment_commit,
    experiment_params,
    fetched_output,
)
from facemogle.models.condition import embed_condition
from facemogle.sampling.sampler import mode_conditions
from facemogle.training.checkpoint import load_trained

SIGMAS: tuple[float, ...] = (1.0, 0.8, 0.6, 0.4, 0.2, 0.05)


class NoiseLevel:
    """Running sums of the per-token figures at one flow time."""

    def __init__(self) -> None:
        self.sums = {"mogle_norm": 0.0, "position_norm": 0.0, "constant_norm": 0.0,
                     "gate_entropy": 0.0, "weight_sum": 0.0}
        self.expert = torch.zeros(0)  # (E,) summed weight per expert
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
        per_expert = weights.sum(dim=(0, 1)).double()
        self.expert = per_expert if self.expert.numel() == 0 else self.expert + per_expert
        self.tokens += n

    def means(self) -> dict:
        return {**{k: v / self.tokens for k, v in self.sums.items()},
                "expert_weight": (self.expert / self.tokens).tolist()}


@torch.no_grad()
def measure(model, cache, label_dir: Path, sigmas: tuple[float, ...], count: int, seed: int,
            batch_size: int = 16) -> dict:
    """The figures of the module docstring over the first `count` test faces."""
    count = min(count, len(cache.ids))
    if count < 1:
        raise InputError("diagnostics: the latent cache's test split holds no image")
    grid = (cache.latent_size // 2, cache.latent_size // 2)
    levels, regions = [NoiseLevel() for _ in sigmas], RegionAverage()
    inputs = {"image_latent_norm": 0.0, "global_slot_norm": 0.0, "local_slot_norm": 0.0}
    for start in tqdm(range(0, count, batch_size), desc="diagnostics"):
        rows = torch.arange(start, min(start + batch_size, count))
        ids = [cache.ids[int(r)] for r in rows]
        slots = mode_conditions(cache, rows, "multimodal", torch.device("cpu")).cond_latents
        x0 = cache.image[rows].float()  # (B, L, C)
        inputs["image_latent_norm"] += x0.norm(dim=-1).mean(-1).sum().item()
        inputs["global_slot_norm"] += slots[:, 0].norm(dim=-1).mean(-1).sum().item()
        inputs["local_slot_norm"] += slots[:, 1:].norm(dim=-1).mean((-1, -2)).sum().item()
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
            **{k: v / count for k, v in inputs.items()},
            "gate_entropy_max": math.log(len(slots_read)),
            "levels": [lv.means() for lv in levels],
            "mean_weight": regions.mean().tolist(),
            "per_region": nan_to_none(regions.per_region().tolist())}


def _arguments(argv: list[str] | None) -> tuple[argparse.Namespace, tuple[float, ...]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("base", "latents", "labels"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--out", default=None, help="the JSON (with --model or --experiment)")
    parser.add_argument("--model", default=None, help="a trained model folder (with --params)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--experiment", default=None,
                        help="a DVC experiment of this repository (e.g. gating-none-seed0): its "
                             "data/model from the DVC cache and its params.yaml, in place of "
                             "--model and --params")
    parser.add_argument("--records", type=Path, default=None,
                        help="a folder of run records: diagnose each recorded experiment")
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
    if sum(a is not None for a in (args.model, args.experiment, args.records)) != 1:
        parser.error("give one of --model (with --params), --experiment or --records")
    if args.records is None and args.out is None:
        parser.error("--out is needed with --model or --experiment")
    return args, sigmas


def diagnose(model_dir: Path, params_path: Path, args, sigmas: tuple[float, ...], cache,
             name: str) -> dict:
    """The figures of the module docstring for the model of `model_dir` trained with the params
    of `params_path` (`gating`, `experts`), on the base of `args.base`."""
    params = load_params(params_path, sections=("seed", "gating", "experts", "model", "lora"))
    base = load_base(args.base, device=torch.device("cpu"), load_text_encoder=False)
    model = load_trained(base.transformer, model_dir, params)
    result = measure(model, cache, Path(args.labels), sigmas, args.images, params.seed)
    return {"model": name, "gating": params.gating, "experts": params.experts, **result}


def diagnose_records(args, sigmas: tuple[float, ...], cache) -> list[Path]:
    """Diagnose every run record `<name>.json` in `args.records` that has no
    `diagnostics/<name>.json` there yet, its model from the record's experiment commit (a
    study's name for a run may differ from the experiment's); the paths written."""
    written = []
    for path in sorted(args.records.glob("*-seed*.json")):
        out = args.records / "diagnostics" / f"{path.stem}.json"
        if not out.exists():
            commit = read_json(path)["commit"]
            with _model_and_params(None, None, commit=commit) as (model_dir, params_path):
                write_json(out, diagnose(model_dir, params_path, args, sigmas, cache, path.stem))
            written.append(out)
    return written


def main(argv: list[str] | None = None) -> int:
    args, sigmas = _arguments(argv)
    cache = load_cache(args.latents, "test")
    if args.records is not None:
        for path in diagnose_records(args, sigmas, cache):
            print(f"wrote {path}")
        runs = [read_json(p) for p in sorted((args.records / "diagnostics").glob("*-seed*.json"))]
        write_text(args.records / "diagnostics" / "summary.md", summary(runs))
        return 0
    with _model_and_params(args.model, args.params, args.experiment) as (model_dir, params_path):
        write_json(args.out, diagnose(model_dir, params_path, args, sigmas, cache,
                                      args.experiment or str(args.model)))
    return 0


def _by_variant(runs: list[dict]) -> dict[str, list[dict]]:
    """Diagnostics of runs named `<variant>-seed<k>`, grouped by variant (`main` first)."""
    groups: dict[str, list[dict]] = {}
    for run in sorted(runs, key=lambda r: not Path(r["model"]).name.startswith("main-")):
        match = EXPERIMENT.match(Path(run["model"]).name)
        groups.setdefault(match["variant"] if match else run["model"], []).append(run)
    return groups


def _level_mean(runs: list[dict], k: int, key: str) -> float:
    return float(np.mean([run["levels"][k][key] for run in runs]))


def summary(runs: list[dict]) -> str:
    """Markdown: per variant (the mean over its seeds) and noise level, MoGLE's token norm and
    the position-dependent and constant parts after x_embedder; then the gate's entropy as a
    share of a uniform gate's and the expert with the largest share of a token's weight."""
    groups = _by_variant(runs)
    sigmas = runs[0]["sigmas"] if runs else []
    head = " | ".join(f"sigma {s:g}" for s in sigmas)
    scale = ["| variant | seeds | weight sum | x_embedder bias norm | " + head + " |",
             "|---|---:|---:|---:|" + "---|" * len(sigmas)]
    gate = ["| variant | " + head + " |", "|---|" + "---|" * len(sigmas)]
    for variant, group in groups.items():
        bias = np.mean([r["x_embedder_bias_norm"] or 0.0 for r in group])
        total = np.mean([level["weight_sum"] for r in group for level in r["levels"]])
        scale.append(f"| {variant} | {len(group)} | {total:.2f} | {bias:.2f} | " + " | ".join(
            "; ".join(f"{_level_mean(group, k, key):.2f}"
                      for key in ("mogle_norm", "position_norm", "constant_norm"))
            for k in range(len(sigmas))) + " |")
        cells = []
        for k in range(len(sigmas)):
            share = np.mean([np.array(r["levels"][k]["expert_weight"])
                             / r["levels"][k]["weight_sum"] for r in group], axis=0)
            # one expert (experts: global) leaves the gate no choice: no entropy share
            entropy = np.mean([r["levels"][k]["gate_entropy"] / r["gate_entropy_max"]
                               if r["gate_entropy_max"] > 0 else np.nan for r in group])
            cells.append(("-" if np.isnan(entropy) else f"{entropy:.2f}") + "; "
                         f"{group[0]['experts'][int(share.argmax())]} {share.max():.2f}")
        gate.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join([
        "# What MoGLE hands the transformer, per noise level", "", _input_line(runs), "",
        f"Means over each variant's seeds ({runs[0]['images'] if runs else 0} test faces, "
        "multimodal conditions). Per noise level: MoGLE's mean output norm per token; the "
        "position-dependent part; the constant part (after x_embedder). Weight sum: a token's "
        "summed gate weight (1 for a convex gate, the number of experts for the plain sum):",
        "", *scale, "",
        "Per noise level: the gate's entropy as a share of a uniform gate's; the expert with "
        "the largest mean share of a token's weight, and that share:", "", *gate, ""])


def _input_line(runs: list[dict]) -> str:
    """The scales MoGLE starts from: clean image latent tokens and raw mask slot tokens."""
    keys = ("image_latent_norm", "global_slot_norm", "local_slot_norm")
    if not runs or any(k not in runs[0] for k in keys):
        return "(no input norms recorded)"
    image, glob, local = (runs[0][k] for k in keys)  # the same test faces in every run
    return (f"Mean token norms of the inputs: a clean image latent {image:.2f} (what the frozen "
            f"x_embedder was trained on), the global mask slot {glob:.2f}, a local mask slot "
            f"{local:.2f}.")


@contextlib.contextmanager
def _model_and_params(model: str | None, params: str | None, experiment: str | None = None,
                      commit: str | None = None):
    """(model folder, params file): as given, or those of the DVC experiment `experiment` (by
    name) or at `commit`."""
    if experiment is None and commit is None:
        yield Path(model), Path(params)
        return
    commit = commit or experiment_commit(Path("."), experiment)
    with tempfile.TemporaryDirectory() as work, \
            fetched_output(Path("."), commit, "data/model", Path(work) / "model") as model_dir:
        Path(work, "params.yaml").write_text(experiment_params(Path("."), commit))
        yield model_dir, Path(work, "params.yaml")


if __name__ == "__main__":
    raise SystemExit(main())
