"""Side-by-side speed and quality of the sampler's options on the test faces.

    python -m facemogle.bench.sampling --out metrics/bench/sampling-cpu.json

Every option samples the same test faces (`--images`, default all 128) in `--modes` with the
`sample` section of the params (28 Euler steps, true CFG 3.0 on the embedded default), times
the denoising loop and the VAE decode, and scores the images with the evaluate stage's parser
metrics: mIoU against the input masks, attribute accuracy against the captions and the
Frechet distance in the parser's feature space (`fd_parser`). The reference sampler runs with
`--seeds` sampling seeds (`seed` + 0, 1, ...): their spread is the noise that any option's
quality difference is compared with. An option is `within_spread` when each of its figures
lies inside the reference seeds' range widened by half that range on each side.

Options: the reference (`before`: MoGLE experts recomputed at every step, every block at
every step), `experts once` (the same numbers, verified byte for byte), `residual cache T`
(first-block residual caching with threshold T: `sample.cache_threshold`) and, last because it
changes the process, `torch.compile` of the blocks.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facemogle.base.loader import load_base, parts_dir, read_manifest
from facemogle.base.segmenter import load_parser
from facemogle.cache.build import folder_fingerprint
from facemogle.cache.store import load_cache
from facemogle.core import flow, labels
from facemogle.core.config import load_params
from facemogle.core.io import read_json, read_jsonl, read_rgb, write_json
from facemogle.core.machine import machine
from facemogle.data import layout
from facemogle.evaluation.evaluate import parser_metrics
from facemogle.models import condition
from facemogle.sampling import sampler
from facemogle.sampling.sheets import to_uint8
from facemogle.training.checkpoint import load_trained

QUALITY = ("mask_miou", "attribute_acc", "fd_parser")


def sample_set(model, base, cache, rows: list[int], mode: str, cfg, *, seed: int,
               experts_once: bool, threshold: float) -> tuple[list[np.ndarray], dict[str, float]]:
    """Images (H, W, 3) uint8 of `rows` in `mode`, and the seconds and skipped steps."""
    images, loop_s, decode_s, skipped, steps = [], 0.0, 0.0, 0, 0
    for start in range(0, len(rows), cfg.batch_size):
        batch = torch.tensor(rows[start:start + cfg.batch_size])
        cond = sampler.mode_conditions(cache, batch, mode, torch.device("cpu"))
        seeds = [flow.seed_for(cache.ids[int(r)], seed) for r in batch]
        residual = sampler.residual_cache(threshold)
        begin = time.perf_counter()
        with torch.no_grad():
            noise = sampler.generate_latents(
                model, cond, seeds, latent_size=cache.latent_size, steps=cfg.steps,
                guidance=cfg.guidance, cfg_scale=cfg.cfg_scale,
                scheduler_config=base.scheduler_config, residual_cache=residual,
                experts_once=experts_once)
            middle = time.perf_counter()
            images += list(to_uint8(sampler.decode_images(base.vae, noise, cache.latent_size)))
        loop_s += middle - begin
        decode_s += time.perf_counter() - middle
        if residual is not None:
            skipped += residual.skipped
        steps += cfg.steps
    return images, {"loop_s": loop_s, "decode_s": decode_s, "skipped_steps": skipped,
                    "steps": steps}


def score(images: list[np.ndarray], ids: list[str], data: Path, labels_dir: Path, parser,
          params) -> dict[str, float]:
    """mIoU, attribute accuracy and fd_parser of `images` (the evaluate stage's metrics)."""
    reference = [read_rgb(layout.image_path(data, i)) for i in ids]
    masks = [labels.load_label_map(layout.mask_path(labels_dir, i)) for i in ids]
    table = {r["id"]: r["attributes"] for r in read_jsonl(layout.attributes_path(data))}
    values, _ = parser_metrics(parser, images, reference, masks, [table[i] for i in ids],
                               params.evaluate, seed=params.seed, backend="parser")
    return {v.name: v.value for v in values if v.name in QUALITY}


def within_spread(quality: dict[str, float], spread: dict[str, list[float]]) -> bool:
    for name, values in spread.items():
        low, high = min(values), max(values)
        margin = (high - low) / 2
        if not low - margin <= quality[name] <= high + margin:
            return False
    return True


def options(thresholds: list[float], seeds: int, compile_: bool
            ) -> list[tuple[str, dict[str, Any]]]:
    reference = [(f"before, seed +{k}", {"seed": k, "experts_once": False, "threshold": 0.0})
                 for k in range(seeds)]
    cached = [(f"residual cache {t:g}", {"seed": 0, "experts_once": True, "threshold": t})
              for t in thresholds]
    once = [("experts once", {"seed": 0, "experts_once": True, "threshold": 0.0})]
    compiled = [("torch.compile blocks", {"seed": 0, "experts_once": True, "threshold": 0.0,
                                          "compile": True})]
    return reference + once + cached + (compiled if compile_ else [])


def run(args) -> dict[str, Any]:
    params = load_params(args.params)
    cfg = params.sample
    base = load_base(args.base, load_text_encoder=False)
    model = load_trained(base.transformer, args.model, params).eval()
    cache = load_cache(args.latents, "test")
    parser = load_parser(parts_dir(args.base, read_manifest(args.base)) / "parser").eval()
    rows = list(range(min(args.images, len(cache.ids))))
    ids = [cache.ids[r] for r in rows]
    result = start_result(args, len(rows), cfg)
    progress = partial_path(args.out)
    first: dict[str, list[np.ndarray]] = {}
    for name, option in options(args.thresholds, args.seeds, args.compile):
        if name in result["options"]:
            continue
        if option.get("compile"):
            condition.enable_compile()
        entry: dict[str, Any] = {"option": option, "modes": {}}
        for mode in args.modes:
            images, timing = sample_set(model, base, cache, rows, mode, cfg,
                                        seed=params.seed + option["seed"],
                                        experts_once=option["experts_once"],
                                        threshold=option["threshold"])
            entry["modes"][mode] = {**timing, **score(images, ids, args.data, args.labels,
                                                      parser, params)}
            key = (mode, option["seed"])
            if key in first:
                entry["modes"][mode]["identical_to_before"] = all(
                    np.array_equal(a, b) for a, b in zip(images, first[key]))
            elif option["seed"] != 0 or not option["experts_once"]:
                first[key] = images
            print(f"{name} {mode}: {entry['modes'][mode]}", file=sys.stderr)
        result["options"][name] = entry
        write_json(progress, result)  # a cut run keeps its finished options (--resume)
    return summarise(result, args.seeds)


def start_result(args, images: int, cfg) -> dict[str, Any]:
    """The result's header (machine, images, modes, sampler settings, the model folder's
    fingerprint) and, with `--resume`, the options a cut run or `--out` already holds."""
    result: dict[str, Any] = {"machine": machine(), "images": images, "modes": args.modes,
                              "sample": {"steps": cfg.steps, "cfg_scale": cfg.cfg_scale,
                                         "batch_size": cfg.batch_size},
                              "model_fingerprint": folder_fingerprint(args.model), "options": {}}
    if args.resume:
        earlier = next((p for p in (partial_path(args.out), args.out) if p.exists()), None)
        if earlier is not None:
            result["options"] = resumed_options(read_json(earlier), result, earlier)
    return result


def partial_path(out: Path) -> Path:
    """Where a run keeps its finished options until it writes `out` (so that a cut run never
    replaces a complete result)."""
    return out.with_name(f"{out.stem}.partial.json")


def resumed_options(previous: dict[str, Any], result: dict[str, Any], path: Path
                    ) -> dict[str, Any]:
    """The options of an earlier run's result at `path`, when it measured the same model,
    images, modes and sampler settings (`--resume`); anything else is refused by name."""
    for key in ("model_fingerprint", "images", "modes", "sample"):
        if previous.get(key) != result[key]:
            raise SystemExit(f"{path}: --resume needs the same {key} as this run "
                             f"({previous.get(key)!r} there, {result[key]!r} here)")
    if previous["machine"]["cpu"] != result["machine"]["cpu"]:
        raise SystemExit(f"{path}: measured on {previous['machine']['cpu']}, this machine is "
                         f"{result['machine']['cpu']}; speed-ups across machines do not compare")
    return previous["options"]


def summarise(result: dict[str, Any], seeds: int) -> dict[str, Any]:
    """Speed-up over the reference (the median loop time of its seeds, which run the same
    computation) and whether each option's quality is within the reference seeds' spread, per
    mode."""
    options_ = result["options"]
    reference = [options_[f"before, seed +{k}"] for k in range(seeds)]
    for mode in result["modes"]:
        spread = {q: [r["modes"][mode][q] for r in reference] for q in QUALITY}
        before = float(np.median([r["modes"][mode]["loop_s"] for r in reference]))
        for entry in options_.values():
            figures = entry["modes"][mode]
            figures["speedup"] = before / figures["loop_s"]
            figures["within_spread"] = within_spread(figures, spread)
        result.setdefault("spread", {})[mode] = spread
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, default=Path("data/base"))
    parser.add_argument("--model", type=Path, default=Path("data/model"))
    parser.add_argument("--latents", type=Path, default=Path("data/latents"))
    parser.add_argument("--data", type=Path, default=Path("data/raw"))
    parser.add_argument("--labels", type=Path, default=Path("data/labels"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--modes", nargs="+", default=["multimodal"])
    parser.add_argument("--seeds", type=int, default=3, help="reference sampling seeds")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.1, 0.15, 0.2])
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="leave out the torch.compile option (about a minute of compiling)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--resume", action="store_true",
                        help="keep the options a cut run (<out>.partial.json) or --out already "
                             "holds, measured on the same model, and run only the missing ones "
                             "(for example more reference seeds with a larger --seeds)")
    args = parser.parse_args(argv)
    result = run(args)
    write_json(args.out, result)
    partial_path(args.out).unlink(missing_ok=True)
    print(json.dumps({n: {m: {k: f[k] for k in ("loop_s", "speedup", "within_spread", *QUALITY)}
                          for m, f in e["modes"].items()}
                      for n, e in result["options"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
