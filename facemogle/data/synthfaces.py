"""SynthFaces: procedurally rendered portraits with exact CelebAMask-HQ label maps and captions.

The embedded default's data set (docs/design.md, "Two settings"). Every face is drawn from signed
distance fields in a face-local frame (unit = half the face width, tilted with the head), so the
geometry does not depend on the resolution: the label map is the hard geometry sampled at pixel
centres (composed with CelebAMask-HQ precedence, later parts overwrite earlier ones) and the RGB
image is the same geometry with anti-aliased edges, directional shading, edge darkening, hair
strands and grain. A face is a pure function of (seed, index, variant): attributes and geometry
come from `numpy.random.Generator(PCG64([seed, index, variant_code, 0]))`, textures and captions
from streams 1 and 2, so neither the resolution nor the number of captions changes the face.

The `zeroshot` variant plays MM-FFHQ-Female: women only, hair styles and colours held out of
`standard` (`ZEROSHOT_ONLY`) and colour pairs that `standard` never renders (`HELD_OUT_PAIRS`);
its head sizes, positions and tilts lie outside the `template` ranges but inside the margins of
the `varied` layout (`synthfaces_layout`, docs/synthfaces.md).

CLI: ``python -m facemogle.data.synthfaces sheet|bench ...`` (see `main`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from facemogle.core.io import save_png, write_json
from facemogle.core.labels import LABEL_INDEX, PALETTE
from facemogle.data.colours import COLORS, PALETTE_NAMES, PUPIL, SCLERA
from facemogle.data.synthfaces_layout import (
    BEYOND_KINDS,
    LAYOUTS,
    beyond,
    to_screen,
    to_surface,
    vary,
    warp,
)
from facemogle.data.synthfaces_text import make_captions

VARIANTS: tuple[str, ...] = ("standard", "zeroshot")


MIN_RESOLUTION, MAX_RESOLUTION = 32, 2048


# Values only the zero-shot variant draws, and colour pairs `standard` never renders.
ZEROSHOT_ONLY: dict[str, tuple[str, ...]] = {"hair_style": ("bun", "pigtails"),
                                             "hair_color": ("pink",)}


HELD_OUT_PAIRS: tuple[tuple[tuple[str, str], tuple[str, str]], ...] = (
    (("hair_color", "blond"), ("cloth_color", "red")),
    (("hair_color", "black"), ("background_color", "yellow")),
)


_LONG_STYLES = ("long", "wavy", "bangs", "bob", "curly")


_STYLE_WEIGHTS = {
    ("standard", "woman"): {"long": .26, "wavy": .2, "bangs": .14, "bob": .14, "curly": .1,
                            "short": .16},
    ("standard", "man"): {"short": .6, "curly": .1, "wavy": .08, "long": .05, "bangs": .06,
                          "bald": .11},
    ("zeroshot", "woman"): {"long": .14, "wavy": .12, "bangs": .1, "bob": .1, "curly": .09,
                            "short": .05, "bun": .22, "pigtails": .18},
}


_HAIR_WEIGHTS = {"black": .27, "brown": .3, "blond": .18, "ginger": .09, "gray": .1, "white": .06}


_METALS = {"gold": (214, 172, 60), "silver": (196, 198, 206)}


_ITEM_DETAILS = {"hat": ("hat_color", "hat_style"),
                 "eyeglasses": ("glasses_style", "glasses_color"), "earrings": ("earring_style",)}


_FRAMES = {"black": (28, 26, 28), "gold": (196, 156, 60), "brown": (92, 56, 34)}


@dataclass(frozen=True)
class SynthFace:
    """One rendered portrait: image, its exact label map, captions and their attributes."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    label_map: np.ndarray  # (H, W) uint8, indices 0..18
    captions: list[str]
    attributes: dict  # JSON-serialisable


