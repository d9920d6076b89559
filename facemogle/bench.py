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

FLOP accounting (MFU = model FLOPs per second / the device's peak dense bf16 FLOP/s)
-----------------------------------------------------------------------------------
Counted analytically from the shapes (`transformer_flops`), per sample, with T text, L image and
Lc condition tokens, S = T + L + Lc, width D = heads x head_dim:

- Linear layers: 2 x fan_in x fan_out per row, each layer over the rows it sees (`flux_linears`):
  double blocks apply the image-stream weights to L + Lc rows and the text-stream weights to T
  rows (24 D^2 FLOPs per token and block either way), single blocks 24 D^2 per token on all S
  rows; the modulation and time-embedding Linears see one row per sample (two with a condition:
  its clean-time embedding), not one per token.
- Attention: 4 x S^2 x D per block (Q K^T and P V).
- LoRA: 2 x r x (fan_in + fan_out) per condition row of each adapted layer (the delta is
  computed on the condition slice only).
- MoGLE: 2 x its parameters per image token (an upper bound; below 1e-5 of the total).

Backward with a frozen base: a frozen Linear needs only its input gradient (1 x its forward),
and none where its input carries no gradient (text embedder, modulation and time embeddings);
attention 2 x; LoRA and MoGLE 2 x. A training step is forward + backward ("model FLOPs", used for
MFU); activation checkpointing recomputes the blocks' forward once more ("hardware FLOPs", HFU).
At 512 px and batch 1 this gives 37.7 TFLOP forward, 42.3 TFLOP backward, 80.0 TFLOP per step
(117.6 with recomputation); the counts agree with `torch.utils.flop_counter` to within 1% (the
test runs both on the meta device). DESIGN.md section 9's "about 65 TFLOP per forward" is
2 x 11.9 B x 2560 + attention, which charges every token with both streams' weights of the
double blocks and with the per-sample modulation layers.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import re
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode  # torch's dispatch-mode hook
from torch.utils._pytree import tree_leaves

from facemogle import latents
from facemogle.cache import STORE_DTYPE, LatentCache
from facemogle.config import (DataConfig, LoraConfig, ModelConfig, TrainConfig, load_params,
                              to_dict)
from facemogle.io import atomic_path, write_json, write_text
from facemogle.labels import NUM_SLOTS
from facemogle.models.facemogle import FaceMoGLE
from facemogle.sampling import Conditions, decode_images, generate_latents
from facemogle.training import Batch, make_batch, make_optimizer, training_loss

# FLUX.1-dev's `transformer/config.json` and `vae/config.json` (diffusers layout).
FLUX_DEV_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38,
    "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
    "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": (16, 56, 56),
}
FLUX_DEV_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 16,
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "act_fn": "silu",
    "norm_num_groups": 32, "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159,
    "use_quant_conv": False, "use_post_quant_conv": False, "force_upcast": True,
    "mid_block_add_attention": True,
}
FLUX_RESOLUTION = 512
FLUX_TEXT_TOKENS = 512  # T5 sequence length of FLUX.1-dev
MINILM_DIM = 384  # hidden size of all-MiniLM-L6-v2, the embedded text encoder
SAMPLE_GUIDANCE = 3.5  # FLUX.1-dev's guidance embedding (DESIGN.md section 6)

# Peak dense bf16 tensor-core FLOP/s from NVIDIA's data sheets, matched against the upper-cased
# `torch.cuda.get_device_name` (the H100 SXM reports "NVIDIA H100 80GB HBM3").
PEAK_BF16_FLOPS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("H100", "PCIE"), 756e12),
    (("H100", "HBM3"), 989e12),
    (("H100", "SXM"), 989e12),
    (("H200",), 989e12),
    (("A100",), 312e12),
)
# Operators whose result depends on tensor values read on the host (`.item()` and `bool(t)`
# dispatch `_local_scalar_dense`): a host-device synchronisation when the input is on a device.
SYNC_OPS = frozenset({torch.ops.aten._local_scalar_dense, torch.ops.aten.nonzero,
                      torch.ops.aten.equal, torch.ops.aten.masked_select})
# Frames of the dispatch machinery between a call site and `SyncRecorder`.
INTERNAL_FRAMES = r"/torch/(_dynamo/|utils/_python_dispatch|_ops\.py|_compile\.py)"
PARTS: tuple[str, ...] = ("train", "sample", "cache")


# ----------------------------------------------------------------------------------------------
# FLOP model
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tokens:
    """Tokens per sample of the three streams; `cond` = 0 means no condition tokens."""

    text: int
    image: int
    cond: int

    @property
    def joint(self) -> int:
        return self.text + self.image + self.cond


