"""`report` stage: the evaluation sets side by side, one paper-style table per mode.

    python -m stages.report --eval in-distribution=metrics/eval \
        --eval zero-shot=metrics/zeroshot/eval --out metrics/report.md

Columns follow the paper's Table 1 (FID, KID, CMMD, Mask, Text, IR), then the embedded metrics;
the zero-shot row is the paper's Table 2. `--baseline NAME=FOLDER` adds another method's
evaluation (`stages.evaluate` on its images) as a row named NAME in the modes it has.
"""

from __future__ import annotations

import argparse

from facemogle.evaluation.report import write_report
from stages import _cli

PARAMS: tuple[str, ...] = ()


def _named_dir(text: str) -> tuple[str, str]:
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"expected NAME=FOLDER, got {text!r}")
    return name, folder


def main(argv: list[str] | None = None) -> int:
    parser = _cli.parser(__doc__)
    parser.add_argument("--eval", type=_named_dir, action="append", required=True,
                        metavar="NAME=FOLDER", help="an evaluate stage output, as a table row")
    parser.add_argument("--baseline", type=_named_dir, action="append", default=[],
                        metavar="NAME=FOLDER", help="another method's evaluate output, as a row")
    parser.add_argument("--out", required=True, help="the Markdown report")
    args = _cli.parse_args(parser, argv, params=None)
    write_report(dict(args.eval), args.out, baselines=dict(args.baseline))
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli.run(main))
