"""The `facemogle` command: generate faces from a trained checkpoint, or serve the web demo.

    facemogle generate --checkpoint data/model --prompt "a smiling woman" --mask mask.png \
        --seed 0 --steps 28 --out face.png [--gating-out gating.png]
    facemogle generate --checkpoint data/model --parse-face photo.jpg --seed 0 --out face.png
    facemogle demo --checkpoint data/model [--examples data/raw data/offdist/raw]

Prompt and mask are each optional: both give multimodal generation, a mask alone mask2face, a
prompt alone text2face, and neither an unconditional face (docs/design.md, "The three modes").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facemogle.app.gate_maps import gating_grid
from facemogle.app.pipeline import FaceMoGLEPipeline, mask_to_label_map
from facemogle.base.loader import DTYPES
from facemogle.core import labels
from facemogle.core.config import ConfigError
from facemogle.core.flux import SAMPLE_GUIDANCE
from facemogle.core.io import InputError, atomic_path, read_rgb
from facemogle.data.layout import split_path
from facemogle.masks.face_parsers import (
    PARSERS,
    MissingExtraError,
    default_device,
    load_parser,
    parse_image,
)
from facemogle.sampling.sampler import FAST_CACHE_THRESHOLD

# Failures caused by what the user gave (files, flags, params): one line, exit status 2.
USER_ERRORS = (InputError, ConfigError, MissingExtraError, FileNotFoundError)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _image_size(text: str) -> int:
    value = int(text)
    if value < 16 or value % 16:
        raise argparse.ArgumentTypeError(f"must be a multiple of 16 (x8 VAE, 2x2 tokens), "
                                         f"got {value}")
    return value


def _threshold(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _tolerance(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 64:  # the range of params masks.color_tolerance
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 64], got {value}")
    return value


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="model folder (train stage output or save_pretrained) or hub id")
    parser.add_argument("--base", default=None,
                        help="base stage output (default: base/ in or beside the checkpoint)")
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda (default: cuda if any)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="weights' precision (default: the base's)")


def _add_condition_args(gen: argparse.ArgumentParser) -> None:
    """`generate`'s prompt and mask: a mask file, or one parsed from a face photo."""
    gen.add_argument("--prompt", default=None, help="text condition (omit for none)")
    source = gen.add_mutually_exclusive_group()
    source.add_argument("--mask", default=None,
                        help="label map (palette/grey PNG of indices 0..18) or colour mask")
    source.add_argument("--parse-face", default=None, metavar="PHOTO",
                        help="make the mask from a face photo with a face parser")
    gen.add_argument("--parser", choices=[p for p in PARSERS if p != "none"], default=None,
                     help="parser for --parse-face (default: the base's tiny parser if it has "
                          "one, else mediapipe)")
    gen.add_argument("--parser-path", default=None, help="parser weights (segformer: hub id or "
                     "folder; tiny: folder)")


def _add_sampling_args(gen: argparse.ArgumentParser) -> None:
    """`generate`'s sampler settings: seed, steps, guidance and block caching."""
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--steps", type=_positive, default=28)
    gen.add_argument("--guidance", type=float, default=SAMPLE_GUIDANCE,
                     help="guidance embedding (FLUX.1-dev; ignored by the tiny base)")
    gen.add_argument("--cfg-scale", type=float, default=1.0, help="true CFG scale (1 = off)")
    speed = gen.add_mutually_exclusive_group()
    speed.add_argument("--cache-threshold", type=_threshold, default=0.0,
                       help="first-block residual caching threshold (0 = every block at every "
                            "step; docs/speed.md)")
    speed.add_argument("--fast", dest="cache_threshold", action="store_const",
                       const=FAST_CACHE_THRESHOLD,
                       help=f"--cache-threshold {FAST_CACHE_THRESHOLD:g}, the measured setting "
                            f"that keeps multimodal quality (docs/speed.md)")


def _add_output_args(gen: argparse.ArgumentParser) -> None:
    """`generate`'s image size, mask fitting and output files."""
    gen.add_argument("--size", type=_image_size, default=None,
                     help="pixels (default: the training resolution)")
    gen.add_argument("--resize-mask", action="store_true",
                     help="resize a mask of another size (nearest) instead of refusing it")
    gen.add_argument("--color-tolerance", type=_tolerance, default=0,
                     help="snap colour-mask colours within this distance to the palette")
    gen.add_argument("--out", required=True, help="output image (.png, .jpg, .webp)")
    gen.add_argument("--save-mask", default=None, help="also write the mask used (palette PNG)")
    gen.add_argument("--gating-out", default=None,
                     help="also write per-expert gate weight maps over the steps (PNG)")


