"""Bytes of FLUX.1-dev's frozen transformer as saved, per `base.quantization`, measured on a
shallow copy and extrapolated to the full depth.

    python -m facemogle.bench.weights --out metrics/bench/weights-cpu.json --quantization none,int8

It builds FLUX.1-dev's transformer at its real width with 1 double + 1 single block and random
weights, passes it through the base stage's quantization path (`facemogle.bench.setup.
quantize_frozen`: saved in the diffusers layout, loaded with the quantization config), saves the
result, and reads the tensor sizes of the saved safetensors. The blocks repeat, so the full
transformer is `shared + 19 x double + 38 x single`. `nf4` needs CUDA (bitsandbytes).
"""

from __future__ import annotations

import argparse
import json
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import FluxTransformer2DModel

from facemogle.bench.device import environment
from facemogle.bench.setup import build_frozen, quantize_frozen
from facemogle.core.flux import FLUX_DEV_TRANSFORMER
from facemogle.core.io import write_json

SHALLOW = {"num_layers": 1, "num_single_layers": 1}


def tensor_bytes(folder: Path) -> dict[str, int]:
    """name -> bytes of every tensor in the safetensors files of `folder` (from the headers)."""
    sizes: dict[str, int] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with path.open("rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        sizes.update({k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items()
                      if k != "__metadata__"})
    return sizes


def group_bytes(sizes: dict[str, int]) -> dict[str, int]:
    """Bytes of the double block, the single block and everything else ('shared')."""
    groups = {"double_block": 0, "single_block": 0, "shared": 0}
    for name, size in sizes.items():
        key = ("double_block" if name.startswith("transformer_blocks.") else
               "single_block" if name.startswith("single_transformer_blocks.") else "shared")
        groups[key] += size
    return groups


def saved_bytes(config: dict[str, Any], quantization: str, device: torch.device,
                seed: int = 0) -> dict[str, int]:
    """Tensor bytes of the transformer `config`, random bf16, saved under `quantization`."""
    factory = lambda: FluxTransformer2DModel(**config)  # noqa: E731
    model = build_frozen(factory, device, torch.bfloat16, seed)
    if quantization != "none":
        model = quantize_frozen(model, quantization, device, torch.bfloat16)
    with tempfile.TemporaryDirectory(prefix="facemogle-weights-") as tmp:
        model.save_pretrained(tmp)
        return tensor_bytes(Path(tmp))


def measure(quantization: str, device: torch.device,
            config: dict[str, Any] = FLUX_DEV_TRANSFORMER) -> dict[str, Any]:
    """Saved bytes of `config` at 1 + 1 blocks under `quantization`, and its full-depth total."""
    groups = group_bytes(saved_bytes({**config, **SHALLOW}, quantization, device))
    depth = (config["num_layers"], config["num_single_layers"])
    full = groups["shared"] + depth[0] * groups["double_block"] + depth[1] * groups["single_block"]
    return {"quantization": quantization, "shallow_bytes": groups, "full_depth_blocks": depth,
            "full_bytes": full, "full_gb": round(full / 1e9, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quantization", default="none,int8",
                    help="comma-separated: none, int8, nf4 (nf4 needs CUDA)")
    ap.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
    a = ap.parse_args(argv)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    results = [measure(q.strip(), device) for q in a.quantization.split(",")]
    write_json(a.out, {"benchmark": "facemogle.bench.weights", **environment(device),
                       "results": results})
    for r in results:
        print(f"{r['quantization']}: {r['full_gb']} GB at full depth")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
