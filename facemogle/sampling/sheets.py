"""Pictures people would rather see than read: contact sheets and sample grids."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from facemogle.core import labels
from facemogle.core.io import save_png

CELL = 128  # pixels per image cell on sheets (small images are upscaled, nearest)
TEXT_WIDTH = 260


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
