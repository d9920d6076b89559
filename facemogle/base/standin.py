"""Tiny stand-ins of the pretrained models, built from the real classes (tests and smoke runs).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel

from facemogle.core import flow
from facemogle.core.flux import LATENT_CHANNELS, VAE_SCALE, VAE_SHIFT


def toy_tokenizers():
    """A CLIP BPE and a T5 Unigram tokenizer over single letters (no vocabulary files needed)."""
    from transformers import CLIPTokenizer, T5TokenizerFast

    letters = "abcdefghijklmnopqrstuvwxyz"
    clip_vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        clip_vocab.update({c + suffix: len(clip_vocab) + i for i, c in enumerate(letters)})
    clip = CLIPTokenizer(vocab=clip_vocab, merges=[], model_max_length=77)
    t5_vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    t5_vocab += [(c, -3.0) for c in letters] + [("\u2581" + c, -3.5) for c in letters]
    return clip, T5TokenizerFast(vocab=t5_vocab, extra_ids=0)


# Toy sizes of FLUX.1-dev's classes: the layout of the real ones (patch size 1 over packed 64-d
# tokens, 16-channel x8 VAE without quant convs) at widths that build in milliseconds.
TINY_TRANSFORMER: dict = dict(
    patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=1, num_single_layers=1,
    attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
    pooled_projection_dim=32, guidance_embeds=False, axes_dims_rope=(4, 6, 6))
TINY_VAE: dict = dict(
    in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=2,
    use_quant_conv=False, use_post_quant_conv=False, shift_factor=VAE_SHIFT,
    scaling_factor=VAE_SCALE)


def tiny_transformer(**overrides) -> FluxTransformer2DModel:
    """A `FluxTransformer2DModel` of `TINY_TRANSFORMER`'s config with `overrides` applied (the one
    factory for every small FLUX transformer: tests, stand-ins and the embedded base)."""
    return FluxTransformer2DModel(**{**TINY_TRANSFORMER, **overrides})


def tiny_vae(**overrides) -> AutoencoderKL:
    """An `AutoencoderKL` in FLUX's layout (`TINY_VAE`) with `overrides` applied."""
    return AutoencoderKL(**{**TINY_VAE, **overrides})


def save_flux_standin(directory: str | Path, *, seed: int = 0, text_dim: int = 32,
                      tokenizers=None) -> Path:
    """Write a tiny FLUX.1-dev stand-in: the real pipeline classes (FluxTransformer2DModel with a
    guidance embedding, AutoencoderKL with FLUX's shift/scale, CLIPTextModel, T5EncoderModel,
    their tokenizers, FlowMatchEulerDiscreteScheduler) at toy size with random weights, saved by
    `FluxPipeline.save_pretrained` in the on-disk layout `resolve_flux` expects. `tokenizers`
    (CLIP, T5) default to `toy_tokenizers()`."""
    from diffusers import FluxPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    clip_tokenizer, t5_tokenizer = tokenizers or toy_tokenizers()
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(clip_tokenizer), hidden_size=text_dim, intermediate_size=2 * text_dim,
        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
        projection_dim=text_dim, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), d_model=text_dim, d_kv=8,
                                 d_ff=2 * text_dim, num_layers=1, num_heads=2))
    transformer = tiny_transformer(joint_attention_dim=text_dim, pooled_projection_dim=text_dim,
                                   guidance_embeds=True)
    pipe = FluxPipeline(scheduler=flow.make_scheduler(), vae=tiny_vae(), text_encoder=clip,
                        tokenizer=clip_tokenizer, text_encoder_2=t5, tokenizer_2=t5_tokenizer,
                        transformer=transformer)
    directory = Path(directory)
    pipe.save_pretrained(directory)
    return directory
