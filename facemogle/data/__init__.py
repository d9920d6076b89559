"""Data sets: SynthFaces (embedded default) and readers of the real face data sets.

- `layout`: the normalized layout the data stages write (DESIGN.md section 4).
- `readers`: MM-CelebA-HQ, CelebAMask-HQ, FFHQ-Text and SynthFaces readers; hub or local source.
- `parsers`: face parsers for images without masks (mediapipe, segformer, tiny).
- `prepare`: the `download` and `parse_masks` stages as functions.
- `synthfaces`: the procedural face renderer.

Import the submodule you need: importing one (e.g. `layout` from `facemogle.base`) does not load
the others, so each pipeline stage depends only on the data code it runs.
"""
