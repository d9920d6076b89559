"""SynthFaces hair: the silhouette behind the head, the hair over the face, and its colour.

Hair is drawn twice (`draw.compose`): the `back` layer before the body and the face, the `front`
layer (cap above the hairline, side locks, an optional lock over the face) after them.
"""

from __future__ import annotations

import numpy as np

from facemogle.core.labels import LABEL_INDEX
from facemogle.data.synthfaces.canvas import Frame, rgb, shade
from facemogle.data.synthfaces.layout import to_surface
from facemogle.data.synthfaces.sdf import box, circle, ellipse


def draw_hair(f: Frame, g: dict, attrs: dict, layer: str) -> None:
    """The `back` or `front` layer of the hair (nothing for a bald head)."""
    style = attrs["hair_style"]
    if style == "bald":
        return
    if layer == "back":
        win = f.window(-2.0, 2.0, -2.0, g["hair_len"] + 0.3)
        p = win[2] + np.float32(0.12 * np.sin(f.yaw)) if f.yaw else win[2]  # away from the turn
        d = _hair_back(style, g, p, win[3])
    else:
        win = f.window(-1.7, 1.7, -1.6, max(1.5, _hair_length(style, g) + 0.3))
        d = _hair_front(style, g, attrs, win[2], win[3], f.yaw)
    f.paint(win, LABEL_INDEX["hair"], d, _hair_color(g, attrs, win[2], win[3], d))


def _hair_back(style: str, g: dict, p, q):
    """The hair silhouette behind the head, neck and shoulders (drawn first)."""
    cap, v = _hair_cap(g, p, q), g["volume"]
    freq, phase, amp = g["wave"]
    length = _hair_length(style, g)
    if style == "short":
        return np.maximum(cap, q - 0.15)
    if style in ("long", "wavy", "bob", "bangs"):
        fall = box(p, q, 0, (length - 0.3) / 2, 1.26 + v, (length + 0.3) / 2, 0.6)
        fall = fall + 0.03 * np.sin(p * 9 + phase) * (q > length - 0.4)  # uneven tips
        if style == "wavy":
            fall = fall - amp * np.sin(q * freq + phase)
        return np.minimum(cap, fall)
    if style == "curly":
        phi = np.arctan2(q + 0.15, p)
        return ellipse(p, q, 0, -0.15, 1.42 + v, 1.5 + v) - 0.07 * np.sin(11 * phi + phase)
    if style == "bun":
        return np.minimum(_hair_cap(g, p, q, -0.04), circle(p, q, 0, -1.5, 0.36))
    if style == "pigtails":
        tails = [ellipse(p, q, s * 1.36, 0.62, 0.3, 0.72, -s * 0.25) for s in (-1, 1)]
        return np.minimum(cap, np.minimum(*tails))
    raise ValueError(f"unknown hair style {style!r}")


def _hair_front(style: str, g: dict, attrs: dict, p, q, yaw: float = 0.0):
    """Hair over the face: the cap above the hairline, plus side locks over the ears and an
    optional lock over the face; the hairline lies on the head turned by `yaw`."""
    cap_p, p = p, (to_surface(p, yaw) if yaw else p)
    line = _hairline(style, g, p)
    front = np.maximum(_hair_cap(g, cap_p, q, 0.02 if style == "bun" else 0.0), q - line)
    if g.get("lock") is not None:
        lp, lq, lw = g["lock"]
        front = np.minimum(front, ellipse(p, q, lp, lq - 0.45, lw, 0.6, -0.35 * np.sign(lp)))
    if attrs["ears_visible"]:
        return front
    return np.minimum(front, _side_locks(style, g, cap_p, q))


def _hairline(style: str, g: dict, p):
    """Where the hair over the face ends (q at each p on the head's surface)."""
    _, phase, _ = g["wave"]
    if style == "bangs":
        return g["bang_y"] + 0.12 * p * p + 0.035 * np.sin(p * 17 + phase)
    if style == "curly":
        return g["hairline"] + 0.26 * p * p + 0.05 * np.sin(p * 14 + phase)
    # Temples recede; sideburns come down in front of the ears (still visible under a hat).
    sideburn = 0.45 * np.clip((np.abs(p) - 0.8) / 0.12, 0, 1)
    return g["hairline"] + 0.3 * p * p - 0.08 * g["part"] * p + sideburn


def _side_locks(style: str, g: dict, p, q):
    """Locks over the ears, falling in front of the shoulders (screen p)."""
    freq, phase, amp = g["wave"]
    end = _hair_length(style, g)  # long locks fall in front of the shoulders
    width = 0.24 + 0.5 * g["volume"] + (0.15 if style == "curly" else 0.0)
    locks = [box(p, q, s * (1.08 + width / 2 - 0.12), (end - 0.7) / 2, width,
                 (end + 0.7) / 2, 0.2) for s in (-1, 1)]
    locks = np.minimum(*locks)
    if style in ("wavy", "curly"):
        locks = locks - amp * np.sin(q * freq + phase)
    return locks


def _hair_cap(g: dict, p, q, extra: float = 0.0):
    v = g["volume"] + extra
    return ellipse(p, q, 0, -0.28, 1.1 + v, 1.08 + 0.9 * v)


def _hair_length(style: str, g: dict) -> float:
    """How far down (face units) the hair falls."""
    if style == "bob" or (style == "bangs" and g["hair_len"] < 2.5):
        return g["bob_len"]
    return {"long": g["hair_len"], "wavy": g["hair_len"], "bangs": g["hair_len"]}.get(style, 1.3)


def _hair_color(g: dict, attrs: dict, p, q, d) -> np.ndarray:
    """Hair colour: base x light x strands along the fall of the hair, plus a sheen band."""
    base = rgb(attrs["hair_color"], g["albedo"][1])
    ph1, ph2, n = g["strands"]
    phi = np.arctan2(p, q + 1.3)  # (h, w) angle around a point above the crown
    if attrs["hair_style"] in ("wavy", "curly"):
        freq, ph, _ = g["wave"]
        phi = phi + 0.05 * np.sin(q * freq + ph)
    strands = 1 + 0.08 * np.sin(n * phi + ph1) + 0.05 * np.sin(2.3 * n * phi + ph2)
    rho = np.hypot(p, q + 0.28)
    lx, ly, _ = g["light"]
    sheen = np.exp(-((rho - 0.95) / 0.12) ** 2) * np.clip(0.5 + p * lx + (q + 0.28) * ly, 0, 1)
    col = base * shade(g, p, q, d, 0.2, 0.07, 2.0) * strands[..., None]
    return col + 0.09 * sheen[..., None]