@dataclass(frozen=True)
class LinearSpec:
    """One Linear layer of `FluxTransformer2DModel` and which rows it sees (a key of `_ROWS`)."""

    name: str
    fan_in: int
    fan_out: int
    rows: str


def _rows(kind: str, t: Tokens) -> tuple[int, int, bool]:
    """(rows per sample, condition rows among them, whether its input carries a gradient)."""
    c = 1 if t.cond else 0  # the condition stream's own modulation row
    table = {
        "image+cond": (t.image + t.cond, t.cond, True),
        "joint": (t.joint, t.cond, True),
        "text": (t.text, 0, True),
        "text_input": (t.text, 0, False),  # context_embedder reads the cached text embeddings
        "image_out": (t.image, 0, True),  # proj_out: image tokens only
        "modulation": (1 + c, c, False),  # adaLN of the image stream / single blocks
        "main_modulation": (1, 0, False),  # adaLN of the text stream, norm_out
        "time": (1 + c, 0, False),  # timestep, guidance and pooled-text embedders
    }
    return table[kind]


def flux_linears(config: dict[str, Any]) -> list[LinearSpec]:
    """Every Linear of a `FluxTransformer2DModel` with `config`, in the diffusers module names."""
    d = config["num_attention_heads"] * config["attention_head_dim"]
    out_ch = (config.get("out_channels") or config["in_channels"]) * config["patch_size"] ** 2
    layers = [LinearSpec("x_embedder", config["in_channels"], d, "image+cond"),
              LinearSpec("context_embedder", config["joint_attention_dim"], d, "text_input"),
              LinearSpec("time_text_embed.timestep_embedder.linear_1", 256, d, "time"),
              LinearSpec("time_text_embed.timestep_embedder.linear_2", d, d, "time"),
              LinearSpec("time_text_embed.text_embedder.linear_1",
                         config["pooled_projection_dim"], d, "time"),
              LinearSpec("time_text_embed.text_embedder.linear_2", d, d, "time"),
              LinearSpec("norm_out.linear", d, 2 * d, "main_modulation"),
              LinearSpec("proj_out", d, out_ch, "image_out")]
    if config["guidance_embeds"]:
        layers += [LinearSpec("time_text_embed.guidance_embedder.linear_1", 256, d, "time"),
                   LinearSpec("time_text_embed.guidance_embedder.linear_2", d, d, "time")]
    double = [("norm1.linear", d, 6 * d, "modulation"),
              ("norm1_context.linear", d, 6 * d, "main_modulation"),
              *((f"attn.to_{p}", d, d, "image+cond") for p in "qkv"),
              *((f"attn.add_{p}_proj", d, d, "text") for p in "qkv"),
              ("attn.to_out.0", d, d, "image+cond"), ("attn.to_add_out", d, d, "text"),
              ("ff.net.0.proj", d, 4 * d, "image+cond"), ("ff.net.2", 4 * d, d, "image+cond"),
              ("ff_context.net.0.proj", d, 4 * d, "text"), ("ff_context.net.2", 4 * d, d, "text")]
    single = [("norm.linear", d, 3 * d, "modulation"), ("proj_mlp", d, 4 * d, "joint"),
              *((f"attn.to_{p}", d, d, "joint") for p in "qkv"), ("proj_out", 5 * d, d, "joint")]
    for i in range(config["num_layers"]):
        layers += [LinearSpec(f"transformer_blocks.{i}.{n}", a, b, r) for n, a, b, r in double]
    for i in range(config["num_single_layers"]):
        layers += [LinearSpec(f"single_transformer_blocks.{i}.{n}", a, b, r)
                   for n, a, b, r in single]
    return layers


def lora_layers(config: dict[str, Any], lora: LoraConfig) -> list[LinearSpec]:
    """The Linears `lora.target_modules` adapts (regexes matched in full, as peft does)."""
    pattern = "|".join(f"(?:{p})" for p in lora.target_modules)
    return [spec for spec in flux_linears(config) if re.fullmatch(pattern, spec.name)]


def lora_param_count(config: dict[str, Any], lora: LoraConfig) -> int:
    """r x (fan_in + fan_out) per adapted layer; FLUX.1-dev + paper LoRA: 14,487,808."""
    return sum(lora.rank * (s.fan_in + s.fan_out) for s in lora_layers(config, lora))


@dataclass(frozen=True)
class Flops:
    """FLOPs of one forward and backward pass of Face-MoGLE (module docstring)."""

    forward: float
    backward: float
    recompute: float  # the blocks' forward again, under activation checkpointing
    parts: dict[str, float] = field(default_factory=dict)  # forward by part

    @property
    def train_step(self) -> float:
        """Model FLOPs of a training step (MFU)."""
        return self.forward + self.backward

    def hardware(self, checkpointing: bool) -> float:
        """FLOPs actually executed by a training step (HFU)."""
        return self.train_step + (self.recompute if checkpointing else 0.0)


