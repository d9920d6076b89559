"""Gating weights over the denoising trajectory, as per-expert maps (paper section 4.4, Fig. 5).

MoGLE's gate gives every image token a weight per expert that depends on the noisy latent and
the flow time (docs/design.md, "MoGLE"). `GatingRecorder` is a sampler callback
(`flow.euler_sample(callback=...)`) that evaluates the gate on the latents each step is taken
from, so the recorded weights are exactly the ones that mixed the experts at that step.
`gating_grid` draws them as a picture: one row per expert, one column per timestep.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from facemogle.core.labels import LABELS
from facemogle.models.mogle import MoGLE

# Viridis at 9 evenly spaced points (perceptually uniform, readable in greyscale), interpolated.
_VIRIDIS = np.array([
    (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
    (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37),
], dtype=np.float64)  # (9, 3)
DEFAULT_EXPERTS = 6
DEFAULT_STEPS = 5
LABEL_WIDTH = 84  # px for the expert names left of the grid
HEADER = 30  # px for the title and the time labels above it
COLORBAR_WIDTH = 80


def expert_name(slot: int) -> str:
    """Slot 0 is the global expert (colour mask); slot i + 1 the local expert of label i."""
    return "global" if slot == 0 else LABELS[slot - 1]


@dataclass
class GatingTrace:
    """Gate weights recorded while sampling one batch.

    Attributes:
        sigmas: (S,) flow time of each recorded step (1 = pure noise).
        weights: (S, B, L, E) weights per step, sample, token and expert (float32, CPU).
        slots: the mask slot each expert reads (E,), see `expert_name`.
        grid: (rows, cols) of the token grid (the latent grid halved by 2x2 packing).
    """

    sigmas: Tensor
    weights: Tensor
    slots: tuple[int, ...]
    grid: tuple[int, int]

    @property
    def names(self) -> list[str]:
        return [expert_name(s) for s in self.slots]

    def maps(self, sample: int = 0) -> Tensor:
        """(S, E, rows, cols) weight maps of one sample."""
        w = self.weights[:, sample]  # (S, L, E)
        return w.permute(0, 2, 1).reshape(w.shape[0], w.shape[2], *self.grid)

    def select(self, index: Sequence[int]) -> GatingTrace:
        """The trace of the samples `index` only (e.g. one image of a batch)."""
        return GatingTrace(self.sigmas, self.weights[:, list(index)], self.slots, self.grid)


class GatingRecorder:
    """Sampler callback that records MoGLE's gate weights at every step.

    Args:
        mogle: the model's MoGLE.
        cond_latents: (B, 20, L, C) mask slot latents of the batch being sampled.
        grid: (rows, cols) of the token grid, rows * cols = L.
    """

    def __init__(self, mogle: MoGLE, cond_latents: Tensor, grid: tuple[int, int]):
        self.mogle, self.cond, self.grid = mogle, cond_latents, grid
        self.sigmas: list[Tensor] = []
        self.weights: list[Tensor] = []

    @torch.no_grad()
    def __call__(self, step: int, sigma: Tensor, z_t: Tensor) -> None:  # noqa: ARG002 (sampler callback signature)
        """Called before Euler step `step` with sigma (B,) and the latents z_t (B, L, C)."""
        weights = self.mogle.gate_weights(self.cond, z_t, sigma)  # (B, L, E)
        self.sigmas.append(sigma[0].float().cpu())
        self.weights.append(weights.float().cpu())

    def trace(self) -> GatingTrace:
        if not self.weights:
            raise ValueError("GatingRecorder: no step was recorded")
        return GatingTrace(torch.stack(self.sigmas), torch.stack(self.weights),
                           tuple(self.mogle.slots), self.grid)


def _pick_steps(num: int, steps: int | Sequence[int] | None) -> list[int]:
    """Indices of the steps to show: given ones, or `steps` (default 5) evenly spaced, first and
    last included (early steps decide layout, late ones detail: paper Fig. 5)."""
    if steps is not None and not isinstance(steps, int):
        bad = [s for s in steps if not 0 <= s < num]
        if bad:
            raise ValueError(f"gating_grid: steps {bad} are outside 0..{num - 1}")
        return list(steps)
    count = min(num, DEFAULT_STEPS if steps is None else steps)
    return sorted({round(i * (num - 1) / max(count - 1, 1)) for i in range(count)})


def _pick_experts(trace: GatingTrace, maps: Tensor, experts: int | Sequence[str] | None
                  ) -> list[int]:
    """Indices of the experts to show: given names, or the `experts` (default 6) with the highest
    mean weight over the shown steps, in slot order."""
    names = trace.names
    if experts is not None and not isinstance(experts, int):
        unknown = [e for e in experts if e not in names]
        if unknown:
            raise ValueError(f"gating_grid: unknown experts {unknown}; this model has {names}")
        return [names.index(e) for e in experts]
    count = min(len(names), DEFAULT_EXPERTS if experts is None else experts)
    mean = maps.mean(dim=(0, 2, 3))  # (E,)
    return sorted(mean.argsort(descending=True)[:count].tolist())


def colorize(values: np.ndarray, vmax: float) -> np.ndarray:
    """(H, W) values in [0, vmax] -> (H, W, 3) uint8 viridis colours."""
    t = np.clip(values / max(vmax, 1e-12), 0.0, 1.0) * (len(_VIRIDIS) - 1)  # (H, W)
    rgb = [np.interp(t, np.arange(len(_VIRIDIS)), _VIRIDIS[:, c]) for c in range(3)]
    return np.stack(rgb, axis=-1).round().astype(np.uint8)  # (H, W, 3)


def _colorbar(canvas: Image.Image, draw: ImageDraw.ImageDraw, vmax: float, font) -> None:
    """Title and colour scale in the header: 'gate weight 0 [bar] vmax'."""
    draw.text((4, 2), "gate weight  0", fill=(0, 0, 0), font=font)
    bar = colorize(np.tile(np.linspace(0, vmax, COLORBAR_WIDTH), (8, 1)), vmax)  # (8, W, 3)
    canvas.paste(Image.fromarray(bar), (90, 4))
    draw.text((94 + COLORBAR_WIDTH, 2), f"{vmax:.3f}", fill=(0, 0, 0), font=font)


def gating_grid(trace: GatingTrace, *, sample: int = 0, experts: int | Sequence[str] | None = None,
                steps: int | Sequence[int] | None = None, cell: int = 64) -> Image.Image:
    """Per-expert gate weight maps over the trajectory as one picture (paper Fig. 5).

    Rows are experts (named by their slot: "global" or a label), columns are denoising steps
    (labelled with their flow time sigma, 1 = noise). All maps share one colour scale, from 0 to
    the largest weight shown (printed in the title), so rows and columns compare directly.

    Args:
        trace: what `GatingRecorder` recorded.
        sample: which image of the batch.
        experts: how many experts to show (the most used ones), or their names.
        steps: how many steps to show (evenly spaced), or their indices.
        cell: pixel size of one map (maps are upscaled with nearest neighbour: one block = one
            token).
    """
    steps_shown = _pick_steps(trace.weights.shape[0], steps)
    maps = trace.maps(sample)[steps_shown]  # (S', E, rows, cols)
    shown = _pick_experts(trace, maps, experts)
    maps = maps[:, shown].numpy()  # (S', E', rows, cols)
    vmax = float(maps.max())
    rows, cols = trace.grid
    width = max(1, round(cell * cols / rows))
    canvas = Image.new("RGB", (LABEL_WIDTH + len(steps_shown) * (width + 2),
                               HEADER + len(shown) * (cell + 2)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    _colorbar(canvas, draw, vmax, font)
    for c, step in enumerate(steps_shown):
        x = LABEL_WIDTH + c * (width + 2)
        draw.text((x + 2, HEADER - 12), f"s={float(trace.sigmas[step]):.2f}", fill=(0, 0, 0),
                  font=font)
        for r in range(len(shown)):
            y = HEADER + r * (cell + 2)
            tile = Image.fromarray(colorize(maps[c, r], vmax)).resize((width, cell), Image.NEAREST)
            canvas.paste(tile, (x, y))
    for r, expert in enumerate(shown):
        draw.text((4, HEADER + r * (cell + 2) + cell // 2 - 6), trace.names[expert],
                  fill=(0, 0, 0), font=font)
    return canvas
