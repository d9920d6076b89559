"""Check a params file before torchrun starts a stage's workers.

    python -m stages.check_params [--params params.yaml]

A bad value stops here with one line naming the file, the key and what is expected (exit status
2), where inside torchrun it would also print torchrun's own report of the failed workers.
"""

from __future__ import annotations

from stages import _cli


def main(argv: list[str] | None = None) -> int:
    args = _cli.parse_args(_cli.parser(__doc__), argv)
    _cli.load_params(args.params)
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli.run(main))