def _pick(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    w = np.array([weights[n] for n in names])
    return names[int(rng.choice(len(names), p=w / w.sum()))]


def _chance(rng: np.random.Generator, p: float) -> bool:
    return bool(rng.random() < p)


def _sample_colors(rng: np.random.Generator, zeroshot: bool, attrs: dict) -> dict:
    """Cloth, background and hat colours; `standard` never renders a held-out pair."""
    background = str(rng.choice(PALETTE_NAMES))
    cloth = str(rng.choice([c for c in PALETTE_NAMES if c != background]))
    out = {"hat_color": str(rng.choice(PALETTE_NAMES)), "cloth_color": cloth,
           "background_color": background}
    forced = None
    for (key_a, val_a), (key_b, val_b) in HELD_OUT_PAIRS:
        if attrs[key_a] != val_a:
            continue
        if zeroshot and _chance(rng, 0.5):
            out[key_b], forced = val_b, key_b
        elif not zeroshot and out[key_b] == val_b:
            out[key_b] = str(rng.choice([c for c in PALETTE_NAMES if c != val_b]))
    if out["cloth_color"] == out["background_color"]:
        # Clothes never vanish into the background; a forced held-out colour is kept.
        key = "cloth_color" if forced == "background_color" else "background_color"
        out[key] = "gray" if out[key] != "gray" else "white"
    return out


def sample_attributes(rng: np.random.Generator, variant: str) -> dict:
    """Everything a caption can say about a face (colours are names from `COLORS`)."""
    zs = variant == "zeroshot"
    woman = zs or _chance(rng, 0.56)
    style = _pick(rng, _STYLE_WEIGHTS[(variant, "woman" if woman else "man")])
    hair_weights = dict(_HAIR_WEIGHTS, pink=0.25) if zs else _HAIR_WEIGHTS
    hair_color = None if style == "bald" else _pick(rng, hair_weights)
    ears_visible = style not in _LONG_STYLES or _chance(rng, 0.35)
    lipstick = woman and _chance(rng, 0.6 if zs else 0.55)
    hat = _chance(rng, 0.14 if zs else 0.06)
    attrs = {
        "gender": "woman" if woman else "man",
        "hair_style": style, "hair_color": hair_color,
        "eye_color": _pick(rng, {"brown": .45, "blue": .25, "green": .15, "gray": .15}),
        "skin_tone": _pick(rng, {"pale": .2, "fair": .3, "olive": .2, "tan": .15, "dark": .15}),
        "lipstick": lipstick,
        "lip_color": _pick(rng, {"red": .45, "pink": .35, "purple": .2}) if lipstick else "natural",
        "brows": _pick(rng, {"arched": .55, "straight": .3, "bushy": .15} if woman
                       else {"arched": .2, "straight": .4, "bushy": .4}),
        "nose": _pick(rng, {"small": .4, "medium": .4, "big": .2} if woman
                      else {"small": .2, "medium": .45, "big": .35}),
        "mouth_open": _chance(rng, 0.4),
        "eyeglasses": _chance(rng, 0.15 if zs else 0.08),
        "glasses_style": str(rng.choice(["round", "rectangular"])),
        "glasses_color": str(rng.choice(list(_FRAMES))),
        "ears_visible": ears_visible,
        "earrings": ears_visible and _chance(rng, 0.45 if woman else 0.04),
        "earring_style": str(rng.choice(["studs", "hoops", "drops"])),
        "necklace": _chance(rng, 0.16 if woman else 0.03),
        "jewelry_metal": str(rng.choice(list(_METALS))),
        "hat": hat, "hat_style": str(rng.choice(["beanie", "cap", "fedora"])),
        "cloth_style": str(rng.choice(["t-shirt", "v-neck", "shirt", "scoop"] if woman
                                      else ["t-shirt", "v-neck", "shirt"])),
        "beard": not woman and _chance(rng, 0.3),
        "rosy_cheeks": _chance(rng, 0.3 if woman else 0.05),
    }
    attrs.update(_sample_colors(rng, zs, attrs))
    # Absent items have no colour or shape: the dict says only what is in the picture.
    for item, details in _ITEM_DETAILS.items():
        if not attrs[item]:
            attrs.update(dict.fromkeys(details))
    if not (attrs["earrings"] or attrs["necklace"]):
        attrs["jewelry_metal"] = None
    return attrs


def _sample_geometry(rng: np.random.Generator, attrs: dict, variant: str) -> dict:
    """Shape parameters in face units (1 = half the face width); head position in image units."""
    u = rng.uniform
    if variant == "zeroshot":
        size = u(0.30, 0.36) if _chance(rng, 0.5) else u(0.50, 0.56)
        tilt = np.deg2rad(u(12, 22)) * rng.choice([-1, 1])
        cx, cy = u(-0.14, 0.14), u(-0.2, 0.04)
    else:
        size = u(0.38, 0.48)
        tilt = np.deg2rad(np.clip(rng.normal(0, 6), -12, 12))
        cx, cy = u(-0.06, 0.06), u(-0.14, -0.04)
    man = attrs["gender"] == "man"
    nose_scale = {"small": 0.8, "medium": 1.0, "big": 1.25}[attrs["nose"]]
    brow = {"arched": (0.09, 0.055), "straight": (0.02, 0.055), "bushy": (0.04, 0.085)}
    arch, thick = brow[attrs["brows"]]
    light = u(-2.4, -0.75)
    g = {
        "cx": cx, "cy": cy, "size": size, "tilt": float(tilt),
        "jaw": u(0.12, 0.22) if man else u(0.2, 0.32), "top": u(1.24, 1.34), "chin": u(1.08, 1.2),
        "eye_x": u(0.36, 0.43), "eye_y": u(-0.04, 0.04), "eye_w": u(0.19, 0.23),
        "eye_h": u(0.48, 0.6), "eye_angle": u(-0.06, 0.12), "gaze": (u(-0.2, 0.2), u(-0.1, 0.1)),
        "brow_gap": u(0.25, 0.32), "brow_w": u(0.2, 0.26), "brow_arch": arch * u(0.8, 1.2),
        "brow_thick": thick * u(0.9, 1.15) * (1.15 if man else 1.0), "brow_slope": u(-0.06, 0.06),
        "nose_len": nose_scale * u(0.33, 0.4), "nose_w": nose_scale * u(0.15, 0.19),
        "mouth_y": u(0.64, 0.72), "mouth_w": u(0.3, 0.38) * (1.05 if man else 1.0),
        "lip_u": u(0.11, 0.15) * (0.8 if man else 1.0),
        "lip_l": u(0.13, 0.18) * (0.85 if man else 1.0),
        "smile": u(-0.01, 0.07), "open": u(0.1, 0.17) if attrs["mouth_open"] else 0.0,
        "ear_y": u(-0.04, 0.06), "ear_size": u(0.9, 1.1),
        "hairline": u(-0.9, -0.78) if man else u(-0.82, -0.74), "part": u(-0.35, 0.35),
        "hair_len": u(2.0, 3.2), "bob_len": u(0.95, 1.25), "volume": u(0.06, 0.14),
        "bang_y": u(-0.6, -0.5), "wave": (u(6, 9), u(0, 6.3), u(0.05, 0.09)),
        "strands": (u(0, 6.3), u(0, 6.3), u(20, 28)),
        "neck_w": u(0.44, 0.52) * (1.12 if man else 1.0), "shoulder_y": u(1.55, 1.8),
        "shoulder_w": u(2.1, 2.5) * (1.1 if man else 1.0), "neckline": u(0.55, 0.85),
        "necklace_drop": u(0.25, 0.45), "folds": (u(4, 7), u(0, 6.3)),
        "light": (np.cos(light), np.sin(light), u(0.1, 0.18)),
        "albedo": tuple(u(0.94, 1.04, size=4)),  # per-face brightness jitter of skin/hair/cloth/bg
    }
    # Keep the shoulders in the picture: the cloth colour must be visible to be checkable.
    g["cy"] = min(cy, 0.8 - (g["shoulder_y"] + 0.2) * size)
    return g


def _ellipse(p, q, cp, cq, rp, rq, angle=0.0):
    """Approximate distance to an ellipse (Quilez's first-order bound), in the units of p, q."""
    u, v = p - cp, q - cq
    if angle:
        c, s = np.cos(angle), np.sin(angle)
        u, v = c * u + s * v, -s * u + c * v
    u, v = u / rp, v / rq
    k0 = np.sqrt(u * u + v * v)
    k1 = np.sqrt((u / rp) ** 2 + (v / rq) ** 2)
    return k0 * (k0 - 1) / np.maximum(k1, 1e-6)


def _circle(p, q, cp, cq, r):
    return np.hypot(p - cp, q - cq) - r


def _box(p, q, cp, cq, hp, hq, r):
    """Axis-aligned box of half sizes (hp, hq) with corner radius r."""
    dx, dy = np.abs(p - cp) - hp + r, np.abs(q - cq) - hq + r
    return np.hypot(np.maximum(dx, 0), np.maximum(dy, 0)) + np.minimum(np.maximum(dx, dy), 0) - r


def _band(p, q, center, half, p0, p1):
    """Points within `half` of the curve q = center(p), for p0 <= p <= p1 (vertical distance)."""
    return np.maximum(np.abs(q - center) - half, np.maximum(p0 - p, p - p1))


def _polygon(p, q, corners):
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


@lru_cache(maxsize=16)
def _pixel_centres(resolution: int) -> np.ndarray:
    """Pixel centres in image units, the image spanning [-1, 1]."""
    return ((np.arange(resolution, dtype=np.float32) * 2 + 1) / resolution - 1)  # (R,)


class _Canvas:
    """Label map + RGB being composed; frames map face-local windows onto it."""

    def __init__(self, resolution: int, tex: np.random.Generator):
        self.res = resolution
        # Two unit-normal fields: skin/stubble texture and the final sensor grain.
        self.noise = tex.standard_normal((2, resolution, resolution), dtype=np.float32)
        self.labels = np.zeros((resolution, resolution), np.uint8)  # (R, R)
        self.rgb = np.zeros((resolution, resolution, 3), np.float32)  # (R, R, 3) in [0, 1]
        self.soft = 1.0  # anti-aliasing ramp, in pixels


class _Frame:
    """A rotated, scaled local frame: image = centre + size * R(angle) (p, q).

    With a `varied` geometry `g`, the frame's coordinates carry the face's warp, and `turned`
    windows give coordinates on the surface of the head turned by `g["yaw"]`.
    """

    def __init__(self, canvas: _Canvas, cx: float, cy: float, size: float, angle: float,
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
        centres = _pixel_centres(r)
        dx = centres[c0:c1][None, :] - self.cx  # (1, w)
        dy = centres[r0:r1][:, None] - self.cy  # (h, 1)
        p = (dx * self.cos + dy * self.sin) / self.size  # (h, w)
        q = (-dx * self.sin + dy * self.cos) / self.size  # (h, w)
        if self.g is not None:
            p, q = warp(self.g, p, q)
        if turn:
            p = to_surface(p, self.yaw, depth)
        return slice(r0, r1), slice(c0, c1), p, q

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
        rgb = self.cv.rgb[rows, cols]  # (h, w, 3) view
        cover = np.clip(0.75 - d * (self.px / self.cv.soft), 0.0, 1.0)  # (h, w)
        rgb += (np.asarray(color, np.float32) - rgb) * cover[..., None]


def _rgb(name_or_rgb, gain: float = 1.0) -> np.ndarray:
    value = COLORS[name_or_rgb] if isinstance(name_or_rgb, str) else name_or_rgb
    return np.asarray(value, np.float32) / 255 * gain  # (3,)


def _shade(g: dict, p, q, d, edge=0.22, width=0.12, spread=1.2, centre=(0.0, 0.0)):
    """Directional light across a part centred at `centre`, darker toward its edges.

    Returns an (h, w, 1) gain whose typical value is 1, so that a part's median colour stays
    near its reference colour (what `read_color` matches against).
    """
    lx, ly, k = g["light"]
    s = 1 + k * ((p - centre[0]) * lx + (q - centre[1]) * ly) / spread
    s = s * (1 - edge * np.exp(np.minimum(d, 0) / width)) / (1 - 0.25 * edge)
    return s[..., None]


def _mix(base, color, a):
    """Blend `color` over `base` with coverage a (h, w)."""
    return base + (np.asarray(color, np.float32) - base) * a[..., None]


_L = LABEL_INDEX


def _draw_background(cv: _Canvas, g: dict, attrs: dict) -> None:
    c = _pixel_centres(cv.res)
    x, y = c[None, :], c[:, None]  # (1, R), (R, 1)
    lx, ly, k = g["light"]
    gain = 1.06 + 0.6 * k * (x * lx + y * ly) - 0.08 * (x * x + y * y)  # (R, R) soft vignette
    cv.rgb[:] = _rgb(attrs["background_color"], g["albedo"][3]) * gain[..., None]


def _body_frame(cv: _Canvas, g: dict) -> _Frame:
    # The neck follows the chin while the shoulders stay put: a frame between head and torso.
    chin_dx = -g["size"] * g["chin"] * np.sin(g["tilt"])
    return _Frame(cv, g["cx"] + 0.6 * chin_dx, g["cy"], g["size"], 0.2 * g["tilt"], g)


def _neckline(style: str, g: dict, p, q):
    sy, nw, depth = g["shoulder_y"], g["neck_w"], g["neckline"]
    crew = _ellipse(p, q, 0, sy - 0.05, nw + 0.16, 0.34)
    if style == "v-neck":
        slope = depth / 0.55
        vee = (q - (sy + depth) + slope * np.abs(p)) / np.hypot(1, slope)
        return np.minimum(crew, vee)
    if style == "scoop":
        return _ellipse(p, q, 0, sy - 0.1, nw + 0.45, 0.4 + 0.5 * depth)
    return crew


def _draw_body(cv: _Canvas, g: dict, attrs: dict) -> None:
    """Neck and chest skin, clothes with a neckline and folds, then an optional necklace."""
    f = _body_frame(cv, g)
    sy, sw, nw = g["shoulder_y"], g["shoulder_w"], g["neck_w"]
    win = f.window(-sw - 0.3, sw + 0.3, 0.2, (1.3 - g["cy"]) / g["size"] + 1)
    p, q = win[2], win[3]
    neck = np.minimum(_box(p, q, 0, sy, nw, sy - 0.3, 0.12),
                      _box(p, q, 0, sy + 2.2, sw - 0.2, 2.3, 0.8))
    skin = _rgb(attrs["skin_tone"], g["albedo"][0])
    chin_shadow = 0.72 + 0.28 * np.clip((q - g["chin"] - 0.1) / 0.5, 0, 1)  # (h, w)
    neck_col = skin * _shade(g, p, q, neck, 0.3, 0.1, 2, (0, sy)) * chin_shadow[..., None]
    f.paint(win, _L["neck"], neck, neck_col)
    body = _box(p, q, 0, sy + 2.6, sw, 2.6, 0.85)
    cloth = np.maximum(body, -_neckline(attrs["cloth_style"], g, p, q))
    fold_freq, fold_phase = g["folds"]
    folds = 1 + 0.05 * np.sin(p * fold_freq + fold_phase + 0.8 * q)  # (h, w)
    col = _rgb(attrs["cloth_color"], g["albedo"][2])
    col = col * _shade(g, p, q, cloth, 0.3, 0.15, 2.5, (0, sy + 1))
    if attrs["cloth_style"] == "shirt":
        collar = np.minimum(*(_polygon(p, q, [(s * 0.04, sy - 0.02), (s * (nw + 0.06), sy - 0.2),
                                              (s * (nw + 0.36), sy + 0.12), (s * 0.06, sy + 0.42)])
                              for s in (-1, 1)))
        col = _mix(col * folds[..., None], col * 1.12, f.alpha(collar))
        cloth = np.minimum(cloth, collar)
    else:
        col = col * folds[..., None]
    f.paint(win, _L["cloth"], cloth, col)
    if attrs["necklace"]:
        _draw_necklace(f, win, g, attrs)


def _draw_necklace(f: _Frame, win, g: dict, attrs: dict) -> None:
    p, q = win[2], win[3]
    half_w = g["neck_w"] + 0.12
    t = np.clip(p / half_w, -1, 1)
    top = g["shoulder_y"] - 0.2
    chain = _band(p, q, top + g["necklace_drop"] * np.sqrt(1 - t * t), 0.045, -half_w, half_w)
    pendant = _circle(p, q, 0, top + g["necklace_drop"] + 0.1, 0.08)
    d = np.minimum(chain, pendant)
    glint = 1 + 0.25 * np.sin(p * 40) ** 8  # (h, w) small highlights along the chain
    f.paint(win, _L["neck_l"], d, _rgb(_METALS[attrs["jewelry_metal"]]) * glint[..., None])


def _hair_color(g: dict, attrs: dict, p, q, d) -> np.ndarray:
    """Hair colour: base x light x strands along the fall of the hair, plus a sheen band."""
    base = _rgb(attrs["hair_color"], g["albedo"][1])
    ph1, ph2, n = g["strands"]
    phi = np.arctan2(p, q + 1.3)  # (h, w) angle around a point above the crown
    if attrs["hair_style"] in ("wavy", "curly"):
        freq, ph, _ = g["wave"]
        phi = phi + 0.05 * np.sin(q * freq + ph)
    strands = 1 + 0.08 * np.sin(n * phi + ph1) + 0.05 * np.sin(2.3 * n * phi + ph2)
    rho = np.hypot(p, q + 0.28)
    lx, ly, _ = g["light"]
    sheen = np.exp(-((rho - 0.95) / 0.12) ** 2) * np.clip(0.5 + p * lx + (q + 0.28) * ly, 0, 1)
    col = base * _shade(g, p, q, d, 0.2, 0.07, 2.0) * strands[..., None]
    return col + 0.09 * sheen[..., None]


def _hair_cap(g: dict, p, q, extra: float = 0.0):
    v = g["volume"] + extra
    return _ellipse(p, q, 0, -0.28, 1.1 + v, 1.08 + 0.9 * v)


def _hair_length(style: str, g: dict) -> float:
    """How far down (face units) the hair falls."""
    if style == "bob" or (style == "bangs" and g["hair_len"] < 2.5):
        return g["bob_len"]
    return {"long": g["hair_len"], "wavy": g["hair_len"], "bangs": g["hair_len"]}.get(style, 1.3)


def _hair_back(style: str, g: dict, p, q):
    """The hair silhouette behind the head, neck and shoulders (drawn first)."""
    cap, v = _hair_cap(g, p, q), g["volume"]
    freq, phase, amp = g["wave"]
    length = _hair_length(style, g)
    if style == "short":
        return np.maximum(cap, q - 0.15)
    if style in ("long", "wavy", "bob", "bangs"):
        fall = _box(p, q, 0, (length - 0.3) / 2, 1.26 + v, (length + 0.3) / 2, 0.6)
        fall = fall + 0.03 * np.sin(p * 9 + phase) * (q > length - 0.4)  # uneven tips
        if style == "wavy":
            fall = fall - amp * np.sin(q * freq + phase)
        return np.minimum(cap, fall)
    if style == "curly":
        phi = np.arctan2(q + 0.15, p)
        return _ellipse(p, q, 0, -0.15, 1.42 + v, 1.5 + v) - 0.07 * np.sin(11 * phi + phase)
    if style == "bun":
        return np.minimum(_hair_cap(g, p, q, -0.04), _circle(p, q, 0, -1.5, 0.36))
    if style == "pigtails":
        tails = [_ellipse(p, q, s * 1.36, 0.62, 0.3, 0.72, -s * 0.25) for s in (-1, 1)]
        return np.minimum(cap, np.minimum(*tails))
    raise ValueError(f"unknown hair style {style!r}")


def _hair_front(style: str, g: dict, attrs: dict, p, q, yaw: float = 0.0):
    """Hair over the face: the cap above the hairline, plus side locks over the ears and an
    optional lock over the face; the hairline lies on the head turned by `yaw`."""
    freq, phase, amp = g["wave"]
    cap_p, p = p, (to_surface(p, yaw) if yaw else p)
    if style == "bangs":
        line = g["bang_y"] + 0.12 * p * p + 0.035 * np.sin(p * 17 + phase)
    elif style == "curly":
        line = g["hairline"] + 0.26 * p * p + 0.05 * np.sin(p * 14 + phase)
    else:
        # Temples recede; sideburns come down in front of the ears (still visible under a hat).
        sideburn = 0.45 * np.clip((np.abs(p) - 0.8) / 0.12, 0, 1)
        line = g["hairline"] + 0.3 * p * p - 0.08 * g["part"] * p + sideburn
    front = np.maximum(_hair_cap(g, cap_p, q, 0.02 if style == "bun" else 0.0), q - line)
    if g.get("lock") is not None:
        lp, lq, lw = g["lock"]
        front = np.minimum(front, _ellipse(p, q, lp, lq - 0.45, lw, 0.6, -0.35 * np.sign(lp)))
    if attrs["ears_visible"]:
        return front
    end = _hair_length(style, g)  # long locks fall in front of the shoulders
    width = 0.24 + 0.5 * g["volume"] + (0.15 if style == "curly" else 0.0)
    locks = [_box(cap_p, q, s * (1.08 + width / 2 - 0.12), (end - 0.7) / 2, width,
                  (end + 0.7) / 2, 0.2) for s in (-1, 1)]
    locks = np.minimum(*locks)
    if style in ("wavy", "curly"):
        locks = locks - amp * np.sin(q * freq + phase)
    return np.minimum(front, locks)


def _draw_hair(f: _Frame, g: dict, attrs: dict, layer: str) -> None:
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
    f.paint(win, _L["hair"], d, _hair_color(g, attrs, win[2], win[3], d))


def _face_shape(g: dict, p, q):
    """An egg: taller forehead than chin, jaw narrowing toward the chin."""
    jaw = 1 - g["jaw"] * np.clip(q / g["chin"], 0, 1) ** 2
    return _ellipse(p / jaw, q, 0, 0, 1, np.where(q < 0, g["top"], g["chin"]))


def _ears(yaw: float) -> list[tuple[int, int, float, float, bool]]:
    """Visible ears: (side, label, centre p, width gain, drawn over the face).

    An ear sits at the side of the head (angle +-90 degrees): turned away by more than 25
    degrees it is hidden; turned toward the viewer by more than 15 it shows on the cheek side,
    wider, in front of the face's outline.
    """
    out = []
    for side, label in ((1, _L["l_ear"]), (-1, _L["r_ear"])):
        if not yaw:
            out.append((side, label, side * 1.0, 1.0, False))
        elif side * yaw <= np.deg2rad(25):
            toward = side * yaw < -np.deg2rad(15)
            out.append((side, label, side * float(np.cos(yaw)), 1 + abs(np.sin(yaw)), toward))
    return out


def _draw_ears(f: _Frame, g: dict, attrs: dict, over_face: bool = False) -> None:
    if not attrs["ears_visible"]:
        return
    skin = _rgb(attrs["skin_tone"], g["albedo"][0])
    s_ = g["ear_size"]
    for side, label, cp, widen, over in _ears(f.yaw):
        if over != over_face:
            continue
        win = f.window(cp - 0.3 * widen, cp + 0.3 * widen, g["ear_y"] - 0.4, g["ear_y"] + 0.4)
        p, q = win[2], win[3]
        d = _ellipse(p, q, cp, g["ear_y"], 0.19 * s_ * widen, 0.3 * s_, side * 0.15)
        inner = _ellipse(p, q, cp + side * 0.03, g["ear_y"] - 0.02, 0.08 * s_, 0.18 * s_)
        col = skin * _shade(g, p, q, d, 0.3, 0.06, 0.3, (cp, g["ear_y"]))
        col = _mix(col, skin * 0.7, f.alpha(inner) * 0.6)
        f.paint(win, label, d, col)


def _draw_face(f: _Frame, g: dict, attrs: dict) -> None:
    """The skin of the face, with rosy cheeks or a beard (shown in colour only, not in the mask)."""
    win = f.window(-1.1, 1.1, -g["top"] - 0.05, g["chin"] + 0.05)
    p, q = win[2], win[3]
    if f.yaw:
        # The face moves toward the turn; its features lie on the turned surface.
        d = _face_shape(g, p - 0.08 * np.sin(f.yaw), q)
        p = to_surface(p, f.yaw)
    else:
        d = _face_shape(g, p, q)
    skin = _rgb(attrs["skin_tone"], g["albedo"][0])
    col = skin * _shade(g, p, q, d, 0.28, 0.16)
    # Shadowed eye sockets give the face a little depth.
    socket = np.exp(-((np.abs(p) - g["eye_x"]) / 0.22) ** 2 - ((q - g["eye_y"] + 0.04) / 0.16) ** 2)
    col = col * (1 - 0.1 * socket)[..., None]
    if attrs["rosy_cheeks"]:
        cheeks = np.exp(-(((np.abs(p) - 0.55) / 0.18) ** 2 + ((q - 0.32) / 0.14) ** 2))
        col = _mix(col, _rgb((226, 110, 120)), 0.35 * cheeks)
    if attrs["beard"]:
        # Stubble on the jaw and chin: light enough that the skin tone still reads.
        beard_base = _rgb(attrs["hair_color"] or "brown") * 0.6
        region = np.clip((q - g["mouth_y"]) / 0.12, 0, 1) * np.clip(-d / 0.05, 0, 1)
        stubble = np.clip(0.3 + 0.15 * f.cv.noise[0][win[0], win[1]], 0, 0.5)  # (h, w)
        col = _mix(col, beard_base, region * stubble)
    f.paint(win, _L["skin"], d, col)


def _draw_earrings(f: _Frame, g: dict, attrs: dict) -> None:
    if not attrs["earrings"]:
        return
    metal = _rgb(_METALS[attrs["jewelry_metal"]])
    lobe = g["ear_y"] + 0.26 * g["ear_size"]
    k = g.get("earring_scale", 1.0)
    for _, _, cp, _, _ in _ears(f.yaw):
        win = f.window(cp - 0.2 * k, cp + 0.2 * k, lobe - 0.1, lobe + 0.45 * k)
        p, q = win[2], win[3]
        if attrs["earring_style"] == "studs":
            d = _circle(p, q, cp, lobe, 0.06 * k)
        elif attrs["earring_style"] == "hoops":
            d = np.abs(_circle(p, q, cp, lobe + 0.12 * k, 0.11 * k)) - 0.028
        else:
            d = np.minimum(_band(p, q, lobe + 0.1 * k, 0.1 * k, cp - 0.022, cp + 0.022),
                           _circle(p, q, cp, lobe + 0.25 * k, 0.065 * k))
        f.paint(win, _L["ear_r"], d, metal * _shade(g, p, q, d, 0.35, 0.03, 0.3, (cp, lobe)))


def _draw_nose(f: _Frame, g: dict, attrs: dict) -> None:
    top, length, width = g["eye_y"] - 0.06, g["nose_len"], g["nose_w"]
    tip = top + length
    win = f.window(-width - 0.15, width + 0.15, top - 0.05, tip + 0.2, turned=True, depth=0.25)
    p, q = win[2], win[3]
    d = np.minimum(_ellipse(p, q, 0, top + 0.5 * length, 0.075, 0.55 * length),
                   _ellipse(p, q, 0, tip, width, 0.095))
    skin = _rgb(attrs["skin_tone"], g["albedo"][0])
    lx, _, k = g["light"]
    side = 1 + 2.5 * k * lx * np.clip(p / width, -1, 1)  # (h, w) the side away from the light
    col = skin * _shade(g, p, q, d, 0.12, 0.05, 1.2, (0, tip)) * side[..., None]
    nostrils = np.minimum(*(_ellipse(p, q, s * 0.45 * width, tip + 0.045, 0.055, 0.028)
                            for s in (-1, 1)))
    col = _mix(col, skin * 0.45, f.alpha(nostrils))
    f.paint(win, _L["nose"], d, col)


def _eye_centres(g: dict):
    """(side, centre p, eye label, brow label); "l_" is the subject's left, the image's right."""
    return ((1, g["eye_x"], _L["l_eye"], _L["l_brow"]),
            (-1, -g["eye_x"], _L["r_eye"], _L["r_brow"]))


def _draw_glasses(f: _Frame, g: dict, attrs: dict) -> None:
    if not attrs["eyeglasses"]:
        return
    ey = g["eye_y"] - 0.02
    k, rim = g.get("lens_scale", 1.0), g.get("frame_w", 0.045)
    win = f.window(-1.0, 1.0, ey - 0.4 * k, ey + 0.4 * k, turned=True)
    p, q = win[2], win[3]
    if attrs["glasses_style"] == "round":
        lenses = [_circle(p, q, cp, ey, 0.27 * k) for _, cp, _, _ in _eye_centres(g)]
    else:
        lenses = [_box(p, q, cp, ey, 0.31 * k, 0.21 * k, 0.07) for _, cp, _, _ in _eye_centres(g)]
    lens = np.minimum(*lenses)
    inner = g["eye_x"] - 0.2 * k
    bridge = _band(p, q, ey - 0.1 + 0.2 * p * p, 0.025, -inner - 0.05, inner + 0.05)
    temples = _band(p, q, ey - 0.1, 0.025, -0.96, 0.96)
    frame = np.minimum(np.maximum(lens, -(lens + rim)), np.minimum(bridge, temples))
    under = f.cv.rgb[win[0], win[1]]
    col = _mix(under * 0.92 + _rgb((200, 215, 230)) * 0.08, _rgb(_FRAMES[attrs["glasses_color"]]),
               f.alpha(frame))
    f.paint(win, _L["eye_g"], np.minimum(lens, frame), col)


def _draw_eyes(f: _Frame, g: dict, attrs: dict) -> None:
    """Almond eyes: sclera, a large iris of the eye colour, pupil, catch light and lash line."""
    ew, eh = g["eye_w"], g["eye_w"] * g["eye_h"]
    iris_col = _rgb(attrs["eye_color"])
    for side, cp, label, _ in _eye_centres(g):
        cq = g["eye_y"]
        win = f.window(cp - ew - 0.05, cp + ew + 0.05, cq - eh - 0.05, cq + eh + 0.05,
                       turned=True)
        p, q = win[2], win[3]
        if g.get("eyes_closed"):
            # A closed eye: the lid's lash line, a thin slit in the mask.
            d = _ellipse(p, q, cp, cq + 0.3 * eh, ew, 0.2 * eh, -side * g["eye_angle"])
            skin = _rgb(attrs["skin_tone"], g["albedo"][0])
            f.paint(win, label, d, _mix(np.broadcast_to(skin * 0.8, p.shape + (3,)),
                                        _rgb(PUPIL), 0.7 * f.alpha(d + 0.05 * eh)))
            continue
        d = _ellipse(p, q, cp, cq, ew, np.where(q < cq, eh, 0.85 * eh), -side * g["eye_angle"])
        # A large iris (clipped by the lids) so the eye colour owns most eye pixels at 64 px.
        ip, iq, ri = cp + g["gaze"][0] * ew * 0.4, cq + g["gaze"][1] * eh, 1.15 * eh
        rho = np.hypot(p - ip, q - iq) / ri  # (h, w)
        col = _mix(np.broadcast_to(_rgb(SCLERA) * 0.95, p.shape + (3,)),
                   iris_col * (1.15 - 0.3 * rho * rho)[..., None], f.alpha((rho - 1) * ri))
        # Details smaller than a pixel fade with their area (a point-sampled coverage would
        # paint a whole pixel black for a pupil a third of a pixel wide).
        fade = min(1.0, (0.3 * ri * f.px / 0.6) ** 2)
        col = _mix(col, _rgb(PUPIL), fade * f.alpha((rho - 0.3) * ri))
        col = _mix(col, _rgb((250, 250, 250)), fade * f.alpha(_circle(p, q, ip + 0.3 * ri,
                                                                      iq - 0.35 * ri, 0.14 * ri)))
        lash = np.clip(1 - (d + 0.12 * eh) / (0.1 * eh), 0, 1) * (q < cq - 0.3 * eh)
        col = _mix(col, _rgb(PUPIL), 0.8 * min(1.0, eh * f.px / 2) * lash)
        f.paint(win, label, d, col)


def _brow_color(attrs: dict) -> np.ndarray:
    hair = attrs["hair_color"]
    if hair in ("gray", "white"):
        return _rgb("gray", 0.8)
    if hair in (None, "pink"):
        return _rgb("brown", 0.7)
    return _rgb(hair, 0.7)


def _draw_brows(f: _Frame, g: dict, attrs: dict) -> None:
    bw, thick = g["brow_w"], g["brow_thick"]
    col0 = 0.8 * _brow_color(attrs) + 0.2 * _rgb(attrs["skin_tone"])  # skin shows through
    for side, cp, _, label in _eye_centres(g):
        bp, bq = cp + side * 0.03, g["eye_y"] - g["brow_gap"]
        win = f.window(bp - bw - 0.05, bp + bw + 0.05, bq - 0.25, bq + 0.15, turned=True)
        p, q = win[2], win[3]
        t = side * (p - bp) / bw  # (h, w) -1 inner end .. 1 outer end
        centre = bq - g["brow_arch"] * (1 - ((t - 0.2) / 1.2) ** 2) - g["brow_slope"] * t
        half = thick * (1 - 0.5 * np.clip(t, 0, 1)) * (1 - 0.15 * np.clip(-t, 0, 1))
        d = _band(p, q, centre, half, bp - bw, bp + bw)
        hairs = 1 + 0.12 * np.sin(t * 45 + 30 * (q - centre))  # (h, w)
        f.paint(win, label, d, col0 * hairs[..., None])


def _lip_bands(g: dict, p, q):
    """Upper lip, lower lip and mouth opening as (centre, half height) over t = p / width."""
    t = np.clip(p / g["mouth_w"], -1, 1)
    env = np.sqrt(1 - t * t)  # (h, w) lips taper to the corners
    line = g["mouth_y"] - g["smile"] * t * t
    gap = 0.5 * g["open"] * env
    bow = 1 - 0.3 * np.exp(-(t / 0.16) ** 2)  # cupid's bow
    upper = g["lip_u"] * env * bow
    lower = g["lip_l"] * env
    return ((line - gap - upper / 2, upper / 2), (line + gap + lower / 2, lower / 2),
            (line, gap), line)


def _draw_mouth(f: _Frame, g: dict, attrs: dict) -> None:
    mw = g["mouth_w"]
    win = f.window(-mw - 0.05, mw + 0.05, g["mouth_y"] - 0.3, g["mouth_y"] + 0.3, turned=True)
    p, q = win[2], win[3]
    (uc, uh), (lc, lh), (mc, mh), line = _lip_bands(g, p, q)
    if g["open"] > 0:
        d = _band(p, q, mc, mh, -mw, mw)
        teeth = np.clip((line - mh + 0.45 * g["open"] - q) / 0.02, 0, 1)  # upper teeth
        col = _mix(np.broadcast_to(_rgb((80, 22, 30)), p.shape + (3,)), _rgb((236, 230, 218)),
                   teeth)
        f.paint(win, _L["mouth"], d, col)
    lip = _rgb(attrs["lip_color"])
    if not attrs["lipstick"]:
        lip = 0.8 * lip + 0.2 * _rgb(attrs["skin_tone"])
    du = _band(p, q, uc, uh, -mw, mw)
    centre = (0, g["mouth_y"])
    f.paint(win, _L["u_lip"], du, lip * _shade(g, p, q, du, 0.25, 0.03, 0.4, centre) * 0.94)
    dl = _band(p, q, lc, lh, -mw, mw)
    shine = 1 + 0.12 * np.exp(-((q - lc + 0.3 * lh) / (0.5 * lh + 1e-3)) ** 2)  # (h, w)
    lower = lip * _shade(g, p, q, dl, 0.25, 0.03, 0.4, centre) * shine[..., None]
    f.paint(win, _L["l_lip"], dl, lower)


def _draw_hat(f: _Frame, g: dict, attrs: dict) -> None:
    if not attrs["hat"]:
        return
    k = g.get("hat_scale", 1.0)
    win = f.window(-1.9 * k, 1.9 * k, -2.0 * k, -0.3)
    p, q = win[2], win[3]
    if "hat_scale" in g:  # varied: a hat of its own size, sitting higher or lower
        p, q = p / k, (q + 0.3) / k - 0.3 + g["hat_lift"]
    col = _rgb(attrs["hat_color"])
    style = attrs["hat_style"]
    if style == "beanie":
        d = np.maximum(_ellipse(p, q, 0, -0.7, 1.2, 0.88), q + 0.5)
        gain = np.where(q > -0.75, 0.85 + 0.06 * np.sin(p * 45), 1.0)  # ribbed cuff
    elif style == "cap":
        d = np.minimum(np.maximum(_ellipse(p, q, 0, -0.72, 1.14, 0.8), q + 0.58),
                       _ellipse(p, q, 0, -0.6, 0.95, 0.17))
        gain = np.where(q > -0.62, 0.8, 1.0)  # brim in its own shadow
    else:
        d = np.minimum(_box(p, q, 0, -1.3, 0.82, 0.48, 0.28), _ellipse(p, q, 0, -0.82, 1.75, 0.2))
        gain = np.where((q > -1.02) & (q < -0.86), 0.55, 1.0)  # hat band
    f.paint(win, _L["hat"], d, col * _shade(g, p, q, d, 0.3, 0.1, 1.5, (0, -1)) * gain[..., None])


def _check_args(index: int, seed: int, resolution: int, variant: str, num_captions: int,
                layout: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"synthfaces: variant must be one of {VARIANTS}, got {variant!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"synthfaces: layout must be one of {LAYOUTS}, got {layout!r}")
    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise ValueError(f"synthfaces: resolution must be in [{MIN_RESOLUTION}, {MAX_RESOLUTION}],"
                         f" got {resolution}")
    if index < 0 or seed < 0:
        raise ValueError(f"synthfaces: index and seed must be >= 0, got {index}, {seed}")
    if num_captions < 0:
        raise ValueError(f"synthfaces: num_captions must be >= 0, got {num_captions}")


def _streams(index: int, seed: int, variant: str) -> tuple[np.random.Generator, ...]:
    """Independent generators for shape, texture, captions and layout variety of one face."""
    code = VARIANTS.index(variant)
    return tuple(np.random.Generator(np.random.PCG64([seed, index, code, k])) for k in range(4))


def _compose(attrs: dict, g: dict, resolution: int, tex: np.random.Generator) -> _Canvas:
    cv = _Canvas(resolution, tex)
    _draw_background(cv, g, attrs)
    head = _Frame(cv, g["cx"], g["cy"], g["size"], g["tilt"], g)
    _draw_hair(head, g, attrs, "back")
    _draw_body(cv, g, attrs)
    _draw_ears(head, g, attrs)
    _draw_face(head, g, attrs)
    _draw_ears(head, g, attrs, over_face=True)
    for part in (_draw_earrings, _draw_nose, _draw_glasses, _draw_eyes, _draw_brows, _draw_mouth):
        part(head, g, attrs)
    _draw_hair(head, g, attrs, "front")
    _draw_hat(head, g, attrs)
    cv.rgb *= (1 + 0.02 * cv.noise[1])[..., None]
    return cv


def render(index: int, *, seed: int = 0, resolution: int = 128, variant: str = "standard",
           num_captions: int = 4, layout: str = "template") -> SynthFace:
    """Render SynthFace number `index` of (seed, variant, layout) at `resolution` px square.

    Returns the image (H, W, 3) uint8, its label map (H, W) uint8 in 0..18, `num_captions`
    captions (caption 0 names every colour attribute of the face, see `make_captions`) and the
    attributes. The same arguments give identical bytes; the geometry is the same at every
    resolution. `layout` is `template` (upright, frontal, centred), `varied` (the pose and
    expression ranges of real portrait masks, `synthfaces_layout`) or `beyond` (`varied` pushed
    past its margins in the way `BEYOND_KINDS[index % 5]` names: the off-distribution set).
    """
    _check_args(index, seed, resolution, variant, num_captions, layout)
    shape_rng, tex_rng, text_rng, layout_rng = _streams(index, seed, variant)
    attrs = sample_attributes(shape_rng, variant)
    g = _sample_geometry(shape_rng, attrs, variant)
    if layout != "template":
        attrs, g = vary(layout_rng, attrs, g, variant)
    if layout == "beyond":
        kind = BEYOND_KINDS[index % len(BEYOND_KINDS)]
        attrs, g = beyond(layout_rng, attrs, g, kind,
                          tuple(c for c in PALETTE_NAMES if c != attrs["background_color"]))
    cv = _compose(attrs, g, resolution, tex_rng)
    image = np.clip(cv.rgb * 255 + 0.5, 0, 255).astype(np.uint8)  # (R, R, 3)
    attrs = dict(attrs, variant=variant, head_size=round(g["size"], 4),
                 head_tilt_deg=round(float(np.rad2deg(g["tilt"])), 2),
                 head_x=round(g["cx"], 4), head_y=round(g["cy"], 4))
    if layout != "template":
        attrs.update(layout=layout, head_yaw_deg=round(float(np.rad2deg(g["yaw"])), 2))
    return SynthFace(image=image, label_map=cv.labels, attributes=attrs,
                     captions=make_captions(attrs, text_rng, num_captions))


def contact_sheet(n: int, resolution: int, variant: str = "standard", seed: int = 0,
                  cols: int = 8, layout: str = "template") -> np.ndarray:
    """A grid of `n` faces, each beside its colour mask: (rows * R, cols * 2R, 3) uint8."""
    cols = min(cols, n)
    rows = -(-n // cols)
    sheet = np.full((rows * resolution, cols * 2 * resolution, 3), 255, np.uint8)
    for i in range(n):
        face = render(i, seed=seed, resolution=resolution, variant=variant, num_captions=0,
                      layout=layout)
        r, c = divmod(i, cols)
        y, x = r * resolution, c * 2 * resolution
        sheet[y:y + resolution, x:x + resolution] = face.image
        sheet[y:y + resolution, x + resolution:x + 2 * resolution] = PALETTE[face.label_map]
    return sheet


def benchmark(n: int, resolution: int, variant: str = "standard", seed: int = 0,
              layout: str = "template") -> dict:
    """Render `n` faces and report the wall time with the machine and its load."""
    load_before = os.getloadavg()
    start = time.perf_counter()
    for i in range(n):
        render(i, seed=seed, resolution=resolution, variant=variant, layout=layout)
    seconds = time.perf_counter() - start
    return {
        "n": n, "resolution": resolution, "variant": variant, "layout": layout,
        "seconds": round(seconds, 3),
        "images_per_s": round(n / seconds, 2),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__,
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
    }


def main(argv: list[str] | None = None) -> None:
    """`sheet --out PNG` writes a contact sheet; `bench --out JSON` times rendering."""
    parser = argparse.ArgumentParser(prog="python -m facemogle.data.synthfaces")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, n in (("sheet", 64), ("bench", 1000)):
        cmd = sub.add_parser(name)
        cmd.add_argument("--out", required=True)
        cmd.add_argument("--n", type=int, default=n)
        cmd.add_argument("--resolution", type=int, default=128)
        cmd.add_argument("--variant", choices=VARIANTS, default="standard")
        cmd.add_argument("--seed", type=int, default=0)
        cmd.add_argument("--layout", choices=LAYOUTS, default="template")
    args = parser.parse_args(argv)
    if args.command == "sheet":
        save_png(args.out, contact_sheet(args.n, args.resolution, args.variant, args.seed,
                                         layout=args.layout))
    else:
        result = benchmark(args.n, args.resolution, args.variant, args.seed, args.layout)
        write_json(args.out, result)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
