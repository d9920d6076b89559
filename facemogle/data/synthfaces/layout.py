"""SynthFaces layouts: the `template` pose of the first renderer, or the `varied` pose of real
portrait masks (docs/synthfaces.md, "Layout variety").

`template` faces are upright, frontal, centred and of one size. `varied` draws the pose and the
expression from target ranges taken from CelebA-HQ / CelebAMask-HQ (`TARGETS`), plus margins
beyond them: scale, position, roll, yaw up to near-profile, open and smiling mouths, closed eyes,
reshaped hats, glasses, earrings and hair, an occluding lock of hair, and a smooth per-face warp
of the whole head frame so that no two region outlines are one template.

`vary` only changes the attributes and geometry that `sample.py` drew for `template`, from its
own random stream, so a `template` face keeps its bytes. `warp`, `to_surface` and `to_screen`
map a `varied` face's frame coordinates for `canvas.py`.
"""

from __future__ import annotations

import numpy as np

LAYOUTS: tuple[str, ...] = ("template", "varied", "beyond")  # beyond: the off-distribution set

# What a rendered set is measured against (`stats.py`): ranges that hold most real
# aligned portraits (CelebA-HQ / CelebAMask-HQ crops), as measured on label maps. Image units span
# [-1, 1] (y down), angles are degrees, shares are of all faces. Sources: docs/synthfaces.md.
TARGETS: dict[str, tuple[float, float]] = {
    "interocular": (0.15, 0.25),   # eye-centre distance over the image side (crop rule: <= 1/4)
    "eye_level_y": (-0.12, 0.0),   # crop centre 0.1 x eye-to-mouth below the eyes
    "face_x": (-0.06, 0.06),       # crop centred on the eyes and mouth
    "roll_deg": (-10.0, 10.0),     # crops rotated upright by the eye line
    "yaw_deg": (-35.0, 35.0),      # mostly frontal (no published distribution: docs/synthfaces.md)
    "share_mouth_open": (0.40, 0.56),   # CelebA Mouth_Slightly_Open 48%
    "share_smiling": (0.40, 0.56),      # CelebA Smiling 48%
    "share_eyeglasses": (0.04, 0.12),   # CelebA Eyeglasses 6.5%
    "share_hat": (0.03, 0.10),          # CelebA Wearing_Hat 4.8%
    "share_earrings": (0.12, 0.30),     # CelebA Wearing_Earrings 19%
    "share_necklace": (0.06, 0.16),     # CelebA Wearing_Necklace 12%
}

# Sampling ranges of the `varied` pose (SynthFaces units: `size` is half the face width over half
# the image side, `cx`/`cy` the head centre at eye level), chosen so that the measured
# distributions above fall inside TARGETS, and their margins beyond.
_RANGES: dict[str, tuple[float, float]] = {"size": (0.45, 0.65), "cx": (-0.06, 0.06),
                                           "cy": (-0.20, 0.0)}

# Fractions of `varied` faces drawn beyond the target ranges (margins).
_BEYOND = {"size": 0.2, "position": 0.15, "roll": 0.15, "three_quarter": 0.2, "profile": 0.08}

# The off-distribution set's kinds of `beyond` faces: past every margin of `varied`.
BEYOND_KINDS: tuple[str, ...] = ("larger", "smaller", "tilted", "off-centre", "every accessory")


def vary(rng: np.random.Generator, attrs: dict, g: dict, variant: str) -> tuple[dict, dict]:
    """`varied` attributes and geometry from the `template` ones (new dicts)."""
    g = dict(g, **_pose(rng, g, variant))
    expression, geo = _expression(rng, g)
    g.update(geo)
    g.update(_shapes(rng, attrs))
    return dict(attrs, **expression), g


def _pose(rng: np.random.Generator, g: dict, variant: str) -> dict:
    """Scale, position, roll and yaw; the zero-shot set keeps its own scale, position and roll."""
    out = {}
    if variant != "zeroshot":
        out["size"] = _in_or_beyond(rng, "size", _BEYOND["size"], 0.13)
        out["cx"] = _in_or_beyond(rng, "cx", _BEYOND["position"], 0.2)
        out["cy"] = _in_or_beyond(rng, "cy", _BEYOND["position"], 0.12)
        roll = (_beyond(rng, -10, 10, 20) if rng.random() < _BEYOND["roll"]
                else float(np.clip(rng.normal(0, 4), -10, 10)))
        out["tilt"] = float(np.deg2rad(roll))
    out["yaw"] = _yaw(rng)
    size = out.get("size", g["size"])
    # The shoulders' top stays inside the picture: the cloth colour must be visible.
    out["cy"] = min(out.get("cy", g["cy"]), 0.92 - g["shoulder_y"] * size)
    return out


def _yaw(rng: np.random.Generator) -> float:
    """Mostly frontal, a share three-quarter and a share near-profile; radians, either side."""
    u = rng.random()
    if u < _BEYOND["profile"]:
        yaw = rng.uniform(60, 78)
    elif u < _BEYOND["profile"] + _BEYOND["three_quarter"]:
        yaw = rng.uniform(35, 60)
    else:
        yaw = min(abs(rng.normal(0, 15)), 35)
    return float(np.deg2rad(yaw) * rng.choice([-1, 1]))


