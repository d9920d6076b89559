"""The off-distribution set: masks unlike the training set's, as a user brings them.

Three kinds, in this order of ids (docs/synthfaces.md, "The off-distribution set"):

- `beyond`: SynthFaces pushed outside the `varied` training ranges (`synthfaces.layout.beyond`:
  larger, smaller, more tilted, further off-centre, every accessory at once), exact label maps;
- `drawn`: masks painted by `draw_mask` as a person paints them in an editor: polygons and
  ellipses in flat colours, a code path that shares nothing with the renderer, and an image of
  the same flat painting (captions and colours from SynthFaces' attribute sampler);
- `photo`: crops of the real portraits that offline packages ship (scikit-image's astronaut,
  matplotlib's Grace Hopper), flipped and at two framings, written without a mask: the
  `parse_masks` stage parses them (`offdist.parser`, MediaPipe's face mesh by default), and
  generated faces are scored against that parsed mask.

Ids are zero-padded positions; `attributes["offdist_kind"]` names the kind.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from facemogle.core.labels import LABEL_INDEX, label_map_image
from facemogle.data.colours import COLORS, PUPIL
from facemogle.data.layout import Entry, Sample
from facemogle.data.synthfaces.face import render
from facemogle.data.synthfaces.sample import sample_attributes
from facemogle.data.synthfaces.text import make_captions

KINDS: tuple[str, ...] = ("beyond", "drawn", "photo")
INDEX_OFFSET = 1_000_000  # SynthFaces indices of `beyond` faces: far from every train/test index

# The offline portraits: a caption of what each shows, and its face's centre (x, y) and width in
# pixels (MediaPipe's face mesh landmarks: the middle and width of their bounding box).
PHOTOS: dict[str, tuple[str, tuple[float, float, float]]] = {
    "astronaut": ("a smiling woman with short brown hair wearing an orange suit",
                  (225.0, 124.0, 92.0)),
    "grace_hopper": ("an elderly woman with short white hair wearing glasses, a dark hat and a "
                     "dark uniform, in front of a blue background", (264.0, 233.0, 183.0)),
}
FRAMINGS = (2.2, 3.0)  # crop side over the face mesh's width


def _load_photo(name: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of one offline portrait."""
    if name == "astronaut":
        from skimage import data

        return np.asarray(data.astronaut())
    from matplotlib import cbook

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as image:
        return np.asarray(image.convert("RGB"))


