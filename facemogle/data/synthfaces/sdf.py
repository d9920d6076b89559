"""Signed distance fields of the shapes SynthFaces are drawn from: < 0 inside, > 0 outside.

Every function takes arrays of local coordinates (p, q) and returns the (approximate) distance
in the units of p and q; parts combine them with minimum (union) and maximum (intersection).
"""

from __future__ import annotations

import numpy as np


def ellipse(p, q, cp, cq, rp, rq, angle=0.0):
    """Approximate distance to an ellipse (Quilez's first-order bound), in the units of p, q."""
    u, v = p - cp, q - cq
    if angle:
        c, s = np.cos(angle), np.sin(angle)
        u, v = c * u + s * v, -s * u + c * v
    u, v = u / rp, v / rq
    k0 = np.sqrt(u * u + v * v)
    k1 = np.sqrt((u / rp) ** 2 + (v / rq) ** 2)
    return k0 * (k0 - 1) / np.maximum(k1, 1e-6)


def circle(p, q, cp, cq, r):
    return np.hypot(p - cp, q - cq) - r


def box(p, q, cp, cq, hp, hq, r):
    """Axis-aligned box of half sizes (hp, hq) with corner radius r."""
    dx, dy = np.abs(p - cp) - hp + r, np.abs(q - cq) - hq + r
    return np.hypot(np.maximum(dx, 0), np.maximum(dy, 0)) + np.minimum(np.maximum(dx, dy), 0) - r


def band(p, q, center, half, p0, p1):
    """Points within `half` of the curve q = center(p), for p0 <= p <= p1 (vertical distance)."""
    return np.maximum(np.abs(q - center) - half, np.maximum(p0 - p, p - p1))


def polygon(p, q, corners):
    """Convex polygon: the largest signed distance to its edge lines (exact inside)."""
    pts = np.asarray(corners, np.float32)  # (K, 2)
    centre = pts.mean(0)
    d = None
    for a, b in zip(pts, np.roll(pts, -1, 0)):
        normal = np.array([b[1] - a[1], a[0] - b[0]]) / np.hypot(*(b - a))
        if normal @ (centre - a) > 0:  # point the normal away from the inside
            normal = -normal
        side = (p - a[0]) * normal[0] + (q - a[1]) * normal[1]
        d = side if d is None else np.maximum(d, side)
    return d
