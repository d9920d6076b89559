"""The Gradio web demo: paint or upload a mask, type a prompt, see the face and MoGLE's gating.

    facemogle demo --checkpoint data/model --examples data/raw data/offdist/raw

The mask is painted with the CelebAMask-HQ palette only (docs/design.md, "Label palette and
decoupling"), shown as a legend of names and colours; l_/r_ are the subject's left/right, with
the dataset's colours (the official demo swapped the colours of the left/right pairs and built
masks from brightness: docs/design.md, bugs B1 and B5). The painted or uploaded picture becomes
a label map by palette lookup; brush edges are antialiased by the browser, so off-palette pixels
snap to the nearest palette colour unless "snap" is off, in which case they are an error. The
result comes with the gate weight maps of the most used experts at a few steps (paper Fig. 5).
Served on 127.0.0.1 (this machine only) unless another host is asked for.
"""

from __future__ import annotations

import html
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from facemogle.app.gate_maps import gating_grid
from facemogle.app.pipeline import FaceMoGLEPipeline
from facemogle.core import labels
from facemogle.core.io import InputError, read_jsonl
from facemogle.data import layout

# No telemetry and no update checks: the demo must work offline (set before gradio is imported).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

EDITOR_SIZE = 512  # px of the painting canvas; masks are resized (nearest) to the model's size
DISPLAY_SIZE = 256  # smaller results are shown enlarged (nearest), e.g. the 64 px tiny model's
NUM_EXAMPLES = 4
DEFAULT_PROMPT = "a smiling woman with long black hair"
SYSTEM_FONTS = ["system-ui", "sans-serif"]  # no web fonts: nothing is fetched from the internet


def hex_color(rgb: np.ndarray) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb))


def legend_html() -> str:
    """The 19 labels as an HTML legend: colour swatch, index, name and RGB of each."""
    chips = []
    for index, (name, rgb) in enumerate(zip(labels.LABELS, labels.PALETTE)):
        rgb_text = ",".join(str(int(c)) for c in rgb)
        chips.append(
            f'<div class="facemogle-label" title="RGB {rgb_text}">'
            f'<span style="display:inline-block;width:1.1em;height:1.1em;margin-right:0.4em;'
            f'background:{hex_color(rgb)};border:1px solid #888;vertical-align:middle"></span>'
            f"{index} <b>{html.escape(name)}</b> <small>({rgb_text})</small></div>")
    note = ("<p><b>l_ / r_</b> are the <i>subject's</i> left and right: on a frontal face, "
            "l_eye, l_brow and l_ear are on the viewer's right.</p>")
    grid = ('<div style="display:grid;grid-template-columns:repeat(2,auto);gap:0.15em 1em">'
            + "".join(chips) + "</div>")
    return f'<div id="facemogle-legend">{note}{grid}</div>'


def snap_to_palette(rgb: np.ndarray) -> tuple[np.ndarray, int]:
    """(H, W, 3) uint8 -> ((H, W) label map of the nearest palette colour, pixels changed).

    Nearest in RGB (Euclidean), ties to the lower label index; only for painted masks, whose
    brush edges blend two palette colours. Exact palette colours keep their label.
    """
    colors = np.unique(rgb.reshape(-1, 3), axis=0)  # (U, 3)
    dist = ((colors[:, None, :].astype(np.int32) - labels.PALETTE[None].astype(np.int32)) ** 2
            ).sum(-1)  # (U, 19)
    nearest = dist.argmin(axis=1).astype(np.uint8)  # (U,)
    codes = (colors.astype(np.int64) * [65536, 256, 1]).sum(-1)  # (U,) sorted, as np.unique
    pixel_codes = (rgb.astype(np.int64) * [65536, 256, 1]).sum(-1)  # (H, W)
    row = np.searchsorted(codes, pixel_codes)  # (H, W) each pixel's row in `colors`
    changed = int((dist.min(axis=1) > 0)[row].sum())
    return nearest[row], changed


