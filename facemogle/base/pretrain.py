"""The training phases of the embedded base (`base.kind: tiny`, `python -m stages.pretrain`).

On the train split of the normalized data layout: a small `AutoencoderKL` (16 latent channels,
x8 down, like FLUX's VAE) on faces and decoupled mask images, a small face parser, and a small
`FluxTransformer2DModel` text-to-image with rectified flow on all-MiniLM-L6-v2 embeddings. Each
phase resumes from its `PhaseStore`. Held-out quality (VAE PSNR, parser mIoU) and the loss curves
go to DVCLive; `facemogle.base.train_embedded` runs the phases and ships the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, FluxTransformer2DModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from torch import Tensor
from torchmetrics.classification import MulticlassJaccardIndex
from torchmetrics.image import PeakSignalNoiseRatio
from tqdm.auto import tqdm

from facemogle.base.loader import MANIFEST, Base
from facemogle.base.phase_store import PhaseStore
from facemogle.base.segmenter import FaceParser, save_parser
from facemogle.base.standin import tiny_transformer, tiny_vae
from facemogle.base.text import (
    MINILM_NAME,
    TEXT_MANIFEST,
    MiniLMTextEncoder,
    TextEncoder,
    text_manifest,
)
from facemogle.core import flow, latents
from facemogle.core.config import (
    BaseConfig,
    TinyParserConfig,
    TinyTransformerConfig,
    TinyVAEConfig,
    to_dict,
)
from facemogle.core.flux import LATENT_CHANNELS, SAMPLE_GUIDANCE
from facemogle.core.io import InputError, atomic_path, read_rgb, write_json, write_text
from facemogle.core.labels import (
    LABEL_INDEX,
    NUM_LABELS,
    NUM_SLOTS,
    decouple,
    load_label_map,
)
from facemogle.data.layout import image_path, mask_path, read_captions, read_split

LOG_EVERY = 10  # training steps per logged loss mean


EVAL_BATCH = 64


NUM_PREVIEWS = 8


PREVIEW_STEPS = 28  # FLUX's 28 Euler steps (docs/design.md, "Sampling")


@dataclass
class FaceSet:
    """One split in memory: images (N, 3, H, W) uint8, label maps (N, H, W) uint8, captions."""

    ids: list[str]
    images: Tensor
    label_maps: Tensor
    captions: list[list[str]]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def resolution(self) -> int:
        return self.images.shape[-1]

    def images01(self, index: Tensor | slice) -> Tensor:
        """(B, 3, H, W) float images in [0, 1]."""
        return self.images[index].float() / 255.0


def load_faces(data_dir: str | Path, split: str) -> FaceSet:
    """Read one split of the normalized layout (`images/`, `masks/`, `captions.jsonl`)."""
    ids = read_split(data_dir)[split]
    if not ids:
        raise InputError(f"{Path(data_dir) / 'split.json'}: the {split!r} split is empty")
    captions = read_captions(data_dir)
    missing = [i for i in ids if not captions.get(i)]
    if missing:
        raise InputError(f"{Path(data_dir) / 'captions.jsonl'}: no captions for {len(missing)} "
                         f"{split} ids, e.g. {missing[0]!r}")
    images = np.stack([_read_square(image_path(data_dir, i)) for i in ids])  # (N, H, W, 3)
    maps = np.stack([load_label_map(mask_path(data_dir, i)) for i in ids])  # (N, H, W)
    if maps.shape != images.shape[:3]:
        raise InputError(f"{mask_path(data_dir, ids[0]).parent}: label maps {maps.shape[1:]} do "
                         f"not match the images {images.shape[1:3]}")
    return FaceSet(ids, torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                   torch.from_numpy(maps), [captions[i] for i in ids])


def _read_square(path: Path) -> np.ndarray:
    image = read_rgb(path)  # (H, W, 3)
    h, w = image.shape[:2]
    # x8 VAE, then 2x2 token packing: sides must be multiples of 16.
    if h != w or h % 16:
        raise InputError(f"{path}: expected a square image with a side that is a multiple of 16, "
                         f"got {w}x{h}")
    return image


class LossLog:
    """Running means of losses: the tqdm postfix, and one DVCLive TSV per loss every `LOG_EVERY`
    steps."""

    def __init__(self, live: Any, prefix: str, bar: tqdm):
        self.live, self.prefix, self.bar = live, prefix, bar
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, step: int, **values: float) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1
        if (step + 1) % LOG_EVERY == 0:
            self.flush(step + 1)

    def flush(self, step: int) -> dict[str, float]:
        means = {k: v / self.count for k, v in self.sums.items()} if self.count else {}
        if means:
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in means.items()})
            if self.live is not None:
                self.live.step = step
                for key, value in means.items():
                    self.live.log_metric(f"{self.prefix}/{key}", value)
        self.sums, self.count = {}, 0
        return means


def truncate_curves(live: Any, prefix: str, step: int) -> None:
    """Drop the logged points of `prefix` after `step` from DVCLive's TSVs: a phase resumed from
    its checkpoint at `step` (0: started afresh) logs the later steps again."""
    for tsv in (Path(live.plots_dir) / "metrics" / prefix).glob("*.tsv"):
        header, *rows = tsv.read_text().splitlines()
        kept = [r for r in rows if int(r.split("\t")[0]) <= step]
        if len(kept) < len(rows):
            write_text(tsv, "\n".join([header, *kept]) + "\n")


def _optimizer(model: torch.nn.Module, lr: float, warmup: int, steps: int):
    """AdamW with linear warmup then cosine decay to 0 (short runs end on a low learning rate)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    return opt, get_cosine_schedule_with_warmup(opt, min(warmup, steps), max(steps, 1))


