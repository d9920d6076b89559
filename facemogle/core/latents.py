"""FLUX's latent conventions: VAE range and normalisation, 2x2 token packing, position ids.

At 512 px: an image -> (16, 64, 64) latent -> 1024 tokens x 64. Packing and ids
follow diffusers' `FluxPipeline` layouts exactly (tested against them), so image tokens and mask
tokens of the same grid share positions.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C): each 2x2 patch becomes one token, row-major.

    Within a token the features are ordered (C, 2, 2), as in `FluxPipeline._pack_latents`.
    """
    if latents.ndim != 4 or latents.shape[-2] % 2 or latents.shape[-1] % 2:
        raise ValueError(f"pack: expected (B, C, H, W) latents with even H and W, "
                         f"got {tuple(latents.shape)}")
    b, c, h, w = latents.shape
    x = latents.reshape(b, c, h // 2, 2, w // 2, 2)  # (B, C, H/2, 2, W/2, 2)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, H/2, W/2, C, 2, 2)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)  # (B, L, 4C)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H/2 * W/2, 4C) -> (B, C, H, W); `height`, `width` are the latent grid's (H, W)."""
    num_tokens = (height // 2) * (width // 2)
    if (tokens.ndim != 3 or height % 2 or width % 2 or tokens.shape[-1] % 4
            or tokens.shape[1] != num_tokens):
        raise ValueError(f"unpack: tokens {tuple(tokens.shape)} do not fit an even latent grid "
                         f"of {height} x {width} (expected (B, {num_tokens}, 4C))")
    b, _, d = tokens.shape
    x = tokens.reshape(b, height // 2, width // 2, d // 4, 2, 2)  # (B, H/2, W/2, C, 2, 2)
    x = x.permute(0, 3, 1, 4, 2, 5)  # (B, C, H/2, 2, W/2, 2)
    return x.reshape(b, d // 4, height, width)  # (B, C, H, W)


def image_ids(height: int, width: int, *, device: torch.device | str | None = None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Position ids of the packed tokens of an (H, W) latent grid: (H/2 * W/2, 3) rows
    [0, row, col], row-major like `pack` (the RoPE axes of FLUX)."""
    rows = torch.arange(height // 2, device=device).repeat_interleave(width // 2)  # (L,)
    cols = torch.arange(width // 2, device=device).repeat(height // 2)  # (L,)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).to(dtype)  # (L, 3)


def text_ids(num_tokens: int, *, device: torch.device | str | None = None,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Position ids of the text tokens: all zeros, (T, 3), as in FLUX."""
    return torch.zeros(num_tokens, 3, device=device, dtype=dtype)


def to_vae_range(images01: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> [-1, 1], the VAE's input range."""
    return images01 * 2 - 1


def from_vae_range(images: torch.Tensor) -> torch.Tensor:
    """VAE output in [-1, 1] -> [0, 1] (not clamped)."""
    return (images + 1) / 2


def _factors(vae: AutoencoderKL) -> tuple[float, float]:
    """(shift, scale) latent normalisation from the VAE config; FLUX AE: (0.1159, 0.3611)."""
    shift = vae.config.shift_factor
    return (0.0 if shift is None else float(shift)), float(vae.config.scaling_factor)


def _check_images(vae: AutoencoderKL, images01: torch.Tensor) -> None:
    down = 2 ** (len(vae.config.block_out_channels) - 1)
    if (images01.ndim != 4 or images01.shape[1] != vae.config.in_channels
            or images01.shape[-2] % down or images01.shape[-1] % down):
        raise ValueError(f"encode: expected (B, {vae.config.in_channels}, H, W) images with H and "
                         f"W multiples of {down}, got {tuple(images01.shape)}")


def encode(vae: AutoencoderKL, images01: torch.Tensor, *, generator: torch.Generator | None = None,
           sample: bool = False) -> torch.Tensor:
    """(B, 3, H, W) images in [0, 1] -> (B, C, H/8, W/8) normalised latents (z - shift) * scale.

    The posterior mean by default, so the same image always gives the same latent: the official
    code's unseeded `latent_dist.sample()` made every run irreproducible
    (docs/design.md, bug B11). `sample=True` draws from the posterior with
    `generator`. Gradients follow the caller's grad mode; the result has the VAE's dtype.
    """
    _check_images(vae, images01)
    x = to_vae_range(images01).to(device=vae.device, dtype=vae.dtype)  # (B, 3, H, W)
    posterior = vae.encode(x).latent_dist
    z = posterior.sample(generator=generator) if sample else posterior.mode()  # (B, C, h, w)
    shift, scale = _factors(vae)
    return (z - shift) * scale


def encode_batched(vae: AutoencoderKL, images01: torch.Tensor, batch_size: int, *,
                   generator: torch.Generator | None = None, sample: bool = False) -> torch.Tensor:
    """`encode` in chunks of `batch_size` images (e.g. the B * 20 mask slots); (B, C, h, w)."""
    if batch_size < 1:
        raise ValueError(f"encode_batched: batch_size must be >= 1, got {batch_size}")
    chunks = [encode(vae, images01[i:i + batch_size], generator=generator, sample=sample)
              for i in range(0, images01.shape[0], batch_size)]
    return torch.cat(chunks)  # (B, C, h, w)


def decode(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) normalised latents -> (B, 3, 8h, 8w) images in [0, 1] (clamped)."""
    shift, scale = _factors(vae)
    z = (latents / scale + shift).to(device=vae.device, dtype=vae.dtype)  # (B, C, h, w)
    return from_vae_range(vae.decode(z).sample).clamp(0, 1)  # (B, 3, H, W)
