"""Typed, validated view of `params.yaml`.

Every section of `params.yaml` is mirrored by a frozen dataclass. `load_params` rejects unknown
keys, wrong types and invalid choices with a `ConfigError` that names the key (dotted path) and
what would be valid, so a bad `dvc exp run -S key=value` stops the stage before any work is done.

Defaults are the paper's values where the paper has one; `params.yaml` holds the embedded
(offline, CPU) profile.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

Gating = Literal["matrix", "scalar", "static", "none"]
Experts = Literal["global_local", "global", "local", "none"]
Mode = Literal["multimodal", "mask2face", "text2face"]
# "fp32", not accelerate's "no": YAML 1.1 reads an unquoted no as false, and `dvc exp run -S`
# rewrites params.yaml without quotes.
Precision = Literal["fp32", "bf16", "fp16"]
DType = Literal["float32", "bfloat16", "float16"]

MODES: tuple[str, ...] = get_args(Mode)


class ConfigError(ValueError):
    """A parameter is unknown, of the wrong type, or outside its valid values."""


def check(condition: bool, key: str, expected: str, value: Any) -> None:
    """Raise a `ConfigError` naming `key` unless `condition` holds."""
    if not condition:
        raise ConfigError(f"params: '{key}' must be {expected}, got {value!r}")


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    """Where the faces, masks and captions come from (`download` stage)."""

    source: Literal["synthfaces", "mmcelebahq", "celebamaskhq", "ffhq_text"] = "mmcelebahq"
    variant: Literal["standard", "zeroshot"] = "standard"  # SynthFaces distribution
    resolution: int = 512
    seed: int = 0  # data generation seed, separate from the training seed
    num_train: int = 27000  # SynthFaces: train images rendered; real sets: ids below it train
    num_test: int = 3000  # SynthFaces: test images rendered; real sets: first test ids kept
    captions_per_image: int = 10  # SynthFaces: rendered; real sets: the first ones kept
    hub_repo: str | None = None
    hub_revision: str | None = None
    local_path: str | None = None
    max_images: int | None = None  # real data sets: at most this many ids per split
    on_error: Literal["stop", "skip"] = "stop"

    def __post_init__(self) -> None:
        check(64 <= self.resolution <= 1024 and self.resolution % 16 == 0, "data.resolution",
              "a multiple of 16 between 64 and 1024", self.resolution)
        check(self.num_train >= 1, "data.num_train", "a positive integer", self.num_train)
        check(self.num_test >= 1, "data.num_test", "a positive integer", self.num_test)
        check(self.captions_per_image >= 1, "data.captions_per_image", "a positive integer",
              self.captions_per_image)
        check(self.max_images is None or self.max_images >= 1, "data.max_images",
              "null or a positive integer", self.max_images)


EVAL_SETS: tuple[str, ...] = ("test", "zeroshot")  # pipeline entries of the per-set stages


@dataclass(frozen=True)
class ZeroShotConfig:
    """The zero-shot test set (paper Table 2: MM-FFHQ-Female): faces from a distribution the
    model was not trained on, sampled and evaluated like the test split of `data`.

    It takes `data`'s resolution, data seed, caption count and on_error; only the test split of
    its source is read (FFHQ-Text: every image; SynthFaces: `variant`, test faces only).
    """

    source: Literal["synthfaces", "mmcelebahq", "celebamaskhq", "ffhq_text"] = "ffhq_text"
    variant: Literal["standard", "zeroshot"] = "zeroshot"  # SynthFaces distribution
    num_test: int = 3000
    hub_repo: str | None = None
    hub_revision: str | None = None
    local_path: str | None = None
    parser: Literal["none", "mediapipe", "segformer", "tiny"] = "mediapipe"  # its label maps
    parser_path: str | None = None

    def __post_init__(self) -> None:
        check(self.num_test >= 1, "zeroshot.num_test", "a positive integer", self.num_test)
        check(self.parser != "segformer" or self.parser_path is not None, "zeroshot.parser_path",
              "a hub id or directory when zeroshot.parser is 'segformer'", self.parser_path)

    def data_config(self, data: DataConfig) -> DataConfig:
        """`data` with this set's source: what `download` reads for the zero-shot entry."""
        return dataclasses.replace(
            data, source=self.source, variant=self.variant, num_test=self.num_test,
            hub_repo=self.hub_repo, hub_revision=self.hub_revision, local_path=self.local_path,
            max_images=None)

    def masks_config(self, masks: MasksConfig) -> MasksConfig:
        """`masks` with this set's parser: what `parse_masks` uses for the zero-shot entry."""
        return dataclasses.replace(masks, parser=self.parser, parser_path=self.parser_path)


