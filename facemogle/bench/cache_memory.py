"""Peak host memory of `cache_latents` per process, measured on stand-ins and extrapolated.

    python -m facemogle.bench.cache_memory [--out FILE]

It measures the `facemogle.cache.build` of the checkout it runs in (the record names that
file's SHA-256). To measure another version of that file against the same code around it, run
it from a worktree that differs only there:

    git worktree add ../old HEAD && git -C ../old checkout OLD -- facemogle/cache/build.py
    cd ../old && python -m facemogle.bench.cache_memory --out old.json

Each point builds one shard of stand-in data (random faces, label maps with all 19 labels, so
all 20 mask slots are stored) with a stand-in VAE and text encoder that give the real output
shapes at almost no compute, in a fresh process, and records the peak resident memory above the
process's memory before `build_cache` (Linux `VmHWM`, reset through `/proc/self/clear_refs`).
The grid varies shard size, captions, text width, batch size and resolution, in a family where
the text dominates (64 px), one where the images do (64-wide text) and one where both are
large. The stage encodes the images first and the text after them, so its peak is that of the
larger phase; the least-squares fit of

    peak = b0 + max(image phase, text phase)
    image phase = i_shard * shard_pixels + i_batch * batch_pixels
    text phase  = t_pixels * shard_pixels + t_shard * shard_text + t_batch * batch_text

(the byte sizes, in float32, of a shard's face and slot images (N * 21, 3, R, R) and its text
states (K, T, D), and of one batch's images ((b + 20), 3, R, R: a batch and one image's 20
decoupled slots) and text states (b, T, D); `t_pixels`: images still held while the text is
encoded) is extrapolated to MM-CelebA-HQ (`MM_CELEBA_HQ`). The stand-ins run on the CPU and do
no real work: the fit holds the data the stage holds, with the encoders' float32 output on the
host (on a GPU the stage copies float16 to the host), not the encoders' own working memory.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from facemogle.bench.device import host_peak_rss, host_rss, reset_host_peak
from facemogle.cache import build
from facemogle.core.io import file_sha256
from facemogle.data import layout

NUM_SLOTS = 20  # the global colour mask and 19 binary masks (facemogle.core.labels)


@dataclass(frozen=True)
class CacheScale:
    """The sizes that decide `cache_latents`' memory."""

    images: int  # per shard (cache.shard_size)
    captions: int  # per image
    text_tokens: int  # T
    text_dim: int  # D
    pooled_dim: int  # P
    resolution: int  # R
    batch_size: int  # b (cache.batch_size, and captions per text call)

    def regressors(self) -> list[float]:
        """1 and the four byte sizes of the memory model (module docstring): shard_text,
        shard_pixels, batch_text, batch_pixels."""
        text = self.text_tokens * self.text_dim * 4  # one caption's states, float32
        pixels = 3 * self.resolution ** 2 * 4  # one image, float32
        return [1.0, self.images * self.captions * text, self.images * (1 + NUM_SLOTS) * pixels,
                self.batch_size * text, (self.batch_size + NUM_SLOTS) * pixels]

    def stored_bytes(self) -> int:
        """Bytes of the shard's float16 tensors with every slot stored (the file, roughly)."""
        tokens = (self.resolution // 16) ** 2 * 64  # packed latent tokens x channels per image
        k = self.images * self.captions
        return 2 * (self.images * (1 + NUM_SLOTS) * tokens + k * self.text_tokens * self.text_dim
                    + k * self.pooled_dim)


# MM-CelebA-HQ on FLUX.1-dev: 256 images a shard, 10 captions, T5 512 x 4096, CLIP 768, 512 px
# (32 x 32 tokens x 64 per latent), params-flux.yaml's cache.batch_size.
MM_CELEBA_HQ = CacheScale(images=256, captions=10, text_tokens=512, text_dim=4096,
                          pooled_dim=768, resolution=512, batch_size=32)

TEXT = CacheScale(images=8, captions=4, text_tokens=256, text_dim=1024, pooled_dim=768,
                  resolution=64, batch_size=8)  # the text dominates
PIXELS = replace(TEXT, text_dim=64, resolution=256)  # the images dominate
BOTH = replace(TEXT, captions=8, text_dim=2048, resolution=256)  # both large
GRID = (TEXT, replace(TEXT, images=16), replace(TEXT, captions=8), replace(TEXT, text_dim=2048),
        replace(TEXT, batch_size=32), replace(TEXT, images=16, captions=8, text_dim=2048,
                                              batch_size=32),
        PIXELS, replace(PIXELS, images=16), replace(PIXELS, resolution=384),
        replace(PIXELS, batch_size=32), replace(PIXELS, images=16, resolution=384, batch_size=32),
        BOTH, replace(BOTH, images=16, batch_size=32), replace(BOTH, captions=16, batch_size=32))
COEFFICIENTS = ("b0", "i_shard", "i_batch", "t_pixels", "t_shard", "t_batch")


class StandinVAE:
    """The attributes `facemogle.core.latents.encode` uses, with FLUX's latent shape (16
    channels, x8 down); the latent is the 8x8 mean of the image."""

    device, dtype = torch.device("cpu"), torch.float32
    config = SimpleNamespace(block_out_channels=(1, 1, 1, 1), in_channels=3, latent_channels=16,
                             shift_factor=0.0, scaling_factor=1.0)

    def encode(self, x: torch.Tensor) -> SimpleNamespace:
        z = F.avg_pool2d(x, 8).repeat(1, 6, 1, 1)[:, :16]  # (b, 16, H/8, W/8)
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: z))


