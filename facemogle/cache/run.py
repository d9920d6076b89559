"""The `cache_latents` stage's body, from its arguments to the published cache: called by
`stages/cache_latents.py` and by the caching benchmark's workers (`facemogle.bench.caching`), so
that the benchmark times what the stage runs."""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import PartialState

from facemogle.base.loader import load_base
from facemogle.cache.build import CacheOptions, build_cache, folder_fingerprint
from facemogle.core.config import Params, to_dict


def cache_latents(params: Params, data: str | Path, labels: str | Path, base: str | Path,
                  out: str | Path, work_dir: str | Path) -> None:
    """Encode `data` + `labels` with the base of `base` into `out` (`build_cache`), one process
    per device under torchrun (`params.cache.num_processes`), resuming from `work_dir`."""
    processes = PartialState(cpu=not torch.cuda.is_available())  # one device per process
    loaded = load_base(base, device=processes.device)
    build_cache(loaded, data, labels, out, resolution=params.data.resolution,
                batch_size=params.cache.batch_size, shard_size=params.cache.shard_size,
                text_batch_size=params.cache.text_batch_size, precision=params.cache.precision,
                processes=processes,
                config={"data": to_dict(params.data), "base": folder_fingerprint(base)},
                options=CacheOptions(max_captions=params.cache.max_captions,
                                     trim_text_padding=params.cache.trim_text_padding),
                work_dir=work_dir)
