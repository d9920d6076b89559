"""The live metrics of a `train` run, written by DVCLive on the main process only.

The metrics folder (`--metrics-dir`, `metrics/train` in dvc.yaml) has DVCLive's own layout,
which `dvc metrics show`, `dvc exp show` and `dvc plots show` read:

    metrics.json                       the last value of each metric below, and its step
    plots/metrics/loss.tsv             step, loss: the interval's mean loss over all processes
    plots/metrics/lr.tsv               step, lr: the learning rate (`learning_rate`)
    plots/metrics/seconds_per_step.tsv step, seconds_per_step: wall-clock seconds per optimizer
                                       step over the interval, checkpoint writes included
    plots/metrics/system/...           DVCLive's system monitor: CPU, RAM and disk (the project's
                                       partition) use, GPU use and memory where NVML runs; a
                                       time-stamped row every 2 s under the last logged step

A row is written every `train.log_every` steps and at the last step; `metrics.json` is
rewritten with each.

Resuming at step k (`open_live`): DVCLive continues the folder (`Live(resume=True)`) once its
loss curve up to step k is the checkpoint's, value for value, and every row past step k (logged
after the checkpoint by the run that was stopped) is dropped, so the resumed run writes steps
k+1.. once. DVC deletes a stage's metrics and plots before it runs them again (they are plain
outputs, which its run-cache can restore), so the main process copies the folder into the
training's work folder before each checkpoint (`SNAPSHOT`), and a resume under `dvc repro`
starts from that copy. With neither (both lost, or a checkpoint older than the copies), the
folder starts afresh with the loss curve the checkpoint keeps.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import torch
from dvclive import Live

log = logging.getLogger(__name__)

LOSS = "loss"
PLOTS = Path("plots") / "metrics"  # DVCLive's metric files, under its folder
SNAPSHOT = "live-metrics"  # the copy of the folder, in the training's work folder
# DVCLive's system monitor: a row of means of `SAMPLES` samples taken `INTERVAL` s apart, every
# 2 s (its longest interval: few samples a second on a small CPU).
INTERVAL, SAMPLES = 0.1, 20


class TrainingLive(Live):
    """`dvclive.Live` made safe for its system monitor, which logs from a thread of its own, with
    a copy of its folder for a resume (`snapshot`).

    `Live.log_metric` replaces `summary` by an updated copy, so two threads logging at once
    could each drop the other's value (the final loss, in `metrics.json`); a lock orders them.
    The monitor's last row, logged once `end` stops it, is a mean over a partial window divided
    by the full sample count (a CPU count of 0.1 for 2 CPUs after 1 sample of 20): it is not
    logged.
    """

    def __init__(self, *args, **kwargs) -> None:
        self._lock = threading.Lock()
        self._ending = False
        super().__init__(*args, **kwargs)

    def log_metric(self, name: str, val, timestamp: bool = False, plot: bool = True) -> None:
        with self._lock:
            if self._ending and name.startswith("system/"):
                return
            super().log_metric(name, val, timestamp=timestamp, plot=plot)

    def make_summary(self) -> None:
        with self._lock:
            super().make_summary()

    def end(self) -> None:
        with self._lock:
            self._ending = True
        super().end()

    def snapshot(self, folder: str | Path) -> None:
        """Replace `folder` by a copy of this run's metrics (no row is half written: the monitor
        waits)."""
        folder = Path(folder)
        partial, old = folder.with_name(f".{folder.name}.partial"), folder.with_name(
            f".{folder.name}.old")
        for stale in (partial, old):
            shutil.rmtree(stale, ignore_errors=True)
        with self._lock:
            shutil.copytree(self.dir, partial)
        if folder.exists():
            folder.rename(old)
        partial.rename(folder)
        shutil.rmtree(old, ignore_errors=True)


def open_live(metrics_dir: str | Path, start: int, history: list[tuple[int, float]], *,
              snapshot: str | Path | None = None, monitor_system: bool = True) -> TrainingLive:
    """DVCLive for a run that starts at step `start` (0, or a resumed checkpoint's step) with the
    checkpoint's loss `history`, continuing `metrics_dir` or its `snapshot` (module docstring).
    Not a DVC experiment of its own and no dvc.yaml of its own: the `train` stage declares the
    folder in the project's dvc.yaml."""
    directory = Path(metrics_dir)
    kept = start > 0 and _continue_from(directory, snapshot, history, start)
    live = TrainingLive(str(directory), resume=kept, report=None, save_dvc_exp=False,
                        dvcyaml=None)
    if start > 0 and not kept:
        log.info("%s: no metrics of the run to resume; the loss curve up to step %d is the "
                 "checkpoint's", directory, start)
        for step, value in history:
            live.step = step
            live.log_metric(LOSS, value)
    live.step = start
    if monitor_system:
        _without_failing_gpu_reads()
        live.monitor_system(interval=INTERVAL, num_samples=SAMPLES,
                            directories_to_monitor={"project": os.getcwd()})
    return live


def _without_failing_gpu_reads() -> None:
    """DVCLive's monitor reads the GPUs through pynvml whenever pynvml imports. Without an
    NVIDIA driver (a CPU machine) every sample then raises, and the CPU, RAM and disk values of
    that sample are lost with it: no system metric would ever be logged. Where NVML does not
    start, the monitor is told there is no GPU (its module's own switch)."""
    from dvclive import monitor_system as monitor

    if not getattr(monitor, "GPU_AVAILABLE", False):
        return
    try:
        monitor.nvmlInit()
        monitor.nvmlShutdown()
    except monitor.NVMLError:
        monitor.GPU_AVAILABLE = False


def _continue_from(directory: Path, snapshot: str | Path | None,
                   history: list[tuple[int, float]], start: int) -> bool:
    """Put the metrics of the run resumed at `start` in `directory`, cut at `start`: those
    already there, else those of `snapshot`; False when neither holds the checkpoint's curve."""
    if not _curve_is(directory, history, start):
        if snapshot is None or not _curve_is(Path(snapshot), history, start):
            return False
        log.info("%s: metrics restored from %s", directory, snapshot)
        shutil.rmtree(directory / PLOTS, ignore_errors=True)
        shutil.copytree(snapshot, directory, dirs_exist_ok=True)
    log.info("%s: continuing the metrics of the run resumed at step %d", directory, start)
    for tsv in sorted((directory / PLOTS).rglob("*.tsv")):
        _drop_rows_after(tsv, start)
    summary = directory / "metrics.json"  # DVCLive reads it to resume; a kill may cut it short
    try:
        json.loads(summary.read_text(encoding="utf-8"))
    except FileNotFoundError:
        pass
    except ValueError:
        summary.unlink()
    return True


def _steps(tsv: Path) -> tuple[str, list[tuple[int, str]], bool]:
    """(header line, [(step, row line)], whether every row was whole) of one of DVCLive's metric
    files; a row cut short by a kill is left out."""
    lines = tsv.read_text(encoding="utf-8").splitlines()
    columns = lines[0].split("\t") if lines else []
    if "step" not in columns:
        return "", [], False
    column, rows = columns.index("step"), []
    for line in lines[1:]:
        fields = line.split("\t")
        if len(fields) == len(columns) and fields[column].isdigit() and fields[-1]:
            rows.append((int(fields[column]), line))
    return lines[0], rows, len(rows) == len(lines) - 1


def _curve_is(directory: Path, history: list[tuple[int, float]], start: int) -> bool:
    """Whether the loss curve in `directory`, up to step `start`, is `history`, value for value
    (DVCLive writes a float's shortest repr, which reads back exactly)."""
    tsv = directory / PLOTS / f"{LOSS}.tsv"
    if not tsv.is_file():
        return False
    _, rows, _ = _steps(tsv)
    logged = [(step, line.split("\t")[-1]) for step, line in rows if step <= start]
    try:
        return [(step, float(value)) for step, value in logged] == [
            (step, float(value)) for step, value in history]
    except ValueError:
        return False


def _drop_rows_after(tsv: Path, step: int) -> None:
    """Rewrite one of DVCLive's metric files without its rows past `step`, or a row cut short
    (atomically)."""
    header, rows, whole = _steps(tsv)
    kept = [line for s, line in rows if s <= step]
    if whole and len(kept) == len(rows):
        return
    if not header:
        tsv.unlink()
        return
    partial = tsv.with_name(f".{tsv.name}.partial")
    partial.write_text("".join(f"{line}{os.linesep}" for line in [header, *kept]),
                       encoding="utf-8")
    partial.replace(tsv)


def learning_rate(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate of the first parameter group: AdamW's `lr`, or Prodigy's `d` x `lr`,
    the step size it has estimated times the multiplier (its bias correction aside)."""
    group = optimizer.param_groups[0]
    return float(group["lr"]) * float(group.get("d", 1.0))


class IntervalTimer:
    """Wall-clock seconds per step between two log points (the main process's clock; every
    step ends with all processes waiting for each other, so it is the slowest one's pace)."""

    def __init__(self, step: int) -> None:
        self._step, self._time = step, time.perf_counter()

    def seconds_per_step(self, step: int) -> float:
        now = time.perf_counter()
        value = (now - self._time) / max(step - self._step, 1)
        self._step, self._time = step, now
        return value


def log_interval(live: TrainingLive, step: int, loss: float, lr: float,
                 seconds_per_step: float) -> None:
    """One row of every training metric at `step`, and `metrics.json` rewritten."""
    live.step = step
    live.log_metric(LOSS, loss)
    live.log_metric("lr", lr)
    live.log_metric("seconds_per_step", seconds_per_step)
    live.make_summary()
