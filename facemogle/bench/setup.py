"""What the benchmark measures on: model sizes, randomly initialised models, a synthetic cache.
"""

from __future__ import annotations

import gc
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel
from torch import Tensor, nn

from facemogle.base.quantize import load_quantized
from facemogle.cache.store import LatentCache
from facemogle.core.config import DataConfig, LoraConfig, ModelConfig, load_params
from facemogle.core.flux import (
    FLUX_DEV_TRANSFORMER,
    FLUX_DEV_VAE,
    FLUX_RESOLUTION,
    FLUX_TEXT_TOKENS,
)
from facemogle.core.labels import NUM_SLOTS
from facemogle.models.facemogle import FaceMoGLE

MINILM_DIM = 384  # hidden size of all-MiniLM-L6-v2, the embedded text encoder


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


def flux_size(blocks: tuple[int, int] | None = None) -> BenchSize:
    """FLUX.1-dev at 512 px with the paper's LoRA and MoGLE; `blocks` = (double, single) builds
    it at full width with that many blocks instead of 19 and 38."""
    config = dict(FLUX_DEV_TRANSFORMER)
    if blocks is not None:
        config.update(num_layers=blocks[0], num_single_layers=blocks[1])
    return BenchSize("flux", lambda: FluxTransformer2DModel(**config),
                     lambda: AutoencoderKL(**FLUX_DEV_VAE), FLUX_RESOLUTION, FLUX_TEXT_TOKENS,
                     DataConfig().captions_per_image, ModelConfig(), LoraConfig())


def tiny_size(params_path: str | Path) -> BenchSize:
    """The embedded default's small base: the architecture of the embedded base that params
    `base.tiny_path` names (relative to the working directory, as for the `base` stage),
    `data.resolution`, `model`, `lora`."""
    p = load_params(params_path)
    folder = Path(p.base.tiny_path)

    def part(cls, name: str):
        return lambda: cls.from_config(cls.load_config(folder / name))

    return BenchSize("tiny", part(FluxTransformer2DModel, "transformer"),
                     part(AutoencoderKL, "vae"), p.data.resolution, p.base.text_max_tokens,
                     p.data.captions_per_image, p.model, p.lora)


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


def quantize_frozen(transformer: FluxTransformer2DModel, name: str, device: torch.device,
                    dtype: torch.dtype) -> FluxTransformer2DModel:
    """`transformer` through the base stage's quantization path (`base.quantization` = `name`):
    saved in the diffusers layout, then loaded with the quantization config, on `device`. The
    unquantized copy is freed before the quantized one loads."""
    with tempfile.TemporaryDirectory(prefix="facemogle-bench-") as tmp:
        transformer.save_pretrained(tmp)
        del transformer
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        quantized = load_quantized(tmp, name, dtype, device)
    return quantized.to(device).eval().requires_grad_(False)


def build_facemogle(size: BenchSize, device: torch.device, dtype: torch.dtype,
                    seed: int, quantization: str = "none") -> FaceMoGLE:
    """Frozen transformer in `dtype` (quantized with `quantization` other than 'none') + LoRA +
    MoGLE, trainable parameters in fp32 (as `train`)."""
    transformer = build_frozen(size.transformer, device, dtype, seed)
    if quantization != "none":
        transformer = quantize_frozen(transformer, quantization, device, dtype)
    torch.manual_seed(seed)  # peft's and MoGLE's own inits draw from the global generator
    model = FaceMoGLE.build(transformer, size.model, size.lora, experts="global_local",
                            gating="matrix")
    model.mogle.to(device)
    for p in model.trainable_parameters():
        p.data = p.data.float()  # fp32 master weights; autocast computes in `dtype`
    return model


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
