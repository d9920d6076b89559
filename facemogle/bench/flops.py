"""Analytic FLOP count of the FLUX transformer with condition tokens, and device peaks.

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
test runs both on the meta device). A naive estimate, 2 x 11.9 B x 2560 + attention, gives about
65 TFLOP per forward because it charges every token with both streams' weights of the double
blocks and with the per-sample modulation layers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from facemogle.core.config import LoraConfig

# Peak dense bf16 tensor-core FLOP/s from NVIDIA's data sheets, matched against the upper-cased
# `torch.cuda.get_device_name` (the H100 SXM reports "NVIDIA H100 80GB HBM3").
PEAK_BF16_FLOPS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("H100", "PCIE"), 756e12),
    (("H100", "HBM3"), 989e12),
    (("H100", "SXM"), 989e12),
    (("H200",), 989e12),
    (("A100",), 312e12),
)


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


def peak_flops(device: torch.device) -> tuple[float | None, str]:
    """(peak dense bf16 FLOP/s, where it comes from) of `device`; None where unknown."""
    if device.type != "cuda":
        return None, f"no peak FLOP/s table entry for device type {device.type!r}; MFU is null"
    name = torch.cuda.get_device_name(device).upper()
    for keys, value in PEAK_BF16_FLOPS:
        if all(k in name for k in keys):
            return value, f"data sheet, dense bf16, matched {' '.join(keys)!r}"
    return None, f"device {name!r} is not in the peak FLOP/s table; MFU is null"
