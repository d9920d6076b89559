"""The `train` stage's driver: LoRA + MoGLE on cached latents (paper section 4.1).

`train` runs `facemogle.training.step.train_step` over batches of the latent cache, logs to
DVCLive on the main process (`facemogle.training.live`) and checkpoints
(`facemogle.training.checkpoint`) so a killed run resumes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from facemogle.cache.store import LatentCache
from facemogle.core.config import Params, TrainConfig
from facemogle.models.condition import enable_compile
from facemogle.models.facemogle import FaceMoGLE
from facemogle.training.checkpoint import (
    find_resumable,
    load_training_state,
    save_model,
    save_training_state,
)
from facemogle.training.launch import check_world, without_launch
from facemogle.training.live import (
    SNAPSHOT,
    IntervalTimer,
    TrainingLive,
    learning_rate,
    log_interval,
    open_live,
)
from facemogle.training.step import draw_batch, make_optimizer, train_step

log = logging.getLogger(__name__)


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """The accelerator of a training run: `cfg`'s precision and gradient accumulation, refusing
    a launch whose process count is not `train.nnodes` x `train.num_processes` (`batch_size`
    counts samples per process, so the global batch would silently change; `check_world`)."""
    # cpu=True when there is no GPU: only then does accelerate join CPU processes (gloo) started
    # by torchrun; on GPUs it picks the device of each process.
    precision = "no" if cfg.mixed_precision == "fp32" else cfg.mixed_precision
    accelerator = Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available(),
                              gradient_accumulation_steps=cfg.grad_accum)
    check_world(cfg, accelerator.num_processes)
    return accelerator


def _resume(checkpoints: Path, resolved: dict, model: FaceMoGLE,
            optimizer: torch.optim.Optimizer,
            generator: torch.Generator) -> tuple[int, list[tuple[int, float]]]:
    """(start step, loss history) of the last checkpoint made under `resolved`, or (0, []);
    model, optimizer and generator are restored in place."""
    resumable = find_resumable(checkpoints, resolved)
    if resumable is None:
        return 0, []
    start, history = load_training_state(resumable, model, optimizer, generator)
    log.info("resuming from %s at step %d", resumable, start)
    return start, history


def _mean_loss(losses: list[torch.Tensor], accelerator, step: int) -> float:
    """Mean of the interval's losses over every process; one host sync per log interval."""
    value = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
    if not math.isfinite(value):
        raise FloatingPointError(f"train: loss became {value} at step {step}")
    return value


def _check_accumulation(cfg: TrainConfig, accelerator: Accelerator) -> None:
    if accelerator.gradient_accumulation_steps != cfg.grad_accum:
        raise ValueError(f"train.grad_accum is {cfg.grad_accum} but the accelerator accumulates "
                         f"{accelerator.gradient_accumulation_steps} batches: create it with "
                         "gradient_accumulation_steps=train.grad_accum")


@dataclass(frozen=True)
class _Run:
    """What every optimizer step of one training run uses."""

    model: torch.nn.Module  # as `accelerator.prepare` returned it
    inner: FaceMoGLE  # the unwrapped model: what is checkpointed and saved
    optimizer: torch.optim.Optimizer
    trainable: list[torch.nn.Parameter]
    generator: torch.Generator  # batch draws; shared by every process
    cache: LatentCache
    cfg: TrainConfig
    accelerator: Accelerator
    world: int
    rank: int

    def step(self) -> list[torch.Tensor]:
        """One optimizer step over `cfg.grad_accum` batches: their losses, unsynchronised."""
        cfg, accelerator, losses = self.cfg, self.accelerator, []
        for _ in range(cfg.grad_accum):
            with accelerator.accumulate(self.model):
                batch = draw_batch(self.cache, cfg.batch_size, cfg, self.generator,
                                   accelerator.device, rank=self.rank, world=self.world)
                loss = train_step(self.model, batch, self.optimizer, self.trainable, cfg,
                                  accelerator, latent_size=self.cache.latent_size)
            losses.append(loss)
        return losses


