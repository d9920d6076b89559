"""Reading detector weight files safely and loading them strictly into a module.

The pretrained detectors (`npr`, `wavelet_clip`) are published as PyTorch state dicts. They
are read as safetensors, or with `torch.load(weights_only=True)` for `.pth`/`.pt` (tensors and
plain containers only: arbitrary pickled objects are never executed). A file that does not fit
the architecture is a `WeightsMismatch` naming the file and the keys that differ, never a
partly random network.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

# Containers the authors' training scripts wrap a state dict in.
_WRAPPERS = ("state_dict", "model", "net")
_DDP_PREFIX = "module."


class WeightsMismatch(ValueError):
    """A weight file whose keys or shapes do not match the architecture it is loaded into."""


def _preview(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return (shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")) or "none"


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a loaded file; DDP's `module.` prefix removed."""
    for key in _WRAPPERS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsMismatch(f"{path}: expected a state dict (name -> tensor), got "
                              f"{type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(obj):
        others = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        raise WeightsMismatch(f"{path}: entries that are not tensors: {_preview(others)}")
    if all(k.startswith(_DDP_PREFIX) for k in tensors):
        tensors = {k[len(_DDP_PREFIX):]: v for k, v in tensors.items()}
    return tensors


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file or of a `.pth`/`.pt`/`.bin` state dict, on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weight file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return _unwrap(load_file(str(path), device="cpu"), path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors come in several types
        raise WeightsMismatch(f"{path}: not a weights-only PyTorch state dict ({err})") from err
    return _unwrap(obj, path)


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path,
                what: str) -> None:
    """Copy `state` into `module`, requiring exactly its keys with its shapes.

    Raises `WeightsMismatch` naming the file, the missing and unexpected keys and every shape
    mismatch, so the wrong checkpoint (another detector, a ResNet trimmed differently, another
    CLIP width) is refused rather than half loaded.
    """
    own = module.state_dict()
    missing, unexpected = set(own) - set(state), set(state) - set(own)
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise WeightsMismatch(
            f"{path}: does not match the {what} architecture (missing: {_preview(missing)}; "
            f"unexpected: {_preview(unexpected)}; shape (file vs model): {_preview(shapes)})")
    module.load_state_dict(dict(state), strict=True)