def run_phase(name: str, model: torch.nn.Module, cfg: Any, loss_fn: Callable[[], tuple[Tensor,
              dict[str, float]]], *, generator: torch.Generator, live: Any = None,
              store: PhaseStore | None = None, grad_clip: float | None = None) -> None:
    """`cfg.steps` AdamW steps on `loss_fn()` (the loss and the values to log), resuming from and
    writing to `store` (every `store.every` steps and at the end) when one is given."""
    opt, schedule = _optimizer(model, cfg.lr, cfg.warmup_steps, cfg.steps)
    start = store.restore(model, opt, schedule, generator) if store is not None else 0
    if live is not None:
        truncate_curves(live, name, start)
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"pretrain: {name}",
               mininterval=5)
    log = LossLog(live, name, bar)
    for step in bar:
        loss, values = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        schedule.step()
        log.add(step, **values)
        if store is not None and ((step + 1) % store.every == 0 or step + 1 == cfg.steps):
            store.save(step + 1, model, opt, schedule, generator)
    log.flush(cfg.steps)


def phase_generator(seed: int, stream: int) -> torch.Generator:
    """A CPU generator per training phase, so changing one phase leaves the others' draws alone."""
    return torch.Generator("cpu").manual_seed(seed * 1000 + stream)


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


def make_transformer(cfg: TinyTransformerConfig, seq_dim: int,
                     pooled_dim: int) -> FluxTransformer2DModel:
    """A small FLUX transformer: patch size 1 over packed 64-d latent tokens."""
    return tiny_transformer(
        num_layers=cfg.num_layers, num_single_layers=cfg.num_single_layers,
        attention_head_dim=cfg.attention_head_dim, num_attention_heads=cfg.num_attention_heads,
        joint_attention_dim=seq_dim, pooled_projection_dim=pooled_dim,
        guidance_embeds=cfg.guidance_embeds, axes_dims_rope=tuple(cfg.axes_dims_rope))


