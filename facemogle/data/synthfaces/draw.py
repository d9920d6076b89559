"""Rasterising a SynthFace: every region drawn in CelebAMask-HQ precedence onto one canvas.

`compose` paints the parts back to front, later parts overwriting earlier ones in the label map
and over them in colour; each part is a distance field in the head's frame (the body has a
frame of its own between head and torso), with directional shading and edge darkening. Hair is
in `hair.py`.
"""

from __future__ import annotations

import numpy as np

from facemogle.core.labels import LABEL_INDEX
from facemogle.data.colours import PUPIL, SCLERA
from facemogle.data.synthfaces.canvas import Canvas, Frame, mix, pixel_centres, rgb, shade
from facemogle.data.synthfaces.hair import draw_hair
from facemogle.data.synthfaces.layout import to_surface
from facemogle.data.synthfaces.sample import FRAMES, METALS
from facemogle.data.synthfaces.sdf import band, box, circle, ellipse, polygon

_L = LABEL_INDEX


def compose(attrs: dict, g: dict, resolution: int, tex: np.random.Generator) -> Canvas:
    """The label map and RGB (float, [0, 1] before grain) of one face at `resolution` px."""
    cv = Canvas(resolution, tex)
    _draw_background(cv, g, attrs)
    head = Frame(cv, g["cx"], g["cy"], g["size"], g["tilt"], g)
    draw_hair(head, g, attrs, "back")
    _draw_body(cv, g, attrs)
    _draw_ears(head, g, attrs)
    _draw_face(head, g, attrs)
    _draw_ears(head, g, attrs, over_face=True)
    for part in (_draw_earrings, _draw_nose, _draw_glasses, _draw_eyes, _draw_brows, _draw_mouth):
        part(head, g, attrs)
    draw_hair(head, g, attrs, "front")
    _draw_hat(head, g, attrs)
    cv.rgb *= (1 + 0.02 * cv.noise[1])[..., None]
    return cv


def _draw_background(cv: Canvas, g: dict, attrs: dict) -> None:
    c = pixel_centres(cv.res)
    x, y = c[None, :], c[:, None]  # (1, R), (R, 1)
    lx, ly, k = g["light"]
    gain = 1.06 + 0.6 * k * (x * lx + y * ly) - 0.08 * (x * x + y * y)  # (R, R) soft vignette
    cv.rgb[:] = rgb(attrs["background_color"], g["albedo"][3]) * gain[..., None]


# ----------------------------------------------------------------------------------------------
# Body: neck, clothes, necklace
# ----------------------------------------------------------------------------------------------


def _draw_body(cv: Canvas, g: dict, attrs: dict) -> None:
    """Neck and chest skin, clothes with a neckline and folds, then an optional necklace."""
    f = _body_frame(cv, g)
    win = f.window(-g["shoulder_w"] - 0.3, g["shoulder_w"] + 0.3, 0.2,
                   (1.3 - g["cy"]) / g["size"] + 1)
    _draw_neck(f, win, g, attrs)
    _draw_cloth(f, win, g, attrs)
    if attrs["necklace"]:
        _draw_necklace(f, win, g, attrs)


def _body_frame(cv: Canvas, g: dict) -> Frame:
    # The neck follows the chin while the shoulders stay put: a frame between head and torso.
    chin_dx = -g["size"] * g["chin"] * np.sin(g["tilt"])
    return Frame(cv, g["cx"] + 0.6 * chin_dx, g["cy"], g["size"], 0.2 * g["tilt"], g)


