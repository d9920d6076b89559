"""Per-item work with the `data.on_error` policy, shared by `download` and `parse_masks`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from tqdm import tqdm

from facemogle.core.io import InputError

log = logging.getLogger(__name__)


def run_items(items: Iterable, work: Callable, *, on_error: str, file_of: Callable,
              desc: str) -> list[dict]:
    """Call `work(item)` for each item with a progress bar; returns the skip report.

    An `InputError` stops the run (`on_error` "stop") or is recorded as {file, reason} and the
    item left out ("skip").
    """
    skipped: list[dict] = []
    for item in tqdm(list(items), desc=desc, unit="img", mininterval=1.0):
        try:
            work(item)
        except InputError as err:
            file = getattr(err, "file", None) or file_of(item)
            reason = getattr(err, "reason", None) or str(err)
            if on_error != "skip":
                log.error("%s: %s (set data.on_error: skip to leave bad items out)", file, reason)
                raise
            log.warning("skipped %s: %s", file, reason)
            skipped.append({"file": str(file), "reason": reason})
    return skipped


def check_not_empty(written: int, skipped: list[dict], what: str) -> None:
    if written == 0:
        shown = "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:3])
        raise InputError(f"{what}: no usable images ({len(skipped)} skipped"
                         f"{': ' + shown if shown else ''})")
