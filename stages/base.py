"""`base` stage: the pretrained parts (the embedded base checked, or FLUX.1-dev resolved).

    python -m stages.base --out data/base
"""

from __future__ import annotations

from facemogle.base.build import build_base
from stages import _cli

PARAMS = ("data", "base")


def main(argv: list[str] | None = None) -> int:
    parser = _cli.parser(__doc__)
    parser.add_argument("--out", required=True, help="output folder (replaced atomically)")
    args = _cli.parse_args(parser, argv)
    params = _cli.load_params(args.params, sections=PARAMS)
    build_base(params.base, params.data, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli.run(main))
