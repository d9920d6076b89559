"""The `base` stage: the pretrained parts Face-MoGLE builds on (docs/design.md, "Two settings").

`base.kind: tiny` (embedded default) pretrains the stand-ins (`facemogle.base.pretrain`);
`base.kind: flux` resolves FLUX.1-dev (`facemogle.base.flux`).
"""

from __future__ import annotations

from pathlib import Path

from facemogle.base.flux import build_flux
from facemogle.base.pretrain import build_tiny
from facemogle.core.config import BaseConfig


def build_base(cfg: BaseConfig, data_dir: str | Path, out_dir: str | Path, *, seed: int,
               metrics_dir: str | Path | None = None) -> None:
    """The `base` stage: train the tiny base on `data_dir`'s train split, or resolve FLUX.1-dev;
    write `out_dir` atomically (`base.json`, `text_encoder.json`, and the tiny parts)."""
    if cfg.kind == "flux":
        build_flux(cfg, out_dir)
        return
    if metrics_dir is None:
        build_tiny(cfg, data_dir, out_dir, seed, None)
        return
    from dvclive import Live

    # dvcyaml=False: metrics and plots are declared in dvc.yaml by hand, never written into it.
    with Live(str(metrics_dir), dvcyaml=False, save_dvc_exp=False) as live:
        build_tiny(cfg, data_dir, out_dir, seed, live)
