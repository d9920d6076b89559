"""The embedded default trained on its int8-quantized frozen base against the unquantized one,
over training seeds, and each int8-trained LoRA + MoGLE sampled on the unquantized base.

    python -m facemogle.bench.quantization queue --seeds 0 1 2 3 4 | sh   # dvc exp run --queue
    dvc queue start --jobs 1
    python -m facemogle.bench.quantization collect    # experiments -> metrics/quantization/
    python -m facemogle.bench.quantization transfer   # each int8 model on both bases
    python -m facemogle.bench.quantization table --out metrics/quantization/table.md

The arms are DVC experiments of the default pipeline (`evaluate@test`) that differ only in
`base.quantization`: `main-seed<k>` (none; the ablation grid's main runs, the same params) and
`int8-seed<k>`. The int8 arm's `base` stage quantizes the transformer and every later stage runs
on it (its `cache_latents` reruns once; the latents do not depend on the transformer).
`collect` records per run the evaluate stage's metrics and per-image counts and the training
loss curve (read from the DVC cache at the experiment's commit). `transfer` loads each int8
run's trained model and sampled the test faces on the int8 base it was trained on and on the
workspace's unquantized `data/base`, with the sample stage's sampler and seeds, and scores both
with the evaluate stage's parser metrics: the paired difference is what applying an
int8-trained LoRA to the full-precision base changes. `table`: per metric each arm's mean and
standard deviation over seeds, the none arm's range, the paired t-interval over seeds of
int8 - none, and whether each int8 seed lies inside the none seeds' range.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from dvc.api import DVCFileSystem
from PIL import Image, ImageDraw, ImageFont

from facemogle.base.loader import load_base, parts_dir, read_manifest
from facemogle.base.segmenter import load_parser
from facemogle.cache.store import load_cache
from facemogle.core.config import load_params
from facemogle.core.io import InputError, atomic_path, read_json, write_json, write_text
from facemogle.evaluation import ablations
from facemogle.evaluation.uncertainty import SeedTest, holm, seed_t_test
from facemogle.sampling.sampler import sample_rows
from facemogle.sampling.sheets import to_uint8
from facemogle.training.checkpoint import load_trained

from .sampling import score

RESULTS = Path("metrics/quantization")
ARMS: dict[str, dict[str, str]] = {
    "main": {**ablations.VARIANTS[ablations.MAIN], "base.quantization": "none"},
    "int8": {**ablations.VARIANTS[ablations.MAIN], "base.quantization": "int8"},
}
MODES = ("multimodal", "mask2face", "text2face")
TRANSFER_MODES = ("multimodal", "mask2face")
# (mode, metric, higher is better)
METRICS = (("multimodal", "mask_miou", True), ("mask2face", "mask_miou", True),
           ("multimodal", "attribute_acc", True), ("text2face", "attribute_acc", True),
           ("multimodal", "fd_parser", False), ("mask2face", "fd_parser", False))
TRAIN_LOGS = "metrics/train/plots/metrics"


def train_log(repo: Path, commit: str, name: str) -> list[list[float]]:
    """[step, value] rows of the train stage's DVCLive log `name` (loss, seconds_per_step) at
    `commit`, read from the DVC cache."""
    text = DVCFileSystem(str(repo), rev=commit).read_text(f"{TRAIN_LOGS}/{name}.tsv")
    lines = [line.split("\t") for line in text.splitlines() if line.strip()]
    header = lines[0]
    return [[float(row[header.index("step")]), float(row[header.index(name)])]
            for row in lines[1:]]


def collect(repo: Path = Path("."), results: Path = RESULTS) -> list[Path]:
    """Record every `main-seed<k>` / `int8-seed<k>` experiment that `results` lacks, with its
    loss curve and median seconds per training step."""
    written = ablations.collect(repo, results, ARMS, MODES)
    for path in written:
        record = read_json(path)
        pace = [v for _, v in train_log(repo, record["commit"], "seconds_per_step")]
        write_json(path, {**record, "loss": train_log(repo, record["commit"], "loss"),
                          "seconds_per_step_median": float(np.median(pace))})
    return written


def _sample_and_score(base_dir: Path, model_dir: Path, params, cache, args) -> dict:
    """Per mode of TRANSFER_MODES: the sample stage's images of the test faces with the model
    of `model_dir` on the base of `base_dir`, scored by the evaluate stage's parser metrics."""
    base = load_base(base_dir, load_text_encoder=False)
    model = load_trained(base.transformer, model_dir, params).eval()
    parser = load_parser(parts_dir(args.base, read_manifest(args.base)) / "parser").eval()
    rows = list(range(len(cache.ids)))
    out = {}
    for mode in TRANSFER_MODES:
        images = []
        with torch.no_grad():
            for start in range(0, len(rows), params.sample.batch_size):
                batch = torch.tensor(rows[start:start + params.sample.batch_size])
                images += list(to_uint8(sample_rows(model, base, cache, batch, mode,
                                                    params.sample, seed=params.seed)))
        out[mode] = score(images, list(cache.ids), args.data, args.labels, parser, params)
    return out


