"""The official Face-MoGLE release's trained weights, loaded into this implementation.

    python -m facemogle.app.official --lora pytorch_lora_weights.safetensors \
        --mogle global_local_mask_moe.pt --base data/base --params params-flux.yaml --out DIR

The release's two files (docs/full-setting.md, "Loading the official release's weights"):

- `pytorch_lora_weights.safetensors`: diffusers' `save_lora_weights` of the peft LoRA state,
  `transformer.<module>.lora_A.weight` (r, in) and `...lora_B.weight` (out, r) on the paper's
  343 layers (r 4, alpha 4; no alpha in the file, so diffusers loads it with alpha = r). Ours is
  plain peft LoRA on the same Linear modules (it acts on the condition slice alone, the
  release's was zero-scaled around the image and text calls), so the key map drops
  `transformer.`.
- `mogle.pt` (README: `global_local_mask_moe.pt`): `torch.save` of the MoGLE state dict, read
  only with `weights_only=True`. Key map, official -> ours (i = 0..18): `global_expert.net.{0,2}
  .{weight,bias}` -> `experts.global_expert.{weight1,bias1,weight2,bias2}`[0] and
  `local_experts.{i}.net.{0,2}.{weight,bias}` -> `experts.local_experts.{...}`[i] (stacked);
  `gating.noise_proj.*` -> `gate.noise_proj.*`; `gating.timestep_embedding.*` ->
  `gate.time_embed.*`; `gating.gate.{0,2}.*` -> `gate.mlp.{0,2}.*`. Its switches: has_expert
  False = `experts: none`, has_gating False = `gating: none`, weight_is_scale = `gating: scalar`.

Time: the release's gate was trained on t = sigma in (0, 1) unscaled; this repository's gate
embeds 1000 sigma. A model for the release is built with `model.gate_time_scale: 1.0`
(`load_official` refuses another scale; the converter writes 1.0 into config.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import pickle
import re
import sys
from pathlib import Path
from typing import NoReturn

import torch
from diffusers import FluxTransformer2DModel
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from facemogle.app.pipeline import MODEL_FILES
from facemogle.base.loader import parts_dir, read_manifest
from facemogle.core.config import ConfigError, load_params, to_dict
from facemogle.core.io import InputError, atomic_path, write_json, write_manifest
from facemogle.models.facemogle import FaceMoGLE
from facemogle.models.lora import load_lora_state_dict, lora_state_dict
from facemogle.models.mogle import MoGLE

LORA_PREFIX = "transformer."
ADAPTER = "condition"  # the adapter name `attach_lora` gives
OFFICIAL_TIME_SCALE = 1.0  # the release's gate embeds sigma in (0, 1) as it is
OFFICIAL_EXPERTS = ("global_local", "none")  # has_expert True / False
OFFICIAL_GATINGS = ("matrix", "scalar", "none")  # has_gating; weight_is_scale; no has_gating
# Our stacked expert tensor -> the parameter of each official expert's MLP it stacks.
EXPERT_NAMES = {"weight1": "net.0.weight", "bias1": "net.0.bias", "weight2": "net.2.weight",
                "bias2": "net.2.bias"}
# Our gate's module prefix -> the official gating network's.
GATE_NAMES = {"gate.noise_proj.": "gating.noise_proj.",
              "gate.time_embed.": "gating.timestep_embedding.", "gate.mlp.": "gating.gate."}
MODEL_SECTIONS = ("seed", "gating", "experts", "model", "lora")  # what rebuilds the model


class OfficialWeightsError(ValueError):
    """An official weights file does not fit the Face-MoGLE built from params."""


def _fail(path: str | Path, message: str) -> NoReturn:
    raise OfficialWeightsError(f"{path}: {message}")


def _check_against(state: dict[str, Tensor], expected: dict[str, tuple[int, ...]],
                   path: Path) -> None:
    """Every key of `expected` in `state` with its shape, and no other key."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        _fail(path, f"missing key '{missing[0]}' ({len(missing)} missing: {missing[:4]}); the "
                    f"model built from params expects it")
    if unexpected:
        _fail(path, f"unexpected key '{unexpected[0]}' ({len(unexpected)} unexpected: "
                    f"{unexpected[:4]}); the model built from params has no such weight")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            _fail(path, f"'{key}' has shape {tuple(state[key].shape)}, the model built from "
                        f"params expects {shape}")


# ----------------------------------------------------------------------------------------------
# LoRA
# ----------------------------------------------------------------------------------------------


