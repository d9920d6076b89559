"""Resolving FLUX.1-dev (`base.kind: flux`): a local folder or a hub id.

No weights are copied, so FLUX weights never become a DVC output: the base folder records where
they are.
"""

from __future__ import annotations

import json
from pathlib import Path

from facemogle.base.loader import MANIFEST
from facemogle.base.quantize import write_quantized
from facemogle.base.text import FLUX_TEXT_NAME, TEXT_MANIFEST, text_manifest
from facemogle.core.config import BaseConfig, ConfigError, to_dict
from facemogle.core.io import atomic_path, write_json

FLUX_PARTS: tuple[str, ...] = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer",
                               "tokenizer_2", "scheduler")


# Only the diffusers-format folders; FLUX.1-dev's repo also holds single-file checkpoints.
FLUX_ALLOW_PATTERNS: list[str] = ["model_index.json", *(f"{part}/*" for part in FLUX_PARTS)]


def check_flux_dir(directory: Path, source: str) -> Path:
    """Raise unless `directory` has every FLUX part folder; return it resolved."""
    missing = [part for part in FLUX_PARTS if not (directory / part).is_dir()]
    if missing:
        raise ConfigError(f"params: 'base.flux_path' = {source!r} ({directory}) lacks the FLUX "
                          f"folders {missing}; expected {list(FLUX_PARTS)}")
    return directory.resolve()


def resolve_flux(flux_path: str, revision: str | None = None) -> Path:
    """A local FLUX.1-dev folder for `base.flux_path`: the directory itself, or a hub snapshot of
    only its diffusers folders (`FLUX_ALLOW_PATTERNS`)."""
    local = Path(flux_path).expanduser()
    if local.is_dir():
        return check_flux_dir(local, flux_path)
    if flux_path.startswith(("/", ".", "~")) or flux_path.count("/") != 1:
        raise ConfigError(f"params: 'base.flux_path' = {flux_path!r} is neither an existing "
                          f"directory nor a hub id of the form 'owner/name'")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        snapshot = snapshot_download(flux_path, revision=revision,
                                     allow_patterns=FLUX_ALLOW_PATTERNS)
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as err:
        raise ConfigError(f"params: 'base.flux_path' = {flux_path!r} could not be fetched from the "
                          f"Hugging Face hub ({type(err).__name__}: {err}); when offline, set "
                          f"base.flux_path to a local directory holding FLUX.1-dev in the "
                          f"diffusers layout ({', '.join(FLUX_PARTS)})") from err
    return check_flux_dir(Path(snapshot), flux_path)


def build_flux(cfg: BaseConfig, out_dir: str | Path) -> None:
    flux_dir = resolve_flux(cfg.flux_path, cfg.flux_revision)
    transformer_config = json.loads((flux_dir / "transformer" / "config.json").read_text())
    manifest = {"kind": "flux", "dtype": cfg.dtype, "flux_path": cfg.flux_path,
                "flux_revision": cfg.flux_revision, "dir": str(flux_dir),
                "guidance_embeds": bool(transformer_config.get("guidance_embeds", False)),
                "config": to_dict(cfg)}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        write_json(tmp / TEXT_MANIFEST, text_manifest(FLUX_TEXT_NAME, cfg.text_max_tokens,
                                                      flux_dir))
        manifest.update(write_quantized(cfg, flux_dir, tmp))
        write_json(tmp / MANIFEST, manifest)
