"""Loading the pretrained base that the `base` stage resolved, tiny or FLUX.1-dev.

`base_dir` holds `base.json` (kind, resolved config, where the parts live) and
`text_encoder.json` (and, with `base.quantization`, the quantized `transformer/`); the parts
folder (`dir`: the embedded base's folder or FLUX's) holds `vae/`,
`transformer/`, `scheduler/` in the diffusers layout, and for `tiny` also `parser/`. `load_base`
turns either kind into a `Base`, from that folder or (FLUX.1-dev) from the manifest alone, such as
the `base_manifest` a trained model's `config.json` records.
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

from facemogle.base.quantize import QUANTIZED_TRANSFORMER
from facemogle.base.text import FLUX_TEXT_NAME, TextEncoder, text_manifest
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


def check_manifest(manifest: dict[str, Any], where: str) -> dict[str, Any]:
    """`manifest` if it names a known kind and dtype; else an `InputError` naming `where`."""
    if manifest.get("kind") not in ("tiny", "flux") or manifest.get("dtype") not in DTYPES:
        raise InputError(f"{where}: expected 'kind' in ['tiny', 'flux'] and 'dtype' in "
                         f"{list(DTYPES)}, got {manifest.get('kind')!r}, {manifest.get('dtype')!r}")
    return manifest


def read_manifest(base_dir: str | Path) -> dict[str, Any]:
    """`base_dir/base.json` as a dict."""
    path = Path(base_dir) / MANIFEST
    return check_manifest(read_json(path, missing="base manifest not found (run the base stage)"),
                          str(path))


def same_base(found: dict[str, Any], recorded: dict[str, Any]) -> bool:
    """Is `found` (a base folder's manifest) the base `recorded` (e.g. a model's
    `base_manifest`)? FLUX: the same FLUX.1-dev, wherever its folder is on this machine; tiny: the
    same embedded base (its provenance), wherever its files are."""
    if found.get("kind") != recorded.get("kind"):
        return False
    if recorded["kind"] == "flux":
        return all(found.get(k) == recorded.get(k) for k in ("flux_path", "flux_revision"))
    if "provenance_sha256" in recorded:
        return found.get("provenance_sha256") == recorded["provenance_sha256"]
    return found == recorded


def flux_text_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """The `text_encoder.json` record of a FLUX base manifest (its folder and `text_max_tokens`):
    what the base stage writes beside it (`facemogle.base.flux.build_flux`)."""
    flux_dir = manifest.get("dir")
    max_tokens = manifest.get("config", {}).get("text_max_tokens")
    if not flux_dir or not Path(flux_dir).is_dir() or not isinstance(max_tokens, int):
        raise InputError(f"the base manifest names FLUX folder {flux_dir!r}, which does not exist "
                         f"here; give the base stage's output folder instead")
    return text_manifest(FLUX_TEXT_NAME, max_tokens, flux_dir)


def resolve_base(base: str | Path | dict[str, Any]) -> tuple[dict[str, Any], Path, Path | dict]:
    """(manifest, parts folder, text-encoder manifest or the folder holding it) of a base: the
    base stage's folder, or a FLUX base manifest dict (a tiny one names its parts relative to
    its folder, so only the folder will do)."""
    if not isinstance(base, dict):
        manifest = read_manifest(base)
        return manifest, parts_dir(base, manifest), Path(base)
    check_manifest(base, "the given base manifest")
    if base["kind"] != "flux":
        raise InputError("a tiny base manifest names its folder relative to the base stage's "
                         "output; give that folder instead")
    text = flux_text_manifest(base)  # checks that the FLUX folder exists
    return base, Path(base["dir"]), text


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


def transformer_dir(base: str | Path | dict[str, Any], manifest: dict[str, Any],
                    root: Path) -> Path:
    """The transformer's folder: the quantized one in the base stage's folder (`base.quantization`,
    `facemogle.base.quantize`), else the parts folder's."""
    if manifest.get("quantization", "none") == "none":
        return root / "transformer"
    if isinstance(base, dict):
        raise InputError(f"the base manifest names a {manifest['quantization']} transformer, which "
                         f"lives in the base stage's output folder; give that folder instead")
    return Path(base) / QUANTIZED_TRANSFORMER


def load_vae(base_dir: str | Path, *, device: torch.device | str | None = None,
              dtype: torch.dtype | None = None) -> AutoencoderKL:
    """Only the VAE of what the base stage resolved, frozen, in eval mode."""
    manifest = read_manifest(base_dir)
    vae = AutoencoderKL.from_pretrained(parts_dir(base_dir, manifest) / "vae",
                                        dtype=dtype or DTYPES[manifest["dtype"]])
    return vae.eval().requires_grad_(False).to(device)


def load_base(base: str | Path | dict[str, Any], *, device: torch.device | str | None = None,
              dtype: torch.dtype | None = None, load_text_encoder: bool = True) -> Base:
    """Load what the base stage wrote, frozen and in eval mode: from its folder, or from a FLUX
    base manifest dict (`resolve_base`), no folder needed.

    `dtype` defaults to the manifest's (params `base.dtype`: float32 tiny, bfloat16 FLUX); a
    quantized transformer keeps its quantized weights and computes in `dtype`.
    """
    manifest, root, text = resolve_base(base)
    dtype = dtype or DTYPES[manifest["dtype"]]
    vae = AutoencoderKL.from_pretrained(root / "vae", dtype=dtype)
    transformer = FluxTransformer2DModel.from_pretrained(transformer_dir(base, manifest, root),
                                                         dtype=dtype)
    for model in (vae, transformer):
        model.eval().requires_grad_(False)
        if device is not None:
            model.to(device)
    scheduler_config = {k: v for k, v in FlowMatchEulerDiscreteScheduler.load_config(
        root / "scheduler").items() if not k.startswith("_")}
    text_encoder = (_load_text_encoder(text, device=device, dtype=dtype)
                    if load_text_encoder else None)
    return Base(vae, transformer, text_encoder, scheduler_config, manifest["kind"],
                bool(transformer.config.guidance_embeds))
