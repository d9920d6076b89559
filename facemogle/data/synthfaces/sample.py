"""What a SynthFace is: its attributes (everything a caption can say) and its shape.

Both come from the face's shape stream (`face.render`), attributes first. The `zeroshot` variant
plays MM-FFHQ-Female: women only, hair styles and colours held out of `standard`
(`ZEROSHOT_ONLY`), colour pairs that `standard` never renders (`HELD_OUT_PAIRS`), and head sizes,
positions and tilts outside the `template` ranges but inside the margins of the `varied` layout
(`layout.py`, docs/synthfaces.md).
"""

from __future__ import annotations

import numpy as np

from facemogle.data.colours import PALETTE_NAMES

VARIANTS: tuple[str, ...] = ("standard", "zeroshot")


# Values only the zero-shot variant draws, and colour pairs `standard` never renders.
ZEROSHOT_ONLY: dict[str, tuple[str, ...]] = {"hair_style": ("bun", "pigtails"),
                                             "hair_color": ("pink",)}


HELD_OUT_PAIRS: tuple[tuple[tuple[str, str], tuple[str, str]], ...] = (
    (("hair_color", "blond"), ("cloth_color", "red")),
    (("hair_color", "black"), ("background_color", "yellow")),
)


# Jewellery metals and glasses frames: attribute value -> RGB (what `draw.py` paints).
METALS = {"gold": (214, 172, 60), "silver": (196, 198, 206)}
FRAMES = {"black": (28, 26, 28), "gold": (196, 156, 60), "brown": (92, 56, 34)}


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
_EYE_WEIGHTS = {"brown": .45, "blue": .25, "green": .15, "gray": .15}
_SKIN_WEIGHTS = {"pale": .2, "fair": .3, "olive": .2, "tan": .15, "dark": .15}
_LIP_WEIGHTS = {"red": .45, "pink": .35, "purple": .2}
_BROW_WEIGHTS = {"woman": {"arched": .55, "straight": .3, "bushy": .15},
                 "man": {"arched": .2, "straight": .4, "bushy": .4}}
_NOSE_WEIGHTS = {"woman": {"small": .4, "medium": .4, "big": .2},
                 "man": {"small": .2, "medium": .45, "big": .35}}
_CLOTH_STYLES = {"woman": ["t-shirt", "v-neck", "shirt", "scoop"],
                 "man": ["t-shirt", "v-neck", "shirt"]}


# An item -> the attributes that describe it (None when the item is absent).
_ITEM_DETAILS = {"hat": ("hat_color", "hat_style"),
                 "eyeglasses": ("glasses_style", "glasses_color"), "earrings": ("earring_style",)}


def sample_attributes(rng: np.random.Generator, variant: str) -> dict:
    """Everything a caption can say about a face (colours are names from `COLORS`)."""
    zs = variant == "zeroshot"
    woman = zs or _chance(rng, 0.56)
    gender = "woman" if woman else "man"
    style = _pick(rng, _STYLE_WEIGHTS[(variant, gender)])
    hair_weights = dict(_HAIR_WEIGHTS, pink=0.25) if zs else _HAIR_WEIGHTS
    hair_color = None if style == "bald" else _pick(rng, hair_weights)
    ears_visible = style not in _LONG_STYLES or _chance(rng, 0.35)
    lipstick = woman and _chance(rng, 0.6 if zs else 0.55)
    hat = _chance(rng, 0.14 if zs else 0.06)
    attrs = {
        "gender": gender,
        "hair_style": style, "hair_color": hair_color,
        "eye_color": _pick(rng, _EYE_WEIGHTS),
        "skin_tone": _pick(rng, _SKIN_WEIGHTS),
        "lipstick": lipstick,
        "lip_color": _pick(rng, _LIP_WEIGHTS) if lipstick else "natural",
        "brows": _pick(rng, _BROW_WEIGHTS[gender]),
        "nose": _pick(rng, _NOSE_WEIGHTS[gender]),
        "mouth_open": _chance(rng, 0.4),
        "eyeglasses": _chance(rng, 0.15 if zs else 0.08),
        "glasses_style": str(rng.choice(["round", "rectangular"])),
        "glasses_color": str(rng.choice(list(FRAMES))),
        "ears_visible": ears_visible,
        "earrings": ears_visible and _chance(rng, 0.45 if woman else 0.04),
        "earring_style": str(rng.choice(["studs", "hoops", "drops"])),
        "necklace": _chance(rng, 0.16 if woman else 0.03),
        "jewelry_metal": str(rng.choice(list(METALS))),
        "hat": hat, "hat_style": str(rng.choice(["beanie", "cap", "fedora"])),
        "cloth_style": str(rng.choice(_CLOTH_STYLES[gender])),
        "beard": not woman and _chance(rng, 0.3),
        "rosy_cheeks": _chance(rng, 0.3 if woman else 0.05),
    }
    attrs.update(_sample_colors(rng, zs, attrs))
    _clear_absent_items(attrs)
    return attrs


def sample_geometry(rng: np.random.Generator, attrs: dict, variant: str) -> dict:
    """Shape parameters in face units (1 = half the face width); head position in image units."""
    u = rng.uniform
    size, tilt, cx, cy = _head_pose(rng, variant)
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


def _clear_absent_items(attrs: dict) -> None:
    """Absent items have no colour or shape: the dict says only what is in the picture."""
    for item, details in _ITEM_DETAILS.items():
        if not attrs[item]:
            attrs.update(dict.fromkeys(details))
    if not (attrs["earrings"] or attrs["necklace"]):
        attrs["jewelry_metal"] = None


def _head_pose(rng: np.random.Generator, variant: str) -> tuple[float, float, float, float]:
    """Head size, tilt (radians), and centre (x, y) in image units, before the layout's pose."""
    u = rng.uniform
    if variant == "zeroshot":
        size = u(0.30, 0.36) if _chance(rng, 0.5) else u(0.50, 0.56)
        tilt = np.deg2rad(u(12, 22)) * rng.choice([-1, 1])
        cx, cy = u(-0.14, 0.14), u(-0.2, 0.04)
    else:
        size = u(0.38, 0.48)
        tilt = np.deg2rad(np.clip(rng.normal(0, 6), -12, 12))
        cx, cy = u(-0.06, 0.06), u(-0.14, -0.04)
    return size, tilt, cx, cy