def _add_generate_command(commands: argparse._SubParsersAction) -> None:
    gen = commands.add_parser("generate", help="generate one face")
    _add_model_args(gen)
    _add_condition_args(gen)
    _add_sampling_args(gen)
    _add_output_args(gen)


def _add_demo_command(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser("demo", help="serve the Gradio web demo")
    _add_model_args(demo)
    demo.add_argument("--examples", nargs="+", default=None,
                      help="data folders (download or parse_masks outputs) whose test-split "
                           "masks are offered as examples to edit (default: raw/ and "
                           "offdist/raw/ beside the checkpoint, where they exist)")
    demo.add_argument("--host", default="127.0.0.1",
                      help="address to serve on (default: this machine only)")
    demo.add_argument("--port", type=int, default=None, help="port (default: Gradio's)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facemogle", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    _add_generate_command(commands)
    _add_demo_command(commands)
    return parser


def load_pipeline(args: argparse.Namespace) -> FaceMoGLEPipeline:
    """The pipeline of `--checkpoint` on `--device` in `--dtype`."""
    device = torch.device(args.device) if args.device else default_device()
    dtype = DTYPES[args.dtype] if args.dtype else None
    return FaceMoGLEPipeline.from_pretrained(args.checkpoint, base_dir=args.base, device=device,
                                             dtype=dtype)


def center_square(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) photo -> its centred (S, S, 3) square crop, S = min(H, W)."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top:top + side, left:left + side]


def parse_face(pipe: FaceMoGLEPipeline, photo: str, size: int, name: str | None,
               path: str | None) -> np.ndarray:
    """A face photo -> (size, size) label map with a face parser (default: the base's own).

    The photo is cropped to a centred square. The base's tiny parser was trained at the model's
    resolution, so it sees the crop resized to it; other parsers (mediapipe, segformer) parse the
    crop at full resolution, and the label map is then resized (nearest).
    """
    own = pipe.base_dir / "parser" if pipe.base_dir is not None else None
    if name is None:
        name = "tiny" if own is not None and own.is_dir() else "mediapipe"
    if name == "tiny" and path is None and own is not None:
        path = str(own)
    crop = center_square(read_rgb(photo))  # (S, S, 3)
    if name == "tiny":
        crop = np.asarray(Image.fromarray(crop).resize((size, size), Image.LANCZOS))
    parser = load_parser(name, path, pipe.device)
    try:
        label_map = parse_image(parser, crop)  # (S, S)
    finally:
        parser.close()
    return labels.resize_label_map(label_map, size)


def image_format(path: str) -> str:
    """The PIL format that `path`'s extension names; an unknown one is an `InputError`."""
    extension = Path(path).suffix.lower()
    formats = Image.registered_extensions()
    if extension not in formats:
        raise InputError(f"{path}: unknown image extension {extension!r} (use .png)")
    return formats[extension]


def save_image(path: str, image: Image.Image) -> None:
    """Write `image` atomically in the format its extension names."""
    with atomic_path(path) as tmp:
        image.save(tmp, format=image_format(path))


def generate(args: argparse.Namespace) -> None:
    if args.gating_out is not None and args.mask is None and args.parse_face is None:
        raise InputError("--gating-out needs a mask (--mask or --parse-face): without one no "
                         "expert is gated")
    for path in (args.out, args.gating_out):
        if path is not None:
            image_format(path)  # refuse a bad name before the model is loaded
    pipe = load_pipeline(args)
    size = args.size or pipe.resolution
    label_map = None
    if args.parse_face is not None:
        label_map = parse_face(pipe, args.parse_face, size, args.parser, args.parser_path)
    elif args.mask is not None:
        label_map = mask_to_label_map(args.mask, size=(size, size), resize=args.resize_mask,
                                      tolerance=args.color_tolerance)
    out = pipe(prompt=args.prompt, mask=label_map, height=size, width=size, seed=args.seed,
               num_inference_steps=args.steps, guidance_scale=args.guidance,
               true_cfg_scale=args.cfg_scale, cache_threshold=args.cache_threshold,
               return_gating=args.gating_out is not None)
    save_image(args.out, out.images[0])
    if args.save_mask is not None and label_map is not None:
        labels.save_label_map(args.save_mask, label_map)
    if args.gating_out is not None:
        save_image(args.gating_out, gating_grid(out.gating))


def demo(args: argparse.Namespace) -> None:
    from facemogle.app.demo import launch

    examples = args.examples
    if examples is None:  # the DVC layout: data/model, data/raw, data/offdist/raw
        beside = Path(args.checkpoint).parent
        examples = [d for d in (beside / "raw", beside / "offdist" / "raw")
                    if split_path(d).is_file()]
    launch(load_pipeline(args), examples=examples, host=args.host, port=args.port)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            generate(args)
        else:
            demo(args)
    except USER_ERRORS as err:
        print(f"facemogle {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