def _draw_neck(f: Frame, win, g: dict, attrs: dict) -> None:
    """Neck and chest skin, darker under the chin."""
    p, q = win[2], win[3]
    sy, sw, nw = g["shoulder_y"], g["shoulder_w"], g["neck_w"]
    neck = np.minimum(box(p, q, 0, sy, nw, sy - 0.3, 0.12),
                      box(p, q, 0, sy + 2.2, sw - 0.2, 2.3, 0.8))
    skin = rgb(attrs["skin_tone"], g["albedo"][0])
    chin_shadow = 0.72 + 0.28 * np.clip((q - g["chin"] - 0.1) / 0.5, 0, 1)  # (h, w)
    neck_col = skin * shade(g, p, q, neck, 0.3, 0.1, 2, (0, sy)) * chin_shadow[..., None]
    f.paint(win, _L["neck"], neck, neck_col)


def _draw_cloth(f: Frame, win, g: dict, attrs: dict) -> None:
    """Clothes with the neckline of their style, folds, and a collar on a shirt."""
    p, q = win[2], win[3]
    sy, sw, nw = g["shoulder_y"], g["shoulder_w"], g["neck_w"]
    body = box(p, q, 0, sy + 2.6, sw, 2.6, 0.85)
    cloth = np.maximum(body, -_neckline(attrs["cloth_style"], g, p, q))
    fold_freq, fold_phase = g["folds"]
    folds = 1 + 0.05 * np.sin(p * fold_freq + fold_phase + 0.8 * q)  # (h, w)
    col = rgb(attrs["cloth_color"], g["albedo"][2])
    col = col * shade(g, p, q, cloth, 0.3, 0.15, 2.5, (0, sy + 1))
    if attrs["cloth_style"] == "shirt":
        collar = np.minimum(*(polygon(p, q, [(s * 0.04, sy - 0.02), (s * (nw + 0.06), sy - 0.2),
                                             (s * (nw + 0.36), sy + 0.12), (s * 0.06, sy + 0.42)])
                              for s in (-1, 1)))
        col = mix(col * folds[..., None], col * 1.12, f.alpha(collar))
        cloth = np.minimum(cloth, collar)
    else:
        col = col * folds[..., None]
    f.paint(win, _L["cloth"], cloth, col)


def _neckline(style: str, g: dict, p, q):
    sy, nw, depth = g["shoulder_y"], g["neck_w"], g["neckline"]
    crew = ellipse(p, q, 0, sy - 0.05, nw + 0.16, 0.34)
    if style == "v-neck":
        slope = depth / 0.55
        vee = (q - (sy + depth) + slope * np.abs(p)) / np.hypot(1, slope)
        return np.minimum(crew, vee)
    if style == "scoop":
        return ellipse(p, q, 0, sy - 0.1, nw + 0.45, 0.4 + 0.5 * depth)
    return crew


def _draw_necklace(f: Frame, win, g: dict, attrs: dict) -> None:
    p, q = win[2], win[3]
    half_w = g["neck_w"] + 0.12
    t = np.clip(p / half_w, -1, 1)
    top = g["shoulder_y"] - 0.2
    chain = band(p, q, top + g["necklace_drop"] * np.sqrt(1 - t * t), 0.045, -half_w, half_w)
    pendant = circle(p, q, 0, top + g["necklace_drop"] + 0.1, 0.08)
    d = np.minimum(chain, pendant)
    glint = 1 + 0.25 * np.sin(p * 40) ** 8  # (h, w) small highlights along the chain
    f.paint(win, _L["neck_l"], d, rgb(METALS[attrs["jewelry_metal"]]) * glint[..., None])


# ----------------------------------------------------------------------------------------------
# Head: ears, face, earrings
# ----------------------------------------------------------------------------------------------


def _draw_ears(f: Frame, g: dict, attrs: dict, over_face: bool = False) -> None:
    if not attrs["ears_visible"]:
        return
    skin = rgb(attrs["skin_tone"], g["albedo"][0])
    s_ = g["ear_size"]
    for side, label, cp, widen, over in _ears(f.yaw):
        if over != over_face:
            continue
        win = f.window(cp - 0.3 * widen, cp + 0.3 * widen, g["ear_y"] - 0.4, g["ear_y"] + 0.4)
        p, q = win[2], win[3]
        d = ellipse(p, q, cp, g["ear_y"], 0.19 * s_ * widen, 0.3 * s_, side * 0.15)
        inner = ellipse(p, q, cp + side * 0.03, g["ear_y"] - 0.02, 0.08 * s_, 0.18 * s_)
        col = skin * shade(g, p, q, d, 0.3, 0.06, 0.3, (cp, g["ear_y"]))
        col = mix(col, skin * 0.7, f.alpha(inner) * 0.6)
        f.paint(win, label, d, col)


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