def _expression(rng: np.random.Generator, g: dict) -> tuple[dict, dict]:
    smiling = bool(rng.random() < 0.48)
    mouth_open = bool(rng.random() < 0.48)
    closed = bool(rng.random() < 0.07)
    geo = {
        "smile": rng.uniform(0.06, 0.13) if smiling else rng.uniform(-0.02, 0.04),
        "mouth_w": g["mouth_w"] * (rng.uniform(1.05, 1.2) if smiling else 1.0),
        "open": rng.uniform(0.06, 0.22) if mouth_open else 0.0,
        "eyes_closed": closed,
    }
    return {"mouth_open": mouth_open, "smiling": smiling, "eyes_closed": closed}, geo


def _shapes(rng: np.random.Generator, attrs: dict) -> dict:
    """Per-face reshaping of accessories and hair, and the warp of the head frame."""
    u = rng.uniform
    lock = attrs["hair_style"] in ("long", "wavy", "bangs", "bob", "curly") and rng.random() < 0.25
    return {
        "hat_scale": u(0.88, 1.18), "hat_lift": u(-0.08, 0.12),
        "lens_scale": u(0.82, 1.22), "frame_w": u(0.03, 0.065),
        "earring_scale": u(0.75, 1.5),
        "volume": u(0.02, 0.24), "hair_len": u(1.6, 3.4), "bob_len": u(0.85, 1.4),
        "lock": (float(rng.choice([-1, 1])) * u(0.25, 0.7), u(-0.2, 0.25), u(0.14, 0.26))
        if lock else None,
        # Two smooth and one fine component per axis (face units): amplitude, frequency, phase.
        "warp": tuple((u(0.02, 0.05), u(1.5, 3.5), u(0, 6.3), u(0.004, 0.012), u(7, 12),
                       u(0, 6.3)) for _ in range(2)),
    }


def _in_or_beyond(rng: np.random.Generator, key: str, p_beyond: float, margin: float) -> float:
    lo, hi = _RANGES[key]
    if rng.random() < p_beyond:
        return _beyond(rng, lo, hi, margin)
    return float(rng.uniform(lo, hi))


def _beyond(rng: np.random.Generator, lo: float, hi: float, margin: float) -> float:
    """A value up to `margin` outside [lo, hi], on a random side."""
    return float(rng.uniform(hi, hi + margin) if rng.random() < 0.5
                 else rng.uniform(lo - margin, lo))


def beyond(rng: np.random.Generator, attrs: dict, g: dict, kind: str,
           colours: tuple[str, ...]) -> tuple[dict, dict]:
    """A `varied` face pushed outside the training ranges in one way (`BEYOND_KINDS`); the
    hat colour of an added hat is one of `colours`. Returns new dicts."""
    attrs, g, u = dict(attrs), dict(g), rng.uniform
    side = float(rng.choice([-1, 1]))
    if kind == "larger":
        g.update(size=u(0.82, 0.95), cy=u(-0.45, -0.25), cx=u(-0.05, 0.05))
    elif kind == "smaller":
        g.update(size=u(0.2, 0.28), cy=u(-0.2, 0.2))
    elif kind == "tilted":
        g.update(tilt=float(np.deg2rad(side * u(32, 50))))
    elif kind == "off-centre":
        g.update(cx=side * u(0.3, 0.42), cy=u(-0.3, 0.1))
    elif kind == "every accessory":
        attrs.update(hat=True, hat_color=str(rng.choice(colours)),
                     hat_style=str(rng.choice(["beanie", "cap", "fedora"])), eyeglasses=True,
                     glasses_style=str(rng.choice(["round", "rectangular"])),
                     glasses_color=str(rng.choice(["black", "gold", "brown"])),
                     ears_visible=True, earrings=True,
                     earring_style=str(rng.choice(["studs", "hoops", "drops"])), necklace=True,
                     jewelry_metal=str(rng.choice(["gold", "silver"])))
    else:
        raise ValueError(f"unknown beyond kind {kind!r}; valid: {list(BEYOND_KINDS)}")
    return attrs, g


def warp(g: dict, p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The per-face smooth displacement of head-frame coordinates (identity without one)."""
    if g.get("warp") is None:
        return p, q
    (a1, f1, h1, b1, k1, j1), (a2, f2, h2, b2, k2, j2) = g["warp"]
    dp = a1 * np.sin(f1 * q + h1) + b1 * np.sin(k1 * q + 0.7 * k1 * p + j1)
    dq = a2 * np.sin(f2 * p + h2) + b2 * np.sin(k2 * p - 0.6 * k2 * q + j2)
    return (p + dp).astype(np.float32), (q + dq).astype(np.float32)


def to_surface(p: np.ndarray, yaw: float, depth: float = 0.0) -> np.ndarray:
    """Screen p (face units) of a head turned by `yaw` -> p on the unturned face.

    The face is a cylinder of radius 1 (1 + `depth` for a part that stands off it, the nose): a
    point at angle t appears at r sin(t + yaw). Angles past the silhouette continue linearly, so
    the far side maps outside the face and nothing is drawn twice.
    """
    r = 1.0 + depth
    t = np.arcsin(np.clip(p / r, -1, 1)) - yaw
    half = np.pi / 2
    out = np.where(np.abs(t) <= half, np.sin(t), np.sign(t) * (1 + np.abs(t) - half))
    out = np.where(np.abs(p) > r, np.sign(p) * 9.0, out)  # outside the silhouette: nothing
    return (out * r).astype(np.float32)


def to_screen(p: float, yaw: float) -> float:
    """Where surface p appears on screen (clipped to the silhouette)."""
    t = np.arcsin(np.clip(p, -1, 1)) + yaw
    return float(np.sin(np.clip(t, -np.pi / 2, np.pi / 2)))
