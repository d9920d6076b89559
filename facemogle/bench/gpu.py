"""One GPU session's measurements of the full setting, each in a fresh process, written to files.

    python -m facemogle.bench.gpu --out metrics/bench/gpu [--quantization none,int8,nf4]

For each quantization of the frozen transformer it runs `python -m facemogle.bench --size flux`
(FLUX.1-dev at full depth with random weights, 512 px: training samples/s, step time, peak
memory and MFU at batch 1, 2 and 4 with activation checkpointing; sampling seconds per image at
batch 1 and 8; latent caching once, for `none`), then `python -m facemogle.bench.weights` for the
saved bytes. A run that fails (an out-of-memory at load, a library that refuses the device) is
recorded in `summary.json` with its exit status and the end of its output, and the session goes
on. `--dry-run` prints the commands only.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from facemogle.core.io import write_json

TAIL = 4000  # characters of a failed run's output kept in the summary


def commands(out: Path, quantizations: list[str]) -> dict[str, list[str]]:
    """name -> command line of every measurement of the session."""
    runs = {}
    for q in quantizations:
        parts = "train,sample,cache" if q == "none" else "train,sample"
        runs[f"flux-{q}"] = [
            sys.executable, "-m", "facemogle.bench", "--size", "flux", "--quantization", q,
            "--batch-sizes", "1,2,4", "--parts", parts, "--out", str(out / f"flux-{q}.json"),
            "--markdown", str(out / f"flux-{q}.md")]
    runs["weights"] = [sys.executable, "-m", "facemogle.bench.weights", "--quantization",
                       ",".join(quantizations), "--out", str(out / "weights.json")]
    return runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the result files")
    ap.add_argument("--quantization", default="none,int8,nf4")
    ap.add_argument("--dry-run", action="store_true")
    a = ap.parse_args(argv)
    runs = commands(a.out, [q.strip() for q in a.quantization.split(",")])
    if a.dry_run:
        print("\n".join(" ".join(c) for c in runs.values()))
        return 0
    a.out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name, command in runs.items():
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        summary[name] = {"command": command, "returncode": done.returncode,
                         "seconds": round(time.perf_counter() - start, 1)}
        if done.returncode:
            summary[name]["output_tail"] = (done.stdout + done.stderr)[-TAIL:]
        print(f"{name}: exit {done.returncode} in {summary[name]['seconds']} s", file=sys.stderr)
        write_json(a.out / "summary.json", summary)  # after every run: a cut session keeps it
    return 0 if all(s["returncode"] == 0 for s in summary.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
