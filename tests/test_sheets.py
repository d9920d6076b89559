"""The sample stage's contact sheets (facemogle/sampling/sheets.py) on a few made-up images."""

from __future__ import annotations

import numpy as np
from PIL import Image

from facemogle.data.layout import MASKS, mask_path
from facemogle.sampling.samples_folder import mode_dir, sample_path
from facemogle.sampling.sheets import CELL, SHEET_ROWS, sheet_ids, write_sheets

MODES = ("multimodal", "mask2face", "text2face", "base")


def test_sheet_ids_spread_over_the_sampled_ids():
    ids = [f"{i:06d}" for i in range(30)]
    assert sheet_ids(ids) == ids[::2][:SHEET_ROWS]
    assert sheet_ids(ids[:5]) == ids[:5]


def test_write_sheets_writes_one_sheet_per_mode_and_the_off_distribution_sheet(tmp_path):
    rng = np.random.default_rng(0)
    ids = ["000001", "000002"]
    for mode in MODES:
        mode_dir(tmp_path / "samples", mode).mkdir(parents=True)
        for i in ids:
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
                sample_path(tmp_path / "samples", mode, i))
    (tmp_path / "labels" / MASKS).mkdir(parents=True)
    for i in ids:
        Image.fromarray(rng.integers(0, 19, (16, 16), dtype=np.uint8)).save(
            mask_path(tmp_path / "labels", i))
    off = [{"id": "drawn", "image": np.zeros((16, 16, 3), np.uint8), "mask": None, "prompt": ""}]
    write_sheets(tmp_path / "samples", tmp_path / "sheets", tmp_path / "labels",
                 {i: f"a face {i}" for i in ids}, MODES, ids, off)
    names = sorted(p.name for p in (tmp_path / "sheets").iterdir())
    assert names == sorted([f"{m}.png" for m in MODES] + ["off_distribution.png"])
    for mode in MODES:  # a title row, then one row of cells per id
        assert Image.open(tmp_path / "sheets" / f"{mode}.png").height > len(ids) * CELL
