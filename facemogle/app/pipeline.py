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

Prompts and masks are encoded by the `cache_latents` stage's functions (`encode_texts`,
`mask_latents`: rounded to float16 like the cache) and sampled by the `sample` stage's sampler
(`generate_images`) with the same per-image seeding, so a test
id with `seed=flow.seed_for(id, params.seed)` gives the `sample` stage's image. Bit for bit when
the cache was built one image at a time (`cache_latents --batch-size 1`) and `sample.batch_size`
is 1; otherwise the last bits can differ, because on CPU the encoders' and the transformer's
rounding depends on the batch they run in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.utils import BaseOutput
from PIL import Image
from torch import Tensor

from facemogle.app.arguments import (
    OUTPUT_TYPES,
    MaskInput,
    batch_inputs,
    generators,
    mask_to_label_map,
    to_output,
)
from facemogle.app.gate_maps import GatingRecorder, GatingTrace
from facemogle.app.model_folder import (
    MODEL_FILES,
    find_base_dir,
    read_model_config,
    resolve_checkpoint,
    write_base_copy,
)
from facemogle.base.loader import Base, load_base
from facemogle.cache.build import empty_slot_latent, encode_texts, mask_latents
from facemogle.core import labels
from facemogle.core.config import SECTIONS, params_from_dict
from facemogle.core.flux import FLUX_RESOLUTION
from facemogle.core.io import atomic_path, write_manifest
from facemogle.core.resume import check_folder
from facemogle.models.facemogle import FaceMoGLE
from facemogle.sampling.sampler import Conditions, generate_images, residual_cache
from facemogle.training.checkpoint import load_trained, write_weights

# The API of this module; `MODEL_FILES` and `mask_to_label_map` live in `facemogle.app.model_folder`
# and `facemogle.app.arguments` and are named here for the callers that import them from here.
__all__ = ["MODEL_FILES", "FaceMoGLEPipeline", "FaceMoGLEPipelineOutput", "MaskInput",
           "mask_to_label_map"]


