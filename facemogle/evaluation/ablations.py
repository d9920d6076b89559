"""The ablation table (paper Tables 3-5) from DVC experiments.

    python -m facemogle.evaluation.ablations [--out table.md]

Reads the workspace and every experiment through `dvc.api.exp_show` and writes one Markdown row
per run: its `gating` and `experts`, then per set and mode the mask mIoU (does the face follow
the mask?), the caption-colour attribute accuracy (does it follow the text?) and the Frechet
distance in the parser's feature space.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from facemogle.core.io import write_text

SETS: tuple[tuple[str, str], ...] = (("", "metrics/eval"), ("zero-shot ", "metrics/zeroshot/eval"))
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("mIoU mm", "multimodal", "mask_miou"),
    ("mIoU m2f", "mask2face", "mask_miou"),
    ("mIoU t2f", "text2face", "mask_miou"),
    ("Attr mm", "multimodal", "attribute_acc"),
    ("Attr t2f", "text2face", "attribute_acc"),
    ("FD-parser mm", "multimodal", "fd_parser"),
)


def _cell(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    return f"{value:.3f}"


def ablation_table(rows: Sequence[Mapping[str, Any]], sets=SETS) -> str:
    """Markdown: one row per `dvc.api.exp_show` row (flat "file:key" metric names)."""
    headers = ["run", "gating", "experts"] + [f"{prefix}{title}" for prefix, _ in sets
                                              for title, _, _ in COLUMNS]
    lines = ["| " + " | ".join(headers) + " |", "|---|---|---|" + "---:|" * (len(headers) - 3)]
    for row in rows:
        name = row.get("Experiment") or row.get("rev") or "?"
        cells = [str(name), str(row.get("gating", "-")), str(row.get("experts", "-"))]
        cells += [_cell(row.get(f"{folder}/{mode}.json:{key}")) for _, folder in sets
                  for _, mode, key in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the table here (default: print)")
    args = parser.parse_args(argv)
    import dvc.api  # only the command needs DVC

    # The committed baseline and every finished experiment (the workspace row repeats one).
    rows = [r for r in dvc.api.exp_show()
            if r.get("rev") != "workspace" and r.get("State") in (None, "Success")]
    table = ablation_table(rows)
    if args.out:
        write_text(args.out, table)
    else:
        print(table, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