def set_sections(sections: tuple[str, ...], eval_set: str) -> tuple[str, ...]:
    """The params sections a per-set stage reads: its own, plus `zeroshot` for that entry."""
    if eval_set not in EVAL_SETS:
        raise ConfigError(f"unknown evaluation set {eval_set!r}; valid: {list(EVAL_SETS)}")
    return sections + ("zeroshot",) if eval_set == "zeroshot" else sections


@dataclass(frozen=True)
class MasksConfig:
    """How every image gets its label map (`parse_masks` stage)."""

    parser: Literal["none", "mediapipe", "segformer", "tiny"] = "none"
    parser_path: str | None = None  # segformer: hub id or local directory
    color_tolerance: int = 0  # max per-channel distance at which a colour snaps to the palette

    def __post_init__(self) -> None:
        check(0 <= self.color_tolerance <= 64, "masks.color_tolerance", "an integer in [0, 64]",
              self.color_tolerance)
        check(self.parser != "segformer" or self.parser_path is not None, "masks.parser_path",
              "a hub id or directory when masks.parser is 'segformer'", self.parser_path)


@dataclass(frozen=True)
class TinyVAEConfig:
    """The small AutoencoderKL the embedded `base` stage trains (16 latent channels, x8 down)."""

    block_out_channels: tuple[int, ...] = (8, 16, 32, 64)
    layers_per_block: int = 1
    steps: int = 1500
    batch_size: int = 16
    lr: float = 2e-3
    kl_weight: float = 1e-6
    warmup_steps: int = 50
    mask_fraction: float = 0.5  # share of each batch that is decoupled mask images, not faces
    color_weight: float = 1.0  # pulls latent channels 0-2 to the mean colour of their 8x8 cell

    def __post_init__(self) -> None:
        # Four blocks give three downsamplings: x8, like the FLUX VAE.
        check(len(self.block_out_channels) == 4, "base.vae.block_out_channels",
              "a list of 4 widths (x8 downsampling)", self.block_out_channels)
        check(all(w >= 4 and w % 4 == 0 for w in self.block_out_channels),
              "base.vae.block_out_channels", "widths that are multiples of 4 (GroupNorm groups)",
              self.block_out_channels)
        check(self.layers_per_block >= 1, "base.vae.layers_per_block", "a positive integer",
              self.layers_per_block)
        check(self.steps >= 0, "base.vae.steps", "a non-negative integer", self.steps)
        check(self.batch_size >= 1, "base.vae.batch_size", "a positive integer", self.batch_size)
        check(self.lr > 0, "base.vae.lr", "a positive number", self.lr)
        check(self.kl_weight >= 0, "base.vae.kl_weight", "a non-negative number", self.kl_weight)
        check(self.warmup_steps >= 0, "base.vae.warmup_steps", "a non-negative integer",
              self.warmup_steps)
        check(0.0 <= self.mask_fraction <= 1.0, "base.vae.mask_fraction", "in [0, 1]",
              self.mask_fraction)
        check(self.color_weight >= 0, "base.vae.color_weight", "a non-negative number",
              self.color_weight)