def editor_label_map(value: dict | None, size: int, snap: bool
                     ) -> tuple[np.ndarray, str]:
    """The ImageEditor's composite -> ((size, size) label map, a note on what was done).

    Transparent pixels (nothing painted, no background) count as background (black).
    """
    image = None if value is None else value.get("composite")
    if image is None:
        raise InputError("mask: paint or upload a mask first, or untick 'use mask'")
    image = np.asarray(image)  # (H, W, 3 or 4), the editor's RGBA image mode
    rgb = image[..., :3].astype(np.float32)
    if image.shape[-1] == 4:
        rgb = rgb * (image[..., 3:4].astype(np.float32) / 255.0)  # composite over black
    rgb = rgb.round().astype(np.uint8)  # (H, W, 3)
    notes = []
    if snap:
        label_map, changed = snap_to_palette(rgb)
        if changed:
            notes.append(f"{changed} off-palette pixels (brush edges) snapped to the nearest "
                         f"palette colour")
    else:
        label_map = labels.color_to_label_map(rgb, source="painted mask")
    if label_map.shape != (size, size):
        notes.append(f"mask resized (nearest) from {label_map.shape[1]}x{label_map.shape[0]} to "
                     f"{size}x{size}")
        label_map = labels.resize_label_map(label_map, size)
    return label_map, "; ".join(notes)


def _mask_file(data_dir: Path, image_id: str) -> Path:
    """The id's mask: the data folder's own, else the parse_masks output beside it (`labels/`
    next to `raw/` in the DVC layout: a parsed photo has no mask of its own)."""
    own = layout.mask_path(data_dir, image_id)
    parsed = layout.mask_path(data_dir.parent / "labels", image_id)
    return own if own.is_file() or not parsed.is_file() else parsed


