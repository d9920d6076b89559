"""The `sample` stage's output folder, as `stages/sample.py` writes it and `evaluate` reads it::

    samples/<mode>/<id>.png   the generated test images of each mode (`sample.modes`)
    samples/ids.json          the test ids that were sampled (a JSON list, in cache order)

Another method's images are scored from a folder of the same shape (`<mode>/<id>.png`, or .jpg
/ .webp), with this `ids.json` given to `evaluate` (README, "Scoring another method's images").
"""

from __future__ import annotations

from pathlib import Path

IDS = "ids.json"


def mode_dir(samples: str | Path, mode: str) -> Path:
    """`samples/<mode>/`."""
    return Path(samples) / mode


def sample_path(samples: str | Path, mode: str, id_: str) -> Path:
    """`samples/<mode>/<id>.png`: the sample stage's image of test id `id_` in `mode`."""
    return mode_dir(samples, mode) / f"{id_}.png"


def ids_path(samples: str | Path) -> Path:
    """`samples/ids.json`."""
    return Path(samples) / IDS