def transfer_one(path: Path, args) -> None:
    """Add to the int8 record at `path` the scores of its model on its own int8 base and on
    the unquantized base of `args.base`."""
    record = read_json(path)
    if read_manifest(args.base).get("quantization", "none") != "none":
        raise InputError(f"{args.base}: base.quantization is not none; transfer samples on the "
                         "unquantized base (run the base stage with base.quantization: none)")
    commit = record["commit"]
    # The int8 base sits beside data/base: its manifest finds the embedded base at ../../
    int8_base = Path(args.base).parent / f".int8-base-{commit[:12]}"
    with tempfile.TemporaryDirectory() as work, \
            ablations.fetched_output(args.repo, commit, "data/base", int8_base), \
            ablations.fetched_output(args.repo, commit, "data/model", Path(work) / "model"):
        Path(work, "params.yaml").write_text(ablations.experiment_params(args.repo, commit))
        params = load_params(Path(work, "params.yaml"))
        cache = load_cache(args.latents, "test")
        scores = {name: _sample_and_score(Path(base), Path(f"{work}/model"), params, cache, args)
                  for name, base in (("int8", int8_base), ("none", args.base))}
    own = record["metrics"]["multimodal"]["mask_miou"]
    scores["int8_reproduces_stage"] = bool(np.isclose(scores["int8"]["multimodal"]["mask_miou"],
                                                      own, rtol=0, atol=1e-6))
    write_json(path, {**record, "transfer": scores})


def transfer(args) -> list[Path]:
    done = []
    for path in sorted(args.results.glob("int8-seed*.json")):
        if "transfer" not in read_json(path):
            transfer_one(path, args)
            done.append(path)
    return done


def _values(records: Mapping[int, dict], mode: str, metric: str) -> dict[int, float]:
    return {s: r["metrics"][mode][metric] for s, r in sorted(records.items())
            if metric in r["metrics"][mode]}


def _tests(found: Mapping[str, Mapping[int, dict]]) -> dict[tuple[str, str], SeedTest]:
    """Per metric of METRICS with two or more training seeds in both arms: the paired t-test
    over those seeds of int8 - none."""
    out = {}
    for mode, metric, _ in METRICS:
        none, int8 = (_values(found.get(a, {}), mode, metric) for a in ("main", "int8"))
        shared = sorted(set(none) & set(int8))
        if len(shared) > 1:
            out[mode, metric] = seed_t_test([int8[s] - none[s] for s in shared])
    return out


