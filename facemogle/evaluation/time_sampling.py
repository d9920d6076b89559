"""Where training puts its noise levels against where the sampler goes: the embedded default
trained with `train.logit_normal_mean` 0, 1 (the default) and 2, over training seeds.

    python -m facemogle.evaluation.time_sampling queue --seeds 0 1 2 3 4 | sh  # dvc exp run --queue
    dvc queue start --jobs 1
    python -m facemogle.evaluation.time_sampling collect   # experiments -> metrics/time_sampling/
    python -m facemogle.app.diagnostics --records metrics/time_sampling --base data/base \
        --latents data/latents --labels data/labels        # the gate per noise level
    python -m facemogle.evaluation.time_sampling table --out metrics/time_sampling/table.md

The arms are DVC experiments of `evaluate@test` that differ only in `train.logit_normal_mean`
(training draws sigma = sigmoid(N(mean, std))): `main-seed<k>` (1.0, the default; the ablation
grid's main runs, the same params), `lnm2-seed<k>` (2.0, the default before this study chose
1.0) and `lnm0-seed<k>` (0.0, the official release's). `table` gives the share of training
draws and of the sampler's steps below sigma 0.5, and the ablation table of the arms: the
paired t-test over training seeds of each arm against the default, Holm over the arms. The
gate's behaviour per noise level is in `diagnostics/summary.md` of the same folder once the runs
are diagnosed.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import NormalDist

import torch

from facemogle.core import flow
from facemogle.core.config import load_params
from facemogle.core.io import write_text
from facemogle.evaluation import ablations

RESULTS = Path("metrics/time_sampling")
KEY = "train.logit_normal_mean"
ARMS: dict[str, dict] = {
    ablations.MAIN: {**ablations.VARIANTS[ablations.MAIN], KEY: 1.0},  # params.yaml's
    "lnm2": {**ablations.VARIANTS[ablations.MAIN], KEY: 2.0},
    "lnm0": {**ablations.VARIANTS[ablations.MAIN], KEY: 0.0},
}
FAMILY = tuple(arm for arm in ARMS if arm != ablations.MAIN)  # one Holm family: the two means
LOW = 0.5  # below this noise level the layout is set and the details are drawn


def training_share_below(mean: float, std: float, sigma: float = LOW) -> float:
    """The share of training draws sigma = sigmoid(N(mean, std)) below `sigma`."""
    return NormalDist(mean, std).cdf(math.log(sigma / (1.0 - sigma)))


def sampler_sigmas(steps: int, image_tokens: int) -> list[float]:
    """The noise level of each of the sampler's `steps` Euler steps for `image_tokens` image
    tokens (FLUX's schedule with its resolution shift, as `flow.euler_sample` takes it)."""
    seen: list[float] = []
    flow.euler_sample(lambda z, _sigma: torch.zeros_like(z), torch.zeros(1, image_tokens, 1),
                      steps, callback=lambda _i, sigma, _z: seen.append(float(sigma[0])))
    return seen


def schedule_lines(std: float, steps: int, image_tokens: int) -> list[str]:
    """Where the sampler's steps and each arm's training draws fall against sigma LOW."""
    sigmas = sampler_sigmas(steps, image_tokens)
    low = [s for s in sigmas if s < LOW]
    lines = [f"The sampler's {steps} steps ({image_tokens} image tokens): {len(low)} below "
             f"sigma {LOW:g} (sigma {max(low, default=0):.2f} down to {min(low, default=0):.2f})."
             if low else f"The sampler's {steps} steps: none below sigma {LOW:g}.",
             f"Training draws below sigma {LOW:g} (logit-normal std {std:g}):"]
    for arm, settings in ARMS.items():
        mean = settings[KEY]
        lines.append(f"- {arm} (mean {mean:g}): {training_share_below(mean, std):.1%}")
    return lines


def report(found: Mapping[str, Mapping[int, dict]], std: float, steps: int,
           image_tokens: int) -> str:
    return "\n".join([
        "# Training's noise levels: logit-normal mean 0, 1 and 2", "",
        ablations.settings_line(found, variants=ARMS), "",
        *schedule_lines(std, steps, image_tokens), "",
        ablations.ablation_table(found, keys=(KEY,), family=FAMILY),
        ablations.resolution(found, FAMILY), "",
        "The other columns, paired t-test over training seeds (Holm over the arms of each "
        "column):", "", ablations.other_columns_table(found, FAMILY),
        "The gate per noise level: `diagnostics/summary.md` (python -m "
        "facemogle.app.diagnostics --records <this folder> ...).", ""])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    sub = parser.add_subparsers(dest="command", required=True)
    queue_cmd = sub.add_parser("queue", help="dvc exp run --queue lines of the missing runs")
    queue_cmd.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    sub.add_parser("collect", help="record the experiments of the three arms")
    table_cmd = sub.add_parser("table", help="the comparison from the records")
    table_cmd.add_argument("--out", default=None, help="write it here (default: print)")
    table_cmd.add_argument("--params", default="params.yaml",
                           help="the sampler's steps and the training std come from here")
    table_cmd.add_argument("--image-tokens", type=int, default=64,
                           help="image tokens per face (the embedded default: 8 x 8)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "queue":
        print("\n".join(ablations.queue_commands(args.seeds, args.results, ARMS)))
    elif args.command == "collect":
        for path in ablations.collect(results=args.results, variants=ARMS):
            print(f"wrote {path}")
    else:
        params = load_params(args.params, sections=("train", "sample"))
        text = report(ablations.load_results(args.results, ARMS),
                      params.train.logit_normal_std, params.sample.steps, args.image_tokens)
        if args.out:
            write_text(args.out, text)
        else:
            print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