class StandinTextEncoder:
    """The `TextEncoder` interface with T5's behaviour at padding: a caption has one token per
    word and </s>, and its padding states depend on the caption (T5 without attention mask)."""

    name = "standin"

    def __init__(self, max_tokens: int, seq_dim: int, pooled_dim: int):
        self.max_tokens, self.seq_dim, self.pooled_dim = max_tokens, seq_dim, pooled_dim

    def token_counts(self, prompts: list[str]) -> list[int]:
        return [min(len(p.split()) + 1, self.max_tokens) for p in prompts]

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        key = torch.tensor([zlib.crc32(p.encode()) % 997 for p in prompts]) * 1e-3  # (b,)
        position = torch.arange(self.max_tokens)  # (T,)
        seq = (key[:, None, None] + position[None, :, None] * 1e-3
               + torch.arange(self.seq_dim) * 1e-5)  # (b, T, D)
        padding = position[None] >= torch.tensor(self.token_counts(prompts))[:, None]  # (b, T)
        seq.mul_(1.0 - 2.0 * padding[..., None])  # (b, T, D): padding states negated
        pooled = key[:, None] + torch.arange(self.pooled_dim) * 1e-4  # (b, P)
        return seq, pooled


def standin_base(scale: CacheScale) -> SimpleNamespace:
    return SimpleNamespace(vae=StandinVAE(), text_encoder=StandinTextEncoder(
        scale.text_tokens, scale.text_dim, scale.pooled_dim))


def write_standin_data(root: Path, scale: CacheScale) -> tuple[Path, Path]:
    """`download` and `parse_masks` layouts of `scale.images` random faces with label maps in
    which every label occurs, and captions of 3 to 40 words; returns (data_dir, labels_dir)."""
    data_dir, labels_dir = root / "raw", root / "labels"
    (data_dir / layout.IMAGES).mkdir(parents=True)
    (labels_dir / layout.MASKS).mkdir(parents=True)
    rng = np.random.default_rng(0)
    r = scale.resolution
    stripes = (np.arange(r)[:, None] * 19 // r + np.zeros((1, r), dtype=int)).astype(np.uint8)
    ids = [f"{n:05d}" for n in range(scale.images)]
    rows = []
    for i in ids:
        face = rng.integers(0, 256, (r, r, 3), dtype=np.uint8)  # (R, R, 3)
        Image.fromarray(face).save(layout.image_path(data_dir, i))
        Image.fromarray(stripes, mode="L").save(layout.mask_path(labels_dir, i))
        rows.append({"id": i, "captions": [" ".join(["word"] * int(rng.integers(3, 41))) + f" {i}"
                                           for _ in range(scale.captions)]})
    layout.captions_path(data_dir).write_text("".join(json.dumps(row) + "\n" for row in rows))
    layout.split_path(labels_dir).write_text(json.dumps({"train": ids, "test": []}))
    return data_dir, labels_dir


def measure_in_this_process(scale: CacheScale, root: Path) -> int:
    """Peak resident bytes above the start of `build_cache` for one shard of `scale`."""
    data_dir, labels_dir = write_standin_data(root, scale)
    base = standin_base(scale)
    reset_host_peak()  # VmHWM := VmRSS
    before = host_rss()
    build.build_cache(base, data_dir, labels_dir, root / "latents", resolution=scale.resolution,
                      shard_size=scale.images, batch_size=scale.batch_size,
                      text_batch_size=scale.batch_size, config={})
    return host_peak_rss() - before


# glibc returns a freed block of 64 KiB or more to the system at once (its default threshold
# grows with the blocks freed, up to 32 MiB, and a block below it stays in the heap): the peak
# is then the memory the code holds, not a few tens of MB more or less of heap the allocator
# kept, which would swamp the fit's small coefficients.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def peak_memory(scale: CacheScale) -> int:
    """Peak host memory (bytes) of caching one shard of `scale`, measured in a fresh process
    (`MALLOC_ENV`)."""
    with tempfile.TemporaryDirectory() as root:
        code = ("import json, sys; from pathlib import Path; "
                "from facemogle.bench.cache_memory import CacheScale, measure_in_this_process; "
                "a = json.loads(sys.argv[1]); print(measure_in_this_process("
                "CacheScale(**a['scale']), Path(a['root'])))")
        arg = json.dumps({"scale": asdict(scale), "root": root})
        done = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True,
                              check=True, env={**os.environ, **MALLOC_ENV})
        return int(done.stdout.strip().splitlines()[-1])


