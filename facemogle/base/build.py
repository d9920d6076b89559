"""The `base` stage: the pretrained parts Face-MoGLE builds on (docs/design.md, "Two settings").

`base.kind: tiny` (embedded default) checks the embedded base shipped with the repository
(`facemogle.base.embedded`); `base.kind: flux` resolves FLUX.1-dev (`facemogle.base.flux`).
Neither trains anything; with `base.quantization` it also saves the quantized transformer
(`facemogle.base.quantize`).
"""

from __future__ import annotations

from pathlib import Path

from facemogle.base.embedded import resolve_embedded
from facemogle.base.flux import build_flux
from facemogle.core.config import BaseConfig, DataConfig


def build_base(cfg: BaseConfig, data: DataConfig, out_dir: str | Path) -> None:
    """The `base` stage: write `out_dir` atomically (`base.json`, `text_encoder.json`) naming
    the checked embedded base or the resolved FLUX.1-dev folder."""
    if cfg.kind == "flux":
        build_flux(cfg, out_dir)
    else:
        resolve_embedded(cfg, data, out_dir)
