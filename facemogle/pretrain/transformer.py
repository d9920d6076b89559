"""Pretraining phase 3: the embedded base's text-to-image `FluxTransformer2DModel`, rectified
flow on the VAE's face latents and all-MiniLM-L6-v2 caption embeddings; preview samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import FluxTransformer2DModel
from torch import Tensor
from tqdm.auto import tqdm

from facemogle.base.loader import Base
from facemogle.base.standin import tiny_transformer
from facemogle.base.text import TextEncoder
from facemogle.core import flow, latents
from facemogle.core.config import TinyTransformerConfig
from facemogle.core.flux import LATENT_CHANNELS, SAMPLE_GUIDANCE
from facemogle.pretrain.common import EVAL_BATCH, run_phase
from facemogle.pretrain.phase_store import PhaseStore

PREVIEW_STEPS = 28  # FLUX's 28 Euler steps (docs/design.md, "Sampling")

def make_transformer(cfg: TinyTransformerConfig, seq_dim: int, pooled_dim: int,
                     in_channels: int = 4 * LATENT_CHANNELS) -> FluxTransformer2DModel:
    """A small FLUX transformer: patch size 1 over packed 64-d latent tokens (16-d: one token
    per latent pixel)."""
    return tiny_transformer(
        in_channels=in_channels,
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


def train_transformer(cfg: TinyTransformerConfig, tokens: Tensor, img_ids: Tensor,
                      text: CaptionTable, *, generator: torch.Generator, live: Any = None,
                      store: PhaseStore | None = None, token_weights: Tensor | None = None
                      ) -> FluxTransformer2DModel:
    """Train text-to-image with rectified flow on latent tokens `tokens` (N, L, C) at positions
    `img_ids` (L, 3); `token_weights` (N, L) weight each token's squared error (mean 1 per batch).

    x_t = (1 - s) x_0 + s e with s logit-normal, target e - x_0, MSE (docs/design.md, "Training");
    AdamW with warmup and gradient clipping; text dropout to "" with `cfg.text_dropout`.
    """
    model = make_transformer(cfg, text.seq.shape[-1], text.pooled.shape[-1],
                             tokens.shape[-1]).train()
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
        if token_weights is None:
            loss = flow.rectified_flow_loss(pred, x0, noise)
        else:
            w = token_weights[index]  # (B, L)
            error = (pred.float() - flow.velocity_target(x0, noise)).pow(2).mean(-1)  # (B, L)
            loss = (error * w).sum() / w.sum()
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