def _phases(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The regressors (points, 5) of the image and the text phase: (points, 2), (points, 3)."""
    _, shard_text, shard_pixels, batch_text, batch_pixels = x.T
    return (np.stack([shard_pixels, batch_pixels], axis=1),
            np.stack([shard_pixels, shard_text, batch_text], axis=1))


def _predict(c: np.ndarray, x: np.ndarray) -> np.ndarray:
    image, text = _phases(x)
    return c[0] + np.maximum(image @ c[1:3], text @ c[3:6])  # (points,)


def predict(coefficients: np.ndarray, scale: CacheScale) -> float:
    """The memory model (module docstring) with `coefficients` (`COEFFICIENTS`), in bytes."""
    return float(_predict(coefficients, np.array([scale.regressors()]))[0])


def fit(scales: list[CacheScale], peaks: list[int]) -> np.ndarray:
    """Least-squares coefficients (`COEFFICIENTS`) of the memory model: for every choice of the
    larger phase at each point (the grid is small), a linear fit; the one that fits best."""
    x = np.array([s.regressors() for s in scales])  # (points, 5)
    y = np.array(peaks, dtype=float)  # (points,)
    image, text = _phases(x)
    best, best_error = np.zeros(len(COEFFICIENTS)), np.inf
    for choice in itertools.product((True, False), repeat=len(scales)):
        is_text = np.array(choice)[:, None]  # (points, 1): the text phase is the larger
        design = np.hstack([np.ones((len(y), 1)), np.where(is_text, 0, image),
                            np.where(is_text, text, 0)])  # (points, 6)
        c = np.linalg.lstsq(design, y, rcond=None)[0]  # (6,)
        error = float(np.sum((_predict(c, x) - y) ** 2))
        if error < best_error:
            best, best_error = c, error
    return best


def report(grid: tuple[CacheScale, ...] = GRID) -> dict:
    """Measure the grid, fit, and extrapolate to MM-CelebA-HQ; a JSON-ready record."""
    peaks = [peak_memory(s) for s in grid]
    coefficients = fit(list(grid), peaks)
    return {"build_module": "facemogle/cache/build.py",
            "build_sha256": file_sha256(Path(build.__file__)),
            "points": [{**asdict(s), "peak_bytes": p, "fit_bytes": predict(coefficients, s),
                        "stored_bytes": s.stored_bytes()} for s, p in zip(grid, peaks)],
            "coefficients": dict(zip(COEFFICIENTS, coefficients.tolist())),
            "mm_celeba_hq": {**asdict(MM_CELEBA_HQ),
                             "peak_bytes": predict(coefficients, MM_CELEBA_HQ),
                             "stored_bytes": MM_CELEBA_HQ.stored_bytes()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the JSON record here")
    args = parser.parse_args(argv)
    record = report()
    text = json.dumps(record, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