@dataclass
class FaceMoGLEPipelineOutput(BaseOutput):
    """`images`: PIL images, a (B, H, W, 3) float array in [0, 1] ("np") or a (B, 3, H, W)
    tensor ("pt"); `gating`: the gate weights of the samples that had a mask, when asked for."""

    images: list[Image.Image] | np.ndarray | Tensor
    gating: GatingTrace | None = None


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
        """Load a checkpoint folder (or hub repo) and the base it was trained on. Its files are
        checked against its `manifest.json` first (`facemogle.core.resume.check_folder`: a damaged
        file, or a folder without a manifest, is an `InputError` naming it).

        Args:
            path_or_hub_id: the train stage's model folder, a `save_pretrained` folder, or a hub
                repo id holding one.
            base_dir: the base stage's output; default: `base/` in the checkpoint, then `base/`
                beside it, then (FLUX) the FLUX folder recorded in its config.
            device, dtype: where and in which precision to run (default: CPU, the base's dtype).
        """
        folder = resolve_checkpoint(path_or_hub_id, revision)
        check_folder(folder)  # every file, the base/ copy included, before any is read
        config = read_model_config(folder)
        recorded = config["base_manifest"]
        params = params_from_dict({k: v for k, v in config.items() if k in SECTIONS})
        found = find_base_dir(folder, recorded, base_dir)
        base = load_base(found or recorded, device=device, dtype=dtype)
        model = load_trained(base.transformer, folder, params, verify=False)
        model.to(device=device)  # LoRA and MoGLE stay float32, as the sample stage runs them
        # FLUX.1-dev's base manifest records no training resolution; the paper trains at 512 px.
        resolution = int(recorded.get("resolution", FLUX_RESOLUTION))
        return cls(model, base, config=config, base_dir=found, resolution=resolution)

    def save_pretrained(self, save_directory: str | Path) -> None:
        """Write a self-contained checkpoint folder, atomically: the model files, `base/` with a
        copy of the tiny base (or, for FLUX, its manifest naming the FLUX folder), and
        `manifest.json` with the SHA-256 of every file."""
        with atomic_path(save_directory) as tmp:
            tmp.mkdir()
            write_weights(tmp, self.model, self.config)  # the train stage's model files
            write_base_copy(tmp, self.base_dir, self.config["base_manifest"])
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
        text_modules = [m for m in vars(self.text_encoder).values()
                        if isinstance(m, torch.nn.Module)]
        for module in [self.model, self.vae, *text_modules]:
            module.to(device=device, dtype=dtype)
        self._empty_prompt, self._empty_latent = None, None
        return self

    def set_progress_bar_config(self, **kwargs) -> None:
        """As in diffusers; `disable=True` hides the sampling progress bar."""
        self._progress = kwargs

    # -- encoding: as the cache_latents stage encodes (facemogle.cache.build) -------------------

    def _as_condition(self, stored: Tensor) -> Tensor:
        """A cached-dtype (float16) encoding on the model's device, in the sampler's dtype."""
        return stored.to(self.device, self.condition_dtype)

    def encode_prompt(self, prompt: str | None) -> tuple[Tensor, Tensor]:
        """(T, D) sequence and (P,) pooled embeddings of one prompt; None means "".

        Each prompt is encoded on its own so that it does not depend on the others in a batch,
        and rounded like the cache.
        """
        seq, pooled = encode_texts(self.text_encoder, ["" if prompt is None else prompt])
        return self._as_condition(seq[0]), self._as_condition(pooled[0])

    def empty_prompt(self) -> tuple[Tensor, Tensor]:
        """Embeddings of "" (mask2face, unconditional, and the true-CFG negative)."""
        if self._empty_prompt is None:
            self._empty_prompt = self.encode_prompt("")
        return self._empty_prompt

    def encode_mask(self, label_map: np.ndarray) -> Tensor:
        """(H, W) label map -> (20, L, C) packed slot latents, as `cache_latents` makes them: the
        slots of labels that occur VAE-encoded one image per call, the others the empty slot's
        latent (`facemogle.cache.build.mask_latents`)."""
        return mask_latents(self.vae, label_map, self._empty_slot(label_map.shape))

    def _empty_slot(self, size: tuple[int, int]) -> Tensor:
        """(L, C) latent of an all-black slot image (a label that does not occur)."""
        if self._empty_latent is None or self._empty_latent[0] != tuple(size):
            latent = self._as_condition(empty_slot_latent(self.vae, tuple(size)))
            self._empty_latent = (tuple(size), latent)
        return self._empty_latent[1]

    def _conditions(self, prompts: list, masks: list, size: int, *, resize: bool,
                    tolerance: int) -> Conditions:
        """The batch's conditions; a sample without a mask gets the empty mask (20 empty
        slots), as whole-mask dropout trains text-only generation."""
        texts = [self.encode_prompt(p) for p in prompts]
        empty_slot = self._empty_slot((size, size))
        no_mask = empty_slot.expand(labels.NUM_SLOTS, -1, -1)  # (20, L, C)
        slots = [no_mask if m is None else self.encode_mask(mask_to_label_map(
            m, size=(size, size), resize=resize, tolerance=tolerance, source=f"mask {n}"))
            for n, m in enumerate(masks)]
        empty_text, empty_pooled = self.empty_prompt()
        return Conditions(torch.stack([t[0] for t in texts]), torch.stack([t[1] for t in texts]),
                          torch.stack(slots), empty_text, empty_pooled, empty_slot)

    # -- sampling ------------------------------------------------------------------------------

    def _size(self, height: int | None, width: int | None) -> int:
        height = height or self.resolution
        width = width or self.resolution
        if height != width or height % 16:
            raise ValueError(f"height and width must be equal multiples of 16 (square images, "
                             f"as the model was trained), got {height}x{width}")
        return height

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
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        size = self._size(height, width)
        prompts, masks = batch_inputs(prompt, mask, seed, generator)
        gens = generators(len(prompts), seed, generator)
        cond = self._conditions(prompts, masks, size, resize=resize_mask,
                                tolerance=color_tolerance)
        latent_size = size // 8
        recorder = None
        if return_gating:
            recorder = GatingRecorder(self.model.mogle, cond.cond_latents,
                                      (latent_size // 2, latent_size // 2))
        images = generate_images(  # the experts run once, under the sampling autocast
            self.model, self.vae, cond, gens, latent_size=latent_size, base_dtype=self.dtype,
            steps=num_inference_steps, guidance=guidance_scale, cfg_scale=true_cfg_scale,
            scheduler_config=self.scheduler_config, callback=recorder,
            progress=not self._progress.get("disable", False),
            residual_cache=residual_cache(cache_threshold))
        result = to_output(images.float().cpu(), output_type)
        gating = None if recorder is None else recorder.trace()
        return FaceMoGLEPipelineOutput(result, gating) if return_dict else (result, gating)
