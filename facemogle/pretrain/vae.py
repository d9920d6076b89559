"""Pretraining phase 1: the embedded base's VAE (a small FLUX-shaped `AutoencoderKL`) on faces
and decoupled mask images, its latent normalization and held-out PSNR.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import Tensor
from torchmetrics.image import PeakSignalNoiseRatio

from facemogle.base.standin import tiny_vae
from facemogle.core import latents
from facemogle.core.config import TinyVAEConfig
from facemogle.core.labels import NUM_SLOTS, decouple
from facemogle.pretrain.common import EVAL_BATCH, FaceSet, run_phase
from facemogle.pretrain.phase_store import PhaseStore


def vae_norm_groups(widths: tuple[int, ...]) -> int:
    """GroupNorm groups for all VAE blocks: a divisor of every width, <= 32 and with >= 4 channels
    per group in the narrowest block (FLUX's VAE: widths 128..512 -> 32)."""
    common = math.gcd(*widths)
    return max(d for d in range(1, 33) if common % d == 0 and min(widths) // d >= 4)


def make_vae(cfg: TinyVAEConfig, resolution: int) -> AutoencoderKL:
    """A FLUX-shaped AutoencoderKL: 16 latent channels, 4 blocks (x8), no quant convs."""
    return tiny_vae(
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        norm_num_groups=vae_norm_groups(tuple(cfg.block_out_channels)), sample_size=resolution,
        shift_factor=0.0, scaling_factor=1.0)


def vae_batch(faces: FaceSet, batch_size: int, mask_fraction: float,
              generator: torch.Generator, crop_size: int | None = None) -> Tensor:
    """(B, 3, H, W) in [0, 1]: faces, then `mask_fraction` of the batch as decoupled mask images.

    Half of the mask images are colour masks (slot 0), half binary masks of a uniformly drawn
    label (slots 1..19); rare labels are mostly absent, so all-black (empty slot) images, which
    Face-MoGLE encodes for every missing region, are well represented.
    """
    n_mask = round(batch_size * mask_fraction)
    n_face = batch_size - n_mask
    index = torch.randint(len(faces), (batch_size,), generator=generator)  # (B,)
    binary = torch.randint(1, NUM_SLOTS, (n_mask,), generator=generator)  # (M,)
    slots = torch.where(torch.rand(n_mask, generator=generator) < 0.5, 0, binary)  # (M,)
    masks = decouple(faces.label_maps[index[n_face:]])  # (M, 20, 3, H, W)
    masks = masks[torch.arange(n_mask), slots]  # (M, 3, H, W)
    batch = torch.cat([faces.images01(index[:n_face]), masks])  # (B, 3, H, W)
    return batch if crop_size is None else random_crops(batch, crop_size, generator)


def random_crops(images: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """One square crop of side `size` per image (B, C, H, W) -> (B, C, size, size), at offsets
    that are multiples of 8 (whole latent cells, so the crop's latent grid is the image's)."""
    h, w = images.shape[-2:]
    if size > min(h, w):
        raise ValueError(f"crop_size {size} exceeds the {w}x{h} images")
    top = torch.randint((h - size) // 8 + 1, (len(images),), generator=generator) * 8  # (B,)
    left = torch.randint((w - size) // 8 + 1, (len(images),), generator=generator) * 8  # (B,)
    return torch.stack([image[:, t:t + size, s:s + size]
                        for image, t, s in zip(images, top.tolist(), left.tolist())])


def color_latent_loss(posterior_mean: Tensor, x: Tensor) -> Tensor:
    """MSE between the first 3 latent channels (B, 3, h, w) and the image's mean colour over each
    latent cell (B, 3, H, W) -> (B, 3, h, w).

    From scratch, the tiny VAE otherwise sits for hundreds of steps at a plateau where it decodes
    grey blurs and ignores its latent; this easy target makes the latent informative from the
    first steps. It also makes latents look like a small image, as SD/FLUX latents roughly do.
    """
    cell = x.shape[-1] // posterior_mean.shape[-1]  # 8
    return F.mse_loss(posterior_mean[:, :3], F.avg_pool2d(x, cell))


def train_vae(cfg: TinyVAEConfig, faces: FaceSet, *, generator: torch.Generator,
              live: Any = None, store: PhaseStore | None = None) -> AutoencoderKL:
    """Train the VAE: L1 reconstruction + kl_weight * KL + color_weight * `color_latent_loss`,
    AdamW; then set its latent shift/scale."""
    vae = make_vae(cfg, faces.resolution).train()

    def loss_fn() -> tuple[Tensor, dict[str, float]]:
        x = latents.to_vae_range(vae_batch(faces, cfg.batch_size, cfg.mask_fraction,
                                           generator, cfg.crop_size))  # (B, 3, H, W)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=generator)).sample  # (B, 3, H, W)
        l1 = F.l1_loss(recon, x)
        kl = posterior.kl().mean()
        color = color_latent_loss(posterior.mean, x)
        loss = l1 + cfg.kl_weight * kl + cfg.color_weight * color
        return loss, {"l1": l1.item(), "kl": kl.item(), "color": color.item()}

    run_phase("vae", vae, cfg, loss_fn, generator=generator, live=live, store=store)
    vae.eval().requires_grad_(False)
    set_latent_normalization(vae, faces)
    return vae


@torch.no_grad()
def encode_faces(vae: AutoencoderKL, faces: FaceSet) -> Tensor:
    """Normalized posterior-mean latents (N, 16, H/8, W/8) of every face, without gradients."""
    return latents.encode_batched(vae, faces.images01(slice(None)), EVAL_BATCH)


@torch.no_grad()
def decode_faces(vae: AutoencoderKL, faces: FaceSet) -> Tensor:
    """Every face through encode -> decode: (N, 3, H, W) in [0, 1]."""
    return torch.cat([_reconstruct(vae, faces.images01(slice(i, i + EVAL_BATCH)))
                      for i in range(0, len(faces), EVAL_BATCH)])


@torch.no_grad()
def set_latent_normalization(vae: AutoencoderKL, faces: FaceSet) -> tuple[float, float]:
    """Write shift_factor = mean and scaling_factor = 1 / std of the faces' posterior means into
    the VAE config (FLUX's VAE: 0.1159 and 0.3611), so normalized latents are ~zero-mean and
    unit-std."""
    vae.register_to_config(shift_factor=0.0, scaling_factor=1.0)
    raw = encode_faces(vae, faces)  # (N, 16, h, w)
    shift, scale = raw.mean().item(), 1.0 / raw.std().item()
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    return shift, scale


@torch.no_grad()
def vae_psnr(vae: AutoencoderKL, faces: FaceSet) -> dict[str, float]:
    """PSNR (dB, over all pixels of each group) of encode -> decode on held-out faces, colour
    masks (slot 0) and binary masks (slots 1..19, absent regions included)."""
    meters = {name: PeakSignalNoiseRatio(data_range=1.0) for name in ("faces", "color", "binary")}
    for i in range(0, len(faces), EVAL_BATCH // NUM_SLOTS + 1):
        index = slice(i, i + EVAL_BATCH // NUM_SLOTS + 1)
        slots = decouple(faces.label_maps[index])  # (b, 20, 3, H, W)
        groups = {"faces": faces.images01(index), "color": slots[:, 0],
                  "binary": slots[:, 1:].flatten(0, 1)}
        for name, images in groups.items():
            meters[name].update(_reconstruct(vae, images), images)
    return {f"vae_psnr_{name}": float(meter.compute()) for name, meter in meters.items()}


def _reconstruct(vae: AutoencoderKL, images01: Tensor) -> Tensor:
    return latents.decode(vae, latents.encode_batched(vae, images01, EVAL_BATCH))  # (B, 3, H, W)