def _draw_face(f: Frame, g: dict, attrs: dict) -> None:
    """The skin of the face, with rosy cheeks or a beard (shown in colour only, not in the mask)."""
    win = f.window(-1.1, 1.1, -g["top"] - 0.05, g["chin"] + 0.05)
    p, q = win[2], win[3]
    if f.yaw:
        # The face moves toward the turn; its features lie on the turned surface.
        d = _face_shape(g, p - 0.08 * np.sin(f.yaw), q)
        p = to_surface(p, f.yaw)
    else:
        d = _face_shape(g, p, q)
    f.paint(win, _L["skin"], d, _skin_color(f, win, g, attrs, p, q, d))


def _face_shape(g: dict, p, q):
    """An egg: taller forehead than chin, jaw narrowing toward the chin."""
    jaw = 1 - g["jaw"] * np.clip(q / g["chin"], 0, 1) ** 2
    return ellipse(p / jaw, q, 0, 0, 1, np.where(q < 0, g["top"], g["chin"]))


def _skin_color(f: Frame, win, g: dict, attrs: dict, p, q, d) -> np.ndarray:
    """Shaded skin with eye sockets, and rosy cheeks or stubble where the face has them."""
    skin = rgb(attrs["skin_tone"], g["albedo"][0])
    col = skin * shade(g, p, q, d, 0.28, 0.16)
    # Shadowed eye sockets give the face a little depth.
    socket = np.exp(-((np.abs(p) - g["eye_x"]) / 0.22) ** 2 - ((q - g["eye_y"] + 0.04) / 0.16) ** 2)
    col = col * (1 - 0.1 * socket)[..., None]
    if attrs["rosy_cheeks"]:
        cheeks = np.exp(-(((np.abs(p) - 0.55) / 0.18) ** 2 + ((q - 0.32) / 0.14) ** 2))
        col = mix(col, rgb((226, 110, 120)), 0.35 * cheeks)
    if attrs["beard"]:
        # Stubble on the jaw and chin: light enough that the skin tone still reads.
        beard_base = rgb(attrs["hair_color"] or "brown") * 0.6
        region = np.clip((q - g["mouth_y"]) / 0.12, 0, 1) * np.clip(-d / 0.05, 0, 1)
        stubble = np.clip(0.3 + 0.15 * f.cv.noise[0][win[0], win[1]], 0, 0.5)  # (h, w)
        col = mix(col, beard_base, region * stubble)
    return col


def _draw_earrings(f: Frame, g: dict, attrs: dict) -> None:
    if not attrs["earrings"]:
        return
    metal = rgb(METALS[attrs["jewelry_metal"]])
    lobe = g["ear_y"] + 0.26 * g["ear_size"]
    k = g.get("earring_scale", 1.0)
    for _, _, cp, _, _ in _ears(f.yaw):
        win = f.window(cp - 0.2 * k, cp + 0.2 * k, lobe - 0.1, lobe + 0.45 * k)
        p, q = win[2], win[3]
        d = _earring_shape(attrs["earring_style"], p, q, cp, lobe, k)
        f.paint(win, _L["ear_r"], d, metal * shade(g, p, q, d, 0.35, 0.03, 0.3, (cp, lobe)))


