"""Rendering one SynthFace: a pure function of (seed, index, variant, layout).

Attributes and geometry come from `numpy.random.Generator(PCG64([seed, index, variant_code, 0]))`
(`sample.py`), textures and captions from streams 1 and 2, the `varied` and `beyond` layouts
from stream 3 (`layout.py`), so neither the resolution nor the number of captions changes the
face. The label map is the hard geometry sampled at pixel centres and the image the same
geometry with anti-aliased edges (`draw.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facemogle.data.colours import PALETTE_NAMES
from facemogle.data.synthfaces.draw import compose
from facemogle.data.synthfaces.layout import BEYOND_KINDS, LAYOUTS, beyond, vary
from facemogle.data.synthfaces.sample import VARIANTS, sample_attributes, sample_geometry
from facemogle.data.synthfaces.text import make_captions

MIN_RESOLUTION, MAX_RESOLUTION = 32, 2048


@dataclass(frozen=True)
class SynthFace:
    """One rendered portrait: image, its exact label map, captions and their attributes."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    label_map: np.ndarray  # (H, W) uint8, indices 0..18
    captions: list[str]
    attributes: dict  # JSON-serialisable


def render(index: int, *, seed: int = 0, resolution: int = 128, variant: str = "standard",
           num_captions: int = 4, layout: str = "template") -> SynthFace:
    """Render SynthFace number `index` of (seed, variant, layout) at `resolution` px square.

    Returns the image (H, W, 3) uint8, its label map (H, W) uint8 in 0..18, `num_captions`
    captions (caption 0 names every colour attribute of the face, see `make_captions`) and the
    attributes. The same arguments give identical bytes; the geometry is the same at every
    resolution. `layout` is `template` (upright, frontal, centred), `varied` (the pose and
    expression ranges of real portrait masks, `layout.vary`) or `beyond` (`varied` pushed
    past its margins in the way `BEYOND_KINDS[index % 5]` names: the off-distribution set).
    """
    _check_args(index, seed, resolution, variant, num_captions, layout)
    shape_rng, tex_rng, text_rng, layout_rng = _streams(index, seed, variant)
    attrs = sample_attributes(shape_rng, variant)
    g = sample_geometry(shape_rng, attrs, variant)
    attrs, g = _apply_layout(layout_rng, attrs, g, index, variant, layout)
    cv = compose(attrs, g, resolution, tex_rng)
    image = np.clip(cv.rgb * 255 + 0.5, 0, 255).astype(np.uint8)  # (R, R, 3)
    attrs = _with_pose(attrs, g, variant, layout)
    return SynthFace(image=image, label_map=cv.labels, attributes=attrs,
                     captions=make_captions(attrs, text_rng, num_captions))


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


def _apply_layout(rng: np.random.Generator, attrs: dict, g: dict, index: int, variant: str,
                  layout: str) -> tuple[dict, dict]:
    """The `template` attributes and geometry, varied (and pushed beyond) as `layout` says."""
    if layout != "template":
        attrs, g = vary(rng, attrs, g, variant)
    if layout == "beyond":
        kind = BEYOND_KINDS[index % len(BEYOND_KINDS)]
        attrs, g = beyond(rng, attrs, g, kind,
                          tuple(c for c in PALETTE_NAMES if c != attrs["background_color"]))
    return attrs, g


def _with_pose(attrs: dict, g: dict, variant: str, layout: str) -> dict:
    """The attributes as rendered: the variant and the head's size, tilt, position (and yaw)."""
    attrs = dict(attrs, variant=variant, head_size=round(g["size"], 4),
                 head_tilt_deg=round(float(np.rad2deg(g["tilt"])), 2),
                 head_x=round(g["cx"], 4), head_y=round(g["cy"], 4))
    if layout != "template":
        attrs.update(layout=layout, head_yaw_deg=round(float(np.rad2deg(g["yaw"])), 2))
    return attrs