def transformer_flops(config: dict[str, Any], tokens: Tokens, *, batch: int = 1,
                      lora: LoraConfig | None = None, mogle_params: int = 0) -> Flops:
    """Analytic FLOPs of `condition_forward` (+ MoGLE) for `batch` samples (module docstring)."""
    d = config["num_attention_heads"] * config["attention_head_dim"]
    blocks = config["num_layers"] + config["num_single_layers"]
    linear = linear_bwd = block_linear = 0.0
    for spec in flux_linears(config):
        rows, _, grad_in = _rows(spec.rows, tokens)
        f = 2.0 * spec.fan_in * spec.fan_out * rows
        linear += f
        linear_bwd += f if grad_in else 0.0
        block_linear += f if "transformer_blocks." in spec.name else 0.0
    attention = 4.0 * tokens.joint ** 2 * d * blocks
    lora_f = block_lora = 0.0
    for spec in lora_layers(config, lora) if lora is not None else ():
        f = 2.0 * lora.rank * (spec.fan_in + spec.fan_out) * _rows(spec.rows, tokens)[1]
        lora_f += f
        block_lora += f if "transformer_blocks." in spec.name else 0.0
    mogle = 2.0 * mogle_params * tokens.image if tokens.cond else 0.0
    parts = {"linear": linear, "attention": attention, "lora": lora_f, "mogle": mogle}
    return Flops(forward=batch * sum(parts.values()),
                 backward=batch * (linear_bwd + 2 * (attention + lora_f + mogle)),
                 recompute=batch * (block_linear + attention + block_lora),
                 parts={k: batch * v for k, v in parts.items()})


# ----------------------------------------------------------------------------------------------
# Device facts
# ----------------------------------------------------------------------------------------------


