"""Where the time of the embedded default goes: latent caching, a training step, a sampling step.

    python -m facemogle.bench.parts --out metrics/bench/parts-cpu.json \\
        --markdown metrics/bench/parts-cpu.md

Runs the real weights (`--base`, `--model`, the `--latents` test split, `--data`, `--labels`) on
the CPU. Each part: median seconds of `--repeats` calls after a warm-up, FLOPs (`FlopCounterMode`
on the actual call, plus a formula for the CPU SDPA kernels it skips: matmul, convolution and
attention FLOPs only), FLOP/s, fraction of the machine's peak, share of its section.

- machine: peak = best float32 `--peak-size`^3 matmul FLOP/s on torch's threads; CPU, bf16 flags.
- cache: one `cache.batch_size` batch through `facemogle.cache.build`'s helpers: `host_faces`
  (reading face PNGs), `host_masks` (reading and decoupling label maps), `vae_faces` (per face),
  `vae_slots` (per stored slot image), `text` (per caption); `seconds` projects `per_item_s` to
  one `cache.shard_size` shard with the first shard's stored slots and captions per image.
- sample_step: one `velocity_fn` call (true CFG at `sample.cfg_scale`), multimodal conditions,
  plus 1/`sample.steps` of making `velocity_fn` (which may run the experts once per sampling
  run): `mogle_experts`, `mogle_gate`, `attention` (`_attention`: RoPE + SDPA), `mlp` (double
  blocks' `ff`, `ff_context`; single blocks' `proj_mlp`, `act_mlp`), `linear` (other Linears,
  LoRA included), `rest` (norms, modulation, concatenation, CFG mix). A single block's `proj_out`
  reads [attention (D); MLP (4D)]: 4/5 of it counts as `mlp`, 1/5 as `linear`. `streams`: the
  call with `cond_latents=None` (text + image tokens); the difference is the condition stream.
  The text stream's FLOP share is analytic (`facemogle.bench.flops`, with minus without text).
- train_step: `draw_batch` (`data`) and `train_step` at `train.batch_size` (without gradient
  checkpointing, which would rerun the parts in backward): the model forward split as above,
  `backward` (with the loss outside the model), `optimizer` (clipping and the step).

Timing: torch.profiler over `record_function` ranges that forward pre-hooks open and forward hooks
close (wrappers for `_attention`, `_feed_forward`); the outermost part counts. `plain_seconds`:
the same call without profiler or hooks.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from facemogle.base.loader import load_base
from facemogle.bench.device import StepContext, environment
from facemogle.bench.flops import Tokens, transformer_flops
from facemogle.cache import build
from facemogle.cache.store import LatentCache, load_cache
from facemogle.core import labels
from facemogle.core.config import load_params
from facemogle.core.io import read_json, read_jsonl, write_json, write_text
from facemogle.core.machine import cpu_name
from facemogle.data import layout
from facemogle.models import condition
from facemogle.models.facemogle import FaceMoGLE
from facemogle.sampling.sampler import mode_conditions, sampling_autocast, velocity_fn
from facemogle.training.checkpoint import load_trained
from facemogle.training.step import draw_batch, make_optimizer, train_step

log = logging.getLogger(__name__)
aten = torch.ops.aten
CPU_SDPA = {aten._scaled_dot_product_flash_attention_for_cpu:
            lambda q, k, v, *_, out_shape=None, **__:  # noqa: ARG005 (FlopCounterMode formula signature)
            sdpa_flop_count(q, k, v),
            aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda g, q, k, v, *_, out_shape=None, **__:  # noqa: ARG005 (FlopCounterMode formula signature)
            sdpa_backward_flop_count(g, q, k, v)}
FORWARD_PARTS = ("mogle_experts", "mogle_gate", "attention", "mlp", "linear")
PROJ_OUT_SPLIT = {"mlp": 0.8, "linear": 0.2}
SINGLE_PROJ_OUT = re.compile(r"single_transformer_blocks\.\d+\.proj_out\b")
MLP_NAME = re.compile(r"\.(ff|ff_context|proj_mlp|act_mlp)(\.|$)")
PRECISION = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _flops(fn: Callable[[], Any]) -> float:
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA) as counter:
        fn()
    return float(counter.get_total_flops())


def machine_peak(size: int = 2048, tries: int = 5) -> dict[str, Any]:
    """Best float32 `size`^3 matmul FLOP/s on torch's threads, and what the CPU is."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = min(_median_seconds(lambda: a @ b, 1) for _ in range(tries))
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines()
                  if ln.startswith("flags")), [])
    return {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "loadavg": list(os.getloadavg()),
            "torch_threads": torch.get_num_threads(), "avx512_bf16": "avx512_bf16" in flags,
            "amx_bf16": "amx_bf16" in flags, "matmul_size": size,
            "peak_flops_per_s": 2.0 * size ** 3 / best}


