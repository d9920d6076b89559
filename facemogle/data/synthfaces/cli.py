"""The SynthFaces command line: ``python -m facemogle.data.synthfaces sheet|bench ...``.

`sheet --out PNG` writes a contact sheet of faces beside their colour masks; `bench --out JSON`
times rendering and records the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from facemogle.core.io import save_png, write_json
from facemogle.core.labels import PALETTE
from facemogle.data.synthfaces.face import render
from facemogle.data.synthfaces.layout import LAYOUTS
from facemogle.data.synthfaces.sample import VARIANTS


def main(argv: list[str] | None = None) -> None:
    """`sheet --out PNG` writes a contact sheet; `bench --out JSON` times rendering."""
    args = _parser().parse_args(argv)
    if args.command == "sheet":
        save_png(args.out, contact_sheet(args.n, args.resolution, args.variant, args.seed,
                                         layout=args.layout))
    else:
        result = benchmark(args.n, args.resolution, args.variant, args.seed, args.layout)
        write_json(args.out, result)
        print(json.dumps(result))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m facemogle.data.synthfaces")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, n in (("sheet", 64), ("bench", 1000)):
        cmd = sub.add_parser(name)
        cmd.add_argument("--out", required=True)
        cmd.add_argument("--n", type=int, default=n)
        cmd.add_argument("--resolution", type=int, default=128)
        cmd.add_argument("--variant", choices=VARIANTS, default="standard")
        cmd.add_argument("--seed", type=int, default=0)
        cmd.add_argument("--layout", choices=LAYOUTS, default="template")
    return parser


def contact_sheet(n: int, resolution: int, variant: str = "standard", seed: int = 0,
                  cols: int = 8, layout: str = "template") -> np.ndarray:
    """A grid of `n` faces, each beside its colour mask: (rows * R, cols * 2R, 3) uint8."""
    cols = min(cols, n)
    rows = -(-n // cols)
    sheet = np.full((rows * resolution, cols * 2 * resolution, 3), 255, np.uint8)
    for i in range(n):
        face = render(i, seed=seed, resolution=resolution, variant=variant, num_captions=0,
                      layout=layout)
        r, c = divmod(i, cols)
        y, x = r * resolution, c * 2 * resolution
        sheet[y:y + resolution, x:x + resolution] = face.image
        sheet[y:y + resolution, x + resolution:x + 2 * resolution] = PALETTE[face.label_map]
    return sheet


def benchmark(n: int, resolution: int, variant: str = "standard", seed: int = 0,
              layout: str = "template") -> dict:
    """Render `n` faces and report the wall time with the machine and its load."""
    load_before = os.getloadavg()
    start = time.perf_counter()
    for i in range(n):
        render(i, seed=seed, resolution=resolution, variant=variant, layout=layout)
    seconds = time.perf_counter() - start
    return {
        "n": n, "resolution": resolution, "variant": variant, "layout": layout,
        "seconds": round(seconds, 3),
        "images_per_s": round(n / seconds, 2),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "machine": _machine(),
    }


def _machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
