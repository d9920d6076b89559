"""`parse_masks` stage: a validated label map, slot presence and class statistics per image.

    python -m stages.parse_masks --data data/raw --out data/labels \
        --metrics metrics/classes.json [--parser-dir data/base/parser] [--set zeroshot]

The zero-shot and off-distribution entries (`--set zeroshot|offdist`) take their parser from
their own section (`zeroshot`, `offdist`).
"""

from __future__ import annotations

from facemogle.core.config import EVAL_SETS, set_sections
from facemogle.masks.parse import parse_masks
from stages import _cli

PARAMS = ("data", "masks")


def main(argv: list[str] | None = None) -> int:
    parser = _cli.parser(__doc__)
    parser.add_argument("--data", required=True, help="download stage output")
    parser.add_argument("--out", required=True, help="output folder (replaced atomically)")
    parser.add_argument("--metrics", required=True, help="class statistics (JSON)")
    parser.add_argument("--parser-dir", default=None,
                        help="the base stage's trained parser (masks.parser 'tiny')")
    parser.add_argument("--set", choices=EVAL_SETS, default="test", dest="eval_set",
                        help="zeroshot, offdist: label maps by that section's parser instead "
                             "of `masks.parser`")
    args = _cli.parse_args(parser, argv)
    params = _cli.load_params(args.params, sections=set_sections(PARAMS, args.eval_set))
    masks = (params.masks if args.eval_set == "test"
             else getattr(params, args.eval_set).masks_config(params.masks))
    parse_masks(args.data, args.out, args.metrics, masks=masks,
                on_error=params.data.on_error, parser_dir=args.parser_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli.run(main))