def _finish(parts: dict[str, dict[str, Any]], peak: float) -> dict[str, Any]:
    """Add FLOP/s, peak fraction and share to each part; the section's total seconds."""
    total = sum(p["seconds"] for p in parts.values())
    for p in parts.values():
        rate = p["flops"] / p["seconds"] if p["flops"] and p["seconds"] > 0 else None
        p.update(flops_per_s=rate, peak_fraction=None if rate is None else rate / peak,
                 share=p["seconds"] / total if total > 0 else 0.0)
    return {"seconds": total, "parts": parts}


def cache_parts(base, params, data: Path, label_dir: Path, repeats: int,
                peak: float) -> dict[str, Any]:
    """The `cache_latents` parts on the first batch of the first shard (module docstring)."""
    c = params.cache
    split = read_json(layout.split_path(label_dir))
    ids = (list(split["train"]) + list(split["test"]))[:c.shard_size]
    rows = read_jsonl(layout.captions_path(data))
    captions = {r["id"]: r["captions"][:c.max_captions] for r in rows}
    inputs = build._Inputs(data, label_dir, captions, params.data.resolution, c.batch_size)
    presence = np.stack([labels.slot_presence(labels.load_label_map(
        layout.mask_path(label_dir, i))) for i in ids])  # (N, 20)
    per_image = {"host_faces": 1.0, "host_masks": 1.0, "vae_faces": 1.0,
                 "vae_slots": presence.sum() / len(ids),
                 "text": np.mean([len(captions[i]) for i in ids])}
    batch, text_batch = ids[:c.batch_size], getattr(c, "text_batch_size", c.batch_size)
    texts = [t for i in ids for t in captions[i]][:text_batch]

    def masks():  # the label maps of `batch`, read one by one as the stage reads them
        return (labels.load_label_map(layout.mask_path(label_dir, i)) for i in batch)

    faces = next(build._face_batches(inputs, batch))  # (b, 3, H, W)
    slots = next(build._slot_image_batches(masks(), c.batch_size))  # (b, 3, H, W)

    def encode(images: torch.Tensor) -> list[torch.Tensor]:
        return list(build._encode_batches(base.vae, [images]))

    calls = {"host_faces": (lambda: next(build._face_batches(inputs, batch)), len(batch)),
             "host_masks": (lambda: list(build._slot_image_batches(masks(), c.batch_size)),
                            len(batch)),
             "vae_faces": (lambda: encode(faces), len(faces)),
             "vae_slots": (lambda: encode(slots), len(slots)),
             "text": (lambda: list(build._text_batches(base.text_encoder, texts, text_batch)),
                      len(texts))}
    parts = {}
    for name, (fn, n) in calls.items():
        log.info("cache: %s", name)
        items = c.shard_size * float(per_image[name])
        per_item = _median_seconds(fn, repeats) / n
        parts[name] = {"per_item_s": per_item, "items_per_shard": items,
                       "seconds": per_item * items, "flops": _flops(fn) / n * items}
    return {**_finish(parts, peak), "shard_images": c.shard_size, "batch_size": c.batch_size,
            "text_batch_size": text_batch,
            "slots_per_image": float(per_image["vae_slots"]),
            "captions_per_image": float(per_image["text"])}