@dataclass(frozen=True)
class TinyTransformerConfig:
    """The small FluxTransformer2DModel the embedded `base` stage trains text-to-image."""

    num_layers: int = 2
    num_single_layers: int = 4
    attention_head_dim: int = 32
    num_attention_heads: int = 4
    axes_dims_rope: tuple[int, int, int] = (8, 12, 12)
    guidance_embeds: bool = False
    steps: int = 1500
    batch_size: int = 16
    lr: float = 1e-3
    text_dropout: float = 0.1
    warmup_steps: int = 100
    grad_clip: float = 1.0
    captions_per_image: int = 2  # the first k captions of each image are encoded and drawn from

    def __post_init__(self) -> None:
        check(self.num_layers >= 1, "base.transformer.num_layers", "a positive integer",
              self.num_layers)
        check(self.num_single_layers >= 0, "base.transformer.num_single_layers",
              "a non-negative integer", self.num_single_layers)
        check(sum(self.axes_dims_rope) == self.attention_head_dim, "base.transformer.axes_dims_rope",
              f"three sizes summing to attention_head_dim={self.attention_head_dim}",
              self.axes_dims_rope)
        check(self.steps >= 0, "base.transformer.steps", "a non-negative integer", self.steps)
        check(self.batch_size >= 1, "base.transformer.batch_size", "a positive integer",
              self.batch_size)
        check(0.0 <= self.text_dropout < 1.0, "base.transformer.text_dropout", "in [0, 1)",
              self.text_dropout)
        check(self.lr > 0, "base.transformer.lr", "a positive number", self.lr)
        check(self.warmup_steps >= 0, "base.transformer.warmup_steps", "a non-negative integer",
              self.warmup_steps)
        check(self.grad_clip > 0, "base.transformer.grad_clip", "a positive number",
              self.grad_clip)
        check(self.captions_per_image >= 1, "base.transformer.captions_per_image",
              "a positive integer", self.captions_per_image)


@dataclass(frozen=True)
class TinyParserConfig:
    """The small face parser (19-class segmentation net) the embedded `base` stage trains."""

    width: int = 16
    steps: int = 500
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 20
    class_weighted: bool = True  # cross-entropy weights ~ 1/sqrt(class frequency)
    decoded_fraction: float = 0.5  # share of each batch shown as VAE encode -> decode output

    def __post_init__(self) -> None:
        check(self.width >= 4, "base.parser.width", "an integer >= 4", self.width)
        check(self.steps >= 0, "base.parser.steps", "a non-negative integer", self.steps)
        check(self.batch_size >= 1, "base.parser.batch_size", "a positive integer",
              self.batch_size)
        check(self.lr > 0, "base.parser.lr", "a positive number", self.lr)
        check(self.warmup_steps >= 0, "base.parser.warmup_steps", "a non-negative integer",
              self.warmup_steps)
        check(0.0 <= self.decoded_fraction <= 1.0, "base.parser.decoded_fraction", "in [0, 1]",
              self.decoded_fraction)


@dataclass(frozen=True)
class BaseConfig:
    """The pretrained foundation: trained here (`tiny`) or resolved from FLUX.1-dev (`flux`)."""

    kind: Literal["tiny", "flux"] = "flux"
    flux_path: str = "black-forest-labs/FLUX.1-dev"  # hub id or local directory
    flux_revision: str | None = None
    dtype: DType = "bfloat16"
    text_max_tokens: int = 512  # T5 sequence length (FLUX.1-dev: 512); MiniLM: 32 is plenty
    vae: TinyVAEConfig = field(default_factory=TinyVAEConfig)
    transformer: TinyTransformerConfig = field(default_factory=TinyTransformerConfig)
    parser: TinyParserConfig = field(default_factory=TinyParserConfig)

    def __post_init__(self) -> None:
        check(1 <= self.text_max_tokens <= 512, "base.text_max_tokens", "an integer in [1, 512]",
              self.text_max_tokens)


@dataclass(frozen=True)
class CacheConfig:
    """Encoding the latent cache (`cache_latents` stage)."""

    batch_size: int = 32  # images (and captions) per VAE / text-encoder call
    shard_size: int = 256  # images per shard: the unit of resuming and of splitting the work
    num_processes: int = 1  # processes under torchrun, one per device: shards are split

    def __post_init__(self) -> None:
        for key in ("batch_size", "shard_size", "num_processes"):
            value = getattr(self, key)
            check(value >= 1, f"cache.{key}", "a positive integer", value)


@dataclass(frozen=True)
class ModelConfig:
    """MoGLE sizes and how condition tokens are modulated (paper section 3.2)."""

    expert_hidden: int = 32  # paper: 64 -> 32 -> 64 experts
    gate_hidden: int = 64
    condition_guidance: float = 1.0  # guidance-embedding value of the condition stream, always
    # full: image tokens attend to every condition token (paper); aligned: to the one at their
    # own position only (the embedded tiny base cannot find it by itself; models/condition.py).
    condition_attention: Literal["full", "aligned"] = "full"

    def __post_init__(self) -> None:
        check(self.expert_hidden >= 1, "model.expert_hidden", "a positive integer",
              self.expert_hidden)
        check(self.gate_hidden >= 1, "model.gate_hidden", "a positive integer", self.gate_hidden)