def peak_flops(device: torch.device) -> tuple[float | None, str]:
    """(peak dense bf16 FLOP/s, where it comes from) of `device`; None where unknown."""
    if device.type != "cuda":
        return None, f"no peak FLOP/s table entry for device type {device.type!r}; MFU is null"
    name = torch.cuda.get_device_name(device).upper()
    for keys, value in PEAK_BF16_FLOPS:
        if all(k in name for k in keys):
            return value, f"data sheet, dense bf16, matched {' '.join(keys)!r}"
    return None, f"device {name!r} is not in the peak FLOP/s table; MFU is null"


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """Device name and library versions for the result file."""
    info: dict[str, Any] = {"type": device.type, "platform": platform.platform(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "loadavg": list(os.getloadavg())}  # CPU timings on a shared host
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=torch.cuda.get_device_name(device), memory_bytes=props.total_memory,
                    capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(),
                    sdpa={"flash": torch.backends.cuda.flash_sdp_enabled(),
                          "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                          "cudnn": torch.backends.cuda.cudnn_sdp_enabled()})
    else:
        info["name"] = platform.processor() or platform.machine()
    versions = {p: _version(p) for p in ("torch", "diffusers", "transformers", "peft",
                                         "accelerate", "prodigyopt")}
    versions["python"] = platform.python_version()
    return {"device": info, "versions": versions}


class Clock:
    """Timestamps without host syncs: CUDA events on a GPU (read after one synchronize at the
    end), `perf_counter` on a CPU, where every op has finished when it returns."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, start: Any, end: Any) -> float:
        if not self.cuda:
            return end - start
        end.synchronize()
        return start.elapsed_time(end) / 1e3


def _reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: torch.device) -> dict[str, int | None]:
    if device.type != "cuda":
        return {"peak_allocated_bytes": None, "peak_reserved_bytes": None}
    return {"peak_allocated_bytes": torch.cuda.max_memory_allocated(device),
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(device)}


def _release(device: torch.device) -> None:
    """Return freed (e.g. after an out-of-memory error) device memory to the allocator."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def _autocast(device: torch.device, dtype: torch.dtype):
    """bf16/fp16 autocast as the trainer runs it (`accelerator.autocast()`); off for float32."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


# ----------------------------------------------------------------------------------------------
# Building the models
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchSize:
    """What one `--size` builds: model factories and the token shapes of one image."""

    name: str
    transformer: Callable[[], FluxTransformer2DModel]
    vae: Callable[[], AutoencoderKL]
    resolution: int
    text_tokens: int
    captions_per_image: int
    model: ModelConfig
    lora: LoraConfig

    @property
    def latent_size(self) -> int:
        return self.resolution // 8

    @property
    def image_tokens(self) -> int:
        return (self.latent_size // 2) ** 2


def flux_size() -> BenchSize:
    """FLUX.1-dev at 512 px with the paper's LoRA and MoGLE."""
    return BenchSize("flux", lambda: FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER),
                     lambda: AutoencoderKL(**FLUX_DEV_VAE), FLUX_RESOLUTION, FLUX_TEXT_TOKENS,
                     DataConfig().captions_per_image, ModelConfig(), LoraConfig())


def tiny_size(params_path: str | Path) -> BenchSize:
    """The embedded default's small base (params `base`, `data.resolution`, `model`, `lora`)."""
    from facemogle.base import make_transformer, make_vae

    p = load_params(params_path)
    return BenchSize("tiny", lambda: make_transformer(p.base.transformer, MINILM_DIM, MINILM_DIM),
                     lambda: make_vae(p.base.vae, p.data.resolution), p.data.resolution,
                     p.base.text_max_tokens, p.data.captions_per_image, p.model, p.lora)


@torch.no_grad()
def init_random_(module: nn.Module, generator: torch.Generator) -> None:
    """Cheap seeded init on the module's device: weights N(0, 1/fan_in) (LeCun), 1-D weights
    (norm scales) 1, biases 0. Timings do not depend on the values; this keeps activations
    bounded through 57 blocks so that the loss stays finite."""
    for name, param in module.named_parameters():
        if param.ndim >= 2:
            param.normal_(0.0, 1.0 / math.sqrt(param[0].numel()), generator=generator)
        elif name.endswith("weight"):
            param.fill_(1.0)
        else:
            param.zero_()


def build_frozen(factory: Callable[[], nn.Module], device: torch.device, dtype: torch.dtype,
                 seed: int) -> nn.Module:
    """Build `factory()` on the meta device, allocate it on `device` in `dtype` (no fp32 copy
    on the host), init it with `init_random_`, and freeze it."""
    with torch.device("meta"):
        module = factory()
    if any(True for _ in module.buffers()):
        raise ValueError(f"build_frozen: {type(module).__name__} has buffers, which to_empty "
                         f"would leave uninitialised")
    if dtype != torch.float32:
        module = module.to(dtype)  # still on meta: nothing is allocated yet
    module = module.to_empty(device=device)
    init_random_(module, torch.Generator(device).manual_seed(seed))
    return module.eval().requires_grad_(False)


def build_facemogle(size: BenchSize, device: torch.device, dtype: torch.dtype,
                    seed: int) -> FaceMoGLE:
    """Frozen transformer in `dtype` + LoRA + MoGLE, trainable parameters in fp32 (as `train`)."""
    transformer = build_frozen(size.transformer, device, dtype, seed)
    torch.manual_seed(seed)  # peft's and MoGLE's own inits draw from the global generator
    model = FaceMoGLE.build(transformer, size.model, size.lora, experts="global_local",
                            gating="matrix")
    model.mogle.to(device)
    for p in model.trainable_parameters():
        p.data = p.data.float()  # fp32 master weights; autocast computes in `dtype`
    return model


# ----------------------------------------------------------------------------------------------
# Synthetic inputs
# ----------------------------------------------------------------------------------------------


def synthetic_cache(size: BenchSize, text_dim: int, pooled_dim: int, *, rows: int,
                    generator: torch.Generator) -> LatentCache:
    """An in-memory `LatentCache` of `rows` images (one caption each) with random float32
    tokens, the dtype the train stage loads the cache in."""
    L, C = size.image_tokens, 64  # noqa: N806 (shape names)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator)

    # image (N, L, C), slot_latents (20N, L, C), text_seq (N, T, D), text_pooled (N, P)
    return LatentCache(
        ids=[str(i) for i in range(rows)], image=randn(rows, L, C),
        slot_latents=randn(rows * NUM_SLOTS, L, C),
        slot_index=torch.arange(rows * NUM_SLOTS).reshape(rows, NUM_SLOTS),
        text_seq=randn(rows, size.text_tokens, text_dim), text_pooled=randn(rows, pooled_dim),
        caption_offsets=torch.arange(rows + 1), empty_slot=randn(L, C),
        empty_text_seq=randn(size.text_tokens, text_dim), empty_text_pooled=randn(pooled_dim),
        latent_size=size.latent_size)


def _to_device(batch: Batch, device: torch.device) -> Batch:
    return Batch(*(None if t is None else t.to(device, non_blocking=True) for t in (
        batch.x0, batch.text, batch.pooled, batch.cond_latents, batch.cond_keep, batch.sigma,
        batch.noise)))


def next_batch(cache: LatentCache, batch_size: int, cfg: TrainConfig, generator: torch.Generator,
               device: torch.device) -> Batch:
    """One training batch as `train` builds it: rows, condition dropout, time and noise drawn on
    the CPU, the key-mask decision made there, then one copy to the device."""
    rows = torch.randint(len(cache.ids), (batch_size,), generator=generator)
    batch = make_batch(cache, rows, cfg, generator)
    if bool(batch.cond_keep.all()):
        batch.cond_keep = None  # no key mask needed (a CPU tensor: no device sync)
    return _to_device(batch, device)


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


@dataclass
class TrainRun:
    """Everything one training measurement needs."""

    model: FaceMoGLE
    cache: LatentCache
    cfg: TrainConfig
    device: torch.device
    dtype: torch.dtype
    checkpointing: bool
    flops: Flops  # per sample
    peak: float | None


def _train_step(run: TrainRun, batch: Batch, optimizer: torch.optim.Optimizer,
                trainable: list[nn.Parameter], clock: Clock) -> tuple[Tensor, Any, Any]:
    """One step as `train` runs it; returns the loss and the marks after backward and after the
    optimizer."""
    with _autocast(run.device, run.dtype):
        loss = training_loss(run.model, batch, latent_size=run.cache.latent_size,
                             guidance=run.cfg.guidance, checkpointing=run.checkpointing)
    loss.backward()
    after_backward = clock.mark()
    torch.nn.utils.clip_grad_norm_(trainable, run.cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), after_backward, clock.mark()


def measure_training(run: TrainRun, batch_size: int, steps: int, warmup: int,
                     seed: int) -> dict[str, Any]:
    """Time `steps` training steps after `warmup`; one synchronize, after the timed steps.

    The step time is exact. Its split into phases (batch assembly and copy, forward and
    backward, clipping and optimizer) is approximate on a GPU: it is stream time between
    events that the host records while the device may still be busy.
    """
    run.model.train()
    trainable = run.model.trainable_parameters()
    optimizer = make_optimizer(trainable, run.cfg)
    generator = torch.Generator().manual_seed(seed)
    clock = Clock(run.device)
    _reset_memory(run.device)
    for _ in range(warmup):
        _train_step(run, next_batch(run.cache, batch_size, run.cfg, generator, run.device),
                    optimizer, trainable, clock)
    marks, losses = [], []
    for _ in range(steps):
        start = clock.mark()
        batch = next_batch(run.cache, batch_size, run.cfg, generator, run.device)
        data = clock.mark()
        loss, backward, end = _train_step(run, batch, optimizer, trainable, clock)
        marks.append((start, data, backward, end))
        losses.append(loss)
    phase = lambda i, j: sum(clock.seconds(m[i], m[j]) for m in marks) / steps  # noqa: E731
    step_s = phase(0, 3)
    finite = bool(torch.stack(losses).isfinite().all())
    del optimizer
    return _train_result(run, batch_size, step_s, finite, {
        "data_s": phase(0, 1), "forward_backward_s": phase(1, 2), "optimizer_s": phase(2, 3)})


def _train_result(run: TrainRun, batch_size: int, step_s: float, finite: bool,
                  phases: dict[str, float]) -> dict[str, Any]:
    model_flops = batch_size * run.flops.train_step
    hardware_flops = batch_size * run.flops.hardware(run.checkpointing)
    return {"batch_size": batch_size, "status": "ok", "step_s": step_s,
            "samples_per_s": batch_size / step_s, "phases": phases, "loss_finite": finite,
            **_peak_memory(run.device),
            "model_tflop_per_s": model_flops / step_s / 1e12,
            "mfu": None if run.peak is None else model_flops / step_s / run.peak,
            "hfu": None if run.peak is None else hardware_flops / step_s / run.peak}


def train_sweep(run: TrainRun, batch_sizes: list[int], steps: int, warmup: int,
                seed: int) -> list[dict[str, Any]]:
    """`measure_training` at every batch size; one that runs out of memory is recorded as "oom"
    and the sweep goes on."""
    results = []
    for b in batch_sizes:
        try:
            results.append(measure_training(run, b, steps, warmup, seed))
        except torch.OutOfMemoryError:
            results.append({"batch_size": b, "status": "oom"})
        for p in run.model.parameters():
            p.grad = None
        _release(run.device)
    return results


# ----------------------------------------------------------------------------------------------
# Sampling and caching
# ----------------------------------------------------------------------------------------------


def sample_conditions(cache: LatentCache, batch_size: int, device: torch.device) -> Conditions:
    """Multimodal conditions (caption + 20 slots) of the first `batch_size` cached rows."""
    rows = torch.arange(batch_size) % len(cache.ids)
    return Conditions(cache.text_seq[rows].to(device), cache.text_pooled[rows].to(device),
                      cache.slots(rows).to(device), cache.empty_text_seq.to(device),
                      cache.empty_text_pooled.to(device))


def measure_sampling(run: TrainRun, vae: AutoencoderKL | None, batch_size: int,
                     steps: int) -> dict[str, Any]:
    """Seconds per image of `generate_latents` (`steps` Euler steps) after a 2-step warmup, and
    of the VAE decode."""
    model = run.model.eval()
    cond = sample_conditions(run.cache, batch_size, run.device)
    seeds = list(range(batch_size))
    clock = Clock(run.device)
    _reset_memory(run.device)
    with _autocast(run.device, run.dtype):
        generate_latents(model, cond, seeds, latent_size=run.cache.latent_size, steps=2)
        start = clock.mark()
        packed = generate_latents(model, cond, seeds, latent_size=run.cache.latent_size,
                                  steps=steps, guidance=SAMPLE_GUIDANCE)
        sampled = clock.mark()
        if vae is not None:
            decode_images(vae, packed, run.cache.latent_size)
        decoded = clock.mark()
    seconds = clock.seconds(start, sampled)
    flops = steps * batch_size * run.flops.forward
    return {"batch_size": batch_size, "status": "ok", "steps": steps,
            "s_per_image": seconds / batch_size,
            "decode_s_per_image": clock.seconds(sampled, decoded) / batch_size if vae else None,
            "finite": bool(packed.isfinite().all()), **_peak_memory(run.device),
            "model_tflop_per_s": flops / seconds / 1e12,
            "mfu": None if run.peak is None else flops / seconds / run.peak}


def sample_sweep(run: TrainRun, vae: AutoencoderKL | None, batch_sizes: list[int],
                 steps: int) -> list[dict[str, Any]]:
    """`measure_sampling` at every batch size, "oom" where it does not fit."""
    results = []
    for b in batch_sizes:
        try:
            results.append(measure_sampling(run, vae, b, steps))
        except torch.OutOfMemoryError:
            results.append({"batch_size": b, "status": "oom"})
        _release(run.device)
    return results


def shard_bytes(size: BenchSize, text_dim: int, pooled_dim: int) -> dict[str, int]:
    """Bytes one image takes in a `facemogle.cache` shard (float16 tokens), with all 20 slots
    stored (the cache skips empty slots, so this is an upper bound) and
    `size.captions_per_image` captions, measured by serialising one image's tensors."""
    L, K = size.image_tokens, size.captions_per_image  # noqa: N806 (shape names)
    tensors = {"image": torch.zeros(1, L, 64, dtype=STORE_DTYPE),
               "slot_latents": torch.zeros(NUM_SLOTS, L, 64, dtype=STORE_DTYPE),
               "slot_index": torch.zeros(1, NUM_SLOTS, dtype=torch.int64),
               "text_seq": torch.zeros(K, size.text_tokens, text_dim, dtype=STORE_DTYPE),
               "text_pooled": torch.zeros(K, pooled_dim, dtype=STORE_DTYPE),
               "caption_offsets": torch.zeros(2, dtype=torch.int64)}
    parts = {f"{k}_bytes": t.numel() * t.element_size() for k, t in tensors.items()}
    return {**parts, "captions": K,
            "total_bytes": len(safetensors.torch.save(tensors))}


@torch.no_grad()
def measure_caching(vae: AutoencoderKL, size: BenchSize, images: int, batch_size: int,
                    device: torch.device, generator: torch.Generator) -> dict[str, Any]:
    """VAE encodes of `images` faces and their 20 slot images each, as `cache_latents` runs
    them: host images, batches of `batch_size` to the device, packed float16 tokens back."""
    r = size.resolution
    faces = torch.rand(images, 3, r, r, generator=generator)  # (N, 3, r, r)
    slots = (torch.rand(images * NUM_SLOTS, 3, r, r, generator=generator) > 0.5).float()
    # slots: (N * 20, 3, r, r) binary masks (the colour mask's cost is the same)
    stack = torch.cat([faces, slots])  # (N * 21, 3, r, r)
    encode = lambda x: latents.pack(latents.encode(vae, x)).to(STORE_DTYPE).cpu()  # noqa: E731
    encode(stack[:batch_size])  # warmup
    clock = Clock(device)
    _reset_memory(device)
    start = clock.mark()
    for i in range(0, stack.shape[0], batch_size):
        encode(stack[i:i + batch_size])
    seconds = clock.seconds(start, clock.mark())
    return {"images": images, "encodes_per_image": 1 + NUM_SLOTS, "batch_size": batch_size,
            "images_per_s": images / seconds, "encodes_per_s": stack.shape[0] / seconds,
            **_peak_memory(device)}


# ----------------------------------------------------------------------------------------------
# Profile
# ----------------------------------------------------------------------------------------------


def _frame(frames: list[traceback.FrameSummary], own: bool) -> str | None:
    """The innermost frame of the project (`own`) or of a library, as "path:line"."""
    for f in reversed(frames):
        path = f.filename.replace(os.sep, "/")
        is_own = bool(re.search(r"/(facemogle|stages)/", path))
        if is_own == own and not re.search(INTERNAL_FRAMES, path):
            path = re.sub(r".*/site-packages/|.*/(?=(facemogle|stages)/)", "", path)
            return f"{path}:{f.lineno}"
    return None


class SyncRecorder(TorchDispatchMode):
    """Records every operator that reads a tensor's value on the host (`SYNC_OPS`: `.item()`,
    `bool(tensor)`, `nonzero`, ...) with the devices of its inputs and where it was called.

    On an accelerator each is a host-device synchronisation; reads of CPU tensors cost nothing
    and are listed with device "cpu". Exact file:line, unlike the profiler's Python stacks.
    """

    def __init__(self):
        super().__init__()
        self.sites: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in SYNC_OPS:
            devices = sorted({t.device.type for t in tree_leaves((args, kwargs))
                              if isinstance(t, Tensor)})
            frames = traceback.extract_stack()[:-1]  # without this method's own frame
            self.sites[(func.overloadpacket.__name__, ",".join(devices), _frame(frames, True),
                        _frame(frames, False))] += 1
        return func(*args, **(kwargs or {}))

    def report(self, calls: int) -> list[dict[str, Any]]:
        """Sites with their count per call of the recorded code."""
        return [{"op": op, "device": dev, "site": own, "library_site": lib, "per_call": n / calls}
                for (op, dev, own, lib), n in self.sites.most_common()]


def _op_table(device: torch.device, fn: Callable[[], Any]) -> str:
    """PyTorch-profiler table of the top operators of `fn()` by self time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        fn()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=60)


def profile_run(run: TrainRun, batch_size: int, out_dir: str | Path, seed: int,
                steps: int = 2) -> dict[str, Any]:
    """Profile `steps` training steps and one 2-step sampling call.

    Training inputs are prepared first, so only the loss, backward and optimizer are traced.
    Writes `train_ops.txt` and `sample_ops.txt` (top operators) and `host_syncs.json` (the
    `SyncRecorder` sites per training step and per sampling call) to `out_dir`.
    """
    generator = torch.Generator().manual_seed(seed)
    run.model.train()
    trainable = run.model.trainable_parameters()
    optimizer = make_optimizer(trainable, run.cfg)
    clock = Clock(run.device)
    batches = [next_batch(run.cache, batch_size, run.cfg, generator, run.device)
               for _ in range(2 * steps + 1)]

    def train_steps() -> None:
        for _ in range(steps):
            _train_step(run, batches.pop(), optimizer, trainable, clock)

    cond = sample_conditions(run.cache, batch_size, run.device)

    def sample() -> None:
        with _autocast(run.device, run.dtype):
            generate_latents(run.model, cond, list(range(batch_size)),
                             latent_size=run.cache.latent_size, steps=2)

    _train_step(run, batches.pop(), optimizer, trainable, clock)  # optimizer state, warm caches
    report: dict[str, Any] = {"batch_size": batch_size, "train_steps": steps}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        write_text(tmp / "train_ops.txt", _op_table(run.device, train_steps))
        with SyncRecorder() as syncs:
            train_steps()
        report["train_syncs_per_step"] = syncs.report(steps)
        run.model.eval()
        write_text(tmp / "sample_ops.txt", _op_table(run.device, sample))
        with SyncRecorder() as syncs:
            sample()
        report["sample_syncs_per_call"] = syncs.report(1)
        write_json(tmp / "host_syncs.json", report)
    run.model.train()
    return report


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


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
        "train": to_dict(cfg), "lora": to_dict(size.lora), "model": to_dict(size.model),
        "transformer": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg_t.items()
                        if not k.startswith("_")},
    }


def _counts(model: FaceMoGLE) -> dict[str, int]:
    lora = sum(p.numel() for n, p in model.transformer.named_parameters() if "lora_" in n)
    return {"transformer": sum(p.numel() for n, p in model.transformer.named_parameters()
                               if "lora_" not in n),
            "lora": lora, "mogle": sum(p.numel() for p in model.mogle.parameters()),
            "trainable": sum(p.numel() for p in model.trainable_parameters())}


def run_benchmark(opt: Options) -> dict[str, Any]:
    """Build the models of `opt.size` on `opt.device` and measure `opt.parts`; the result dict
    that `main` writes."""
    size = flux_size() if opt.size == "flux" else tiny_size(opt.params)
    model = build_facemogle(size, opt.device, opt.dtype, opt.seed)
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
    if "train" in opt.parts:
        result["train"] = train_sweep(run, opt.batch_sizes, opt.steps, opt.warmup, opt.seed)
    vae = None
    if {"sample", "cache"} & set(opt.parts):
        vae = build_frozen(size.vae, opt.device, opt.dtype, opt.seed + 1)
    if "sample" in opt.parts:
        result["sample"] = sample_sweep(run, vae, opt.sample_batch_sizes, opt.sample_steps)
    if "cache" in opt.parts:
        result["cache"] = {**measure_caching(vae, size, opt.cache_images, opt.cache_batch_size,
                                             opt.device, generator),
                           "shard": shard_bytes(size, text_dim, pooled_dim)}
    if opt.profile is not None:
        ok = [r["batch_size"] for r in result.get("train", []) if r["status"] == "ok"]
        result["profile"] = {"dir": str(opt.profile), **profile_run(
            run, (ok or opt.batch_sizes)[0], opt.profile, opt.seed, opt.profile_steps)}
    return result


def markdown_table(result: dict[str, Any]) -> str:
    """The README table of a result: training and sampling rows, one per batch size."""
    dev = result["device"]["name"]
    pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    gib = lambda b: "n/a" if b is None else f"{b / 2 ** 30:.1f} GiB"  # noqa: E731
    lines = [f"Face-MoGLE, size `{result['settings']['size']}`, {dev} "
             f"({result['settings']['dtype']}, gradient checkpointing "
             f"{'on' if result['settings']['gradient_checkpointing'] else 'off'})", "",
             "| measurement | batch | time | throughput | peak memory | MFU |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in result.get("train", []):
        if r["status"] != "ok":
            lines.append(f"| training step | {r['batch_size']} | {r['status']} | | | |")
            continue
        lines.append(f"| training step | {r['batch_size']} | {r['step_s']:.3f} s | "
                     f"{r['samples_per_s']:.2f} samples/s | {gib(r['peak_allocated_bytes'])} | "
                     f"{pct(r['mfu'])} |")
    for r in result.get("sample", []):
        if r["status"] != "ok":
            lines.append(f"| sampling | {r['batch_size']} | {r['status']} | | | |")
            continue
        lines.append(f"| sampling, {r['steps']} steps | {r['batch_size']} | "
                     f"{r['s_per_image']:.3f} s/image | {1 / r['s_per_image']:.2f} images/s | "
                     f"{gib(r['peak_allocated_bytes'])} | {pct(r['mfu'])} |")
    if "cache" in result:
        c = result["cache"]
        lines.append(f"| latent caching (1 + 20 encodes) | {c['batch_size']} | | "
                     f"{c['images_per_s']:.2f} images/s, "
                     f"{c['shard']['total_bytes'] / 2 ** 20:.2f} MiB/image | "
                     f"{gib(c['peak_allocated_bytes'])} | |")
    return "\n".join(lines) + "\n"


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _parts(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    if not parts or set(parts) - set(PARTS):
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {list(PARTS)}, "
                                         f"got {text!r}")
    return parts


# Per size: batch sizes, timed steps, warmup steps, images to cache, dtype.
DEFAULTS: dict[str, dict[str, Any]] = {
    "flux": {"batch_sizes": [1, 2, 4], "steps": 10, "warmup": 3, "cache_images": 8,
             "dtype": "bfloat16"},
    "tiny": {"batch_sizes": [1, 2], "steps": 3, "warmup": 1, "cache_images": 4,
             "dtype": "float32"},
}


def parse_args(argv: list[str] | None = None) -> Options:
    """Command line -> `Options`; per-size defaults from `DEFAULTS`."""
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
    a = ap.parse_args(argv)
    d = DEFAULTS[a.size]
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if a.size == "flux" and device.type != "cuda":
        ap.error("--size flux needs a CUDA device (11.9 B parameters); use --size tiny on a CPU")
    for name in ("steps", "sample_steps", "cache_images", "cache_batch_size", "profile_steps"):
        value = getattr(a, name)
        if value is not None and value < 1:
            ap.error(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if a.warmup is not None and a.warmup < 0:
        ap.error(f"--warmup must be >= 0, got {a.warmup}")
    pick = lambda name: d[name] if getattr(a, name) is None else getattr(a, name)  # noqa: E731
    return Options(a.size, a.out, device, getattr(torch, pick("dtype")), pick("batch_sizes"),
                   pick("steps"), pick("warmup"), a.sample_batch_sizes, a.sample_steps,
                   pick("cache_images"), a.cache_batch_size, a.checkpointing, a.compile, a.parts,
                   a.profile, a.profile_steps, a.markdown, a.params, a.seed)


def main(argv: list[str] | None = None) -> int:
    opt = parse_args(argv)
    result = run_benchmark(opt)
    write_json(opt.out, result)
    if opt.markdown is not None:
        write_text(opt.markdown, markdown_table(result))
    print(markdown_table(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
