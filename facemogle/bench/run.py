"""Speed and memory benchmark of Face-MoGLE: training, sampling and latent caching.

    python -m facemogle.bench --size flux --out metrics/bench/flux-h100.json   # a CUDA device
    python -m facemogle.bench --size tiny --out metrics/bench/tiny-cpu.json --device cpu

`--size flux` builds the full FLUX.1-dev architecture (`FLUX_DEV_TRANSFORMER`, 11.9 B parameters,
and FLUX's VAE, `FLUX_DEV_VAE`) with random weights, directly on the device (meta device, then
`to_empty` and a cheap seeded init: no download, no minutes of CPU init), adds the paper's LoRA
(`LoraConfig()`, r=4 on 343 layers) and MoGLE (`ModelConfig()`), and measures at 512 px:

- training: `make_batch` on a synthetic in-memory cache (512 text tokens x 4096, 1024 image
  tokens x 64, 20 x 1024 slot tokens x 64), host-to-device copy, `training_loss` under autocast
  with fp32 trainable parameters, backward, gradient clipping and a Prodigy step, as `train`
  runs them; step time from CUDA events (one synchronize after the timed steps), samples/s,
  peak memory, MFU; a batch size that does not fit is recorded as "oom";
- sampling: `generate_latents` (28 Euler steps, guidance 3.5) at batch 1 and 8, seconds per
  image, MFU, plus the VAE decode;
- latent caching: VAE encodes of faces and their 20 mask slots, images/s, and the bytes per
  image of a `facemogle.cache` shard (float16 tokens).

`--size tiny` runs the same code on the small sizes of `params.yaml` at its resolution (64 px),
in seconds on a CPU (tests/test_bench.py). `--profile DIR` writes PyTorch-profiler tables of the
top operators and a list of host-device synchronisation sites (`host_syncs.json`).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from facemogle.bench.device import environment
from facemogle.bench.flops import Tokens, peak_flops, transformer_flops
from facemogle.bench.measure import (
    DEFAULTS,
    TrainRun,
    measure_caching,
    sample_sweep,
    shard_bytes,
    train_sweep,
)
from facemogle.bench.profile import profile_run
from facemogle.bench.setup import (
    BenchSize,
    build_facemogle,
    build_frozen,
    flux_size,
    synthetic_cache,
    tiny_size,
)
from facemogle.core.config import TrainConfig, to_dict
from facemogle.core.flux import SAMPLE_GUIDANCE
from facemogle.core.io import write_json, write_text
from facemogle.models.facemogle import FaceMoGLE

PARTS: tuple[str, ...] = ("train", "sample", "cache")


@dataclass(frozen=True)
class Options:
    """Command-line settings of one benchmark run."""

    size: str
    out: Path
    device: torch.device
    dtype: torch.dtype
    batch_sizes: list[int]
    steps: int
    warmup: int
    sample_batch_sizes: list[int]
    sample_steps: int
    cache_images: int
    cache_batch_size: int
    checkpointing: bool
    compile: bool
    parts: tuple[str, ...]
    profile: Path | None
    profile_steps: int
    markdown: Path | None
    params: Path
    seed: int
    quantization: str = "none"
    blocks: tuple[int, int] | None = None


def _settings(opt: Options, size: BenchSize, model: FaceMoGLE, cfg: TrainConfig
              ) -> dict[str, Any]:
    cfg_t = dict(model.transformer.config)
    return {
        "size": size.name, "resolution": size.resolution,
        "dtype": str(opt.dtype).removeprefix("torch."),
        "autocast": opt.dtype != torch.float32, "trainable_dtype": "float32",
        "tokens": asdict(Tokens(size.text_tokens, size.image_tokens, size.image_tokens)),
        "batch_sizes": opt.batch_sizes, "steps": opt.steps, "warmup": opt.warmup,
        "gradient_checkpointing": opt.checkpointing, "compile": opt.compile,
        "sample_batch_sizes": opt.sample_batch_sizes, "sample_steps": opt.sample_steps,
        "sample_guidance": SAMPLE_GUIDANCE, "cache_images": opt.cache_images,
        "cache_batch_size": opt.cache_batch_size, "seed": opt.seed,
        "quantization": opt.quantization, "blocks": opt.blocks,
        "train": to_dict(cfg), "lora": to_dict(size.lora), "model": to_dict(size.model),
        "transformer": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg_t.items()
                        if not k.startswith("_") and k != "quantization_config"},
    }


def _counts(model: FaceMoGLE) -> dict[str, int]:
    lora = sum(p.numel() for n, p in model.transformer.named_parameters() if "lora_" in n)
    return {"transformer": sum(p.numel() for n, p in model.transformer.named_parameters()
                               if "lora_" not in n),
            "lora": lora, "mogle": sum(p.numel() for p in model.mogle.parameters()),
            "trainable": sum(p.numel() for p in model.trainable_parameters())}


def _measure_parts(opt: Options, size: BenchSize, run: TrainRun, generator: torch.Generator,
                   dims: tuple[int, int]) -> dict[str, Any]:
    """The measurements of `opt.parts` and the profile, in that order: the result's "train",
    "sample", "cache" and "profile" entries. `dims`: (text, pooled) embedding widths."""
    measured: dict[str, Any] = {}
    if "train" in opt.parts:
        measured["train"] = train_sweep(run, opt.batch_sizes, opt.steps, opt.warmup, opt.seed)
    vae = None
    if {"sample", "cache"} & set(opt.parts):
        vae = build_frozen(size.vae, opt.device, opt.dtype, opt.seed + 1)
    if "sample" in opt.parts:
        measured["sample"] = sample_sweep(run, vae, opt.sample_batch_sizes, opt.sample_steps)
    if "cache" in opt.parts:
        measured["cache"] = {**measure_caching(vae, size, opt.cache_images,
                                               opt.cache_batch_size, opt.device, generator),
                             "shard": shard_bytes(size, *dims)}
    if opt.profile is not None:
        ok = [r["batch_size"] for r in measured.get("train", []) if r["status"] == "ok"]
        measured["profile"] = {"dir": str(opt.profile), **profile_run(
            run, (ok or opt.batch_sizes)[0], opt.profile, opt.seed, opt.profile_steps)}
    return measured


def run_benchmark(opt: Options) -> dict[str, Any]:
    """Build the models of `opt.size` on `opt.device` and measure `opt.parts`; the result dict
    that `main` writes."""
    size = flux_size(opt.blocks) if opt.size == "flux" else tiny_size(opt.params)
    model = build_facemogle(size, opt.device, opt.dtype, opt.seed, opt.quantization)
    config = dict(model.transformer.config)
    text_dim, pooled_dim = config["joint_attention_dim"], config["pooled_projection_dim"]
    counts = _counts(model)
    tokens = Tokens(size.text_tokens, size.image_tokens, size.image_tokens)
    flops = transformer_flops(config, tokens, lora=size.lora, mogle_params=counts["mogle"])
    peak, peak_source = peak_flops(opt.device)
    cfg = TrainConfig()  # the paper's optimizer, dropouts and clipping
    generator = torch.Generator().manual_seed(opt.seed)
    cache = synthetic_cache(size, text_dim, pooled_dim, rows=max(opt.batch_sizes + [8]),
                            generator=generator)
    if opt.compile:
        model = torch.compile(model)
    run = TrainRun(model.train(), cache, cfg, opt.device, opt.dtype, opt.checkpointing, flops,
                   peak)
    result: dict[str, Any] = {
        "benchmark": "facemogle.bench", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **environment(opt.device), "settings": _settings(opt, size, model, cfg),
        "parameters": counts,
        "flops_per_sample": {"forward": flops.forward, "forward_parts": flops.parts,
                             "backward": flops.backward, "train_step_model": flops.train_step,
                             "train_step_hardware": flops.hardware(opt.checkpointing)},
        "peak_flops": peak, "peak_flops_source": peak_source,
    }
    result.update(_measure_parts(opt, size, run, generator, (text_dim, pooled_dim)))
    return result


def markdown_table(result: dict[str, Any]) -> str:
    """The README table of a result: training and sampling rows, one per batch size."""
    dev = result["device"]["name"]
    pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    gib = lambda b: "n/a" if b is None else f"{b / 2 ** 30:.1f} GiB"  # noqa: E731

    def peak(r: dict[str, Any]) -> str:  # device memory; host memory where there is none
        if r.get("peak_allocated_bytes") is None and r.get("peak_host_rss_bytes") is not None:
            return f"{gib(r['peak_host_rss_bytes'])} (host)"
        return gib(r.get("peak_allocated_bytes"))

    blocks = result["settings"].get("blocks")
    depth = "" if blocks is None else f" with {blocks[0]} + {blocks[1]} blocks"
    lines = [f"Face-MoGLE, size `{result['settings']['size']}`{depth}, {dev} "
             f"({result['settings']['dtype']}, gradient checkpointing "
             f"{'on' if result['settings']['gradient_checkpointing'] else 'off'})", "",
             "| measurement | batch | time | throughput | peak memory | MFU |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in result.get("train", []):
        if r["status"] != "ok":
            lines.append(f"| training step | {r['batch_size']} | {r['status']} | | | |")
            continue
        lines.append(f"| training step | {r['batch_size']} | {r['step_s']:.3f} s | "
                     f"{r['samples_per_s']:.2f} samples/s | {peak(r)} | "
                     f"{pct(r['mfu'])} |")
    for r in result.get("sample", []):
        if r["status"] != "ok":
            lines.append(f"| sampling | {r['batch_size']} | {r['status']} | | | |")
            continue
        lines.append(f"| sampling, {r['steps']} steps | {r['batch_size']} | "
                     f"{r['s_per_image']:.3f} s/image | {1 / r['s_per_image']:.2f} images/s | "
                     f"{peak(r)} | {pct(r['mfu'])} |")
    if "cache" in result:
        c = result["cache"]
        lines.append(f"| latent caching (1 + 20 encodes) | {c['batch_size']} | | "
                     f"{c['images_per_s']:.2f} images/s, "
                     f"{c['shard']['total_bytes'] / 2 ** 20:.2f} MiB/image | "
                     f"{peak(c)} | |")
    return "\n".join(lines) + "\n"


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _blocks(text: str) -> tuple[int, int]:
    values = _int_list(text)
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected two positive integers DOUBLE,SINGLE, got "
                                         f"{text!r}")
    return values[0], values[1]


def _parts(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    if not parts or set(parts) - set(PARTS):
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {list(PARTS)}, "
                                         f"got {text!r}")
    return parts


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m facemogle.bench",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=list(DEFAULTS), required=True)
    ap.add_argument("--out", type=Path, required=True, help="result JSON (metrics/bench/...)")
    ap.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default=None)
    ap.add_argument("--batch-sizes", type=_int_list, default=None)
    ap.add_argument("--steps", type=int, default=None, help="timed training steps")
    ap.add_argument("--warmup", type=int, default=None, help="untimed training steps first")
    ap.add_argument("--sample-batch-sizes", type=_int_list, default=[1, 8])
    ap.add_argument("--sample-steps", type=int, default=28)
    ap.add_argument("--cache-images", type=int, default=None)
    ap.add_argument("--cache-batch-size", type=int, default=32,
                    help="VAE batch (the cache_latents stage's --batch-size)")
    ap.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=True,
                    help="activation checkpointing per block (params train.gradient_checkpointing)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--parts", type=_parts, default=PARTS, help="subset of train,sample,cache")
    ap.add_argument("--profile", type=Path, default=None, help="folder for profiler output")
    ap.add_argument("--profile-steps", type=int, default=2, help="training steps to profile")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the README table")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"),
                    help="params file whose small sizes --size tiny uses")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quantization", choices=["none", "int8", "nf4"], default="none",
                    help="quantize the frozen transformer as params base.quantization does")
    ap.add_argument("--blocks", type=_blocks, default=None, metavar="DOUBLE,SINGLE",
                    help="--size flux at full width with this many double and single blocks "
                         "(19,38 is FLUX.1-dev); shallow models run on a CPU")
    return ap


def _check(ap: argparse.ArgumentParser, a: argparse.Namespace, device: torch.device) -> None:
    """Refuse (`ap.error`) a flux run off CUDA and counts out of range."""
    if a.size == "flux" and device.type != "cuda" and a.blocks is None:
        ap.error("--size flux needs a CUDA device (11.9 B parameters); on a CPU use --size tiny, "
                 "or --blocks 1,1 for FLUX.1-dev's width at a shallow depth")
    if a.blocks is not None and a.size != "flux":
        ap.error("--blocks sets the depth of --size flux only")
    for name in ("steps", "sample_steps", "cache_images", "cache_batch_size", "profile_steps"):
        value = getattr(a, name)
        if value is not None and value < 1:
            ap.error(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if a.warmup is not None and a.warmup < 0:
        ap.error(f"--warmup must be >= 0, got {a.warmup}")


def parse_args(argv: list[str] | None = None) -> Options:
    """Command line -> `Options`; per-size defaults from `DEFAULTS`."""
    ap = _parser()
    a = ap.parse_args(argv)
    d = DEFAULTS[a.size]
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    _check(ap, a, device)
    pick = lambda name: d[name] if getattr(a, name) is None else getattr(a, name)  # noqa: E731
    return Options(a.size, a.out, device, getattr(torch, pick("dtype")), pick("batch_sizes"),
                   pick("steps"), pick("warmup"), a.sample_batch_sizes, a.sample_steps,
                   pick("cache_images"), a.cache_batch_size, a.checkpointing, a.compile, a.parts,
                   a.profile, a.profile_steps, a.markdown, a.params, a.seed, a.quantization,
                   a.blocks)


def main(argv: list[str] | None = None) -> int:
    opt = parse_args(argv)
    result = run_benchmark(opt)
    write_json(opt.out, result)
    if opt.markdown is not None:
        write_text(opt.markdown, markdown_table(result))
    print(markdown_table(result), file=sys.stderr)
    return 0