def _crop(image: np.ndarray, face: tuple[float, float, float], framing: float,
          resolution: int) -> np.ndarray:
    """A square crop around the face, `framing` x its width, kept inside the image."""
    h, w = image.shape[:2]
    x, y, width = face
    side = min(framing * width, h, w)
    cx = np.clip(x, side / 2, w - side / 2)
    cy = np.clip(y + 0.1 * side, side / 2, h - side / 2)
    box = tuple(int(round(v)) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
    crop = Image.fromarray(image).crop(box).resize((resolution, resolution),
                                                   Image.Resampling.LANCZOS)
    return np.asarray(crop)


# ----------------------------------------------------------------------------------------------
# Masks painted like a person paints them
# ----------------------------------------------------------------------------------------------


def _oval(cp: float, cq: float, rp: float, rq: float, n: int = 28) -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return list(zip(cp + rp * np.cos(t), cq + rq * np.sin(t)))


Jitter = Callable[..., float]


def _hand(rng: np.random.Generator) -> Jitter:
    """j(s=0.06): a uniform draw in [-s, s] from `rng`, the error of a painting hand."""
    return lambda s=0.06: float(rng.uniform(-s, s))


def _behind_face(j: Jitter, attrs: dict) -> list[tuple[str, list]]:
    """Clothes, neck, the hair behind the head, necklace and ears: the shapes under the skin."""
    long_hair = attrs["hair_style"] in ("long", "wavy", "bangs", "bob", "curly")
    out = [("cloth", [(-2.5 + j(), 3.4), (-2.2 + j(), 1.95 + j()), (-0.6, 1.5 + j()),
                      (0.6, 1.5 + j()), (2.2 + j(), 1.95 + j()), (2.5 + j(), 3.4)]),
           ("neck", [(-0.45 + j(), 0.7), (0.45 + j(), 0.7), (0.5 + j(), 1.75), (-0.5 + j(), 1.75)])]
    if attrs["hair_color"] is not None:
        out.append(("hair", _oval(j(), -0.3 + j(), 1.28 + j(0.1), 1.25 + j(0.1))))
        if long_hair:
            out.append(("hair", [(-1.3 + j(), -0.3), (1.3 + j(), -0.3),
                                 (1.35 + j(), 1.3 + j(0.4)), (-1.35 + j(), 1.3 + j(0.4))]))
    if attrs["necklace"]:
        out.append(("neck_l", _oval(0, 1.35 + j(), 0.5, 0.12)))
    if attrs["ears_visible"]:
        out += [(name, _oval(s * 1.02, 0.05 + j(), 0.16 + j(0.03), 0.28 + j(0.04)))
                for s, name in ((1, "l_ear"), (-1, "r_ear"))]
    return out


def _face(j: Jitter, attrs: dict) -> list[tuple[str, list]]:
    """The skin, then earrings, nose, glasses, eyes and brows, and the mouth on it."""
    out = [("skin", _oval(j(), 0.05 + j(), 1.0 + j(), 1.3 + j()))]
    if attrs["earrings"]:
        out += [("ear_r", _oval(s * 1.02, 0.42 + j(0.03), 0.07, 0.08)) for s in (1, -1)]
    out.append(("nose", [(j(0.03), -0.05), (-0.16 + j(0.03), 0.42), (0.16 + j(0.03), 0.42)]))
    if attrs["eyeglasses"]:
        out += [("eye_g", _oval(s * 0.4, 0.0, 0.3, 0.22, 8 if attrs["glasses_style"] ==
                                "rectangular" else 28)) for s in (1, -1)]
        out.append(("eye_g", [(-0.12, -0.04), (0.12, -0.04), (0.12, 0.03), (-0.12, 0.03)]))
    for s, eye, brow in ((1, "l_eye", "l_brow"), (-1, "r_eye", "r_brow")):
        out.append((eye, _oval(s * (0.4 + j(0.03)), j(0.02), 0.19 + j(0.02), 0.09 + j(0.02))))
        out.append((brow, [(s * 0.2, -0.26 + j(0.03)), (s * 0.62, -0.3 + j(0.03)),
                           (s * 0.62, -0.22 + j(0.03)), (s * 0.2, -0.18 + j(0.03))]))
    mouth_y = 0.7 + j(0.04)
    gap = 0.05 if attrs["mouth_open"] else 0.0
    out.append(("u_lip", _oval(0, mouth_y - gap - 0.05, 0.32 + j(0.04), 0.06)))
    out.append(("l_lip", _oval(0, mouth_y + gap + 0.06, 0.3 + j(0.04), 0.07)))
    if gap:
        out.append(("mouth", _oval(0, mouth_y, 0.27, gap)))
    return out


def _over_face(j: Jitter, attrs: dict) -> list[tuple[str, list]]:
    """The fringe over the forehead and the hat: the shapes painted last."""
    out = []
    if attrs["hair_color"] is not None:  # fringe over the forehead
        out.append(("hair", [(-1.05, -0.45), (-0.8 + j(), -0.85 + j()), (0, -0.95 + j()),
                             (0.8 + j(), -0.85 + j()), (1.05, -0.45), (1.15, -0.95),
                             (0.0, -1.45), (-1.15, -0.95)]))
    if attrs["hat"]:
        out.append(("hat", [(-0.85, -0.8), (-0.75 + j(), -1.75 + j()), (0.75 + j(), -1.75 + j()),
                            (0.85, -0.8)]))
        out.append(("hat", _oval(0, -0.85 + j(), 1.5 + j(0.2), 0.18)))
    return out


def _shapes(rng: np.random.Generator, attrs: dict) -> list[tuple[str, list]]:
    """(label, polygon in face units) in painting order: later shapes cover earlier ones. The
    hand's jitter draws from `rng` in this order too: behind, on, then over the face."""
    j = _hand(rng)  # a hand is not exact
    out = _behind_face(j, attrs)
    out += _face(j, attrs)
    out += _over_face(j, attrs)
    return out


def draw_mask(rng: np.random.Generator, attrs: dict, resolution: int) -> np.ndarray:
    """A (resolution, resolution) uint8 label map painted from polygons and ellipses, at a random
    scale, position and tilt."""
    size, angle = rng.uniform(0.3, 0.6), np.deg2rad(rng.uniform(-25, 25))
    cx, cy = rng.uniform(-0.25, 0.25), rng.uniform(-0.3, 0.1)
    c, s = np.cos(angle), np.sin(angle)
    image = Image.new("L", (resolution, resolution), LABEL_INDEX["background"])
    draw = ImageDraw.Draw(image)
    for label, polygon in _shapes(rng, attrs):
        pts = np.asarray(polygon, np.float64)  # (K, 2) face units
        x = cx + size * (pts[:, 0] * c - pts[:, 1] * s)
        y = cy + size * (pts[:, 0] * s + pts[:, 1] * c)
        draw.polygon(list(zip((x + 1) * resolution / 2, (y + 1) * resolution / 2)),
                     fill=LABEL_INDEX[label])
    return np.asarray(image, dtype=np.uint8)


def paint(label_map: np.ndarray, attrs: dict) -> np.ndarray:
    """The flat-colour picture of a drawn mask: (H, W, 3) uint8, each region in its colour."""
    skin = np.asarray(COLORS[attrs["skin_tone"]], np.float32)
    hair = np.asarray(COLORS[attrs["hair_color"] or "brown"], np.float32)
    gold = np.asarray((214, 172, 60), np.float32)
    colours = {
        "background": COLORS[attrs["background_color"]], "skin": skin, "nose": skin * 0.9,
        "l_ear": skin * 0.95, "r_ear": skin * 0.95, "neck": skin * 0.85, "hair": hair,
        "l_brow": hair * 0.7, "r_brow": hair * 0.7, "l_eye": COLORS[attrs["eye_color"]],
        "r_eye": COLORS[attrs["eye_color"]], "u_lip": COLORS[attrs["lip_color"]],
        "l_lip": COLORS[attrs["lip_color"]], "mouth": (80, 22, 30), "eye_g": skin * 0.9,
        "cloth": COLORS[attrs["cloth_color"]], "hat": COLORS[attrs["hat_color"] or "black"],
        "ear_r": gold, "neck_l": gold,
    }
    table = np.zeros((len(LABEL_INDEX), 3), np.float32)
    for name, colour in colours.items():
        table[LABEL_INDEX[name]] = colour
    table[LABEL_INDEX["eye_g"]] = 0.7 * skin + 0.3 * np.asarray(PUPIL, np.float32)
    return np.clip(table[label_map] + 0.5, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# The reader
# ----------------------------------------------------------------------------------------------


class OffDistributionReader:
    """The `offdist` set for the `download` stage: every item is in the test split."""

    def __init__(self, *, num_beyond: int, num_drawn: int, photos: bool, seed: int = 0,
                 resolution: int = 128, num_captions: int = 3):
        self.kinds = (["beyond"] * num_beyond + ["drawn"] * num_drawn
                      + ["photo"] * (len(PHOTOS) * len(FRAMINGS) * 2 if photos else 0))
        self.seed, self.resolution, self.num_captions = seed, resolution, num_captions

    def entries(self) -> list[Entry]:
        counts: dict[str, int] = {}
        out = []
        for i, kind in enumerate(self.kinds):
            k = counts[kind] = counts.get(kind, -1) + 1
            out.append(Entry(f"{i:06d}", "test", f"offdist:{kind}:{k}"))
        return out

    def load(self, entry: Entry) -> Sample:
        _, kind, k = entry.file.split(":")
        load = {"beyond": self._beyond, "drawn": self._drawn, "photo": self._photo}[kind]
        image, label_map, captions, attrs = load(int(k))
        mask = None if label_map is None else label_map_image(label_map)
        return Sample(entry.id, Image.fromarray(image), captions, mask=mask,
                      attributes=dict(attrs, offdist_kind=kind))

    def _beyond(self, k: int):
        face = render(INDEX_OFFSET + k, seed=self.seed, resolution=self.resolution,
                      layout="beyond", num_captions=self.num_captions)
        return face.image, face.label_map, face.captions, face.attributes

    def _drawn(self, k: int):
        shape_rng, text_rng = (np.random.Generator(np.random.PCG64([self.seed, k, 7, n]))
                               for n in range(2))
        attrs = sample_attributes(shape_rng, "standard")
        label_map = draw_mask(shape_rng, attrs, self.resolution)
        return (paint(label_map, attrs), label_map,
                make_captions(attrs, text_rng, self.num_captions), attrs)

    def _photo(self, k: int):
        name = list(PHOTOS)[k // (2 * len(FRAMINGS))]
        framing = FRAMINGS[(k // 2) % len(FRAMINGS)]
        caption, (x, y, width) = PHOTOS[name]
        photo = _load_photo(name)
        if k % 2:  # mirrored
            photo, x = np.ascontiguousarray(photo[:, ::-1]), photo.shape[1] - x
        image = _crop(photo, (x, y, width), framing, self.resolution)
        return image, None, [caption] * self.num_captions, {"photo": name}
