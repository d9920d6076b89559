"""Pictures people would rather see than read: contact sheets and sample grids."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from facemogle.core import labels
from facemogle.core.io import atomic_path, read_rgb, save_png
from facemogle.data.layout import mask_path
from facemogle.sampling.samples_folder import sample_path

CELL = 128  # pixels per image cell on sheets (small images are upscaled, nearest)
TEXT_WIDTH = 260
SHEET_ROWS = 12  # test images per contact sheet of the sample stage, spread evenly over its ids
# The plain base is no Face-MoGLE mode: its sheet says so.
SHEET_TITLES = {"base": "Plain base, no condition tokens (reference)"}


def _cell(image: np.ndarray | None) -> Image.Image:
    if image is None:
        cell = Image.new("RGB", (CELL, CELL), (40, 40, 40))
        ImageDraw.Draw(cell).text((8, CELL // 2 - 6), "no mask", fill=(200, 200, 200))
        return cell
    return Image.fromarray(image).resize((CELL, CELL), Image.NEAREST)


def contact_sheet(rows: list[dict], title: str) -> Image.Image:
    """A sheet with one row per sample: mask (colour) | result | prompt.

    Each row is `{"id": str, "mask": (H, W) label map or None, "image": (H, W, 3) uint8,
    "prompt": str}`.
    """
    font = ImageFont.load_default()
    header = 24
    width = 2 * CELL + TEXT_WIDTH + 16
    sheet = Image.new("RGB", (width, header + len(rows) * (CELL + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 6), title, fill=(0, 0, 0), font=font)
    for n, row in enumerate(rows):
        y = header + n * (CELL + 4)
        mask = None if row["mask"] is None else labels.label_map_to_color(row["mask"])
        sheet.paste(_cell(mask), (4, y))
        sheet.paste(_cell(row["image"]), (8 + CELL, y))
        prompt = row["prompt"] if row["prompt"] else '"" (empty prompt)'
        text = f"{row['id']}\n" + "\n".join(textwrap.wrap(prompt, 42)[:8])
        draw.multiline_text((16 + 2 * CELL, y + 4), text, fill=(0, 0, 0), font=font)
    return sheet


def to_uint8(images01: torch.Tensor) -> list[np.ndarray]:
    """(B, 3, H, W) in [0, 1] -> list of (H, W, 3) uint8."""
    array = (images01.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
    return list(array.numpy())


def save_sheet(path: str | Path, image: Image.Image) -> None:
    save_png(path, image)


def sheet_ids(ids: list[str]) -> list[str]:
    """The `SHEET_ROWS` ids of the sample stage's sheets, spread evenly over the sampled `ids`."""
    return ids[::max(1, len(ids) // SHEET_ROWS)][:SHEET_ROWS]


def write_sheets(samples: str | Path, sheets_dir: str | Path, labels_dir: str | Path,
                 prompts: dict[str, str], modes: tuple[str, ...], ids: list[str],
                 off_distribution: list[dict]) -> None:
    """The sample stage's sheets: one per mode (prompt, mask, result) of the images `ids` in
    `samples/<mode>/`, and the off-distribution sheet of `off_distribution` rows, written
    together into `sheets_dir` (replaced atomically); `prompts`: id -> its first caption."""
    masks = {i: labels.load_label_map(mask_path(labels_dir, i)) for i in ids}
    with atomic_path(sheets_dir) as sheets:
        sheets.mkdir()
        for mode in modes:
            rows = [{"id": i,
                     "image": read_rgb(sample_path(samples, mode, i)),
                     "mask": masks[i] if mode in ("multimodal", "mask2face") else None,
                     "prompt": "" if mode == "mask2face" else prompts[i]} for i in ids]
            save_sheet(sheets / f"{mode}.png",
                       contact_sheet(rows, SHEET_TITLES.get(mode, f"Face-MoGLE: {mode}")))
        save_sheet(sheets / "off_distribution.png", contact_sheet(
            off_distribution, "Face-MoGLE multimodal: masks unlike any in training"))
