"""The `download` stage: data sets into the normalized layout.

- `layout`: the normalized layout the data stages write and read.
- `readers`: MM-CelebA-HQ, CelebAMask-HQ, FFHQ-Text and SynthFaces readers; hub or local source.
- `download`: the stage as a function; `items`: the per-item error policy.
- `synthfaces` (a package): the procedural face renderer, its layouts, captions and layout
  statistics; `colours`: its colour vocabulary and reading colours back from pixels (shared
  with evaluation, which does not import the renderer).

Import the submodule you need: importing one does not load the others, so each pipeline stage
depends only on the data code it runs.
"""
