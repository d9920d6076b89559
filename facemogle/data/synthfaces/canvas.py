"""The picture a SynthFace is composed on, the local frames parts are drawn in, and colour helpers.

Image units span [-1, 1] across the picture (y down). A `Frame` maps a face-local window onto
the pixels: `window` gives the local coordinates (p, q) of the pixels it covers, a part computes
its distance field there (`sdf.py`), and `paint` writes the label where the field is negative
(exact) and the colour with anti-aliased edges.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from facemogle.data.colours import COLORS
from facemogle.data.synthfaces.layout import to_screen, to_surface, warp


class Canvas:
    """Label map + RGB being composed; frames map face-local windows onto it."""

    def __init__(self, resolution: int, tex: np.random.Generator):
        self.res = resolution
        # Two unit-normal fields: skin/stubble texture and the final sensor grain.
        self.noise = tex.standard_normal((2, resolution, resolution), dtype=np.float32)
        self.labels = np.zeros((resolution, resolution), np.uint8)  # (R, R)
        self.rgb = np.zeros((resolution, resolution, 3), np.float32)  # (R, R, 3) in [0, 1]
        self.soft = 1.0  # anti-aliasing ramp, in pixels


class Frame:
    """A rotated, scaled local frame: image = centre + size * R(angle) (p, q).

    With a `varied` geometry `g`, the frame's coordinates carry the face's warp, and `turned`
    windows give coordinates on the surface of the head turned by `g["yaw"]`.
    """

    def __init__(self, canvas: Canvas, cx: float, cy: float, size: float, angle: float,
                 g: dict | None = None):
        self.cv, self.cx, self.cy, self.size = canvas, cx, cy, size
        self.cos, self.sin = float(np.cos(angle)), float(np.sin(angle))
        self.px = size * canvas.res / 2  # pixels per local unit
        self.g = g if g is not None and g.get("warp") is not None else None
        self.yaw = float(g.get("yaw", 0.0)) if g is not None else 0.0

    def window(self, p0: float, p1: float, q0: float, q1: float, turned: bool = False,
               depth: float = 0.0):
        """Pixels covering the local box [p0, p1] x [q0, q1]: (rows, cols, p, q), maybe empty.

        `turned`: the box is on the head's surface (lifted by `depth`) and p, q are too.
        """
        turn = turned and self.yaw != 0.0
        if turn:
            r = 1.0 + depth
            p0, p1 = (r * to_screen(p / r, self.yaw) for p in (p0, p1))
        if self.g is not None:  # room for the warp's displacement
            p0, p1, q0, q1 = p0 - 0.08, p1 + 0.08, q0 - 0.08, q1 + 0.08
        rows, cols = self._pixel_box(p0, p1, q0, q1)
        p, q = self._local(rows, cols)
        if self.g is not None:
            p, q = warp(self.g, p, q)
        if turn:
            p = to_surface(p, self.yaw, depth)
        return rows, cols, p, q

    def alpha(self, d: np.ndarray) -> np.ndarray:
        """Coverage in [0, 1] of a field d (local units); > 0.5 exactly where d < 0."""
        return np.clip(0.5 - d * (self.px / self.cv.soft), 0.0, 1.0)

    def paint(self, win, label: int | None, d: np.ndarray, color) -> None:
        """Compose a part: label where d < 0 (exact), colour (3,) or (h, w, 3) anti-aliased.

        The anti-aliasing ramp is shifted a quarter pixel outward: a pixel the label map gives
        to the part shows at least 3/4 of its colour, so small parts (eyes, lips at 64 px) keep
        their own colour rather than a blend with their neighbours, and edges stay soft.
        """
        rows, cols = win[0], win[1]
        inside = d < 0
        if label is not None:
            self.cv.labels[rows, cols][inside] = label
        under = self.cv.rgb[rows, cols]  # (h, w, 3) view
        cover = np.clip(0.75 - d * (self.px / self.cv.soft), 0.0, 1.0)  # (h, w)
        under += (np.asarray(color, np.float32) - under) * cover[..., None]

    def _pixel_box(self, p0: float, p1: float, q0: float, q1: float) -> tuple[slice, slice]:
        """(rows, cols) of the pixels around the local box's corners, clipped to the picture."""
        pc = np.array([p0, p1, p0, p1])
        qc = np.array([q0, q0, q1, q1])
        xs = self.cx + self.size * (pc * self.cos - qc * self.sin)
        ys = self.cy + self.size * (pc * self.sin + qc * self.cos)
        r = self.cv.res
        c0, c1 = (np.array([xs.min(), xs.max()]) + 1) * r / 2
        r0, r1 = (np.array([ys.min(), ys.max()]) + 1) * r / 2
        c0, c1 = max(int(c0) - 1, 0), min(int(np.ceil(c1)) + 1, r)
        r0, r1 = max(int(r0) - 1, 0), min(int(np.ceil(r1)) + 1, r)
        c1, r1 = max(c1, c0), max(r1, r0)  # a part off the picture gets an empty window
        return slice(r0, r1), slice(c0, c1)

    def _local(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        """Local coordinates (p, q), each (h, w), of the pixel centres in (rows, cols)."""
        centres = pixel_centres(self.cv.res)
        dx = centres[cols][None, :] - self.cx  # (1, w)
        dy = centres[rows][:, None] - self.cy  # (h, 1)
        p = (dx * self.cos + dy * self.sin) / self.size  # (h, w)
        q = (-dx * self.sin + dy * self.cos) / self.size  # (h, w)
        return p, q


@lru_cache(maxsize=16)
def pixel_centres(resolution: int) -> np.ndarray:
    """Pixel centres in image units, the image spanning [-1, 1]."""
    return ((np.arange(resolution, dtype=np.float32) * 2 + 1) / resolution - 1)  # (R,)


def rgb(name_or_rgb, gain: float = 1.0) -> np.ndarray:
    """A colour name (`COLORS`) or an RGB triple in 0..255, times `gain`: (3,) float32 in [0, 1]."""
    value = COLORS[name_or_rgb] if isinstance(name_or_rgb, str) else name_or_rgb
    return np.asarray(value, np.float32) / 255 * gain  # (3,)


def shade(g: dict, p, q, d, edge=0.22, width=0.12, spread=1.2, centre=(0.0, 0.0)):
    """Directional light across a part centred at `centre`, darker toward its edges.

    Returns an (h, w, 1) gain whose typical value is 1, so that a part's median colour stays
    near its reference colour (what `read_color` matches against).
    """
    lx, ly, k = g["light"]
    s = 1 + k * ((p - centre[0]) * lx + (q - centre[1]) * ly) / spread
    s = s * (1 - edge * np.exp(np.minimum(d, 0) / width)) / (1 - 0.25 * edge)
    return s[..., None]


def mix(base, color, a):
    """Blend `color` over `base` with coverage a (h, w)."""
    return base + (np.asarray(color, np.float32) - base) * a[..., None]