def _earring_shape(style: str, p, q, cp: float, lobe: float, k: float):
    """A stud, a hoop or a drop hanging from the lobe at (cp, lobe), scaled by k."""
    if style == "studs":
        return circle(p, q, cp, lobe, 0.06 * k)
    if style == "hoops":
        return np.abs(circle(p, q, cp, lobe + 0.12 * k, 0.11 * k)) - 0.028
    return np.minimum(band(p, q, lobe + 0.1 * k, 0.1 * k, cp - 0.022, cp + 0.022),
                      circle(p, q, cp, lobe + 0.25 * k, 0.065 * k))


# ----------------------------------------------------------------------------------------------
# Features: nose, glasses, eyes, brows, mouth
# ----------------------------------------------------------------------------------------------


def _draw_nose(f: Frame, g: dict, attrs: dict) -> None:
    top, length, width = g["eye_y"] - 0.06, g["nose_len"], g["nose_w"]
    tip = top + length
    win = f.window(-width - 0.15, width + 0.15, top - 0.05, tip + 0.2, turned=True, depth=0.25)
    p, q = win[2], win[3]
    d = np.minimum(ellipse(p, q, 0, top + 0.5 * length, 0.075, 0.55 * length),
                   ellipse(p, q, 0, tip, width, 0.095))
    skin = rgb(attrs["skin_tone"], g["albedo"][0])
    lx, _, k = g["light"]
    side = 1 + 2.5 * k * lx * np.clip(p / width, -1, 1)  # (h, w) the side away from the light
    col = skin * shade(g, p, q, d, 0.12, 0.05, 1.2, (0, tip)) * side[..., None]
    nostrils = np.minimum(*(ellipse(p, q, s * 0.45 * width, tip + 0.045, 0.055, 0.028)
                            for s in (-1, 1)))
    col = mix(col, skin * 0.45, f.alpha(nostrils))
    f.paint(win, _L["nose"], d, col)


def _eye_centres(g: dict):
    """(side, centre p, eye label, brow label); "l_" is the subject's left, the image's right."""
    return ((1, g["eye_x"], _L["l_eye"], _L["l_brow"]),
            (-1, -g["eye_x"], _L["r_eye"], _L["r_brow"]))


def _draw_glasses(f: Frame, g: dict, attrs: dict) -> None:
    if not attrs["eyeglasses"]:
        return
    ey = g["eye_y"] - 0.02
    k, rim = g.get("lens_scale", 1.0), g.get("frame_w", 0.045)
    win = f.window(-1.0, 1.0, ey - 0.4 * k, ey + 0.4 * k, turned=True)
    p, q = win[2], win[3]
    if attrs["glasses_style"] == "round":
        lenses = [circle(p, q, cp, ey, 0.27 * k) for _, cp, _, _ in _eye_centres(g)]
    else:
        lenses = [box(p, q, cp, ey, 0.31 * k, 0.21 * k, 0.07) for _, cp, _, _ in _eye_centres(g)]
    lens = np.minimum(*lenses)
    inner = g["eye_x"] - 0.2 * k
    bridge = band(p, q, ey - 0.1 + 0.2 * p * p, 0.025, -inner - 0.05, inner + 0.05)
    temples = band(p, q, ey - 0.1, 0.025, -0.96, 0.96)
    frame = np.minimum(np.maximum(lens, -(lens + rim)), np.minimum(bridge, temples))
    under = f.cv.rgb[win[0], win[1]]
    col = mix(under * 0.92 + rgb((200, 215, 230)) * 0.08, rgb(FRAMES[attrs["glasses_color"]]),
              f.alpha(frame))
    f.paint(win, _L["eye_g"], np.minimum(lens, frame), col)


def _draw_eyes(f: Frame, g: dict, attrs: dict) -> None:
    """Almond eyes: sclera, a large iris of the eye colour, pupil, catch light and lash line."""
    ew, eh = g["eye_w"], g["eye_w"] * g["eye_h"]
    for side, cp, label, _ in _eye_centres(g):
        cq = g["eye_y"]
        win = f.window(cp - ew - 0.05, cp + ew + 0.05, cq - eh - 0.05, cq + eh + 0.05,
                       turned=True)
        draw = _draw_closed_eye if g.get("eyes_closed") else _draw_open_eye
        draw(f, win, g, attrs, side, cp, label)


