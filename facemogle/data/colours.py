"""The colour vocabulary of SynthFaces captions, and reading a named colour back from pixels.

The renderer paints with these colours; the attribute-accuracy metric reads them from generated
faces with `read_color`, so evaluation depends on this module and not on the renderer.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from facemogle.core.labels import LABEL_INDEX

# Colour name -> reference RGB (albedo before shading). One name, one colour, whatever it paints.
COLORS: dict[str, tuple[int, int, int]] = {
    "black": (30, 28, 30), "white": (236, 234, 228), "gray": (140, 140, 146),
    "brown": (105, 64, 36), "blond": (226, 188, 116), "ginger": (200, 98, 40),
    "pink": (232, 118, 168), "red": (192, 30, 42), "purple": (116, 50, 140),
    "blue": (48, 94, 198), "green": (48, 142, 70), "yellow": (234, 200, 52),
    "natural": (196, 110, 104),
    "pale": (244, 214, 196), "fair": (226, 180, 148), "olive": (192, 148, 106),
    "tan": (156, 106, 72), "dark": (96, 62, 44),
}


PALETTE_NAMES = ("black", "white", "gray", "red", "blue", "green", "yellow", "purple")


ATTRIBUTE_VOCAB: dict[str, tuple[str, ...]] = {
    "hair_color": ("black", "brown", "blond", "ginger", "gray", "white", "pink"),
    "eye_color": ("brown", "blue", "green", "gray"),
    "lip_color": ("natural", "red", "pink", "purple"),
    "skin_tone": ("pale", "fair", "olive", "tan", "dark"),
    "hat_color": PALETTE_NAMES,
    "cloth_color": PALETTE_NAMES,
    "background_color": PALETTE_NAMES,
}


# Attribute -> the labels whose pixels show it (what `read_color` is given).
COLOR_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "hair_color": ("hair",), "eye_color": ("l_eye", "r_eye"), "lip_color": ("u_lip", "l_lip"),
    "skin_tone": ("skin",), "hat_color": ("hat",), "cloth_color": ("cloth",),
    "background_color": ("background",),
}


SCLERA, PUPIL = (238, 236, 230), (20, 16, 16)


# Non-vocabulary colours inside a region that `read_color` sets aside: sclera (lit and in the
# shade of the lid or mixed with skin at the corners), pupil and lashes.
_NUISANCE = {"eye_color": (SCLERA, (196, 190, 184), PUPIL)}


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (N, 3) in 0..255 -> CIELAB (N, 3), D65."""
    c = np.asarray(rgb, np.float64) / 255
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = lin @ np.array([[0.4124, 0.2126, 0.0193], [0.3576, 0.7152, 0.1192],
                          [0.1805, 0.0722, 0.9505]])  # (N, 3)
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1)


# Lightness counts less than hue and chroma: shading changes it across a region.
_LAB_WEIGHT = np.array([0.6, 1.0, 1.0])


# Small regions whose colour is a hue (iris, lips): only their most chromatic fraction is read,
# since the rest are blends with the sclera, the pupil or (in generated images) the skin around.
# An iris is a few pixels at 64 px, mostly blended with pupil and sclera: its top quarter.
_CHROMA_KEPT = {"eye_color": 0.25, "lip_color": 0.5}


_MAX_READ = 16384


@lru_cache(maxsize=None)
def _references(attribute: str) -> tuple[np.ndarray, int]:
    names = ATTRIBUTE_VOCAB[attribute]
    rgb = [COLORS[n] for n in names] + list(_NUISANCE.get(attribute, ()))
    return _srgb_to_lab(np.array(rgb)) * _LAB_WEIGHT, len(names)


def read_color(pixels: np.ndarray, attribute: str) -> str:
    """The colour name (from `ATTRIBUTE_VOCAB[attribute]`) that the pixels (N, 3) uint8 show.

    Pixels nearest to a non-vocabulary colour of the region (sclera, pupil) are set aside, and
    for eyes and lips the less chromatic ones too; the median of the rest in (lightness-
    discounted) CIELAB is matched to the nearest reference. This is also the decoder of the
    attribute-accuracy metric on generated images. Large regions are read from an evenly
    strided subset of at most `_MAX_READ` pixels.
    """
    if attribute not in ATTRIBUTE_VOCAB:
        raise KeyError(f"read_color: unknown attribute {attribute!r}; expected one of "
                       f"{tuple(ATTRIBUTE_VOCAB)}")
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.shape[1] != 3 or len(pixels) == 0:
        raise ValueError(f"read_color: {attribute!r} needs an (N, 3) array of RGB pixels with "
                         f"N >= 1, got shape {pixels.shape}")
    pixels = pixels[:: -(-len(pixels) // _MAX_READ)]
    refs, n_vocab = _references(attribute)
    lab = _srgb_to_lab(pixels) * _LAB_WEIGHT  # (N, 3)
    nearest = np.argmin(((lab[:, None] - refs[None]) ** 2).sum(-1), 1)  # (N,)
    keep = lab[nearest < n_vocab] if (nearest < n_vocab).any() else lab
    if attribute in _CHROMA_KEPT:
        chroma = np.hypot(keep[:, 1], keep[:, 2])  # (K,)
        keep = keep[chroma >= np.quantile(chroma, 1 - _CHROMA_KEPT[attribute])]
    centre = np.median(keep, 0)
    return ATTRIBUTE_VOCAB[attribute][int(np.argmin(((refs[:n_vocab] - centre) ** 2).sum(-1)))]


def region_pixels(image: np.ndarray, label_map: np.ndarray, attribute: str) -> np.ndarray:
    """The pixels (N, 3) of `image` (H, W, 3) whose labels (H, W) show `attribute`.

    `COLOR_ATTRIBUTES` names the labels; with `read_color` this reads an attribute from any
    image paired with a label map (a SynthFace, or a face generated from its mask).
    """
    if image.shape[:2] != label_map.shape:
        raise ValueError(f"region_pixels: image {image.shape} and label map {label_map.shape} "
                         "differ in size")
    ids = [LABEL_INDEX[n] for n in COLOR_ATTRIBUTES[attribute]]
    return image[np.isin(label_map, ids)]