def _row(found: Mapping[str, Mapping[int, dict]], mode: str, metric: str, higher: bool,
         test: SeedTest | None, adjusted: float | None) -> str:
    none, int8 = (_values(found.get(a, {}), mode, metric) for a in ("main", "int8"))
    cells = [f"{metric} {mode}" + ("" if higher else " ↓")]
    for values in (none, int8):
        v = list(values.values())
        cells.append(f"{np.mean(v):.4f} ± {np.std(v, ddof=1):.4f} (n={len(v)})" if len(v) > 1
                     else f"{v[0]:.4f} (n=1)" if v else "-")
    if not none:
        return "| " + " | ".join(cells + ["-"] * 4) + " |"
    low, high = min(none.values()), max(none.values())
    margin = (high - low) / 2
    cells.append(f"[{low:.4f}, {high:.4f}]")
    inside = sum(low - margin <= v <= high + margin for v in int8.values())
    cells.append(f"{inside} of {len(int8)}" if int8 else "-")
    cells.append("-" if test is None else f"{test.value:+.4f} [{test.low:+.4f}, "
                 f"{test.high:+.4f}], p {test.p:.3f}, Holm p {adjusted:.3f}")
    return "| " + " | ".join(cells) + " |"


def _transfer_rows(found: Mapping[str, Mapping[int, dict]]) -> list[str]:
    runs = {s: r["transfer"] for s, r in sorted(found.get("int8", {}).items()) if "transfer" in r}
    lines = []
    for mode in TRANSFER_MODES:
        for metric in ("mask_miou", "attribute_acc", "fd_parser"):
            diffs = [t["none"][mode][metric] - t["int8"][mode][metric] for t in runs.values()
                     if metric in t["none"][mode]]
            if len(diffs) > 1:
                test = seed_t_test(diffs)
                lines.append(f"| {metric} {mode} | {', '.join(f'{d:+.4f}' for d in diffs)} | "
                             f"{test.value:+.4f} [{test.low:+.4f}, {test.high:+.4f}], "
                             f"p {test.p:.3f} |")
    return lines


def _loss_summary(found: Mapping[str, Mapping[int, dict]], window: int = 200) -> list[str]:
    """Per arm and training seed, the mean loss of the last `window` logged steps."""
    lines = []
    for arm in ("main", "int8"):
        tails = {s: float(np.mean([loss for step, loss in r["loss"]
                                   if step > r["loss"][-1][0] - window]))
                 for s, r in sorted(found.get(arm, {}).items()) if r.get("loss")}
        if tails:
            lines.append(f"- {arm}: " + ", ".join(f"seed {s} {v:.4f}" for s, v in tails.items())
                         + f" (range {min(tails.values()):.4f} to {max(tails.values()):.4f})")
    return lines


def report(found: Mapping[str, Mapping[int, dict]]) -> str:
    checks = [r["transfer"]["int8_reproduces_stage"] for r in found.get("int8", {}).values()
              if "transfer" in r]
    tests = _tests(found)
    adjusted = holm({k: t.p for k, t in tests.items()})
    pace = {arm: [r["seconds_per_step_median"] for r in found.get(arm, {}).values()
                  if "seconds_per_step_median" in r] for arm in ARMS}
    return "\n".join([
        "# int8 frozen base against none", "", ablations.settings_line(found, variants=ARMS), "",
        "| metric | none: mean ± sd over seeds | int8: mean ± sd | none: range over seeds | "
        "int8 seeds inside none's range widened by half its width | int8 - none, paired over "
        "seeds [95% t-interval], p, Holm p over the metrics |",
        "|---|---|---|---|---|---|",
        *(_row(found, mode, metric, higher, tests.get((mode, metric)),
               adjusted.get((mode, metric))) for mode, metric, higher in METRICS), "",
        "Training loss, mean of the last 200 steps:", "", *_loss_summary(found), "",
        "Median seconds per training step: " + ", ".join(
            f"{arm} {np.mean(v):.3f} (runs {min(v):.3f} to {max(v):.3f})"
            for arm, v in pace.items() if v) + ".", "",
        "The int8-trained model sampled on the unquantized base, minus on its own int8 base "
        "(per training seed; 95% t-interval over seeds):", "",
        "| metric | per seed | mean [95% t-interval], p |", "|---|---|---|",
        *_transfer_rows(found), "",
        f"The transfer's int8-base sampling reproduces the stage's multimodal mIoU in "
        f"{sum(checks)} of {len(checks)} runs.", ""])