def load_examples(data_dirs: str | Path | Sequence[str | Path], count: int = NUM_EXAMPLES
                  ) -> list[tuple[Path, str]]:
    """`count` test-split masks of each data folder (download or parse_masks output), spread
    evenly over its ids, as colour PNGs of the canvas size with each id's first caption:
    [(png path, prompt)]."""
    dirs = [data_dirs] if isinstance(data_dirs, (str, Path)) else list(data_dirs)
    out_dir = Path(tempfile.mkdtemp(prefix="facemogle-examples-"))
    examples = []
    for n, data_dir in enumerate(map(Path, dirs)):
        split_path = layout.split_path(data_dir)
        if not split_path.is_file():
            raise InputError(f"{data_dir}: not a data folder (no {layout.SPLIT}); give the "
                             f"download or parse_masks stage's output to --examples")
        test = json.loads(split_path.read_text())["test"]
        ids = test[::max(1, len(test) // count)][:count]
        captions = {}
        if layout.captions_path(data_dir).is_file():
            captions = {r["id"]: r["captions"][0]
                        for r in read_jsonl(layout.captions_path(data_dir))}
        for image_id in ids:
            label_map = labels.load_label_map(_mask_file(data_dir, image_id))
            big = labels.resize_label_map(label_map, EDITOR_SIZE)
            path = out_dir / f"{n}-{image_id}.png"
            Image.fromarray(labels.label_map_to_color(big)).save(path)
            examples.append((path, captions.get(image_id, DEFAULT_PROMPT)))
    return examples


def blank_canvas() -> dict:
    """An all-background (black) canvas to paint on."""
    black = np.zeros((EDITOR_SIZE, EDITOR_SIZE, 3), dtype=np.uint8)
    return {"background": black, "layers": [], "composite": black}


def start_canvas(examples: list[tuple[Path, str]] | None) -> dict:
    """The editor's first value: the first example's mask to edit, or a blank canvas."""
    if not examples:
        return blank_canvas()
    rgb = np.asarray(Image.open(examples[0][0]).convert("RGB"))
    return {"background": rgb, "layers": [], "composite": rgb}


class DemoApp:
    """What the demo's button runs: editor value + prompt + seed + steps -> images + status."""

    def __init__(self, pipe: FaceMoGLEPipeline):
        self.pipe = pipe

    def generate(self, editor: dict | None, use_mask: bool, snap: bool, prompt: str, seed: float,
                 steps: float):
        """-> (face PIL image, gating grid PIL image or None, status markdown)."""
        size = self.pipe.resolution
        try:
            label_map, note = editor_label_map(editor, size, snap) if use_mask else (None, "")
        except InputError as err:
            raise gr.Error(str(err)) from None
        out = self.pipe(prompt=prompt or None, mask=label_map, seed=int(seed),
                        num_inference_steps=int(steps), return_gating=label_map is not None)
        gating = None if out.gating is None else gating_grid(out.gating)
        image, zoom = enlarge(out.images[0])
        notes = [f"**{mode_name(bool(prompt), label_map is not None)}**, seed {int(seed)}, "
                 f"{int(steps)} steps", note, f"shown at {zoom}x" if zoom > 1 else ""]
        return image, gating, "; ".join(n for n in notes if n)


def mode_name(has_prompt: bool, has_mask: bool) -> str:
    """The generation mode (docs/design.md, "The three modes") that the inputs select."""
    if has_mask:
        return "multimodal" if has_prompt else "mask2face"
    return "text2face" if has_prompt else "unconditional"


def enlarge(image: Image.Image) -> tuple[Image.Image, int]:
    """Small results enlarged by an integer factor (nearest) for display; (image, factor)."""
    zoom = max(1, DISPLAY_SIZE // max(image.size))
    return image.resize((image.width * zoom, image.height * zoom), Image.NEAREST), zoom


def _mask_panel(examples: list[tuple[Path, str]] | None
                ) -> tuple[gr.ImageEditor, gr.Checkbox, gr.Checkbox]:
    """The mask editor and its two switches beside the palette legend: (editor, use_mask,
    snap)."""
    colors = [hex_color(c) for c in labels.PALETTE]
    with gr.Row():
        with gr.Column(scale=3):
            editor = gr.ImageEditor(
                value=start_canvas(examples), label="mask", type="numpy",
                image_mode="RGBA",
                sources=["upload"], canvas_size=(EDITOR_SIZE, EDITOR_SIZE), format="png",
                brush=gr.Brush(colors=colors, default_color=colors[1], color_mode="fixed"),
                layers=False, elem_id="mask-editor")
            use_mask = gr.Checkbox(value=True, label="use mask (off: text2face)")
            snap = gr.Checkbox(value=True, label="snap brush edges to the nearest palette "
                                                 "colour (off: off-palette colours are an "
                                                 "error)")
        with gr.Column(scale=2):
            gr.HTML(legend_html())
    return editor, use_mask, snap


def _prompt_and_sampling(examples: list[tuple[Path, str]] | None
                         ) -> tuple[gr.Textbox, gr.Number, gr.Slider]:
    """The prompt box, then the seed and step count: (prompt, seed, steps)."""
    prompt = gr.Textbox(label="prompt", value=examples[0][1] if examples else "",
                        elem_id="prompt",
                        placeholder="empty: mask2face (or unconditional without a mask)")
    with gr.Row():
        seed = gr.Number(label="seed", value=0, precision=0, elem_id="seed")
        steps = gr.Slider(1, 50, value=28, step=1, label="steps", elem_id="steps")
    return prompt, seed, steps


def _result_panel() -> tuple[gr.Image, gr.Image]:
    """The generated face beside its gate weight maps: (result, gating)."""
    with gr.Row():
        # Headings instead of component labels: a label badge would cover the grid's header.
        with gr.Column():
            gr.Markdown("**result**")
            result = gr.Image(show_label=False, type="pil", format="png", elem_id="result")
        with gr.Column():
            gr.Markdown("**gate weights** of the most used experts (rows) over the denoising "
                        "steps (columns, s = flow time, 1 = noise)")
            gating = gr.Image(show_label=False, type="pil", format="png", elem_id="gating")
    return result, gating


def build_demo(pipe: FaceMoGLEPipeline, examples: list[tuple[Path, str]] | None = None
               ) -> gr.Blocks:
    """The demo's page, not yet launched."""
    app = DemoApp(pipe)
    with gr.Blocks(title="Face-MoGLE", analytics_enabled=False) as blocks:
        gr.Markdown("# Face-MoGLE\nPaint a semantic mask with the CelebAMask-HQ palette (or "
                    "upload one), type a prompt, and generate. Prompt and mask are each "
                    "optional.")
        editor, use_mask, snap = _mask_panel(examples)
        prompt, seed, steps = _prompt_and_sampling(examples)
        button = gr.Button("Generate", variant="primary", elem_id="generate")
        status = gr.Markdown(elem_id="status")
        result, gating = _result_panel()
        if examples:
            gr.Examples([[str(p), text] for p, text in examples], inputs=[editor, prompt],
                        label="masks to start from and edit: the test split, then the "
                              "off-distribution set (beyond the training ranges, drawn, parsed "
                              "from a photo)", examples_per_page=len(examples))
        button.click(app.generate, inputs=[editor, use_mask, snap, prompt, seed, steps],
                     outputs=[result, gating, status])
    return blocks


def launch(pipe: FaceMoGLEPipeline, *, examples: Sequence[str | Path] | None = None,
           host: str = "127.0.0.1", port: int | None = None,
           prevent_thread_lock: bool = False) -> gr.Blocks:
    """Build and serve the demo (blocking unless `prevent_thread_lock`)."""
    blocks = build_demo(pipe, load_examples(examples) if examples else None)
    blocks.launch(server_name=host, server_port=port, share=False,
                  prevent_thread_lock=prevent_thread_lock,
                  theme=gr.themes.Default(font=SYSTEM_FONTS, font_mono=["monospace"]))
    return blocks
