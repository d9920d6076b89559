"""`base` stage: the pretrained parts (tiny base trained here, or FLUX.1-dev resolved).

    python -m stages.base --data data/raw --out data/base [--metrics-dir metrics/base]
"""

from __future__ import annotations

import argparse
import logging

from facemogle.base.build import build_base
from facemogle.core.config import load_params

PARAMS = ("seed", "base")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="download stage output (base.kind tiny)")
    parser.add_argument("--out", required=True, help="output folder (replaced atomically)")
    parser.add_argument("--metrics-dir", default=None,
                        help="DVCLive folder for losses, held-out quality and previews")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params(args.params, sections=PARAMS)
    build_base(params.base, args.data, args.out, seed=params.seed, metrics_dir=args.metrics_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