# The paper's LoRA targets (official config, identical to OminiControl's): 343 layers on FLUX.1-dev.
PAPER_LORA_TARGETS: tuple[str, ...] = (
    r"x_embedder",
    r"transformer_blocks\.\d+\.(norm1\.linear|attn\.to_[qkv]|attn\.to_out\.0|ff\.net\.2)",
    r"single_transformer_blocks\.\d+\.(norm\.linear|proj_mlp|proj_out|attn\.to_[qkv])",
)


@dataclass(frozen=True)
class LoraConfig:
    """LoRA on the condition stream (paper: r=4, alpha=4, gaussian init)."""

    rank: int = 4
    alpha: float = 4.0
    init: Literal["gaussian", "default"] = "gaussian"
    dropout: float = 0.0
    # Regular expressions over module names, each matched in full (peft's regex form).
    target_modules: tuple[str, ...] = PAPER_LORA_TARGETS

    def __post_init__(self) -> None:
        check(self.rank >= 1, "lora.rank", "a positive integer", self.rank)
        check(self.alpha > 0, "lora.alpha", "a positive number", self.alpha)
        check(0.0 <= self.dropout < 1.0, "lora.dropout", "in [0, 1)", self.dropout)
        check(len(self.target_modules) >= 1, "lora.target_modules", "a non-empty list of regexes",
              self.target_modules)


@dataclass(frozen=True)
class TrainConfig:
    """LoRA + MoGLE training (paper section 4.1)."""

    steps: int = 4000
    batch_size: int = 4
    grad_accum: int = 1
    optimizer: Literal["prodigy", "adamw"] = "prodigy"
    lr: float = 1.0  # Prodigy's lr is a multiplier on its estimated step size
    weight_decay: float = 0.01
    grad_clip: float = 0.5
    text_drop: float = 0.1
    local_mask_drop: float = 0.1  # each local mask independently
    mask_drop: float = 0.1  # the whole mask: trains text-only generation
    logit_normal_mean: float = 0.0
    logit_normal_std: float = 1.0
    guidance: float = 1.0  # guidance-embedding value while training (FLUX.1-dev)
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 10
    mixed_precision: Precision = "bf16"
    gradient_checkpointing: bool = True
    compile: bool = False  # torch.compile the transformer blocks (GPU; slow to start on CPU)
    num_processes: int = 1

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints",
                    "log_every", "num_processes"):
            value = getattr(self, key)
            check(value >= 1, f"train.{key}", "a positive integer", value)
        check(self.lr > 0, "train.lr", "a positive number", self.lr)
        check(self.weight_decay >= 0, "train.weight_decay", "non-negative", self.weight_decay)
        check(self.grad_clip > 0, "train.grad_clip", "a positive number", self.grad_clip)
        for key in ("text_drop", "local_mask_drop", "mask_drop"):
            value = getattr(self, key)
            check(0.0 <= value < 1.0, f"train.{key}", "a probability in [0, 1)", value)
        check(self.logit_normal_std > 0, "train.logit_normal_std", "positive",
              self.logit_normal_std)


@dataclass(frozen=True)
class SampleConfig:
    """Sampling the test split in the three modes (DESIGN.md section 4)."""

    steps: int = 28
    guidance: float = 3.5  # guidance embedding, used when the transformer has one (FLUX.1-dev)
    cfg_scale: float = 1.0  # true classifier-free guidance; 1.0 is off
    batch_size: int = 8
    modes: tuple[Mode, ...] = MODES
    max_images: int | None = None
    num_processes: int = 1  # processes under torchrun, one per device: images are split

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "num_processes"):
            value = getattr(self, key)
            check(value >= 1, f"sample.{key}", "a positive integer", value)
        check(self.cfg_scale >= 1.0, "sample.cfg_scale", "a number >= 1.0 (1.0 = off)",
              self.cfg_scale)
        check(len(self.modes) >= 1 and len(set(self.modes)) == len(self.modes), "sample.modes",
              f"a non-empty list of distinct modes from {list(MODES)}", self.modes)
        check(self.max_images is None or self.max_images >= 1, "sample.max_images",
              "null or a positive integer", self.max_images)


