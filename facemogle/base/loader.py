"""Loading the pretrained base that the `base` stage resolved, tiny or FLUX.1-dev.

`base_dir` holds `base.json` (kind, resolved config, where the parts live) and
`text_encoder.json`; the parts folder (`dir`: the embedded base's folder or FLUX's) holds `vae/`,
`transformer/`, `scheduler/` in the diffusers layout, and for `tiny` also `parser/`. `load_base`
turns either kind into a `Base`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxTransformer2DModel,
)

from facemogle.base.text import TextEncoder
from facemogle.base.text import load_text_encoder as _load_text_encoder
from facemogle.core.io import InputError, read_json

MANIFEST = "base.json"


DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                                  "float16": torch.float16}


@dataclass
class Base:
    """The frozen foundation every later stage uses."""

    vae: AutoencoderKL
    transformer: FluxTransformer2DModel
    text_encoder: TextEncoder | None
    scheduler_config: dict
    kind: str
    guidance_embeds: bool


def read_manifest(base_dir: str | Path) -> dict[str, Any]:
    """`base_dir/base.json` as a dict."""
    path = Path(base_dir) / MANIFEST
    manifest = read_json(path, missing="base manifest not found (run the base stage)")
    if manifest.get("kind") not in ("tiny", "flux") or manifest.get("dtype") not in DTYPES:
        raise InputError(f"{path}: expected 'kind' in ['tiny', 'flux'] and 'dtype' in "
                         f"{list(DTYPES)}, got {manifest.get('kind')!r}, {manifest.get('dtype')!r}")
    return manifest


def parts_dir(base_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """The folder holding vae/, transformer/, scheduler/ (and parser/ for tiny): the manifest's
    `dir` (the embedded base's folder, relative to the base dir; or FLUX's), else the base dir
    itself."""
    if "dir" not in manifest:
        return Path(base_dir)
    parts = Path(base_dir) / manifest["dir"]  # an absolute `dir` stays as it is
    if not parts.is_dir():
        raise InputError(f"{Path(base_dir) / MANIFEST}: the {manifest['kind']} base folder "
                         f"{str(parts)!r} does not exist; re-run the base stage to resolve it")
    return parts


def load_vae(base_dir: str | Path, *, device: torch.device | str | None = None,
              dtype: torch.dtype | None = None) -> AutoencoderKL:
    """Only the VAE of what the base stage resolved, frozen, in eval mode."""
    manifest = read_manifest(base_dir)
    vae = AutoencoderKL.from_pretrained(parts_dir(base_dir, manifest) / "vae",
                                        dtype=dtype or DTYPES[manifest["dtype"]])
    return vae.eval().requires_grad_(False).to(device)


def load_base(base_dir: str | Path, *, device: torch.device | str | None = None,
              dtype: torch.dtype | None = None, load_text_encoder: bool = True) -> Base:
    """Load what the base stage wrote, frozen and in eval mode.

    `dtype` defaults to the manifest's (params `base.dtype`: float32 tiny, bfloat16 FLUX).
    """
    manifest = read_manifest(base_dir)
    root = parts_dir(base_dir, manifest)
    dtype = dtype or DTYPES[manifest["dtype"]]
    vae = AutoencoderKL.from_pretrained(root / "vae", dtype=dtype)
    transformer = FluxTransformer2DModel.from_pretrained(root / "transformer", dtype=dtype)
    for model in (vae, transformer):
        model.eval().requires_grad_(False)
        if device is not None:
            model.to(device)
    scheduler_config = {k: v for k, v in FlowMatchEulerDiscreteScheduler.load_config(
        root / "scheduler").items() if not k.startswith("_")}
    text_encoder = (_load_text_encoder(base_dir, device=device, dtype=dtype)
                    if load_text_encoder else None)
    return Base(vae, transformer, text_encoder, scheduler_config, manifest["kind"],
                bool(transformer.config.guidance_embeds))