class Ranges:
    """`record_function` ranges "part:<name>" over Face-MoGLE's forward (the outermost open part
    counts) and "step:<name>" (`range`); with `counter` set, FLOPs per range go to `flops`."""

    def __init__(self, model: FaceMoGLE):
        self.model, self.counter, self.flops = model, None, Counter()
        self._open: list = []  # (key, range, FLOPs at start), None for a nested part

    def _count(self) -> int:
        return 0 if self.counter is None else self.counter.get_total_flops()

    def begin(self, key: str) -> None:
        if key.startswith("part:") and any(o and o[0].startswith("part:") for o in self._open):
            self._open.append(None)
            return
        rf = record_function(key)
        rf.__enter__()
        self._open.append((key, rf, self._count()))

    def end(self) -> None:
        opened = self._open.pop()
        if opened is not None:
            opened[1].__exit__(None, None, None)
            self.flops[opened[0]] += self._count() - opened[2]

    @contextmanager
    def range(self, key: str) -> Iterator[None]:
        self.begin(key)
        try:
            yield
        finally:
            self.end()

    def _wrap(self, fn: Callable, key: str) -> Callable:
        def wrapped(*args, **kwargs):
            with self.range(key):
                return fn(*args, **kwargs)
        return wrapped

    def _targets(self) -> Iterator[tuple[str, nn.Module]]:
        yield "step:forward", self.model
        yield "part:mogle_experts", self.model.mogle.experts
        yield "part:mogle_gate", self.model.mogle.gate
        for name, module in self.model.transformer.named_modules():
            linear = isinstance(module, nn.Linear)
            if linear and SINGLE_PROJ_OUT.search(name):
                yield "part:proj_out", module
            elif MLP_NAME.search(f".{name}") and (linear or name.endswith(("_context", "_mlp"))):
                yield "part:mlp", module
            elif linear:
                yield "part:linear", module

    @contextmanager
    def installed(self) -> Iterator[Ranges]:
        handles = []
        for key, module in self._targets():
            handles += [module.register_forward_pre_hook(lambda *_, k=key: self.begin(k)),
                        module.register_forward_hook(lambda *_: self.end())]
        saved = condition._attention, condition._feed_forward
        condition._attention = self._wrap(saved[0], "part:attention")
        condition._feed_forward = self._wrap(saved[1], "part:mlp")
        try:
            yield self
        finally:
            condition._attention, condition._feed_forward = saved
            for handle in handles:
                handle.remove()


def _profile(fn: Callable[[], Any], ranges: Ranges, repeats: int) -> tuple[dict, Counter]:
    """Median seconds per range over `repeats` profiled calls after a warm-up; FLOPs of one."""
    fn()
    runs = []
    for _ in range(repeats):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        runs.append(Counter())
        for e in prof.events():
            if e.name.startswith(("part:", "step:")):
                runs[-1][e.name] += e.cpu_time_total / 1e6
    seconds = Counter({k: statistics.median(r[k] for r in runs) for k in set().union(*runs)})
    ranges.flops = Counter()
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA) as ranges.counter:
        fn()
    ranges.counter = None
    return seconds, ranges.flops


def _forward_parts(seconds: Counter, flops: Counter, total: str) -> dict[str, dict[str, float]]:
    """FORWARD_PARTS (proj_out split by PROJ_OUT_SPLIT) and `rest` = range `total` minus them."""
    parts = {n: {"seconds": seconds[f"part:{n}"], "flops": float(flops[f"part:{n}"])}
             for n in FORWARD_PARTS}
    for name, share in PROJ_OUT_SPLIT.items():
        parts[name]["seconds"] += share * seconds["part:proj_out"]
        parts[name]["flops"] += share * flops["part:proj_out"]
    inner = {k: sum(p[k] for p in parts.values()) for k in ("seconds", "flops")}
    parts["rest"] = {"seconds": max(0.0, seconds[total] - inner["seconds"]),
                     "flops": max(0.0, flops[total] - inner["flops"])}
    return parts


