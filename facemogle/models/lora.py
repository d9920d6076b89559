"""The condition-only LoRA adapter on a FLUX transformer: attach, count, save, load.

The adapter may sit only on the Linear layers that the condition stream passes through
(docs/design.md, "Condition stream and LoRA"); `facemogle/models/condition.py` applies it to the
condition tokens alone (`_project` there), so text and image tokens keep the frozen base weights.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import peft
from diffusers import FluxTransformer2DModel
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from torch import Tensor, nn

from facemogle.core.config import ConfigError, LoraConfig

# Layers the condition stream passes through (docs/design.md, "Condition stream and LoRA"); LoRA
# anywhere else would act on text or image tokens, or on nothing.
DOUBLE_BLOCK_CONDITION_LAYERS: tuple[str, ...] = (
    "norm1.linear", "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "ff.net.0.proj",
    "ff.net.2")
SINGLE_BLOCK_CONDITION_LAYERS: tuple[str, ...] = (
    "norm.linear", "proj_mlp", "proj_out", "attn.to_q", "attn.to_k", "attn.to_v")


def condition_layer_names(transformer: FluxTransformer2DModel) -> set[str]:
    """Names of the Linear layers that the condition stream passes through."""
    names = {"x_embedder"}
    for i in range(len(transformer.transformer_blocks)):
        names.update(f"transformer_blocks.{i}.{s}" for s in DOUBLE_BLOCK_CONDITION_LAYERS)
    for i in range(len(transformer.single_transformer_blocks)):
        names.update(f"single_transformer_blocks.{i}.{s}" for s in SINGLE_BLOCK_CONDITION_LAYERS)
    return names


def _target_pattern(target_modules: tuple[str, ...]) -> str:
    """One regex for peft's string form of `target_modules` (matched in full against names)."""
    return "|".join(f"(?:{p})" for p in target_modules)


def _check_targets(transformer: FluxTransformer2DModel, pattern: str) -> None:
    """Raise a ConfigError unless `pattern` matches some layer, and condition-stream layers only."""
    matched = [name for name, _ in transformer.named_modules() if re.fullmatch(pattern, name)]
    if not matched:
        raise ConfigError(f"params: 'lora.target_modules' matched no layer of the transformer "
                          f"(pattern {pattern!r})")
    outside = sorted(set(matched) - condition_layer_names(transformer))
    if outside:
        raise ConfigError(
            f"params: 'lora.target_modules' must match only layers of the condition stream "
            f"(x_embedder; double blocks: {list(DOUBLE_BLOCK_CONDITION_LAYERS)}; single blocks: "
            f"{list(SINGLE_BLOCK_CONDITION_LAYERS)}), but it also matches {outside[:5]}")


def lora_parameters(transformer: nn.Module, adapter_name: str = "condition"
                    ) -> Iterator[nn.Parameter]:
    """The parameters of the LoRA adapter `adapter_name`."""
    for module in transformer.modules():
        if isinstance(module, LoraLayer) and adapter_name in module.lora_A:
            yield from module.lora_A[adapter_name].parameters()
            yield from module.lora_B[adapter_name].parameters()


def attach_lora(transformer: FluxTransformer2DModel, cfg: LoraConfig,
                adapter_name: str = "condition") -> int:
    """Freeze `transformer` and add a peft LoRA adapter for the condition stream.

    `cfg.target_modules` are regexes, joined with `|` and matched in full against module names
    (peft's string form); they may only match layers that the condition stream uses. Returns the
    number of LoRA parameters; afterwards only those require grad.
    """
    pattern = _target_pattern(cfg.target_modules)
    _check_targets(transformer, pattern)
    transformer.requires_grad_(False)
    config = peft.LoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=pattern,
        init_lora_weights="gaussian" if cfg.init == "gaussian" else True)
    transformer.add_adapter(config, adapter_name=adapter_name)
    params = list(lora_parameters(transformer, adapter_name))
    for p in params:
        p.requires_grad_(True)
    return sum(p.numel() for p in params)


def lora_state_dict(transformer: nn.Module, adapter_name: str = "condition") -> dict[str, Tensor]:
    """The adapter's weights, keyed without the adapter name (peft's saved form)."""
    return get_peft_model_state_dict(transformer, adapter_name=adapter_name)


def load_lora_state_dict(transformer: nn.Module, state: dict[str, Tensor],
                         adapter_name: str = "condition") -> None:
    """Load adapter weights saved by `lora_state_dict`; missing, unexpected or misshapen keys
    raise a ValueError naming them."""
    expected = lora_state_dict(transformer, adapter_name)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"LoRA state for adapter '{adapter_name}' does not fit the transformer: "
                         f"missing keys {missing[:5]} ({len(missing)}), unexpected keys "
                         f"{unexpected[:5]} ({len(unexpected)})")
    wrong = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong:
        k = wrong[0]
        raise ValueError(f"LoRA state for adapter '{adapter_name}': '{k}' has shape "
                         f"{tuple(state[k].shape)}, expected {tuple(expected[k].shape)}")
    set_peft_model_state_dict(transformer, state, adapter_name=adapter_name)