def _prepare(model: FaceMoGLE, cache: LatentCache, params: Params,
             accelerator: Accelerator) -> _Run:
    """fp32 trainable weights, the optimizer, compilation if asked, `accelerator.prepare` and
    the seeded batch generator, in that order."""
    cfg = params.train
    trainable = model.float32_trainables()  # fp32 master weights; autocast computes in bf16
    optimizer = make_optimizer(trainable, cfg)
    if cfg.compile:
        enable_compile()
    # Under torchrun, DDP broadcasts rank 0's parameters when it wraps the model. Every process
    # loads the frozen base from the same files, and a quantized base's weights (torchao's
    # Int8Tensor) cannot be broadcast at all, so DDP leaves the frozen parameters alone.
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        model, [name for name, p in model.named_parameters() if not p.requires_grad])
    model, optimizer = accelerator.prepare(model, optimizer)
    inner = accelerator.unwrap_model(model)
    generator = torch.Generator().manual_seed(params.seed)  # shared by every process
    world, rank = accelerator.num_processes, accelerator.process_index
    return _Run(model, inner, optimizer, trainable, generator, cache, cfg, accelerator, world,
                rank)


def _show_loss(bar: tqdm, live: TrainingLive | None, timer: IntervalTimer | None, run: _Run,
               done: int, value: float) -> None:
    """Show an interval's mean loss on the progress bar and log the interval to DVCLive, if any
    (the main process)."""
    bar.set_postfix(loss=f"{value:.4f}")
    if live is not None:
        log_interval(live, done, value, learning_rate(run.optimizer),
                     timer.seconds_per_step(done))


def train(model: FaceMoGLE, cache: LatentCache, params: Params, out_dir: str | Path, *,
          accelerator, resolved: dict, metrics_dir: str | Path | None = None,
          monitor_system: bool = True) -> list[tuple[int, float]]:
    """Train LoRA + MoGLE for `params.train.steps`, resuming from the last checkpoint.

    `resolved` (the params the stage declares, plus the base manifest) is stored with every
    checkpoint, less the launch-only `train` keys (`facemogle.training.launch.LAUNCH_ONLY`); a
    checkpoint is resumed only under an identical one. Returns the (step, loss) history, which
    is also kept in every checkpoint so loss curves survive a resume. With `metrics_dir` the
    main process logs to DVCLive there (`facemogle.training.live`; `monitor_system`: with
    DVCLive's CPU, RAM, disk and GPU monitor) and copies that folder into `out_dir` before each
    checkpoint, where a resume finds it if DVC has deleted `metrics_dir`.
    """
    cfg = params.train
    _check_accumulation(cfg, accelerator)
    resolved = without_launch(resolved)
    out_dir = Path(out_dir)
    run = _prepare(model, cache, params, accelerator)
    start, history = _resume(out_dir / "checkpoints", resolved, run.inner, run.optimizer,
                             run.generator)
    live = timer = None
    if metrics_dir is not None and accelerator.is_main_process:
        live = open_live(metrics_dir, start, history, snapshot=out_dir / SNAPSHOT,
                         monitor_system=monitor_system)
        timer = IntervalTimer(start)
    try:
        _steps(run, out_dir, resolved, start, history, live, timer)
        if accelerator.is_main_process:
            save_model(out_dir, run.inner, resolved)
    finally:
        if live is not None:
            live.end()
    return history


def _steps(run: _Run, out_dir: Path, resolved: dict, start: int,
           history: list[tuple[int, float]], live: TrainingLive | None,
           timer: IntervalTimer | None) -> None:
    """Optimizer steps `start` + 1 .. `train.steps`: log every `log_every` steps (and at the
    last), checkpoint every `checkpoint_every` steps (and at the last), the metrics copied
    first; `history` grows."""
    cfg, accelerator = run.cfg, run.accelerator
    bar = tqdm(range(start, cfg.steps), desc="train", unit="step", initial=start, total=cfg.steps,
               disable=not accelerator.is_main_process)
    running = []
    for step in bar:
        running += run.step()
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            history.append((done, _mean_loss(running, accelerator, done)))
            running = []
            _show_loss(bar, live, timer, run, done, history[-1][1])
        if accelerator.is_main_process and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            if live is not None:  # first: it then holds every row of any checkpoint kept
                live.snapshot(out_dir / SNAPSHOT)
            save_training_state(out_dir / "checkpoints", done, run.inner, run.optimizer,
                                run.generator, history, resolved, keep=cfg.keep_checkpoints)
        accelerator.wait_for_everyone()