@dataclass
class CaptionTable:
    """Every distinct caption encoded once: seq (U, T, D), pooled (U, P); image n owns rows
    `owners[n, :counts[n]]`; `empty_*` encode "" (text dropout)."""

    seq: Tensor
    pooled: Tensor
    owners: Tensor
    counts: Tensor
    empty_seq: Tensor
    empty_pooled: Tensor

    def draw(self, index: Tensor, dropout: float, generator: torch.Generator
             ) -> tuple[Tensor, Tensor]:
        """One random caption per image `index` (B,), replaced by "" with prob. `dropout`."""
        col = (torch.rand(len(index), generator=generator) * self.counts[index]).long()  # (B,)
        rows = self.owners[index, col]  # (B,)
        drop = torch.rand(len(index), generator=generator) < dropout  # (B,)
        seq = torch.where(drop[:, None, None], self.empty_seq, self.seq[rows])  # (B, T, D)
        pooled = torch.where(drop[:, None], self.empty_pooled, self.pooled[rows])  # (B, P)
        return seq, pooled


def encode_texts(encoder: TextEncoder, texts: list[str], batch_size: int = EVAL_BATCH
                 ) -> tuple[Tensor, Tensor]:
    """Encode `texts` in batches: (N, T, D) token states and (N, P) pooled vectors.

    Texts are batched in order of length, so a batch pads to similar lengths (each text's
    encoding does not depend on its batch, see `MiniLMTextEncoder`).
    """
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    chunks = [encoder.encode([texts[i] for i in order[s:s + batch_size]])
              for s in tqdm(range(0, len(texts), batch_size), desc="base: text", mininterval=5)]
    inverse = torch.empty(len(texts), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(texts))
    seq, pooled = torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks])
    return seq[inverse], pooled[inverse]  # (N, T, D), (N, P)


def caption_table(encoder: TextEncoder, captions: list[list[str]]) -> CaptionTable:
    """Encode each distinct caption once (text embeddings up front, kept in memory)."""
    unique = sorted({c for caps in captions for c in caps})
    row = {c: i for i, c in enumerate(unique)}
    width = max(len(caps) for caps in captions)
    owners = torch.tensor([[row[c] for c in caps] + [0] * (width - len(caps))
                           for caps in captions])  # (N, K)
    counts = torch.tensor([len(caps) for caps in captions])  # (N,)
    seq, pooled = encode_texts(encoder, unique)  # (U, T, D), (U, P)
    empty_seq, empty_pooled = encoder.encode([""])  # (1, T, D), (1, P)
    return CaptionTable(seq, pooled, owners, counts, empty_seq, empty_pooled)


def train_transformer(cfg: TinyTransformerConfig, tokens: Tensor, grid: tuple[int, int],
                      text: CaptionTable, *, generator: torch.Generator, live: Any = None,
                      store: PhaseStore | None = None) -> FluxTransformer2DModel:
    """Train text-to-image with rectified flow on packed latents `tokens` (N, L, 64).

    x_t = (1 - s) x_0 + s e with s logit-normal, target e - x_0, MSE (docs/design.md, "Training");
    AdamW with warmup and gradient clipping; text dropout to "" with `cfg.text_dropout`.
    """
    model = make_transformer(cfg, text.seq.shape[-1], text.pooled.shape[-1]).train()
    img_ids = latents.image_ids(*grid)  # (L, 3)
    txt_ids = latents.text_ids(text.seq.shape[1])  # (T, 3)

    def loss_fn() -> tuple[Tensor, dict[str, float]]:
        index = torch.randint(len(tokens), (cfg.batch_size,), generator=generator)  # (B,)
        seq, pooled = text.draw(index, cfg.text_dropout, generator)  # (B, T, D), (B, P)
        x0 = tokens[index]  # (B, L, 64)
        noise = torch.randn(x0.shape, generator=generator)  # (B, L, 64)
        sigma = flow.sample_sigmas(cfg.batch_size, generator=generator)  # (B,)
        pred = model(hidden_states=flow.add_noise(x0, noise, sigma), encoder_hidden_states=seq,
                     pooled_projections=pooled, timestep=sigma, img_ids=img_ids,
                     txt_ids=txt_ids, guidance=_train_guidance(cfg, generator)).sample
        loss = flow.rectified_flow_loss(pred, x0, noise)
        return loss, {"loss": loss.item()}

    run_phase("transformer", model, cfg, loss_fn, generator=generator, live=live, store=store,
              grad_clip=cfg.grad_clip)
    return model.eval().requires_grad_(False)


