"""A small face parser: images -> 19-class CelebAMask-HQ label maps (embedded default).

The embedded default has no pretrained face parser offline, so the embedded base carries this one,
trained on SynthFaces by `stages.pretrain` and fixed afterwards. `parse_masks` uses it to label
images without annotations and `evaluate` to measure mask fidelity (mIoU of the generated face's
parse vs. the input mask); its pooled bottleneck features are the offline feature space of the
"fd_parser" Frechet distance.

The net is a U-Net: three stride-2 stages down to x8, then bilinear upsampling with skip
connections back to full resolution. Any H, W work (skips are resized to match).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from facemogle.core.io import InputError, atomic_path, read_json
from facemogle.core.labels import NUM_LABELS

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def _groups(channels: int) -> int:
    """GroupNorm groups: 8 when they divide the width, else the largest divisor below 8."""
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class ConvBlock(nn.Module):
    """Two 3x3 conv + GroupNorm + SiLU layers: (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.GroupNorm(_groups(out_channels), out_channels),
            nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.GroupNorm(_groups(out_channels), out_channels),
            nn.SiLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class FaceParser(nn.Module):
    """Encoder-decoder conv net with skip connections, `num_classes` output logits per pixel.

    Widths per scale: w, 2w, 4w, 4w (at x1, x2, x4, x8). `features` pools the x8 bottleneck to
    a (B, 4w) vector.
    """

    def __init__(self, width: int = 32, num_classes: int = NUM_LABELS):
        super().__init__()
        self.config = {"width": int(width), "num_classes": int(num_classes)}
        w = width
        self.enc = nn.ModuleList([ConvBlock(3, w), ConvBlock(w, 2 * w), ConvBlock(2 * w, 4 * w),
                                  ConvBlock(4 * w, 4 * w)])
        self.down = nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1)
                                   for c in (w, 2 * w, 4 * w)])
        self.dec = nn.ModuleList([ConvBlock(8 * w, 4 * w), ConvBlock(6 * w, 2 * w),
                                  ConvBlock(3 * w, w)])
        self.head = nn.Conv2d(w, num_classes, 1)

    @property
    def feature_dim(self) -> int:
        """Size of the `features` vector (4 x width)."""
        return 4 * self.config["width"]

    def _encode(self, images01: Tensor) -> list[Tensor]:
        x = images01 * 2.0 - 1.0  # (B, 3, H, W) in [-1, 1]
        skips = [self.enc[0](x)]  # (B, w, H, W)
        for down, block in zip(self.down, self.enc[1:]):
            skips.append(block(down(skips[-1])))  # (B, 2w, H/2, W/2), (B, 4w, H/4), (B, 4w, H/8)
        return skips

    def forward(self, images01: Tensor) -> Tensor:
        """Per-pixel logits (B, num_classes, H, W) for images (B, 3, H, W) in [0, 1]."""
        skips = self._encode(images01)
        x = skips[-1]  # (B, 4w, H/8, W/8)
        for block, skip in zip(self.dec, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))  # (B, 4w | 2w | w, ...) at the skip's size
        return self.head(x)  # (B, num_classes, H, W)

    @torch.no_grad()
    def parse(self, images01: Tensor) -> Tensor:
        """Label maps (B, H, W) uint8: the arg-max class per pixel."""
        return self(images01).argmax(dim=1).to(torch.uint8)  # (B, H, W)

    @torch.no_grad()
    def features(self, images01: Tensor) -> Tensor:
        """Pooled bottleneck features (B, 4 x width), float32."""
        return self._encode(images01)[-1].float().mean(dim=(2, 3))  # (B, 4w)


def save_parser(parser: FaceParser, directory: str | Path) -> None:
    """Write `model.safetensors` + `config.json` into `directory`, atomically (replaces it)."""
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        state = {k: v.detach().contiguous().cpu() for k, v in parser.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_NAME))
        (tmp / CONFIG_NAME).write_text(json.dumps(parser.config, indent=2) + "\n")


def load_parser(directory: str | Path, device: torch.device | str | None = None) -> FaceParser:
    """Load a parser written by `save_parser` (weights as saved, in eval mode)."""
    directory = Path(directory)
    config = read_json(directory / CONFIG_NAME, missing="face parser config not found")
    if set(config) != {"width", "num_classes"}:
        raise InputError(f"{directory / CONFIG_NAME}: expected keys 'width' and 'num_classes', "
                         f"got {sorted(config)}")
    parser = FaceParser(**config)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise InputError(f"{weights}: face parser weights not found")
    parser.load_state_dict(load_file(str(weights)))
    return parser.to(device).eval() if device is not None else parser.eval()