@dataclass(frozen=True)
class EvaluateConfig:
    """Which metric backends run, and where their weights are (paper section 4.3)."""

    batch_size: int = 16
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    inception_path: str | None = None
    clip_score_model: str | None = None  # e.g. openai/clip-vit-base-patch16
    cmmd_model: str | None = None  # e.g. openai/clip-vit-large-patch14-336
    dino_model: str | None = None  # e.g. facebook/dino-vitb8
    imagereward_path: str | None = None
    cmmd_estimator: Literal["biased", "unbiased"] = "biased"  # CMMD paper's code: biased
    detector_folds: int = 5  # cross-fitting folds of the embedded real-vs-generated detector
    detector_steps: int = 200
    detector_size: int = 64  # px the detector sees

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, "evaluate.batch_size", "a positive integer", self.batch_size)
        check(self.kid_subsets >= 1, "evaluate.kid_subsets", "a positive integer",
              self.kid_subsets)
        check(self.kid_subset_size >= 2, "evaluate.kid_subset_size", "an integer >= 2",
              self.kid_subset_size)
        check(self.detector_folds >= 2, "evaluate.detector_folds", "an integer >= 2",
              self.detector_folds)
        check(self.detector_steps >= 1, "evaluate.detector_steps", "a positive integer",
              self.detector_steps)
        check(8 <= self.detector_size <= 512, "evaluate.detector_size",
              "an integer in [8, 512]", self.detector_size)


@dataclass(frozen=True)
class Params:
    """All of `params.yaml`."""

    seed: int = 42
    gating: Gating = "matrix"
    experts: Experts = "global_local"
    data: DataConfig = field(default_factory=DataConfig)
    masks: MasksConfig = field(default_factory=MasksConfig)
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    base: BaseConfig = field(default_factory=BaseConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


SECTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Params))


# ----------------------------------------------------------------------------------------------
# Strict conversion from plain YAML values
# ----------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (tuple, list):
        return "a list of " + _type_name(get_args(tp)[0])
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"params: '{key}' must be a mapping of {tp.__name__} fields, "
                              f"got {value!r}")
        return _from_dict(tp, value, key + ".")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"params: '{key}' must be one of {list(choices)}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(f"params: '{key}' must be {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"params: '{key}' must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"params: '{key}' must be a list of {len(args)} values, got {value!r}")
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"params: '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"params: '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"params: '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"params: '{key}' must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} for '{key}'")


def _from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"params: unknown key '{prefix}{unknown[0]}'; valid keys under "
                          f"'{prefix.rstrip('.') or 'the top level'}': {names}")
    kwargs = {name: _convert(data[name], hints[name], prefix + name) for name in names
              if name in data}
    return cls(**kwargs)


def params_from_dict(data: dict | None) -> Params:
    """Build and validate `Params` from a parsed `params.yaml` mapping."""
    return _from_dict(Params, data or {})


class SectionView:
    """`Params` restricted to the sections a stage declares in `dvc.yaml`.

    Reading an undeclared section is an error, so a stage cannot depend on a parameter that DVC
    does not track for it (a `-S` on it would silently not re-run the stage).
    """

    def __init__(self, params: Params, sections: tuple[str, ...]):
        unknown = set(sections) - set(SECTIONS)
        if unknown:
            raise ConfigError(f"unknown params sections {sorted(unknown)}; valid: {list(SECTIONS)}")
        self._params = params
        self._sections = tuple(sections)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._sections:
            raise AttributeError(f"params section '{name}' is not declared for this stage "
                                 f"(declared: {list(self._sections)}); add it to the stage's "
                                 f"PARAMS and its `params:` in dvc.yaml")
        return getattr(self._params, name)

    @property
    def full(self) -> Params:
        """The whole validated `Params` (for writing a resolved config next to an artifact)."""
        return self._params


def load_params(path: str | Path = "params.yaml", sections: tuple[str, ...] | None = None
                ) -> Params | SectionView:
    """Read and validate `params.yaml`; with `sections`, return a view of only those sections."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"params file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"params file {path} is not valid YAML: {err}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"params file {path} must hold a mapping, got {type(data).__name__}")
    params = params_from_dict(data)
    return params if sections is None else SectionView(params, sections)


def to_dict(obj: Any) -> Any:
    """Plain (YAML/JSON-ready) form of a config dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    return obj
