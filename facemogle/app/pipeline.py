"""`FaceMoGLEPipeline`: a trained Face-MoGLE as a diffusers-style pipeline (the Python API).

    pipe = FaceMoGLEPipeline.from_pretrained("data/model")  # the train stage's output
    image = pipe(prompt="a woman with red hair", mask="mask.png", seed=0).images[0]

A checkpoint folder is what the `train` stage writes (`lora.safetensors`, `mogle.safetensors`,
`config.json`, and `manifest.json` with the SHA-256 of each, checked before anything is loaded)
and optionally a `base/` subfolder with the frozen base it was trained on; `save_pretrained`
writes such a self-contained folder, its manifest covering `base/` too. The three modes are
chosen by the inputs alone (docs/design.md, "The three modes"): prompt + mask (multimodal), mask
only (mask2face: the empty prompt), prompt only (text2face: the empty mask through MoGLE);
neither is unconditional (the empty prompt and the empty mask).

Prompts and masks are encoded as the `cache_latents` stage encodes them (rounded to float16 like
the cache) and sampled by the `sample` stage's sampler with the same per-image seeding, so a test
id with `seed=flow.seed_for(id, params.seed)` gives the `sample` stage's image. Bit for bit when
the cache was built one image at a time (`cache_latents --batch-size 1`) and `sample.batch_size`
is 1; otherwise the last bits can differ, because on CPU the encoders' and the transformer's
rounding depends on the batch they run in.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.utils import BaseOutput
from PIL import Image
from torch import Tensor

from facemogle.app.gate_maps import GatingRecorder, GatingTrace
from facemogle.base.loader import MANIFEST, Base, load_base, parts_dir, read_manifest
from facemogle.base.text import FLUX_TEXT_NAME, TEXT_MANIFEST, text_manifest
from facemogle.core import flow, labels, latents
from facemogle.core.config import SECTIONS, params_from_dict
from facemogle.core.flux import FLUX_RESOLUTION
from facemogle.core.io import (
    InputError,
    atomic_path,
    read_json,
    verify_manifest,
    write_json,
    write_manifest,
)
from facemogle.models.condition import ResidualCache
from facemogle.models.facemogle import FaceMoGLE
from facemogle.sampling.sampler import sampling_autocast, Conditions, decode_images, velocity_fn
from facemogle.sampling.sheets import to_uint8
from facemogle.training.checkpoint import load_trained, write_weights

MODEL_FILES: tuple[str, ...] = ("lora.safetensors", "mogle.safetensors", "config.json")
BASE_SUBDIR = "base"
# FLUX.1-dev's base manifest records no training resolution; the paper trains at 512 px.
# The cache stores latents and text embeddings in float16 (facemogle.cache.store.STORE_DTYPE) and the
# model was trained and is sampled by the `sample` stage on those rounded values; the pipeline
# rounds the same way so that its conditions are the ones the model knows.
CONDITION_STORE_DTYPE = torch.float16

MaskInput = str | Path | Image.Image | np.ndarray | Tensor


@dataclass
class FaceMoGLEPipelineOutput(BaseOutput):
    """`images`: PIL images, a (B, H, W, 3) float array in [0, 1] ("np") or a (B, 3, H, W)
    tensor ("pt"); `gating`: the gate weights of the samples that had a mask, when asked for."""

    images: list[Image.Image] | np.ndarray | Tensor
    gating: GatingTrace | None = None


# ----------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------


def _array_to_label_map(array: np.ndarray, tolerance: int, source: str) -> np.ndarray:
    if array.ndim == 2:
        return labels.check_label_map(array, source)  # (H, W) label indices
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        return labels.color_to_label_map(np.ascontiguousarray(array[..., :3]), tolerance, source)
    raise InputError(f"{source}: expected an (H, W) label map or an (H, W, 3) colour mask, got "
                     f"shape {array.shape}")


def mask_to_label_map(mask: MaskInput, *, size: tuple[int, int], resize: bool = False,
                      tolerance: int = 0, source: str = "mask") -> np.ndarray:
    """Any accepted mask -> an (H, W) uint8 label map of `size` (H, W).

    Accepted: a file path (palette / single-channel PNG of label indices, or a colour mask), a PIL
    image (same modes), an (H, W) integer array or tensor of label indices, or an (H, W, 3)
    uint8 colour mask. Colours must be palette colours (`labels.PALETTE`) or, with `tolerance`,
    within it of exactly one. A mask of another size is an error unless `resize` (nearest
    neighbour: label maps are categorical).
    """
    if isinstance(mask, (str, Path)):
        source = str(mask)
        label_map = labels.load_label_map(mask, tolerance)
    elif isinstance(mask, Image.Image):
        array = np.asarray(mask.convert("RGB") if mask.mode not in ("P", "L", "I", "I;16")
                           else mask)
        label_map = _array_to_label_map(array, tolerance, source)
    elif isinstance(mask, (np.ndarray, Tensor)):
        array = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else mask
        label_map = _array_to_label_map(array, tolerance, source)
    else:
        raise InputError(f"{source}: expected a path, PIL image, array or tensor, got "
                         f"{type(mask).__name__}")
    if label_map.shape != tuple(size):
        if not resize:
            raise InputError(f"{source}: the mask is {label_map.shape[1]}x{label_map.shape[0]} px,"
                             f" the model generates {size[1]}x{size[0]}; give a mask of that size"
                             f" or resize it (resize_mask=True, CLI --resize-mask: nearest)")
        label_map = labels.resize_label_map(label_map, size)
    return label_map


def _as_list(value: Any, kinds: tuple[type, ...]) -> list | None:
    """None -> None; a single value -> [value]; a list/tuple -> list."""
    if value is None:
        return None
    if isinstance(value, kinds) or not isinstance(value, (list, tuple)):
        return [value]
    return list(value)


def _batch_size(*lists: list | None) -> int:
    sizes = {len(x) for x in lists if x is not None and len(x) != 1}
    if len(sizes) > 1:
        raise ValueError(f"prompt, mask and seed/generator lists must have one length (or one "
                         f"element); got lengths {sorted(sizes)}")
    return sizes.pop() if sizes else 1


def _broadcast(values: list | None, size: int) -> list:
    if values is None:
        return [None] * size
    return values * size if len(values) == 1 else values


def _batch_inputs(prompt, mask, seed, generator) -> tuple[list, list]:
    """The per-sample prompts and masks (None where absent), of the batch size that the
    prompt, mask and seed/generator lists agree on."""
    prompts = _as_list(prompt, (str,))
    masks = _as_list(mask, (str, Path, Image.Image, np.ndarray, Tensor))
    batch = _batch_size(prompts, masks, _as_list(seed, (int,)),
                        _as_list(generator, (torch.Generator,)))
    return _broadcast(prompts, batch), _broadcast(masks, batch)


# ----------------------------------------------------------------------------------------------
# Checkpoint folders
# ----------------------------------------------------------------------------------------------


def resolve_checkpoint(path_or_hub_id: str | Path, revision: str | None = None) -> Path:
    """A local checkpoint folder: the directory itself, or a hub snapshot of a repo id."""
    local = Path(path_or_hub_id).expanduser()
    text = str(path_or_hub_id)
    if not local.is_dir():
        if local.exists() or text.startswith(("/", ".", "~")) or text.count("/") != 1:
            raise InputError(f"checkpoint {text!r}: no such folder (expected the train stage's "
                             f"model folder with {list(MODEL_FILES)}, or a hub id 'owner/name')")
        from huggingface_hub import snapshot_download

        try:
            local = Path(snapshot_download(text, revision=revision))
        except Exception as err:  # any hub/network failure: say what was tried
            raise InputError(f"checkpoint {text!r}: not a local folder, and fetching it from the "
                             f"Hugging Face hub failed ({type(err).__name__}: {err})") from err
    missing = [name for name in MODEL_FILES if not (local / name).is_file()]
    if missing:
        raise InputError(f"{local}: not a Face-MoGLE checkpoint folder (missing {missing}; "
                         f"expected the train stage's output or a save_pretrained folder)")
    return local


def read_model_config(folder: Path) -> dict:
    """`config.json` of a checkpoint folder: the train stage's params and `base_manifest`."""
    config = read_json(folder / "config.json")
    if not isinstance(config.get("base_manifest"), dict):
        raise InputError(f"{folder / 'config.json'}: no 'base_manifest' (the base the model was "
                         f"trained on); was it written by the train stage?")
    return config


