"""A forest plot of paired differences over training seeds: one panel per metric, one row per
variant, a dot at the mean difference, a tick per seed and a bar over the 95% t-interval,
coloured by the verdict. Drawing only: the tests and verdicts come from the caller."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from facemogle.evaluation.uncertainty import SeedTest

COLOURS = {"better": (0, 120, 0), "worse": (200, 0, 0)}  # any other verdict is grey
GREY = (60, 60, 60)
WIDTH, ROW, LEFT, TOP, GAP = 260, 22, 110, 34, 30  # pixels: panel, row, labels, title, gap


def forest_plot(panels: Sequence[tuple[str, Mapping[str, SeedTest], Mapping[str, str]]],
                variants: Sequence[str], notes: Sequence[str]) -> Image.Image:
    """`panels`: (title, variant -> test, variant -> verdict) per metric, each drawn on its own
    symmetric scale around 0; `variants`: the rows, top to bottom (a variant a panel has no
    test for leaves its row empty there); `notes`: lines of legend below the panels."""
    spans = [_span(tests.values()) for _, tests, _ in panels]
    bottom = TOP + ROW * len(variants)
    canvas = Image.new("RGB", (LEFT + len(panels) * (WIDTH + GAP), bottom + 26 + 14 * len(notes)),
                       (255, 255, 255))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for k, note in enumerate(notes):
        draw.text((4, bottom + 24 + 14 * k), note, fill=(0, 0, 0), font=font)

    def x_of(panel: int, value: float) -> int:
        value = float(np.clip(value, -spans[panel], spans[panel]))
        return LEFT + panel * (WIDTH + GAP) + round((value / spans[panel] + 1) / 2 * WIDTH)

    for k, (title, tests, verdicts) in enumerate(panels):
        _axis(draw, font, title, lambda v, k=k: x_of(k, v), spans[k], bottom)
        for r, variant in enumerate(variants):
            if variant not in tests:
                continue
            y, t = TOP + r * ROW + ROW // 2, tests[variant]
            colour = COLOURS.get(verdicts.get(variant, ""), GREY)
            draw.line([(x_of(k, t.low), y), (x_of(k, t.high), y)], fill=colour, width=2)
            for d in t.per_seed:
                draw.line([(x_of(k, d), y - 6), (x_of(k, d), y + 6)], fill=colour, width=1)
            draw.ellipse([x_of(k, t.value) - 3, y - 3, x_of(k, t.value) + 3, y + 3], fill=colour)
    for r, variant in enumerate(variants):
        draw.text((4, TOP + r * ROW + ROW // 2 - 6), variant, fill=(0, 0, 0), font=font)
    return canvas


def _span(tests) -> float:
    """Half-width of a panel's symmetric scale: 1.1 x the largest finite bound or per-seed
    difference (an interval of one seed is unbounded)."""
    values = [abs(x) for t in tests for x in (t.low, t.high, *t.per_seed) if np.isfinite(x)]
    return 1.1 * max(values, default=0.0) or 1.0


def _axis(draw, font, title: str, x_of, span: float, bottom: int) -> None:
    """A panel's title, zero line and tick labels (-span, 0, +span)."""
    draw.text((x_of(-span), 4), title, fill=(0, 0, 0), font=font)
    draw.line([(x_of(0.0), TOP - 6), (x_of(0.0), bottom)], fill=(150, 150, 150))
    for tick in (-span, 0.0, span):
        label = f"{tick:+.3f}" if tick else "0"
        shift = {-1: 0, 0: -3, 1: -6 * len(label)}[int(np.sign(tick))]
        draw.text((x_of(tick) + shift, bottom + 6), label, fill=(0, 0, 0), font=font)