def sample_parts(model: FaceMoGLE, cache: LatentCache, params, repeats: int,
                 peak: float) -> dict[str, Any]:
    """One sampling step, split into parts and into streams (module docstring)."""
    cfg, b, tokens = params.sample, params.sample.batch_size, (cache.latent_size // 2) ** 2
    z = torch.randn(b, tokens, model.transformer.config.in_channels,
                    generator=torch.Generator().manual_seed(params.seed))  # (B, L, C)
    sigma, ranges, rows = torch.full((b,), 0.5), Ranges(model.eval()), torch.arange(b)
    conds = {m: mode_conditions(cache, rows % len(cache.ids), m, z.device)
             for m in ("multimodal", "base")}

    @contextmanager
    def timed() -> Iterator[None]:
        with (torch.no_grad(), sampling_autocast(model.transformer.dtype, z.device),
              ranges.range("step:call")):
            yield

    def make(mode: str) -> Callable:  # once per sampling run (it may run the experts once)
        with timed():
            return velocity_fn(model, conds[mode], latent_size=cache.latent_size,
                               guidance=cfg.guidance, cfg_scale=cfg.cfg_scale)

    def step(mode: str) -> Callable[[], None]:
        velocity = make(mode)

        def run() -> None:
            with timed():
                velocity(z, sigma)
        return run

    def per_step(mode: str, measure: Callable) -> float:  # a step and 1/steps of `make`
        return measure(step(mode)) + measure(lambda: make(mode)) / cfg.steps

    plain = {m: per_step(m, lambda fn: _median_seconds(fn, repeats)) for m in conds}
    with ranges.installed():
        seconds, flops = _profile(step("multimodal"), ranges, repeats)
        once_s, once_f = _profile(lambda: make("multimodal"), ranges, repeats)
    seconds.update({k: v / cfg.steps for k, v in once_s.items()})  # Counter: adds
    flops.update({k: v / cfg.steps for k, v in once_f.items()})
    flops_of = {"multimodal": flops["step:call"], "base": per_step("base", _flops)}
    return {**_finish(_forward_parts(seconds, flops, "step:call"), peak), "batch_size": b,
            "plain_seconds": plain["multimodal"], "cfg_scale": cfg.cfg_scale,
            "sample_steps": cfg.steps, "streams": _streams(model, cache, params, plain, flops_of)}


def _streams(model: FaceMoGLE, cache: LatentCache, params, seconds: dict[str, float],
             flops: dict[str, float]) -> dict[str, float]:
    """Condition stream = multimodal - base (measured); text stream's FLOP share (analytic)."""
    config, text = dict(model.transformer.config), cache.empty_text_seq.shape[0]
    image = (cache.latent_size // 2) ** 2
    mogle_params = sum(p.numel() for p in model.mogle.parameters())
    analytic = [transformer_flops(config, Tokens(t, image, image), lora=params.lora,
                                  mogle_params=mogle_params).forward for t in (text, 0)]
    return {"with_condition_s": seconds["multimodal"], "without_condition_s": seconds["base"],
            "condition_s": seconds["multimodal"] - seconds["base"],
            "condition_share": 1 - seconds["base"] / seconds["multimodal"],
            "with_condition_flops": flops["multimodal"], "without_condition_flops": flops["base"],
            "condition_flops_share": 1 - flops["base"] / flops["multimodal"],
            "text_flops_share": 1 - analytic[1] / analytic[0]}


def train_parts(model: FaceMoGLE, cache: LatentCache, params, repeats: int,
                peak: float) -> dict[str, Any]:
    """`draw_batch` + `train_step`, split into parts. Updates the model's weights."""
    cfg, device = replace(params.train, gradient_checkpointing=False), torch.device("cpu")
    trainable = model.train().trainable_parameters()
    optimizer = make_optimizer(trainable, cfg)
    generator, ranges = torch.Generator().manual_seed(params.seed), Ranges(model)
    context = StepContext(device, PRECISION[cfg.mixed_precision])

    def call() -> None:
        with ranges.range("step:data"):
            batch = draw_batch(cache, cfg.batch_size, cfg, generator, device)
        with ranges.range("step:train"):
            train_step(model, batch, optimizer, trainable, cfg, context,
                       latent_size=cache.latent_size,
                       after_backward=lambda: ranges.begin("step:optimizer"))
            ranges.end()

    plain = _median_seconds(call, repeats)
    with ranges.installed():
        seconds, flops = _profile(call, ranges, repeats)
    model.eval()
    parts = _forward_parts(seconds, flops, "step:forward")
    for c in (seconds, flops):  # backward: train_step less the model forward and optimizer
        c["step:backward"] = c["step:train"] - c["step:forward"] - c["step:optimizer"]
    for name in ("data", "backward", "optimizer"):
        parts[name] = {"seconds": max(0.0, seconds[f"step:{name}"]),
                       "flops": float(flops[f"step:{name}"])}
    return {**_finish(parts, peak), "plain_seconds": plain, "batch_size": cfg.batch_size,
            "gradient_checkpointing": False}


def profile_parts(a: argparse.Namespace) -> dict[str, Any]:
    """Load the stages' outputs named on the command line and measure every section."""
    params = load_params(a.params)
    base = load_base(a.base, device="cpu")
    model = load_trained(base.transformer, a.model, params)
    cache = load_cache(a.latents, "test")
    log.info("machine peak")
    machine = machine_peak(a.peak_size)
    peak = machine["peak_flops_per_s"]
    cache_result = cache_parts(base, params, a.data, a.labels, a.repeats, peak)
    log.info("sampling step")
    sample = sample_parts(model, cache, params, a.repeats, peak)
    log.info("training step")
    train = train_parts(model, cache, params, a.repeats, peak)  # last: it changes the weights
    return {"benchmark": "facemogle.bench.parts", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": environment(torch.device("cpu"))["versions"], "repeats": a.repeats,
            "inputs": {k: str(getattr(a, k)) for k in ("base", "model", "latents", "data",
                                                       "labels", "params")},
            "flops_source": "FlopCounterMode on the actual calls, CPU SDPA by sdpa_flop_count",
            "proj_out_split": PROJ_OUT_SPLIT,
            "machine": machine, "cache": cache_result, "train_step": train, "sample_step": sample}


def markdown_table(result: dict[str, Any]) -> str:
    """Per section: part, seconds, share, GFLOP/s, % of peak; then the stream split."""
    m, st = result["machine"], result["sample_step"]["streams"]
    lines = [(f"{m['cpu']}, {m['torch_threads']} threads, peak "
              f"{m['peak_flops_per_s'] / 1e9:.1f} GFLOP/s (float32 matmul)"), ""]
    shard = f"cache_latents, one {result['cache']['shard_images']}-image shard (projected)"
    for key, title in (("cache", shard), ("train_step", "training step"),
                       ("sample_step", "sampling step")):
        s = result[key]
        plain = f", {s['plain_seconds']:.4f} s unprofiled" if "plain_seconds" in s else ""
        lines += [f"{title}: {s['seconds']:.4f} s{plain}", "",
                  "| part | seconds | share | GFLOP/s | % of peak |", "|---|---:|---:|---:|---:|"]
        for name, p in s["parts"].items():
            rate = "" if p["flops_per_s"] is None else f"{p['flops_per_s'] / 1e9:.2f}"
            pct = "" if p["peak_fraction"] is None else f"{100 * p['peak_fraction']:.1f}%"
            lines.append(f"| {name} | {p['seconds']:.4f} | {100 * p['share']:.1f}% | {rate} "
                         f"| {pct} |")
        lines.append("")
    lines.append(f"Condition stream: {st['condition_s']:.4f} s of {st['with_condition_s']:.4f} s "
                 f"per sampling step ({100 * st['condition_share']:.1f}%; "
                 f"{100 * st['condition_flops_share']:.1f}% of FLOPs); text stream: "
                 f"{100 * st['text_flops_share']:.1f}% of FLOPs (analytic).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m facemogle.bench.parts",
                                 description=__doc__.splitlines()[0])
    for flag in ("base", "model", "latents", "labels"):
        ap.add_argument(f"--{flag}", type=Path, default=Path("data") / flag)
    ap.add_argument("--data", type=Path, default=Path("data/raw"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--out", type=Path, required=True, help="result JSON")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the table")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per part")
    ap.add_argument("--peak-size", type=int, default=2048, help="matmul size of the peak")
    a = ap.parse_args(argv)
    if a.repeats < 1 or a.peak_size < 1:
        ap.error("--repeats and --peak-size must be positive integers")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = profile_parts(a)
    write_json(a.out, result)
    table = markdown_table(result)
    if a.markdown is not None:
        write_text(a.markdown, table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