def _same_base(found: dict, recorded: dict) -> bool:
    """Is `found` (a base dir's manifest) the base recorded in the model's config?"""
    if found.get("kind") != recorded.get("kind"):
        return False
    if recorded["kind"] == "flux":  # the FLUX folder may live elsewhere on this machine
        keys = ("flux_path", "flux_revision")
        return all(found.get(k) == recorded.get(k) for k in keys)
    if "provenance_sha256" in recorded:  # tiny: the same embedded base, wherever its files are
        return found.get("provenance_sha256") == recorded["provenance_sha256"]
    return found == recorded


def _flux_base_from_manifest(recorded: dict, workdir: Path) -> Path:
    """A base folder (base.json + text_encoder.json) for a FLUX manifest, in `workdir`."""
    flux_dir = recorded.get("dir")
    max_tokens = recorded.get("config", {}).get("text_max_tokens")
    if not flux_dir or not Path(flux_dir).is_dir() or not isinstance(max_tokens, int):
        raise InputError(f"the model's base_manifest names FLUX folder {flux_dir!r}, which does "
                         f"not exist here; pass base_dir= (CLI --base) the base stage's output")
    write_json(workdir / MANIFEST, recorded)
    write_json(workdir / TEXT_MANIFEST, text_manifest(FLUX_TEXT_NAME, max_tokens, flux_dir))
    return workdir


