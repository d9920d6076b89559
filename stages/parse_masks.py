"""`parse_masks` stage: a validated label map, slot presence and class statistics per image.

    python -m stages.parse_masks --data data/raw --out data/labels \
        --metrics metrics/classes.json [--parser-dir data/base/parser] [--set zeroshot]

The zero-shot and off-distribution entries (`--set zeroshot|offdist`) take their parser from
their own section (`zeroshot`, `offdist`).
"""

from __future__ import annotations

import argparse
import logging

from facemogle.core.config import EVAL_SETS, load_params, set_sections
from facemogle.masks.parse import parse_masks

PARAMS = ("data", "masks")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="download stage output")
    parser.add_argument("--out", required=True, help="output folder (replaced atomically)")
    parser.add_argument("--metrics", required=True, help="class statistics (JSON)")
    parser.add_argument("--parser-dir", default=None,
                        help="the base stage's trained parser (masks.parser 'tiny')")
    parser.add_argument("--set", choices=EVAL_SETS, default="test", dest="eval_set",
                        help="zeroshot, offdist: label maps by that section's parser instead "
                             "of `masks.parser`")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params(args.params, sections=set_sections(PARAMS, args.eval_set))
    masks = (params.masks if args.eval_set == "test"
             else getattr(params, args.eval_set).masks_config(params.masks))
    parse_masks(args.data, args.out, args.metrics, masks=masks,
                on_error=params.data.on_error, parser_dir=args.parser_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
