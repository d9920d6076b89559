"""SynthFaces: procedurally rendered portraits with exact CelebAMask-HQ label maps and captions.

The embedded default's data set (docs/design.md, "Two settings"). Every face is drawn from signed
distance fields in a face-local frame (unit = half the face width, tilted with the head), so the
geometry does not depend on the resolution: the label map is the hard geometry sampled at pixel
centres (composed with CelebAMask-HQ precedence, later parts overwrite earlier ones) and the RGB
image is the same geometry with anti-aliased edges, directional shading, edge darkening, hair
strands and grain. A face is a pure function of (seed, index, variant, layout).

Modules, in the order a face is made:

- `sample`: the attributes (what a caption can say) and the geometry of a face; the `standard`
  and `zeroshot` variants (`VARIANTS`, `ZEROSHOT_ONLY`, `HELD_OUT_PAIRS`);
- `layout`: the `template`, `varied` and `beyond` poses, and the target ranges (`TARGETS`);
- `sdf`, `canvas`, `draw`, `hair`: distance fields, the canvas and its local frames, and the
  parts rasterised onto it;
- `text`: the captions; `face`: `render`, one face from all of the above;
- `stats`: a rendered set's layout measured on its label maps
  (``python -m facemogle.data.synthfaces.stats``);
- `cli`: ``python -m facemogle.data.synthfaces sheet|bench ...``.

The colour vocabulary lives in `facemogle.data.colours`, shared with evaluation (reading colours
back from pixels) so that evaluation does not depend on the renderer.
"""

from facemogle.data.synthfaces.cli import benchmark, contact_sheet, main
from facemogle.data.synthfaces.face import MAX_RESOLUTION, MIN_RESOLUTION, SynthFace, render
from facemogle.data.synthfaces.layout import BEYOND_KINDS, LAYOUTS
from facemogle.data.synthfaces.sample import (
    HELD_OUT_PAIRS,
    VARIANTS,
    ZEROSHOT_ONLY,
    sample_attributes,
)
from facemogle.data.synthfaces.text import make_captions

__all__ = [
    "BEYOND_KINDS", "HELD_OUT_PAIRS", "LAYOUTS", "MAX_RESOLUTION", "MIN_RESOLUTION", "VARIANTS",
    "ZEROSHOT_ONLY", "SynthFace", "benchmark", "contact_sheet", "main", "make_captions", "render",
    "sample_attributes",
]
