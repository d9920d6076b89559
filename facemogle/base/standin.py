"""The one factory of small FLUX transformers and VAEs, built from the real classes: the embedded
base's architecture (`facemogle/pretrain/`) and every test's toy model; and the writer of whole
FLUX.1-dev folders with random weights (`save_flux_folder`): toy folders for the tests
(`tests/flux_standin.py`) and the full-width, shallow folder of the CPU rehearsal of the full
setting (`facemogle/bench/rehearsal.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel

from facemogle.core import flow
from facemogle.core.flux import LATENT_CHANNELS, VAE_SCALE, VAE_SHIFT

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


def toy_tokenizers():
    """A CLIP BPE and a T5 Unigram tokenizer over single letters, built in memory (no vocabulary
    files exist offline). CLIP: <|startoftext|> 0, <|endoftext|> 1 (also padding); T5: <pad> 0,
    </s> 1, <unk> 2."""
    from transformers import CLIPTokenizer, T5TokenizerFast

    letters = "abcdefghijklmnopqrstuvwxyz"
    clip_vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        clip_vocab.update({c + suffix: len(clip_vocab) + i for i, c in enumerate(letters)})
    clip = CLIPTokenizer(vocab=clip_vocab, merges=[], model_max_length=77)
    t5_vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    t5_vocab += [(c, -3.0) for c in letters] + [("\u2581" + c, -3.5) for c in letters]
    return clip, T5TokenizerFast(vocab=t5_vocab, extra_ids=0)


def save_flux_folder(directory: str | Path, *, transformer: dict[str, Any], vae: dict[str, Any],
                     clip: dict[str, Any], t5: dict[str, Any], tokenizers=None, seed: int = 0,
                     dtype: torch.dtype = torch.float32) -> Path:
    """Write a FLUX.1-dev folder with random weights: the real pipeline classes
    (`FluxTransformer2DModel`, `AutoencoderKL`, `CLIPTextModel`, `T5EncoderModel`, their
    tokenizers, `FlowMatchEulerDiscreteScheduler`) built from these configs, saved by
    `FluxPipeline.save_pretrained` in the layout `facemogle.base.flux.resolve_flux` reads.
    `tokenizers` (CLIP, T5) default to `toy_tokenizers()`, whose special-token ids the text
    encoders' configs are given; every part but the VAE is stored in `dtype` (FLUX.1-dev's
    release: bfloat16 parts, VAE in float32)."""
    from diffusers import FluxPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    clip_tokenizer, t5_tokenizer = tokenizers or toy_tokenizers()
    special = {"bos_token_id": clip_tokenizer.bos_token_id,
               "eos_token_id": clip_tokenizer.eos_token_id,
               "pad_token_id": clip_tokenizer.pad_token_id}
    parts = {"text_encoder": CLIPTextModel(CLIPTextConfig(**{**clip, **special})),
             "text_encoder_2": T5EncoderModel(T5Config(**t5)),
             "transformer": FluxTransformer2DModel(**transformer)}
    pipe = FluxPipeline(scheduler=flow.make_scheduler(), vae=AutoencoderKL(**vae),
                        tokenizer=clip_tokenizer, tokenizer_2=t5_tokenizer,
                        **{name: part.to(dtype) for name, part in parts.items()})
    directory = Path(directory)
    pipe.save_pretrained(directory)
    return directory
