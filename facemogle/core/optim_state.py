"""An optimizer's state as safetensors tensors plus JSON, so checkpoints are never pickled."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from facemogle.core.io import load_safetensors


def split_optimizer_state(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """`optimizer.state_dict()` -> (tensors keyed "<param id>.<name>", JSON-ready rest)."""
    tensors, scalars = {}, {}
    for pid, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"scalars": scalars, "param_groups": state["param_groups"]}


def join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The inverse of `split_optimizer_state`: a dict for `optimizer.load_state_dict`."""
    state: dict[int, dict] = {}
    for flat, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, key = flat.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_optimizer(path: str | Path, optimizer: torch.optim.Optimizer) -> dict:
    """Write the optimizer's tensors to `path` (safetensors); returns the JSON-ready rest."""
    tensors, meta = split_optimizer_state(optimizer.state_dict())
    save_file(tensors, str(path))
    return meta


def load_optimizer(path: str | Path, meta: dict, optimizer: torch.optim.Optimizer) -> None:
    """Restore what `save_optimizer` wrote (`meta`: its return value)."""
    optimizer.load_state_dict(join_optimizer_state(load_safetensors(path), meta))
