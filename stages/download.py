"""`download` stage: a data set (`data.source`) -> the normalized layout (DESIGN.md section 4).

    python -m stages.download --out data/raw [--variant zeroshot]
"""

from __future__ import annotations

import argparse
import logging

from facemogle.config import load_params
from facemogle.data.prepare import download

PARAMS = ("data",)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (replaced atomically)")
    parser.add_argument("--variant", choices=["standard", "zeroshot"], default=None,
                        help="SynthFaces distribution; overrides data.variant")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params(args.params, sections=PARAMS)
    download(params.data, args.out, variant=args.variant)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
