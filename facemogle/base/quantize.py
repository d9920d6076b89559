"""A quantized frozen transformer (`base.quantization`): made once by the `base` stage, loaded as
it is by every later stage.

- `int8`: int8 weight-only through torchao (`Int8WeightOnlyConfig`); runs on CPU and GPU.
- `nf4`: bitsandbytes NF4 through diffusers' `BitsAndBytesConfig`; needs a CUDA GPU, because
  diffusers' bitsandbytes quantizer refuses to quantize without one.

The quantized transformer is saved in the diffusers layout (safetensors, its quantization config
in `config.json`) under `transformer/` of the base stage's folder; `load_base` reads it from
there, so no stage quantizes the bf16 weights again. LoRA and MoGLE stay in full precision
(peft wraps the quantized Linear layers; docs/full-setting.md, "A 24 GB profile").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import FluxTransformer2DModel

from facemogle.core.config import BaseConfig, ConfigError

QUANTIZED_TRANSFORMER = "transformer"  # folder in the base stage's output


def quantization_config(name: str, compute_dtype: torch.dtype) -> Any:
    """The diffusers quantization config for `base.quantization` = `name` ('int8' or 'nf4')."""
    if name == "int8":
        try:
            from torchao.quantization import Int8WeightOnlyConfig
        except ImportError as err:
            raise ConfigError("params: 'base.quantization' = 'int8' needs torchao: "
                              "pip install -c constraints.txt -e '.[quant]'") from err
        from diffusers import TorchAoConfig

        return TorchAoConfig(Int8WeightOnlyConfig())
    if name == "nf4":
        if not torch.cuda.is_available():
            raise ConfigError("params: 'base.quantization' = 'nf4' needs a CUDA GPU (diffusers' "
                              "bitsandbytes quantizer refuses to run without one); on a CPU use "
                              "'int8'")
        from diffusers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_compute_dtype=compute_dtype)
    raise ConfigError(f"params: 'base.quantization' = {name!r}; expected 'none', 'int8' or 'nf4'")


def load_quantized(folder: str | Path, name: str, dtype: torch.dtype,
                   device: torch.device | None = None) -> FluxTransformer2DModel:
    """The unquantized transformer in `folder`, quantized with `name` as diffusers loads it, one
    layer at a time. On a CUDA `device` each layer is quantized there as it arrives, so the
    unquantized model never has to fit on the card; otherwise on the CPU."""
    placement = {}
    if device is not None and device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        placement = {"device_map": {"": f"cuda:{index}"}}
    return FluxTransformer2DModel.from_pretrained(
        folder, dtype=dtype, quantization_config=quantization_config(name, dtype), **placement)


def save_quantized_transformer(parts_dir: Path, name: str, dtype: torch.dtype,
                               out_dir: Path) -> None:
    """Quantize `parts_dir/transformer` (on the GPU when there is one) and save it as
    `out_dir/transformer` (safetensors)."""
    device = torch.device("cuda") if torch.cuda.is_available() else None
    load_quantized(parts_dir / "transformer", name, dtype, device).save_pretrained(
        out_dir / QUANTIZED_TRANSFORMER)


def write_quantized(cfg: BaseConfig, parts_dir: Path, out_dir: Path) -> dict[str, str]:
    """With `cfg.quantization` set, save the quantized transformer into the base stage's
    `out_dir`; the base manifest's entry for it (none without quantization, so an unquantized
    base folder is what it was before the option existed)."""
    if cfg.quantization == "none":
        return {}
    save_quantized_transformer(parts_dir, cfg.quantization, getattr(torch, cfg.dtype), out_dir)
    return {"quantization": cfg.quantization}