def _draw_closed_eye(f: Frame, win, g: dict, attrs: dict, side: int, cp: float,
                     label: int) -> None:
    """A closed eye: the lid's lash line, a thin slit in the mask."""
    p, q = win[2], win[3]
    ew, eh, cq = g["eye_w"], g["eye_w"] * g["eye_h"], g["eye_y"]
    d = ellipse(p, q, cp, cq + 0.3 * eh, ew, 0.2 * eh, -side * g["eye_angle"])
    skin = rgb(attrs["skin_tone"], g["albedo"][0])
    f.paint(win, label, d, mix(np.broadcast_to(skin * 0.8, p.shape + (3,)),
                               rgb(PUPIL), 0.7 * f.alpha(d + 0.05 * eh)))


def _draw_open_eye(f: Frame, win, g: dict, attrs: dict, side: int, cp: float,
                   label: int) -> None:
    p, q = win[2], win[3]
    ew, eh, cq = g["eye_w"], g["eye_w"] * g["eye_h"], g["eye_y"]
    d = ellipse(p, q, cp, cq, ew, np.where(q < cq, eh, 0.85 * eh), -side * g["eye_angle"])
    # A large iris (clipped by the lids) so the eye colour owns most eye pixels at 64 px.
    ip, iq, ri = cp + g["gaze"][0] * ew * 0.4, cq + g["gaze"][1] * eh, 1.15 * eh
    rho = np.hypot(p - ip, q - iq) / ri  # (h, w)
    col = mix(np.broadcast_to(rgb(SCLERA) * 0.95, p.shape + (3,)),
              rgb(attrs["eye_color"]) * (1.15 - 0.3 * rho * rho)[..., None],
              f.alpha((rho - 1) * ri))
    # Details smaller than a pixel fade with their area (a point-sampled coverage would
    # paint a whole pixel black for a pupil a third of a pixel wide).
    fade = min(1.0, (0.3 * ri * f.px / 0.6) ** 2)
    col = mix(col, rgb(PUPIL), fade * f.alpha((rho - 0.3) * ri))
    col = mix(col, rgb((250, 250, 250)), fade * f.alpha(circle(p, q, ip + 0.3 * ri,
                                                               iq - 0.35 * ri, 0.14 * ri)))
    lash = np.clip(1 - (d + 0.12 * eh) / (0.1 * eh), 0, 1) * (q < cq - 0.3 * eh)
    col = mix(col, rgb(PUPIL), 0.8 * min(1.0, eh * f.px / 2) * lash)
    f.paint(win, label, d, col)


def _draw_brows(f: Frame, g: dict, attrs: dict) -> None:
    bw, thick = g["brow_w"], g["brow_thick"]
    col0 = 0.8 * _brow_color(attrs) + 0.2 * rgb(attrs["skin_tone"])  # skin shows through
    for side, cp, _, label in _eye_centres(g):
        bp, bq = cp + side * 0.03, g["eye_y"] - g["brow_gap"]
        win = f.window(bp - bw - 0.05, bp + bw + 0.05, bq - 0.25, bq + 0.15, turned=True)
        p, q = win[2], win[3]
        t = side * (p - bp) / bw  # (h, w) -1 inner end .. 1 outer end
        centre = bq - g["brow_arch"] * (1 - ((t - 0.2) / 1.2) ** 2) - g["brow_slope"] * t
        half = thick * (1 - 0.5 * np.clip(t, 0, 1)) * (1 - 0.15 * np.clip(-t, 0, 1))
        d = band(p, q, centre, half, bp - bw, bp + bw)
        hairs = 1 + 0.12 * np.sin(t * 45 + 30 * (q - centre))  # (h, w)
        f.paint(win, label, d, col0 * hairs[..., None])