COLOURS = {"main": (31, 119, 180), "int8": (230, 120, 20)}


def loss_plot(found: Mapping[str, Mapping[int, dict]], smooth: int = 10,
              size: tuple[int, int] = (640, 360)) -> Image.Image:
    """Training loss against step, one line per training seed (a moving mean over `smooth`
    logged intervals), blue for none and orange for int8."""
    curves = {(arm, s): np.array(r["loss"]) for arm in ARMS
              for s, r in sorted(found.get(arm, {}).items()) if r.get("loss")}
    if not curves:
        raise InputError("no record holds a loss curve: nothing to plot")
    smoothed = {k: (c[smooth - 1:, 0], np.convolve(c[:, 1], np.ones(smooth) / smooth, "valid"))
                for k, c in curves.items()}
    left, top, width, height = 60, 30, size[0] - 80, size[1] - 70
    x_max = max(float(x[-1]) for x, _ in smoothed.values())
    lows, highs = zip(*((float(y.min()), float(y.max())) for _, y in smoothed.values()))
    y_low, y_high = min(lows), max(highs)
    canvas = Image.new("RGB", size, (255, 255, 255))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()

    def point(x: float, y: float) -> tuple[float, float]:
        return (left + x / x_max * width, top + (y_high - y) / (y_high - y_low) * height)

    for (arm, _), (x, y) in smoothed.items():
        draw.line([point(a, b) for a, b in zip(x, y)], fill=COLOURS[arm], width=1)
    draw.rectangle([left, top, left + width, top + height], outline=(120, 120, 120))
    draw.text((4, 8), f"training loss (moving mean of {smooth} logged intervals), one line per "
              "training seed: blue none, orange int8", fill=(0, 0, 0), font=font)
    for y in (y_low, y_high):
        draw.text((4, point(0, y)[1] - 6), f"{y:.3f}", fill=(0, 0, 0), font=font)
    draw.text((left, top + height + 8), "step 0", fill=(0, 0, 0), font=font)
    draw.text((left + width - 60, top + height + 8), f"step {x_max:.0f}", fill=(0, 0, 0),
              font=font)
    return canvas


def load(results: Path = RESULTS) -> dict[str, dict[int, dict]]:
    return ablations.load_results(results, ARMS)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--repo", type=Path, default=Path("."))
    sub = parser.add_subparsers(dest="command", required=True)
    queue_cmd = sub.add_parser("queue", help="dvc exp run --queue lines of the missing runs")
    queue_cmd.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    sub.add_parser("collect", help="record the experiments of both arms")
    transfer_cmd = sub.add_parser("transfer", help="sample each int8 model on both bases")
    for name, default in (("base", "data/base"), ("latents", "data/latents"),
                          ("data", "data/raw"), ("labels", "data/labels")):
        transfer_cmd.add_argument(f"--{name}", type=Path, default=Path(default))
    table_cmd = sub.add_parser("table", help="the comparison from the records")
    table_cmd.add_argument("--out", default=None)
    table_cmd.add_argument("--plot", default=None, help="and the loss curves (PNG) here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "queue":
        print("\n".join(ablations.queue_commands(args.seeds, args.results, ARMS)))
    elif args.command == "collect":
        for path in collect(args.repo, args.results):
            print(f"wrote {path}")
    elif args.command == "transfer":
        for path in transfer(args):
            print(f"transferred {path}")
    else:
        found = load(args.results)
        if args.plot:
            with atomic_path(args.plot) as tmp:
                loss_plot(found).save(tmp, format="PNG")
        if args.out:
            write_text(args.out, report(found))
        else:
            print(report(found), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
