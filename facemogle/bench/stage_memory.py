"""Wall time and peak host memory of every stage that a `dvc repro` runs.

    python -m facemogle.bench.stage_memory --out metrics/bench/rehearsal-stages.json -- dvc repro

runs the command after `--`, passes its output through, and follows DVC's "Running stage 'x':"
lines to know which stage is running. Every `--interval` seconds it sums the resident memory
(RSS) of the command's descendant processes: the stage's shell, its Python process and, under
torchrun, the launcher and its workers; DVC's own process is left out, so the figure is the
stage's, not DVC's hashing. Per stage it records the seconds from its "Running stage" line to the
next one (or the end), the peak of that sum (`peak_rss_bytes`) and the largest single process
(`peak_process_rss_bytes`). Summing RSS counts pages shared between processes (the torch
libraries of torchrun's launcher and worker) once per process, so with several processes the sum
is an upper bound; with one it is that process's resident memory. A sampled peak can miss a
spike shorter than the interval.

The result is rewritten after each stage, so an interrupted run keeps what finished, and the
command's exit status is returned.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from facemogle.core.io import write_json
from facemogle.core.machine import machine

STAGE_LINE = re.compile(r"Running stage '([^']+)'")


class StageLog:
    """Stages in the order they started, with their start, end and memory peaks."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stages: list[dict[str, Any]] = []

    def start(self, name: str, now: float) -> None:
        with self.lock:
            self._close(now)
            self.stages.append({"stage": name, "start": now, "end": None,
                                "peak_rss_bytes": 0, "peak_process_rss_bytes": 0})

    def _close(self, now: float) -> None:
        if self.stages and self.stages[-1]["end"] is None:
            self.stages[-1]["end"] = now

    def finish(self, now: float) -> None:
        with self.lock:
            self._close(now)

    def record(self, total: int, largest: int) -> None:
        with self.lock:
            if self.stages and self.stages[-1]["end"] is None:
                current = self.stages[-1]
                current["peak_rss_bytes"] = max(current["peak_rss_bytes"], total)
                current["peak_process_rss_bytes"] = max(current["peak_process_rss_bytes"],
                                                        largest)

    def rows(self, origin: float) -> list[dict[str, Any]]:
        with self.lock:
            return [{"stage": s["stage"],
                     "seconds": None if s["end"] is None else s["end"] - s["start"],
                     "started_s": s["start"] - origin,
                     "peak_rss_bytes": s["peak_rss_bytes"],
                     "peak_process_rss_bytes": s["peak_process_rss_bytes"]}
                    for s in self.stages]


def descendants_rss(root: psutil.Process) -> tuple[int, int]:
    """(sum, largest) resident bytes of `root`'s descendants; processes that end while they are
    read are skipped."""
    total = largest = 0
    try:
        children = root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, 0
    for child in children:
        try:
            rss = child.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total += rss
        largest = max(largest, rss)
    return total, largest


def follow(stream, log: StageLog, echo) -> None:
    """Copy the command's output to `echo` and start a stage at each "Running stage" line."""
    for line in stream:
        echo.write(line)
        echo.flush()
        found = STAGE_LINE.search(line)
        if found:
            log.start(found.group(1), time.perf_counter())


def run(command: list[str], out: Path, interval: float = 0.2, echo=sys.stdout) -> int:
    """Run `command`, write the per-stage record to `out` and return its exit status."""
    log = StageLog()
    origin = time.perf_counter()
    # Unbuffered: DVC's "Running stage" lines must arrive when the stage starts, not when an
    # 8 KiB pipe buffer fills (the stages' own output is not held back either way).
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    reader = threading.Thread(target=follow, args=(process.stdout, log, echo), daemon=True)
    reader.start()
    root = psutil.Process(process.pid)
    written = 0

    def save(rc: int | None) -> None:
        rows = log.rows(origin)
        write_json(out, {"machine": machine(), "command": command, "interval_s": interval,
                         "returncode": rc, "seconds": time.perf_counter() - origin,
                         "stages": rows})

    while process.poll() is None:
        log.record(*descendants_rss(root))
        finished = sum(1 for s in log.rows(origin) if s["seconds"] is not None)
        if finished > written:
            written = finished
            save(None)
        time.sleep(interval)
    reader.join()
    log.finish(time.perf_counter())
    save(process.returncode)
    return process.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="result JSON")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between samples")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="the command after --, for example: -- dvc repro")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --, for example: -- dvc repro")
    if args.interval <= 0:
        parser.error(f"--interval must be > 0, got {args.interval}")
    return run(command, args.out, args.interval)


if __name__ == "__main__":
    raise SystemExit(main())