def find_base_dir(folder: Path, recorded: dict, base_dir: str | Path | None) -> Path | None:
    """The base folder to load: `base_dir`, else `folder/base`, else the sibling `base` of the
    DVC layout (data/model next to data/base); each must hold the base in `recorded`. None if
    no candidate exists (then a FLUX manifest's recorded folder is used)."""
    if base_dir is not None:
        found = read_manifest(base_dir)
        if not _same_base(found, recorded):
            raise InputError(f"{Path(base_dir) / MANIFEST}: not the base this model was trained "
                             f"on (it differs from {folder / 'config.json'}'s base_manifest)")
        return Path(base_dir)
    for candidate in (folder / BASE_SUBDIR, folder.parent / BASE_SUBDIR):
        if (candidate / MANIFEST).is_file() and _same_base(read_manifest(candidate), recorded):
            return candidate
    if recorded["kind"] == "tiny":
        raise InputError(f"{folder}: no base folder found (looked for {BASE_SUBDIR}/ inside it "
                         f"and beside it); pass base_dir= (CLI --base) the base stage's output")
    return None


# ----------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------


class FaceMoGLEPipeline:
    """Text- and/or mask-conditioned face generation with a trained Face-MoGLE.

    Components: `model` (the frozen FLUX transformer with the condition LoRA, plus MoGLE), `vae`,
    `text_encoder`. Use `from_pretrained` to build one; `to` moves it like a diffusers pipeline.
    """

    def __init__(self, model: FaceMoGLE, base: Base, *, config: dict, base_dir: Path | None,
                 resolution: int):
        self.model = model.eval()
        self.vae = base.vae
        self.text_encoder = base.text_encoder
        self.scheduler_config = dict(base.scheduler_config)
        self.kind = base.kind
        self.config = config
        self.base_dir = base_dir
        self.resolution = resolution
        self._progress: dict = {}
        self._empty_prompt: tuple[Tensor, Tensor] | None = None
        self._empty_latent: tuple[tuple[int, int], Tensor] | None = None

    # -- loading and saving --------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | Path, *, base_dir: str | Path | None = None,
                        device: torch.device | str | None = None,
                        dtype: torch.dtype | None = None,
                        revision: str | None = None) -> FaceMoGLEPipeline:
        """Load a checkpoint folder (or hub repo) and the base it was trained on.

        Args:
            path_or_hub_id: the train stage's model folder, a `save_pretrained` folder, or a hub
                repo id holding one.
            base_dir: the base stage's output; default: `base/` in the checkpoint, then `base/`
                beside it, then (FLUX) the FLUX folder recorded in its config.
            device, dtype: where and in which precision to run (default: CPU, the base's dtype).
        """
        folder = resolve_checkpoint(path_or_hub_id, revision)
        verify_manifest(folder)  # every file, the base/ copy included, before any is read
        config = read_model_config(folder)
        recorded = config["base_manifest"]
        params = params_from_dict({k: v for k, v in config.items() if k in SECTIONS})
        found = find_base_dir(folder, recorded, base_dir)
        with tempfile.TemporaryDirectory() as work:
            root = found or _flux_base_from_manifest(recorded, Path(work))
            base = load_base(root, device=device, dtype=dtype)
        model = load_trained(base.transformer, folder, params, verify=False)
        model.to(device=device)  # LoRA and MoGLE stay float32, as the sample stage runs them
        resolution = int(recorded.get("resolution", FLUX_RESOLUTION))
        return cls(model, base, config=config, base_dir=found, resolution=resolution)

    def save_pretrained(self, save_directory: str | Path) -> None:
        """Write a self-contained checkpoint folder, atomically: the model files, `base/` with a
        copy of the tiny base (or, for FLUX, its manifest naming the FLUX folder), and
        `manifest.json` with the SHA-256 of every file."""
        with atomic_path(save_directory) as tmp:
            tmp.mkdir()
            write_weights(tmp, self.model, self.config)  # the train stage's model files
            if self.base_dir is not None and self.kind == "tiny":
                # the embedded base's files themselves, so the folder stands alone
                manifest = read_manifest(self.base_dir)
                shutil.copytree(parts_dir(self.base_dir, manifest), tmp / BASE_SUBDIR)
                write_json(tmp / BASE_SUBDIR / MANIFEST,
                           {k: v for k, v in manifest.items() if k != "dir"})
                shutil.copy2(self.base_dir / TEXT_MANIFEST, tmp / BASE_SUBDIR / TEXT_MANIFEST)
            elif self.base_dir is not None:
                (tmp / BASE_SUBDIR).mkdir()
                for name in (MANIFEST, TEXT_MANIFEST):
                    shutil.copy2(self.base_dir / name, tmp / BASE_SUBDIR / name)
            else:
                _flux_base_from_manifest(self.config["base_manifest"], tmp / BASE_SUBDIR)
            write_manifest(tmp)

    # -- device, dtype, progress ---------------------------------------------------------------

    @property
    def components(self) -> dict[str, Any]:
        return {"model": self.model, "vae": self.vae, "text_encoder": self.text_encoder}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.transformer.parameters()).dtype

    @property
    def condition_dtype(self) -> torch.dtype:
        """The dtype of the sampler's inputs: MoGLE's (float32 unless `to(dtype)` changed it)."""
        return next(self.model.mogle.parameters()).dtype

    def _text_modules(self) -> list[torch.nn.Module]:
        return [m for m in vars(self.text_encoder).values() if isinstance(m, torch.nn.Module)]

    def to(self, *args, **kwargs) -> FaceMoGLEPipeline:
        """Move every component: `to(device)`, `to(dtype)`, `to(device, dtype)` or keywords.

        The text encoder moves too; its outputs stay float32 and are cast where they are used.
        """
        device = kwargs.pop("device", None)
        dtype = kwargs.pop("dtype", None)
        if kwargs:
            raise TypeError(f"to() got unexpected keyword arguments {sorted(kwargs)}")
        for arg in args:
            if isinstance(arg, torch.dtype):
                dtype = arg
            else:
                device = torch.device(arg)
        for module in [self.model, self.vae, *self._text_modules()]:
            module.to(device=device, dtype=dtype)
        self._empty_prompt, self._empty_latent = None, None
        return self

    def set_progress_bar_config(self, **kwargs) -> None:
        """As in diffusers; `disable=True` hides the sampling progress bar."""
        self._progress = kwargs

    # -- encoding ------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompt(self, prompt: str | None) -> tuple[Tensor, Tensor]:
        """(T, D) sequence and (P,) pooled embeddings of one prompt; None means "".

        Each prompt is encoded on its own so that it does not depend on the others in a batch,
        and rounded like the cache (`CONDITION_STORE_DTYPE`).
        """
        seq, pooled = self.text_encoder.encode(["" if prompt is None else prompt])
        return (seq[0].to(CONDITION_STORE_DTYPE).to(self.device, self.condition_dtype),
                pooled[0].to(CONDITION_STORE_DTYPE).to(self.device, self.condition_dtype))

    def empty_prompt(self) -> tuple[Tensor, Tensor]:
        """Embeddings of "" (mask2face, unconditional, and the true-CFG negative)."""
        if self._empty_prompt is None:
            self._empty_prompt = self.encode_prompt("")
        return self._empty_prompt

    @torch.no_grad()
    def _encode_image(self, image01: Tensor) -> Tensor:
        """(3, H, W) in [0, 1] -> (L, C) packed VAE posterior mean, rounded like the cache."""
        z = latents.encode(self.vae, image01[None].to(self.vae.device))  # (1, C/4, h, w)
        return latents.pack(z)[0].to(CONDITION_STORE_DTYPE).to(self.device, self.condition_dtype)

    def encode_mask(self, label_map: np.ndarray) -> Tensor:
        """(H, W) label map -> (20, L, C) packed slot latents, as `cache_latents` makes them.

        The label map is decoupled into 20 slot images (`labels.decouple`); the slots of labels
        that occur are VAE-encoded (posterior mean) and packed, the others get the latent of the
        empty (black) slot image, as in the cache. Each image is encoded on its own: on CPU the
        VAE's numerics depend on the batch it runs in, and one image per call makes a mask's
        latents a function of that mask alone (and equal to a cache built with batch size 1).
        """
        slots = labels.decouple(label_map)  # (20, 3, H, W)
        present = labels.slot_presence(label_map)  # (20,)
        empty = self._empty_slot(slots.shape[-2:])  # (L, C)
        return torch.stack([self._encode_image(slots[k]) if present[k] else empty
                            for k in range(labels.NUM_SLOTS)])  # (20, L, C)

    def _empty_slot(self, size: tuple[int, int]) -> Tensor:
        """(L, C) latent of an all-black slot image (a label that does not occur)."""
        if self._empty_latent is None or self._empty_latent[0] != tuple(size):
            self._empty_latent = (tuple(size), self._encode_image(torch.zeros(3, *size)))
        return self._empty_latent[1]

    # -- sampling ------------------------------------------------------------------------------

    def _size(self, height: int | None, width: int | None) -> int:
        height = height or self.resolution
        width = width or self.resolution
        if height != width or height % 16:
            raise ValueError(f"height and width must be equal multiples of 16 (square images, "
                             f"as the model was trained), got {height}x{width}")
        return height

    def _generators(self, size: int, seed, generator) -> list[torch.Generator]:
        if seed is not None and generator is not None:
            raise ValueError("give either seed or generator, not both")
        if generator is not None:
            gens = _as_list(generator, (torch.Generator,))
            return gens * size if len(gens) == 1 else gens
        seeds = _as_list(seed, (int,))
        if seeds is None:
            seeds = [int(torch.randint(0, 2 ** 62, (1,)).item())]
        if len(seeds) == 1:
            seeds = [seeds[0] + i for i in range(size)]
        return [torch.Generator().manual_seed(int(s)) for s in seeds]

    def _conditions(self, texts: list, slots: list, empty_slot: Tensor) -> Conditions:
        empty = self.empty_prompt()
        return Conditions(torch.stack([t[0] for t in texts]), torch.stack([t[1] for t in texts]),
                          torch.stack(slots), empty[0], empty[1], empty_slot)

    def _sample_group(self, cond: Conditions, noise: Tensor, latent_size: int, *, steps: int,
                      guidance: float, cfg_scale: float, record: bool, cache_threshold: float):
        """Denoise one batch of samples."""
        grid = (latent_size // 2, latent_size // 2)
        recorder = None
        if record and cond.cond_latents is not None:
            recorder = GatingRecorder(self.model.mogle, cond.cond_latents, grid)
        residual = ResidualCache(cache_threshold) if cache_threshold > 0 else None
        with sampling_autocast(self.dtype, self.device):  # the experts run once, in here
            velocity = velocity_fn(self.model, cond, latent_size=latent_size, guidance=guidance,
                                   cfg_scale=cfg_scale, residual_cache=residual)
            packed = flow.euler_sample(velocity, noise, steps, scheduler=self.scheduler_config,
                                       image_seq_len=noise.shape[1], callback=recorder,
                                       progress=not self._progress.get("disable", False))
            return decode_images(self.vae, packed.float(), latent_size), recorder

    @torch.no_grad()
    def __call__(self, prompt: str | None | Sequence[str | None] = None,
                 mask: MaskInput | None | Sequence[MaskInput | None] = None, *,
                 height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 28, guidance_scale: float = 3.5,
                 true_cfg_scale: float = 1.0, cache_threshold: float = 0.0,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None,
                 seed: int | Sequence[int] | None = None, resize_mask: bool = False,
                 color_tolerance: int = 0, output_type: str = "pil", return_dict: bool = True,
                 return_gating: bool = False) -> FaceMoGLEPipelineOutput | tuple:
        """Generate faces.

        Args:
            prompt: text, or None / "" for none; a list gives a batch.
            mask: a label map or colour mask (see `mask_to_label_map`), or None for no mask;
                a list gives a batch. A single prompt or mask is used for the whole batch.
            height, width: output size (default: the training resolution); square, x16.
            num_inference_steps: Euler steps (paper: 28).
            guidance_scale: the guidance-embedding value (FLUX.1-dev: 3.5); models without a
                guidance embedding (the tiny base) ignore it.
            true_cfg_scale: classifier-free guidance against the unconditional prediction
                (empty prompt, no mask); 1.0 is off.
            cache_threshold: first-block residual caching across the steps (the `sample`
                section's `cache_threshold`, docs/speed.md); 0 computes every block at every
                step.
            generator: CPU generator(s); one per image, or one that every image draws from
                in turn. Image b's noise is (L, C) drawn from its generator, as in the `sample`
                stage, so an image does not depend on its batch.
            seed: integer seed(s) instead of generators; one int seeds image b with seed + b.
            resize_mask: resize masks of another size (nearest) instead of refusing them.
            color_tolerance: per-channel distance at which colour-mask colours snap to the
                palette (for JPEG-damaged masks); 0 requires exact palette colours.
            output_type: "pil", "np" ((B, H, W, 3) floats in [0, 1]) or "pt" ((B, 3, H, W)).
            return_gating: also return MoGLE's gate weights at every step (`GatingTrace`,
                for the samples that have a mask).
        Returns:
            `FaceMoGLEPipelineOutput`, or the tuple (images, gating) if not `return_dict`.
        """
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        size = self._size(height, width)
        prompts, masks = _batch_inputs(prompt, mask, seed, generator)
        latent_size = size // 8
        noise = self._initial_noise(len(prompts), latent_size, seed, generator)  # (B, L, C)
        texts = [self.encode_prompt(p) for p in prompts]
        slots = self._encode_masks(masks, size, resize=resize_mask, tolerance=color_tolerance)
        images, gating = self._sample_modes(
            texts, slots, noise, latent_size, size, steps=num_inference_steps,
            guidance=guidance_scale, cfg_scale=true_cfg_scale, record=return_gating,
            cache_threshold=cache_threshold)
        result = self._postprocess(images, output_type)
        return FaceMoGLEPipelineOutput(result, gating) if return_dict else (result, gating)

    def _initial_noise(self, batch: int, latent_size: int, seed, generator) -> Tensor:
        """(B, L, C) starting noise, image b's drawn from its own generator."""
        channels = self.model.transformer.config.in_channels
        return flow.initial_noise(((latent_size // 2) ** 2, channels),
                                  self._generators(batch, seed, generator),
                                  device=self.device, dtype=self.condition_dtype)  # (B, L, C)

    def _encode_masks(self, masks: list, size: int, *, resize: bool,
                      tolerance: int) -> list[Tensor]:
        """Per sample: the (20, L, C) slot latents of its mask; without one, the empty mask (20
        empty slots), as whole-mask dropout trains text-only generation."""
        empty = self._empty_slot((size, size)).expand(labels.NUM_SLOTS, -1, -1)  # (20, L, C)
        return [empty if m is None else self.encode_mask(mask_to_label_map(
            m, size=(size, size), resize=resize, tolerance=tolerance,
            source=f"mask {n}")) for n, m in enumerate(masks)]

    def _sample_modes(self, texts: list, slots: list, noise: Tensor, latent_size: int,
                      size: int, *, steps: int, guidance: float, cfg_scale: float,
                      record: bool, cache_threshold: float = 0.0
                      ) -> tuple[Tensor, GatingTrace | None]:
        """(B, 3, H, W) float32 CPU images in [0, 1], and the gating trace if `record`. Every
        sample has condition tokens (text2face: the empty mask), so all run as one batch."""
        cond = self._conditions(texts, slots, self._empty_slot((size, size)))
        out, recorder = self._sample_group(cond, noise, latent_size, steps=steps,
                                           guidance=guidance, cfg_scale=cfg_scale, record=record,
                                           cache_threshold=cache_threshold)
        return out.float().cpu(), None if recorder is None else recorder.trace()

    @staticmethod
    def _postprocess(images01: Tensor, output_type: str):
        if output_type == "pt":
            return images01
        if output_type == "np":
            return images01.permute(0, 2, 3, 1).numpy()
        return [Image.fromarray(a) for a in to_uint8(images01)]
