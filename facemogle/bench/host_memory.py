"""FLUX.1-dev's peak memory for training and sampling, predicted from shallow full-width runs.

    python -m facemogle.bench.host_memory --out metrics/bench/host-memory-cpu.json

Every point is one `python -m facemogle.bench --size flux --device cpu --blocks D,S` run in a
fresh process: FLUX.1-dev's transformer at full width (3072, 512 px, 512 T5 tokens, 1024 image
and 1024 condition tokens) with D double and S single blocks and random bf16 weights, the
paper's LoRA and MoGLE in float32, bf16 autocast, Prodigy. A training point is one step
(`train_step`: loss, backward, clipping, the optimizer's first step, so its state is allocated);
a sampling point is `generate_latents` at batch 1. The figure is the process's peak resident
memory during the measured part, model and optimizer state included (Linux VmHWM, reset when
the measurement starts; glibc returns freed blocks of 64 KiB and more at once, `MALLOC_ENV`).

Points, for checkpointing on and off: blocks (1, 1), (2, 1), (1, 2) at batch 1 and (1, 1) at
batch 2. The model per setting, with b the batch:

    peak(D, S, b) = c0 + c1 b + D (w_d + a_d b) + S (w_s + a_s b)

w_d, w_s are each block's parameter bytes as the runs count them (frozen bf16 weights, and the
block's float32 LoRA weights times 6: weight, gradient and Prodigy's four state tensors); the
four points fix c0, c1, a_d and a_s exactly. Sampling: peak(D, S) = c + D f_d + S f_s from the
three depths. The prediction puts in D = 19, S = 38 (FLUX.1-dev) at batch 1, 2 and 4. Host
memory of a CPU run is not GPU memory: there is no CUDA context or caching allocator, and the
CPU kernels' workspaces differ; docs/full-setting.md compares the two.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from facemogle.bench.cache_memory import MALLOC_ENV
from facemogle.core.io import write_json, write_text
from facemogle.core.machine import machine

FLUX_DEV_BLOCKS = (19, 38)
TRAIN_POINTS = [((1, 1), 1), ((2, 1), 1), ((1, 2), 1), ((1, 1), 2)]
SAMPLE_POINTS = [(1, 1), (2, 1), (1, 2)]
LORA_STATE_COPIES = 6  # weight, gradient, Prodigy's exp_avg, exp_avg_sq, s and p0
TRAINING_MODEL = "peak(D, S, b) = c0 + c1 b + D (w_d + a_d b) + S (w_s + a_s b)"
SAMPLING_MODEL = "peak(D, S) = c + D f_d + S f_s (batch 1)"


def bench_point(blocks: tuple[int, int], *, train_batch: int | None, checkpointing: bool,
                folder: Path) -> dict[str, Any]:
    """One `python -m facemogle.bench` run in a fresh process; its JSON result."""
    out = folder / f"{blocks[0]}-{blocks[1]}-{train_batch}-{int(checkpointing)}.json"
    command = [sys.executable, "-m", "facemogle.bench", "--size", "flux", "--device", "cpu",
               "--blocks", f"{blocks[0]},{blocks[1]}", "--out", str(out)]
    if train_batch is None:
        command += ["--parts", "sample", "--sample-batch-sizes", "1", "--sample-steps", "1"]
    else:
        command += ["--parts", "train", "--batch-sizes", str(train_batch), "--steps", "1",
                    "--warmup", "0"]
    if not checkpointing:
        command.append("--no-checkpointing")
    print(" ".join(command[1:]), file=sys.stderr, flush=True)
    subprocess.run(command, check=True, env={**os.environ, **MALLOC_ENV})
    return json.loads(out.read_text())


def block_bytes(results: dict[tuple[int, int], dict[str, Any]]) -> tuple[float, float]:
    """(w_d, w_s): bytes one more double / single block adds to the weights and LoRA state."""
    def total(r: dict[str, Any]) -> float:
        p = r["parameters"]
        return 2.0 * p["transformer"] + 4.0 * LORA_STATE_COPIES * p["lora"]
    one = total(results[(1, 1)])
    return total(results[(2, 1)]) - one, total(results[(1, 2)]) - one


def fit_training(peaks: dict[tuple[tuple[int, int], int], float], w: tuple[float, float]
                 ) -> dict[str, float]:
    """c0, c1, a_d, a_s from the four training points (exact solve)."""
    rows, values = [], []
    for ((d, s), b), peak in peaks.items():
        rows.append([1.0, b, d * b, s * b])
        values.append(peak - d * w[0] - s * w[1])
    c0, c1, a_d, a_s = np.linalg.solve(np.array(rows), np.array(values))
    return {"c0": c0, "c1": c1, "a_d": a_d, "a_s": a_s, "w_d": w[0], "w_s": w[1]}


def predict_training(coef: dict[str, float], blocks: tuple[int, int], batch: int) -> float:
    d, s = blocks
    return (coef["c0"] + coef["c1"] * batch + d * (coef["w_d"] + coef["a_d"] * batch)
            + s * (coef["w_s"] + coef["a_s"] * batch))


def fit_sampling(peaks: dict[tuple[int, int], float]) -> dict[str, float]:
    rows = [[1.0, d, s] for d, s in peaks]
    c, f_d, f_s = np.linalg.solve(np.array(rows), np.array(list(peaks.values())))
    return {"c": c, "per_double": f_d, "per_single": f_s}


def run(folder: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"machine": machine(), "training_model": TRAINING_MODEL,
                              "sampling_model": SAMPLING_MODEL,
                              "training": {}, "sampling": {}}
    for checkpointing in (True, False):
        key = "checkpointing" if checkpointing else "no checkpointing"
        runs = {(blocks, b): bench_point(blocks, train_batch=b, checkpointing=checkpointing,
                                         folder=folder) for blocks, b in TRAIN_POINTS}
        peaks = {k: r["train"][0]["peak_host_rss_bytes"] for k, r in runs.items()}
        coef = fit_training(peaks, block_bytes({k[0]: r for k, r in runs.items() if k[1] == 1}))
        result["training"][key] = {
            "points": [{"blocks": list(k[0]), "batch": k[1], "peak_bytes": peaks[k],
                        "step_s": runs[k]["train"][0]["step_s"]} for k in peaks],
            "coefficients_bytes": coef,
            "flux_dev_peak_bytes": {str(b): predict_training(coef, FLUX_DEV_BLOCKS, b)
                                    for b in (1, 2, 4)}}
    runs = {blocks: bench_point(blocks, train_batch=None, checkpointing=True, folder=folder)
            for blocks in SAMPLE_POINTS}
    peaks = {k: r["sample"][0]["peak_host_rss_bytes"] for k, r in runs.items()}
    coef = fit_sampling(peaks)
    result["sampling"] = {
        "points": [{"blocks": list(k), "batch": 1, "peak_bytes": v} for k, v in peaks.items()],
        "coefficients_bytes": coef,
        "flux_dev_peak_bytes": coef["c"] + FLUX_DEV_BLOCKS[0] * coef["per_double"]
        + FLUX_DEV_BLOCKS[1] * coef["per_single"]}
    return result


def markdown(result: dict[str, Any]) -> str:
    gb = lambda b: f"{b / 1e9:.1f} GB"  # noqa: E731
    lines = [f"Predicted peak for FLUX.1-dev (19 + 38 blocks, 512 px), from host memory on "
             f"{result['machine']['cpu']} ({result['machine']['cpu_count']} cores)", "",
             "| run | batch 1 | batch 2 | batch 4 |", "|---|---:|---:|---:|"]
    for key, entry in result["training"].items():
        p = entry["flux_dev_peak_bytes"]
        lines.append(f"| training, {key} | {gb(p['1'])} | {gb(p['2'])} | {gb(p['4'])} |")
    lines.append(f"| sampling | {gb(result['sampling']['flux_dev_peak_bytes'])} | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="result JSON")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="facemogle-host-memory-") as tmp:
        result = run(Path(tmp))
    write_json(args.out, result)
    table = markdown(result)
    if args.markdown is not None:
        write_text(args.markdown, table)
    print(table, file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
