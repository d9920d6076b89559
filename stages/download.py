"""`download` stage: a data set -> the normalized layout (docs/design.md, "Stages").

    python -m stages.download --set test --out data/raw          # `data`: train and test
    python -m stages.download --set zeroshot --out data/zeroshot/raw   # `zeroshot`: test only
    python -m stages.download --set offdist --out data/offdist/raw     # `offdist`: test only
"""

from __future__ import annotations

from facemogle.core.config import EVAL_SETS, set_sections
from facemogle.data.download import download, download_offdist
from stages import _cli

PARAMS = ("data",)


def main(argv: list[str] | None = None) -> int:
    parser = _cli.parser(__doc__)
    parser.add_argument("--out", required=True, help="output folder (replaced atomically)")
    parser.add_argument("--set", choices=EVAL_SETS, default="test", dest="eval_set",
                        help="test: the `data` section (train + test splits); zeroshot: the "
                             "`zeroshot` section (its test split only); offdist: the "
                             "off-distribution set of the `offdist` section")
    args = _cli.parse_args(parser, argv)
    params = _cli.load_params(args.params, sections=set_sections(PARAMS, args.eval_set))
    if args.eval_set == "zeroshot":
        download(params.zeroshot.data_config(params.data), args.out, splits=("test",))
    elif args.eval_set == "offdist":
        download_offdist(params.data, params.offdist, args.out)
    else:
        download(params.data, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli.run(main))