def _brow_color(attrs: dict) -> np.ndarray:
    hair = attrs["hair_color"]
    if hair in ("gray", "white"):
        return rgb("gray", 0.8)
    if hair in (None, "pink"):
        return rgb("brown", 0.7)
    return rgb(hair, 0.7)


def _draw_mouth(f: Frame, g: dict, attrs: dict) -> None:
    """The opening (with upper teeth) of an open mouth, then the upper and lower lips."""
    mw = g["mouth_w"]
    win = f.window(-mw - 0.05, mw + 0.05, g["mouth_y"] - 0.3, g["mouth_y"] + 0.3, turned=True)
    p, q = win[2], win[3]
    (uc, uh), (lc, lh), (mc, mh), line = _lip_bands(g, p)
    if g["open"] > 0:
        d = band(p, q, mc, mh, -mw, mw)
        teeth = np.clip((line - mh + 0.45 * g["open"] - q) / 0.02, 0, 1)  # upper teeth
        col = mix(np.broadcast_to(rgb((80, 22, 30)), p.shape + (3,)), rgb((236, 230, 218)),
                  teeth)
        f.paint(win, _L["mouth"], d, col)
    lip = rgb(attrs["lip_color"])
    if not attrs["lipstick"]:
        lip = 0.8 * lip + 0.2 * rgb(attrs["skin_tone"])
    du = band(p, q, uc, uh, -mw, mw)
    centre = (0, g["mouth_y"])
    f.paint(win, _L["u_lip"], du, lip * shade(g, p, q, du, 0.25, 0.03, 0.4, centre) * 0.94)
    dl = band(p, q, lc, lh, -mw, mw)
    shine = 1 + 0.12 * np.exp(-((q - lc + 0.3 * lh) / (0.5 * lh + 1e-3)) ** 2)  # (h, w)
    lower = lip * shade(g, p, q, dl, 0.25, 0.03, 0.4, centre) * shine[..., None]
    f.paint(win, _L["l_lip"], dl, lower)


def _lip_bands(g: dict, p):
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


# ----------------------------------------------------------------------------------------------
# Hat
# ----------------------------------------------------------------------------------------------


def _draw_hat(f: Frame, g: dict, attrs: dict) -> None:
    if not attrs["hat"]:
        return
    k = g.get("hat_scale", 1.0)
    win = f.window(-1.9 * k, 1.9 * k, -2.0 * k, -0.3)
    p, q = win[2], win[3]
    if "hat_scale" in g:  # varied: a hat of its own size, sitting higher or lower
        p, q = p / k, (q + 0.3) / k - 0.3 + g["hat_lift"]
    d, gain = _hat_shape(attrs["hat_style"], p, q)
    col = rgb(attrs["hat_color"])
    f.paint(win, _L["hat"], d, col * shade(g, p, q, d, 0.3, 0.1, 1.5, (0, -1)) * gain[..., None])


def _hat_shape(style: str, p, q):
    """(distance field, (h, w) colour gain) of a beanie, a cap or a fedora."""
    if style == "beanie":
        d = np.maximum(ellipse(p, q, 0, -0.7, 1.2, 0.88), q + 0.5)
        gain = np.where(q > -0.75, 0.85 + 0.06 * np.sin(p * 45), 1.0)  # ribbed cuff
    elif style == "cap":
        d = np.minimum(np.maximum(ellipse(p, q, 0, -0.72, 1.14, 0.8), q + 0.58),
                       ellipse(p, q, 0, -0.6, 0.95, 0.17))
        gain = np.where(q > -0.62, 0.8, 1.0)  # brim in its own shadow
    else:
        d = np.minimum(box(p, q, 0, -1.3, 0.82, 0.48, 0.28), ellipse(p, q, 0, -0.82, 1.75, 0.2))
        gain = np.where((q > -1.02) & (q < -0.86), 0.55, 1.0)  # hat band
    return d, gain
