"""`base` stage: the pretrained parts (the embedded base checked, or FLUX.1-dev resolved).

    python -m stages.base --out data/base
"""

from __future__ import annotations

import argparse
import logging

from facemogle.base.build import build_base
from facemogle.core.config import load_params

PARAMS = ("data", "base")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (replaced atomically)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params(args.params, sections=PARAMS)
    build_base(params.base, params.data, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