def read_official_lora(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors and the metadata of a `save_lora_weights` safetensors file."""
    path = Path(path)
    if not path.is_file():
        _fail(path, "file not found (the release's pytorch_lora_weights.safetensors)")
    try:
        with safe_open(str(path), framework="pt") as f:
            names = f.keys()  # a safe_open handle is not iterable
            return {k: f.get_tensor(k) for k in names}, dict(f.metadata() or {})
    except (SafetensorError, OSError) as err:
        _fail(path, f"not a safetensors file ({err})")


def _adapter_metadata(metadata: dict[str, str], path: Path) -> dict:
    """The transformer's LoRA config that newer diffusers store in the file, or {}."""
    raw = metadata.get("lora_adapter_metadata")
    if raw is None:
        return {}
    try:
        info = json.loads(raw)
    except json.JSONDecodeError as err:
        _fail(path, f"metadata 'lora_adapter_metadata' is not valid JSON ({err.msg})")
    return {k[len(LORA_PREFIX):]: v for k, v in info.items() if k.startswith(LORA_PREFIX)}


def _check_lora_config(state: dict[str, Tensor], metadata: dict[str, str],
                       transformer: torch.nn.Module, path: Path) -> None:
    """The file's LoRA rank (from the lora_A shapes) and alpha (metadata, else the rank, as
    diffusers assumes) must be params' `lora.rank` and `lora.alpha`."""
    cfg = transformer.peft_config[ADAPTER]
    for key, value in state.items():
        if key.endswith(".lora_A.weight") and value.ndim == 2 and value.shape[0] != cfg.r:
            _fail(path, f"'{key}' has LoRA rank {value.shape[0]} (shape {tuple(value.shape)}), "
                        f"but params lora.rank is {cfg.r}")
    adapter = _adapter_metadata(metadata, path)
    for flag in ("use_dora", "use_rslora"):
        if adapter.get(flag):
            _fail(path, f"the LoRA was saved with {flag}; only plain LoRA loads here")
    rank = adapter.get("r", cfg.r)
    alpha = adapter.get("lora_alpha", rank)
    if rank != cfg.r or float(alpha) != float(cfg.lora_alpha):
        _fail(path, f"LoRA rank {rank}, alpha {alpha} (metadata 'lora_adapter_metadata', "
                    f"alpha = rank without it), but params lora.rank is {cfg.r} and lora.alpha "
                    f"is {cfg.lora_alpha}")


def convert_official_lora(state: dict[str, Tensor], metadata: dict[str, str],
                          transformer: torch.nn.Module, path: str | Path) -> dict[str, Tensor]:
    """The release's LoRA state in `lora_state_dict`'s names (fp32, as `train` writes them)."""
    path = Path(path)
    _check_lora_config(state, metadata, transformer, path)
    expected = {LORA_PREFIX + k: tuple(v.shape)
                for k, v in lora_state_dict(transformer, ADAPTER).items()}
    _check_against(state, expected, path)
    return {k[len(LORA_PREFIX):]: v.float().contiguous() for k, v in state.items()}


# ----------------------------------------------------------------------------------------------
# MoGLE
# ----------------------------------------------------------------------------------------------


def read_official_mogle(path: str | Path) -> dict[str, Tensor]:
    """The MoGLE state dict of a `torch.save` file, read with `weights_only=True` only."""
    path = Path(path)
    if not path.is_file():
        _fail(path, "file not found (the release's mogle.pt / global_local_mask_moe.pt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(err))
        reason = found.group(1).split(". ")[0] if found else (str(err) or type(err).__name__)
        _fail(path, f"not a plain state dict: torch.load(weights_only=True) refused it "
                    f"({reason})")
    if not (isinstance(state, dict)
            and all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items())):
        _fail(path, f"expected a state dict (parameter name -> tensor), got "
                    f"{type(state).__name__}")
    return dict(state)


def official_mogle_layout(mogle: MoGLE, path: str | Path) -> dict[str, list[str]]:
    """Each of our MoGLE state keys -> the official keys it is made of (expert tensors stack
    one official key per expert); an error if the release has no such model."""
    experts, gating = mogle.config["experts"], mogle.config["gating"]
    if experts not in OFFICIAL_EXPERTS or gating not in OFFICIAL_GATINGS:
        _fail(path, f"params experts={experts!r}, gating={gating!r}: the official release has "
                    f"no such MoGLE (experts {list(OFFICIAL_EXPERTS)}, gating "
                    f"{list(OFFICIAL_GATINGS)})")
    if gating != "none" and mogle.config["time_scale"] != OFFICIAL_TIME_SCALE:
        _fail(path, f"the release's gate was trained on sigma in (0, 1) unscaled; build the "
                    f"model with model.gate_time_scale: {OFFICIAL_TIME_SCALE} (got "
                    f"{mogle.config['time_scale']})")
    layout = {}
    for name in mogle.state_dict():
        group, _, leaf = name.rpartition(".")
        if group == "experts.global_expert":
            layout[name] = [f"global_expert.{EXPERT_NAMES[leaf]}"]
        elif group == "experts.local_experts":
            n = mogle.num_slots - 1
            layout[name] = [f"local_experts.{i}.{EXPERT_NAMES[leaf]}" for i in range(n)]
        else:
            prefix = next((p for p in GATE_NAMES if name.startswith(p)), None)
            if prefix is None:
                _fail(path, f"MoGLE weight '{name}' has no counterpart in the official release "
                            f"(its gate adds the mask tokens unprojected: model.gate_hidden must "
                            f"equal the token width {mogle.token_dim})")
            layout[name] = [GATE_NAMES[prefix] + name[len(prefix):]]
    return layout


def convert_official_mogle(state: dict[str, Tensor], mogle: MoGLE,
                           path: str | Path) -> dict[str, Tensor]:
    """The release's MoGLE state in our MoGLE's `state_dict` names (fp32)."""
    path = Path(path)
    layout = official_mogle_layout(mogle, path)
    ours = mogle.state_dict()
    expected = {}
    for name, keys in layout.items():
        shape = tuple(ours[name].shape)
        for key in keys:  # a stacked expert tensor is (n, ...) of n official (...) tensors
            expected[key] = shape[1:] if name.startswith("experts.") else shape
    _check_against(state, expected, path)
    converted = {}
    for name, keys in layout.items():  # experts: (n, out, in) or (n, out); gate: as ours
        stacked = name.startswith("experts.")
        value = torch.stack([state[k] for k in keys]) if stacked else state[keys[0]]
        converted[name] = value.float().contiguous()
    return converted


def convert_official(model: FaceMoGLE, lora_path: str | Path, mogle_path: str | Path
                     ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(LoRA state, MoGLE state) of the release in this implementation's names, checked against
    `model` (built by `FaceMoGLE.from_params`; only its shapes are read, so it may live on the
    meta device)."""
    official_mogle_layout(model.mogle, mogle_path)  # the variant and time scale, before reading
    state, metadata = read_official_lora(lora_path)
    lora = convert_official_lora(state, metadata, model.transformer, lora_path)
    mogle = convert_official_mogle(read_official_mogle(mogle_path), model.mogle, mogle_path)
    return lora, mogle


def load_official(model: FaceMoGLE, lora_path: str | Path, mogle_path: str | Path) -> FaceMoGLE:
    """Load the release's two files into `model` (from `FaceMoGLE.from_params` with
    `model.gate_time_scale: 1.0` and the release's LoRA rank and alpha); returns `model`."""
    lora, mogle = convert_official(model, lora_path, mogle_path)
    load_lora_state_dict(model.transformer, lora, ADAPTER)
    model.mogle.load_state_dict(mogle, strict=True)
    return model


def model_skeleton(base_dir: str | Path, params) -> FaceMoGLE:
    """`FaceMoGLE.from_params` on the base's transformer architecture on the meta device: the
    shapes of every weight, nothing loaded or allocated (FLUX.1-dev included)."""
    manifest = read_manifest(base_dir)
    config = FluxTransformer2DModel.load_config(parts_dir(base_dir, manifest) / "transformer")
    with torch.device("meta"):
        return FaceMoGLE.from_params(FluxTransformer2DModel.from_config(config), params)


def _sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def convert_to_folder(lora_path: str | Path, mogle_path: str | Path, base_dir: str | Path,
                      params, out: str | Path) -> Path:
    """Write the release as a model folder (what `save_model` writes: `lora.safetensors`,
    `mogle.safetensors`, `config.json` with `base_manifest`, and their `manifest.json`),
    atomically. `params` (a `Params`) gives the model; its `model.gate_time_scale` is set to the
    release's 1.0."""
    model_cfg = dataclasses.replace(params.model, gate_time_scale=OFFICIAL_TIME_SCALE)
    params = dataclasses.replace(params, model=model_cfg)
    lora, mogle = convert_official(model_skeleton(base_dir, params), lora_path, mogle_path)
    config = {name: to_dict(getattr(params, name)) for name in MODEL_SECTIONS}
    config["base_manifest"] = read_manifest(base_dir)
    config["official_release"] = {
        "lora": Path(lora_path).name, "lora_sha256": _sha256(lora_path),
        "mogle": Path(mogle_path).name, "mogle_sha256": _sha256(mogle_path)}
    lora_file, mogle_file, config_file = MODEL_FILES
    with atomic_path(out) as tmp:
        tmp.mkdir()
        save_file(lora, str(tmp / lora_file))
        save_file(mogle, str(tmp / mogle_file))
        write_json(tmp / config_file, config)
        write_manifest(tmp)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Convert the official Face-MoGLE release's "
                                     "weights into this repository's model folder layout.")
    parser.add_argument("--lora", required=True, help="pytorch_lora_weights.safetensors")
    parser.add_argument("--mogle", required=True, help="mogle.pt / global_local_mask_moe.pt")
    parser.add_argument("--base", required=True, help="base stage output (e.g. data/base)")
    parser.add_argument("--params", default="params.yaml", help="params file (the model)")
    parser.add_argument("--out", required=True, help="model folder to write (replaced)")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        if params.model.gate_time_scale != OFFICIAL_TIME_SCALE:
            print(f"note: model.gate_time_scale {params.model.gate_time_scale} -> "
                  f"{OFFICIAL_TIME_SCALE}, the scale the release's gate was trained on",
                  file=sys.stderr)
        out = convert_to_folder(args.lora, args.mogle, args.base, params, args.out)
    except (OfficialWeightsError, ConfigError, InputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
