"""A toy FLUX.1-dev folder for the tests of the full setting's loading code: the real pipeline
classes at toy size with random weights, in the on-disk layout `resolve_flux` expects."""

from __future__ import annotations

from pathlib import Path

from facemogle.base.standin import TINY_TRANSFORMER, TINY_VAE, save_flux_folder, toy_tokenizers


def save_flux_standin(directory: str | Path, *, seed: int = 0, text_dim: int = 32,
                      tokenizers=None) -> Path:
    """Write a tiny FLUX.1-dev stand-in (`save_flux_folder` at toy size): a 1 + 1 block
    transformer with a guidance embedding, the toy VAE with FLUX's shift/scale, one-layer CLIP
    and T5 of width `text_dim`. `tokenizers` (CLIP, T5) default to `toy_tokenizers()`."""
    clip_tokenizer, t5_tokenizer = tokenizers or toy_tokenizers()
    clip = dict(vocab_size=len(clip_tokenizer), hidden_size=text_dim,
                intermediate_size=2 * text_dim, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=77, projection_dim=text_dim)
    t5 = dict(vocab_size=len(t5_tokenizer), d_model=text_dim, d_kv=8, d_ff=2 * text_dim,
              num_layers=1, num_heads=2)
    transformer = {**TINY_TRANSFORMER, "joint_attention_dim": text_dim,
                   "pooled_projection_dim": text_dim, "guidance_embeds": True}
    return save_flux_folder(directory, transformer=transformer, vae=TINY_VAE, clip=clip, t5=t5,
                            tokenizers=(clip_tokenizer, t5_tokenizer), seed=seed)
