"""Paper-style Markdown tables from metrics JSON files (layout of the paper's Tables 1 and 2).

One table per generation mode; rows are methods or runs; columns are the paper's FID, KID,
CMMD, Mask, Text and IR in every mode (mask2face's Text and IR, text2face's Mask are the levels
without that condition), the DINO distance under the official protocol ("Mask-paper") next to
Mask when a row has it, then the embedded metrics that any row has (feature-space distances,
mask mIoU, attribute accuracy, detection). A value that is missing or skipped is shown as "-",
and the skip reasons are listed under the table.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facemogle.core.config import MODES
from facemogle.core.io import InputError, read_json, write_text

MISSING = "-"


@dataclass(frozen=True)
class Column:
    """A table column: header, metric name, direction, decimals."""

    header: str
    key: str
    lower_is_better: bool
    digits: int = 2

    @property
    def title(self) -> str:
        return f"{self.header} {'↓' if self.lower_is_better else '↑'}"


PAPER_COLUMNS: tuple[Column, ...] = (
    Column("FID", "fid", True),
    Column("KID", "kid_x1000", True),
    Column("CMMD", "cmmd", True, 3),
    Column("Mask", "dino_structure", True, 4),
    Column("Text", "clip_score", False),
    Column("IR", "image_reward", False, 3),
)
# Shown after the paper column of the same family when some row reports it (value or skip).
OPTIONAL_PAPER_COLUMNS: dict[str, Column] = {
    "dino_structure": Column("Mask-paper", "dino_structure_paper", True, 4),
}
EMBEDDED_COLUMNS: tuple[Column, ...] = (
    Column("mIoU", "mask_miou", False, 3),
    # The off-distribution set's mIoU by where its masks came from (docs/synthfaces.md).
    Column("mIoU-beyond", "mask_miou_beyond", False, 3),
    Column("mIoU-drawn", "mask_miou_drawn", False, 3),
    Column("mIoU-photo", "mask_miou_photo", False, 3),
    # The parser's own mIoU on the real test faces and on their VAE reconstructions: the mIoU a
    # generator reproducing the test faces would be measured at.
    Column("mIoU-ceil-real", "parser_ceiling_miou_real", False, 3),
    Column("mIoU-ceil-recon", "parser_ceiling_miou_recon", False, 3),
    Column("PixAcc", "mask_pixel_acc", False, 3),
    Column("Attr", "attribute_acc", False, 3),
    Column("Access", "accessory_acc", False, 3),
    Column("Det-AUC", "detect_auc", True, 3),
    Column("Det-EER", "detect_eer", False, 3),
    Column("Det-AP", "detect_ap", True, 3),
)
# The paper's Table 6 detectors; shown when some row has a value (their weights are optional).
DETECTOR_COLUMNS: tuple[Column, ...] = tuple(
    Column(f"{name}-{m}", f"{key}_{m.lower()}", m != "EER", 3)
    for name, key in (("NPR", "npr"), ("WavCLIP", "wavelet_clip")) for m in ("AUC", "EER", "AP"))
_SPACE = re.compile(r"^fd_(\w+)$")


def _space_columns(keys: set[str]) -> list[Column]:
    """FD / KID columns of every offline feature space named in `keys` ("fd_<space>")."""
    columns = []
    for space in sorted(m.group(1) for k in keys if (m := _SPACE.match(k))):
        columns += [Column(f"FD-{space}", f"fd_{space}", True),
                    Column(f"KID-{space}", f"kid_{space}_x1000", True)]
    return columns


def _keys(metrics: Mapping[str, Any]) -> set[str]:
    return set(metrics) | set(metrics.get("skipped", {}))


def columns_for(rows: Mapping[str, Mapping[str, Any]]) -> list[Column]:
    """The paper's columns (each followed by its optional variant that some row reports),
    then the embedded ones that some row reports (value or skip)."""
    keys = set().union(*(_keys(m) for m in rows.values())) if rows else set()
    paper = []
    for column in PAPER_COLUMNS:
        variant = OPTIONAL_PAPER_COLUMNS.get(column.key)
        paper += [column] + ([variant] if variant is not None and variant.key in keys else [])
    extra = _space_columns(keys) + [c for c in EMBEDDED_COLUMNS if c.key in keys]
    detectors = [c for c in DETECTOR_COLUMNS
                 if any(_cell(m, c) != MISSING for m in rows.values())]
    return [*paper, *extra, *detectors]


def _cell(metrics: Mapping[str, Any], column: Column) -> str:
    value = metrics.get(column.key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return MISSING
    return f"{value:.{column.digits}f}"


def markdown_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table: one row per name -> metrics JSON, the columns of `columns_for`."""
    columns = columns_for(rows)
    lines = ["| Method | " + " | ".join(c.title for c in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for name, metrics in rows.items():
        lines.append(f"| {name} | " + " | ".join(_cell(metrics, c) for c in columns) + " |")
    return "\n".join(lines)


def _skip_notes(rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per distinct skip reason, naming the metrics it hides."""
    by_reason: dict[str, list[str]] = {}
    for metrics in rows.values():
        for name, reason in metrics.get("skipped", {}).items():
            names = by_reason.setdefault(reason, [])
            if name not in names:
                names.append(name)
    return [f"- skipped {', '.join(names)}: {reason}" for reason, names in by_reason.items()]


def _instrument_notes(by_mode: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[str]:
    """One line per distinct backend of the mask metric (the parser, named by its hash)."""
    backends = {m.get("backends", {}).get("mask_miou") for rows in by_mode.values()
                for m in rows.values()} - {None}
    return [f"- mask and attribute metrics measured by: {b}" for b in sorted(backends)]


def markdown_report(by_mode: Mapping[str, Mapping[str, Mapping[str, Any]]],
                    title: str = "Face-MoGLE evaluation") -> str:
    """One section per mode: `markdown_table` of its rows, then the skip reasons; the measuring
    parser is named at the top."""
    parts = [f"# {title}", ""]
    instruments = _instrument_notes(by_mode)
    if instruments:
        parts += [*instruments, ""]
    for mode, rows in by_mode.items():
        parts += [f"## {mode}", "", markdown_table(rows), ""]
        notes = _skip_notes(rows)
        if notes:
            parts += [*notes, ""]
    return "\n".join(parts)


def read_metrics(path: str | Path) -> dict[str, Any]:
    """A metrics JSON file as written by `base.metrics_json`."""
    data = read_json(path, missing="metrics file not found")
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object of metrics")
    return data


# The `base` mode samples the frozen base without condition tokens: a reference, not Face-MoGLE.
BASE_ROW = "Plain base, no condition tokens"


def write_report(eval_dirs: Mapping[str, str | Path], out_path: str | Path, *,
                 modes: tuple[str, ...] = MODES, method: str = "Face-MoGLE",
                 baselines: Mapping[str, str | Path] | None = None) -> None:
    """Write the Markdown report of evaluation sets side by side: set name -> the folder of its
    `<mode>.json` files; one table per mode, one row per set ("Face-MoGLE (zero-shot)").
    `baselines` (row name -> folder) add other methods' rows in the modes their folder has."""
    by_mode = {mode: {f"{BASE_ROW if mode == 'base' else method} ({name})":
                      read_metrics(Path(folder) / f"{mode}.json")
                      for name, folder in eval_dirs.items()} for mode in modes}
    for name, folder in (baselines or {}).items():
        found = [m for m in modes if (Path(folder) / f"{m}.json").exists()]
        if not found:
            raise InputError(f"{folder}: no <mode>.json of the modes {list(modes)} (baseline "
                             f"{name!r}); run stages.evaluate on its images first")
        for mode in found:
            by_mode[mode][name] = read_metrics(Path(folder) / f"{mode}.json")
    write_text(out_path, markdown_report(by_mode))
