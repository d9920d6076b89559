"""What every stage script shares: its argument parser, its logging, and how it ends on an error.

A stage's `main(argv)` raises like any function (the tests call it in-process); its `__main__`
entry is `raise SystemExit(_cli.run(main))`, which turns an error the user can fix into one line
on stderr and exit status 2:

    error: params.yaml: 'gating' must be one of ['matrix', 'scalar', 'static', 'none'], got 'sclar'

An error the user can fix is one of the project's own exception classes (`ConfigError` for a bad
param, `InputError` for a missing, unreadable or invalid input file or mask, `ItemError`,
`MaskColorError`, `WeightsMismatch`, ...: every class defined in `facemogle`) or a
`FileNotFoundError`. Any other exception is a bug and prints its traceback as before.

Under torchrun (`cache_latents`, `train`, `sample` in dvc.yaml) torchrun answers any worker's
non-zero exit with a traceback of its own and a ChildFailedError summary, so dvc.yaml runs
`python -m stages.check_params` before torchrun: a bad param value stops there with its one line,
before any worker starts. An error inside a worker (a bad input file) prints its line from
process 0 only, and torchrun reports the failed worker as usual.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from facemogle.core.config import ConfigError, Params, SectionView
from facemogle.core.config import load_params as _load_params

USER_ERROR_STATUS = 2  # argparse's status for a bad command line, too


def parser(doc: str) -> argparse.ArgumentParser:
    """The stage's argument parser, described by the first line of its module docstring."""
    return argparse.ArgumentParser(description=doc.splitlines()[0])


def parse_args(arguments: argparse.ArgumentParser, argv: list[str] | None,
               params: str | None = "params.yaml") -> argparse.Namespace:
    """Add `--params` (default `params`; None: the stage adds its own or reads none), parse
    `argv` and set up logging."""
    if params is not None:
        arguments.add_argument("--params", default=params)
    args = arguments.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args


def resume_folder(out: str | Path) -> Path:
    """The default work folder of a stage output that resumes (`cache_latents`, `train`):
    `<out's folder>/.resume/<out's name>`, beside the output on its file system, git- and
    dvc-ignored, not an output itself."""
    out = Path(out)
    return out.parent / ".resume" / out.name


def load_params(path: str | Path, sections: tuple[str, ...] | None = None
                ) -> Params | SectionView:
    """`facemogle.core.config.load_params`; a `ConfigError` remembers the file, so that the
    error line names it where the message says "params:"."""
    try:
        return _load_params(path, sections=sections)
    except ConfigError as err:
        err.params_file = str(path)
        raise


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """`main(argv)`, with an error the user can fix reported as one line (exit status 2)."""
    try:
        return main(argv)
    except Exception as err:
        if not is_user_error(err):
            raise
        return _report(err)


def is_user_error(err: BaseException) -> bool:
    """Whether `err` is about the user's params or files rather than a bug (module docstring)."""
    return isinstance(err, FileNotFoundError) or any(
        cls.__module__.split(".")[0] == "facemogle" for cls in type(err).__mro__)


def message(err: BaseException) -> str:
    """The error line's text: the exception's message, naming the params file for a param."""
    text = str(err)
    source = getattr(err, "params_file", None)
    if source is not None and text.startswith("params: "):
        text = f"{source}: {text.removeprefix('params: ')}"
    elif isinstance(err, FileNotFoundError) and err.filename is not None:
        text = f"{err.filename}: no such file or directory"
    return text


def _report(err: BaseException) -> int:
    if os.environ.get("RANK", "0") == "0":  # under torchrun every process fails alike
        print(f"error: {message(err)}", file=sys.stderr, flush=True)
    return USER_ERROR_STATUS
