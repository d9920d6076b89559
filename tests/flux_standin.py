"""A toy FLUX.1-dev folder for the tests of the full setting's loading code: the real pipeline
classes at toy size with random weights, in the on-disk layout `resolve_flux` expects."""

from __future__ import annotations

from pathlib import Path

import torch

from facemogle.base.standin import tiny_transformer, tiny_vae
from facemogle.core import flow


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