def _train_guidance(cfg: TinyTransformerConfig, generator: torch.Generator) -> Tensor | None:
    # FLUX.1-dev's guidance embedding comes from distillation, which a tiny base cannot have; a
    # value drawn in [1, 5] keeps the embedding in use and the model indifferent to it at the
    # sampling value (sample.guidance, 3.5).
    if not cfg.guidance_embeds:
        return None
    return 1.0 + 4.0 * torch.rand(cfg.batch_size, generator=generator)  # (B,)


@torch.no_grad()
def sample_previews(base: Base, prompts: list[str], resolution: int, seed: int) -> Tensor:
    """Text-to-image samples (P, 3, H, W) in [0, 1] with FLUX's Euler schedule (28 steps)."""
    seq, pooled = base.text_encoder.encode(prompts)  # (P, T, D), (P, P_dim)
    h = w = resolution // 8
    img_ids, txt_ids = latents.image_ids(h, w), latents.text_ids(seq.shape[1])
    noise = flow.initial_noise(((h // 2) * (w // 2), 4 * LATENT_CHANNELS),
                               flow.generators_for([str(i) for i in range(len(prompts))], seed))
    guidance = torch.full((len(prompts),), SAMPLE_GUIDANCE) if base.guidance_embeds else None

    def velocity(z: Tensor, sigma: Tensor) -> Tensor:
        return base.transformer(hidden_states=z, encoder_hidden_states=seq,
                                pooled_projections=pooled, timestep=sigma, img_ids=img_ids,
                                txt_ids=txt_ids, guidance=guidance).sample  # (P, L, 64)

    z = flow.euler_sample(velocity, noise, PREVIEW_STEPS, scheduler=base.scheduler_config)
    return latents.decode(base.vae, latents.unpack(z, h, w))  # (P, 3, H, W)


# Horizontal flips swap the subject's left and right: l_eye <-> r_eye, l_brow <-> r_brow,
# l_ear <-> r_ear.
FLIP_LABELS = torch.arange(NUM_LABELS)


for _left, _right in (("l_eye", "r_eye"), ("l_brow", "r_brow"), ("l_ear", "r_ear")):
    FLIP_LABELS[LABEL_INDEX[_left]], FLIP_LABELS[LABEL_INDEX[_right]] = (LABEL_INDEX[_right],
                                                                         LABEL_INDEX[_left])


def augment(images01: Tensor, label_maps: Tensor, generator: torch.Generator
            ) -> tuple[Tensor, Tensor]:
    """Light augmentation so the parser transfers to generated faces: mirrored faces (labels
    swapped), brightness/contrast/saturation jitter, blur (generated faces are soft), noise.
    (B, 3, H, W) in [0, 1], (B, H, W) long -> same shapes."""
    b = images01.shape[0]
    flip = torch.rand(b, generator=generator) < 0.5  # (B,)
    images01 = torch.where(flip[:, None, None, None], images01.flip(-1), images01)
    label_maps = torch.where(flip[:, None, None], FLIP_LABELS[label_maps.flip(-1)], label_maps)

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(b, 1, 1, 1, generator=generator)  # (B, 1, 1, 1)

    grey = images01.mean(dim=1, keepdim=True)  # (B, 1, H, W)
    images01 = grey + uniform(0.6, 1.4) * (images01 - grey)  # saturation
    mean = images01.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    images01 = mean + uniform(0.7, 1.3) * (images01 - mean) + uniform(-0.1, 0.1)
    blurred = F.avg_pool2d(F.pad(images01, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    images01 = torch.where(uniform(0, 1) < 0.3, blurred, images01)
    images01 = images01 + uniform(0, 0.05) * torch.randn(images01.shape, generator=generator)
    return images01.clamp(0, 1), label_maps


def class_weights(label_maps: Tensor) -> Tensor:
    """(19,) cross-entropy weights ~ 1 / sqrt(pixel frequency), capped at 10x the smallest
    weight and normalized so the average pixel weighs 1; absent classes get the cap."""
    freq = torch.bincount(label_maps.flatten().long(), minlength=NUM_LABELS).double()  # (19,)
    freq = freq / freq.sum()
    weights = freq.clamp(min=1e-12).rsqrt()  # (19,)
    weights = weights.clamp(max=10 * weights.min())
    return (weights / (weights * freq).sum()).float()  # (19,)


def train_parser(cfg: TinyParserConfig, faces: FaceSet, decoded: Tensor | None = None, *,
                 generator: torch.Generator, live: Any = None,
                 store: PhaseStore | None = None) -> FaceParser:
    """Train the parser with (optionally class-weighted) cross-entropy on augmented faces.

    `decoded` (N, 3, H, W) uint8 are the faces after VAE encode -> decode: a
    `cfg.decoded_fraction` of each batch uses them, so the parser also reads the soft, decoded
    look of generated faces, which `evaluate` parses (same geometry, so the labels still fit).
    """
    parser = FaceParser(cfg.width).train()
    weights = class_weights(faces.label_maps) if cfg.class_weighted else None

    def loss_fn() -> tuple[Tensor, dict[str, float]]:
        index = torch.randint(len(faces), (cfg.batch_size,), generator=generator)  # (B,)
        images = faces.images01(index)  # (B, 3, H, W)
        if decoded is not None:
            use = torch.rand(cfg.batch_size, generator=generator) < cfg.decoded_fraction  # (B,)
            images = torch.where(use[:, None, None, None], decoded[index].float() / 255, images)
        images, targets = augment(images, faces.label_maps[index].long(),
                                  generator)  # (B, 3, H, W), (B, H, W)
        loss = F.cross_entropy(parser(images), targets, weight=weights)
        return loss, {"loss": loss.item()}

    run_phase("parser", parser, cfg, loss_fn, generator=generator, live=live, store=store)
    return parser.eval()


@torch.no_grad()
def parser_miou(parser: FaceParser, images01: Tensor, label_maps: Tensor) -> float:
    """IoU per class over all of (N, 3, H, W) images vs (N, H, W) label maps, averaged over the
    classes present in the prediction or the truth."""
    metric = MulticlassJaccardIndex(NUM_LABELS, average="none", zero_division=float("nan"))
    for i in range(0, len(images01), EVAL_BATCH):
        metric.update(parser.parse(images01[i:i + EVAL_BATCH]).long(),
                      label_maps[i:i + EVAL_BATCH].long())
    return float(metric.compute().nanmean())


def evaluate_parts(base: Base, parser: FaceParser, test: FaceSet, seed: int, live: Any
                   ) -> dict[str, float]:
    """Held-out quality: VAE PSNR, parser mIoU on renders and on VAE-decoded renders (the look of
    generated faces); with DVCLive also a preview row of test faces over samples of their first
    caption."""
    images = test.images01(slice(None))  # (N, 3, H, W)
    metrics = {**vae_psnr(base.vae, test),
               "parser_miou": parser_miou(parser, images, test.label_maps),
               "parser_miou_decoded": parser_miou(parser, decode_faces(base.vae, test),
                                                  test.label_maps)}
    if live is not None:
        for key, value in metrics.items():
            live.log_metric(key, value, plot=False)
        previews = sample_previews(base, [caps[0] for caps in test.captions[:NUM_PREVIEWS]],
                                   test.resolution, seed)  # (P, 3, H, W)
        live.log_image("base_previews.png", _grid(torch.cat([images[:NUM_PREVIEWS], previews],
                                                            dim=2)))
    return metrics


def _grid(images01: Tensor) -> np.ndarray:
    """(P, 3, H, W) -> one (H, P * W, 3) uint8 row."""
    return (images01.permute(2, 0, 3, 1).flatten(1, 2) * 255).round().byte().numpy()
