"""Typed, validated view of `params.yaml`: one frozen dataclass per section.

Every section of `params.yaml` is mirrored by a frozen dataclass below, with the reason for each
default beside it. `load_params` rejects unknown keys, wrong types and invalid choices with a
`ConfigError` that names the key (dotted path) and what would be valid, so a bad
`dvc exp run -S key=value` stops the stage before any work is done.

A field's type gives its choices (`Literal`) and its YAML type, and `spec(...)` beside the field
gives its bounds and any other rule on its value alone; the few rules between two fields are each
section's `_check_across_fields`. The engine that reads those declarations (strict conversion,
dotted keys, error messages) is `facemogle/core/schema.py`; its public names are re-exported here.

Defaults are the paper's values where the paper has one; `params.yaml` holds the embedded
(offline, CPU) profile.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from facemogle.core.flux import FLUX_RESOLUTION, FLUX_TEXT_TOKENS, SAMPLE_GUIDANCE
from facemogle.core.schema import (  # its public names are re-exported: callers import from here
    Bounds,  # noqa: F401
    ConfigError,
    Rule,
    Section,
    check,
    dotted_key,
    from_dict,
    read_yaml_mapping,
    spec,
    to_dict,  # noqa: F401
)

Gating = Literal["matrix", "matrix_scaled", "scalar", "static", "none"]
Experts = Literal["global_local", "global", "local", "local_only", "none"]
Mode = Literal["multimodal", "mask2face", "text2face", "base"]
# "fp32", not accelerate's "no": YAML 1.1 reads an unquoted no as false, and `dvc exp run -S`
# rewrites params.yaml without quotes.
Precision = Literal["fp32", "bf16", "fp16"]
DType = Literal["float32", "bfloat16", "float16"]

MODES: tuple[str, ...] = get_args(Mode)

# Dropping a conditioning input while training (the train.*_drop fields).
_PROBABILITY: dict[str, Any] = {"ge": 0, "lt": 1, "expected": "a probability in [0, 1)"}


def _check_parser_path(section: MasksConfig | ZeroShotConfig | OffDistConfig) -> None:
    """The segformer parser is loaded from `parser_path`: it must be set."""
    check(section.parser != "segformer" or section.parser_path is not None,
          dotted_key(section, "parser_path"),
          f"a hub id or directory when {dotted_key(section, 'parser')} is 'segformer'",
          section.parser_path)


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig(Section):
    """Where the faces, masks and captions come from (`download` stage)."""

    source: Literal["synthfaces", "mmcelebahq", "celebamaskhq", "ffhq_text"] = "mmcelebahq"
    variant: Literal["standard", "zeroshot"] = "standard"  # SynthFaces distribution
    # SynthFaces pose: template (upright, frontal, centred, one size) | varied (real masks' ranges)
    layout: Literal["template", "varied"] = "varied"
    resolution: int = spec(FLUX_RESOLUTION, ge=64, le=1024, multiple_of=16)
    seed: int = 0  # data generation seed, separate from the training seed
    # SynthFaces: train images rendered; real sets: ids below it train
    num_train: int = spec(27000, ge=1)
    # SynthFaces: test images rendered; real sets: first test ids kept
    num_test: int = spec(3000, ge=1)
    captions_per_image: int = spec(10, ge=1)  # SynthFaces: rendered; real sets: the first ones kept
    hub_repo: str | None = None
    hub_revision: str | None = None
    local_path: str | None = None
    max_images: int | None = spec(None, ge=1)  # real data sets: at most this many ids per split
    on_error: Literal["stop", "skip"] = "stop"


EVAL_SETS: tuple[str, ...] = ("test", "zeroshot", "offdist")  # entries of the per-set stages


@dataclass(frozen=True)
class ZeroShotConfig(Section):
    """The zero-shot test set (paper Table 2: MM-FFHQ-Female): faces from a distribution the
    model was not trained on, sampled and evaluated like the test split of `data`.

    It takes `data`'s resolution, data seed, caption count and on_error; only the test split of
    its source is read (FFHQ-Text: every image; SynthFaces: `variant`, test faces only).
    """

    source: Literal["synthfaces", "mmcelebahq", "celebamaskhq", "ffhq_text"] = "ffhq_text"
    variant: Literal["standard", "zeroshot"] = "zeroshot"  # SynthFaces distribution
    num_test: int = spec(3000, ge=1)
    hub_repo: str | None = None
    hub_revision: str | None = None
    local_path: str | None = None
    parser: Literal["none", "mediapipe", "segformer", "tiny"] = "mediapipe"  # its label maps
    parser_path: str | None = None

    def _check_across_fields(self) -> None:
        _check_parser_path(self)

    def data_config(self, data: DataConfig) -> DataConfig:
        """`data` with this set's source: what `download` reads for the zero-shot entry."""
        return dataclasses.replace(
            data, source=self.source, variant=self.variant, num_test=self.num_test,
            hub_repo=self.hub_repo, hub_revision=self.hub_revision, local_path=self.local_path,
            max_images=None)

    def masks_config(self, masks: MasksConfig) -> MasksConfig:
        """`masks` with this set's parser: what `parse_masks` uses for the zero-shot entry."""
        return dataclasses.replace(masks, parser=self.parser, parser_path=self.parser_path)


@dataclass(frozen=True)
class OffDistConfig(Section):
    """The off-distribution set: masks unlike the training set's (`facemogle.data.offdist`),
    sampled and evaluated like the test split of `data`, whatever `data.source` is.

    It takes `data`'s resolution, data seed, caption count and on_error.
    """

    num_beyond: int = spec(30, ge=0)  # SynthFaces outside the `varied` ranges
    num_drawn: int = spec(10, ge=0)   # masks painted from polygons and ellipses
    photos: bool = True               # 8 crops of the 2 portraits offline packages ship
    parser: Literal["none", "mediapipe", "segformer", "tiny"] = "mediapipe"  # the photos' masks
    parser_path: str | None = None

    def _check_across_fields(self) -> None:
        _check_parser_path(self)
        check(self.num_beyond + self.num_drawn > 0 or self.photos,
              dotted_key(self, "num_beyond"),
              "at least one item in the set (num_beyond, num_drawn or photos)", self.num_beyond)

    def masks_config(self, masks: MasksConfig) -> MasksConfig:
        """`masks` with this set's parser: what `parse_masks` uses for the photos."""
        return dataclasses.replace(masks, parser=self.parser, parser_path=self.parser_path)


def set_sections(sections: tuple[str, ...], eval_set: str) -> tuple[str, ...]:
    """The params sections a per-set stage reads: its own, plus the set's own section
    (`zeroshot`, `offdist`) for those entries."""
    if eval_set not in EVAL_SETS:
        raise ConfigError(f"unknown evaluation set {eval_set!r}; valid: {list(EVAL_SETS)}")
    return sections if eval_set == "test" else sections + (eval_set,)


@dataclass(frozen=True)
class MasksConfig(Section):
    """How every image gets its label map (`parse_masks` stage)."""

    parser: Literal["none", "mediapipe", "segformer", "tiny"] = "none"
    parser_path: str | None = None  # segformer: hub id or local directory
    # max per-channel distance at which a colour snaps to the palette
    color_tolerance: int = spec(0, ge=0, le=64)

    def _check_across_fields(self) -> None:
        _check_parser_path(self)


@dataclass(frozen=True)
class TinyVAEConfig(Section):
    """The small AutoencoderKL of the embedded base (16 latent channels, x8 down)."""

    # Four blocks give three downsamplings: x8, like the FLUX VAE.
    block_out_channels: tuple[int, ...] = spec(
        (8, 16, 32, 64),
        Rule(lambda widths: len(widths) == 4, "a list of 4 widths (x8 downsampling)"),
        Rule(lambda widths: all(w >= 4 and w % 4 == 0 for w in widths),
             "widths that are multiples of 4 (GroupNorm groups)"))
    layers_per_block: int = spec(1, ge=1)
    steps: int = spec(1500, ge=0)
    batch_size: int = spec(16, ge=1)
    lr: float = spec(2e-3, gt=0)
    kl_weight: float = spec(1e-6, ge=0)
    warmup_steps: int = spec(50, ge=0)
    # share of each batch that is decoupled mask images, not faces
    mask_fraction: float = spec(0.5, ge=0, le=1)
    # pulls latent channels 0-2 to the mean colour of their 8x8 cell
    color_weight: float = spec(1.0, ge=0)
    # train on random square crops of this side (a multiple of 8: whole latent cells); the conv
    # VAE is applied to whole images afterwards. null: whole images
    crop_size: int | None = spec(None, ge=16, multiple_of=8)


@dataclass(frozen=True)
class TinyTransformerConfig(Section):
    """The small text-to-image FluxTransformer2DModel of the embedded base."""

    num_layers: int = spec(2, ge=1)
    num_single_layers: int = spec(4, ge=0)
    attention_head_dim: int = 32
    num_attention_heads: int = 4
    axes_dims_rope: tuple[int, int, int] = (8, 12, 12)
    guidance_embeds: bool = False
    steps: int = spec(1500, ge=0)
    batch_size: int = spec(16, ge=1)
    lr: float = spec(1e-3, gt=0)
    text_dropout: float = spec(0.1, ge=0, lt=1)
    warmup_steps: int = spec(100, ge=0)
    grad_clip: float = spec(1.0, gt=0)
    # the first k captions of each image are encoded and drawn from
    captions_per_image: int = spec(2, ge=1)

    def _check_across_fields(self) -> None:
        check(sum(self.axes_dims_rope) == self.attention_head_dim,
              dotted_key(self, "axes_dims_rope"),
              f"three sizes summing to attention_head_dim={self.attention_head_dim}",
              self.axes_dims_rope)


@dataclass(frozen=True)
class TinyParserConfig(Section):
    """The small face parser (19-class segmentation net) of the embedded base: it labels images
    without masks and is the instrument of every mask metric."""

    width: int = spec(16, ge=4)
    steps: int = spec(500, ge=0)
    batch_size: int = spec(16, ge=1)
    lr: float = spec(2e-3, gt=0)
    warmup_steps: int = spec(20, ge=0)
    class_weighted: bool = True  # cross-entropy weights ~ 1/sqrt(class frequency)
    # share of each batch shown as VAE encode -> decode output
    decoded_fraction: float = spec(0.5, ge=0, le=1)


@dataclass(frozen=True)
class BaseConfig(Section):
    """The pretrained foundation: the embedded base shipped with the repository (`tiny`) or
    FLUX.1-dev (`flux`); the `base` stage resolves and checks it, it never trains it."""

    kind: Literal["tiny", "flux"] = "flux"
    tiny_path: str = "pretrained/embedded"  # the embedded base: weights + provenance.json
    flux_path: str = "black-forest-labs/FLUX.1-dev"  # hub id or local directory
    flux_revision: str | None = None
    dtype: DType = "bfloat16"
    # T5 sequence length (FLUX.1-dev: 512); MiniLM: 32 is plenty
    text_max_tokens: int = spec(FLUX_TEXT_TOKENS, ge=1, le=FLUX_TEXT_TOKENS)
    # the frozen transformer, quantized once by the base stage (facemogle/base/quantize.py):
    # int8 weight-only (torchao, CPU or GPU) or NF4 (bitsandbytes, CUDA only)
    quantization: Literal["none", "int8", "nf4"] = "none"


@dataclass(frozen=True)
class PretrainConfig(Section):
    """Training the embedded base once (`python -m stages.pretrain`, not part of `dvc repro`)."""

    vae: TinyVAEConfig = field(default_factory=TinyVAEConfig)
    transformer: TinyTransformerConfig = field(default_factory=TinyTransformerConfig)
    parser: TinyParserConfig = field(default_factory=TinyParserConfig)
    checkpoint_every: int = spec(200, ge=1)  # steps between resumable checkpoints of a phase
    weights_dtype: Literal["float32", "float16"] = "float16"  # storage of the shipped weights


@dataclass(frozen=True)
class CacheConfig(Section):
    """Encoding the latent cache (`cache_latents` stage)."""

    batch_size: int = spec(32, ge=1)  # images per VAE call (faces and mask slots)
    text_batch_size: int = spec(32, ge=1)  # captions per text-encoder call
    # VAE encoding under bfloat16 autocast: faster only on CPUs with native bf16 (avx512_bf16,
    # AMX) or on GPUs; the latents differ slightly (docs/speed.md)
    precision: Literal["float32", "bfloat16"] = "float32"
    # images per shard: the unit of resuming and of splitting the work
    shard_size: int = spec(256, ge=1)
    # processes under torchrun, one per device: shards are split
    num_processes: int = spec(1, ge=1)
    # store the first n captions of each image; null: all of them (data.captions_per_image)
    max_captions: int | None = spec(None, ge=1)
    # store each caption's real text tokens only; reading refills the padding positions with
    # the empty prompt's states (facemogle/cache/store.py): less disk, not bit-equal padding
    trim_text_padding: bool = False


@dataclass(frozen=True)
class ModelConfig(Section):
    """MoGLE sizes and how condition tokens are modulated (paper section 3.2)."""

    expert_hidden: int = spec(32, ge=1)  # paper: 64 -> 32 -> 64 experts
    gate_hidden: int = spec(64, ge=1)
    # The gate embeds gate_time_scale x sigma (flow time in [0, 1]): 1000 here; 1 for the
    # official release's weights, whose gate was trained on sigma unscaled (app/official.py).
    gate_time_scale: float = spec(1000.0, gt=0)
    condition_guidance: float = 1.0  # guidance-embedding value of the condition stream, always
    # full: image tokens attend to every condition token (paper); aligned: to the one at their
    # own position only (the embedded tiny base cannot find it by itself; models/condition.py).
    condition_attention: Literal["full", "aligned"] = "full"


# The paper's LoRA targets (official config, identical to OminiControl's): 343 layers on FLUX.1-dev.
PAPER_LORA_TARGETS: tuple[str, ...] = (
    r"x_embedder",
    r"transformer_blocks\.\d+\.(norm1\.linear|attn\.to_[qkv]|attn\.to_out\.0|ff\.net\.2)",
    r"single_transformer_blocks\.\d+\.(norm\.linear|proj_mlp|proj_out|attn\.to_[qkv])",
)


@dataclass(frozen=True)
class LoraConfig(Section):
    """LoRA on the condition stream (paper: r=4, alpha=4, gaussian init)."""

    rank: int = spec(4, ge=1)
    alpha: float = spec(4.0, gt=0)
    init: Literal["gaussian", "default"] = "gaussian"
    dropout: float = spec(0.0, ge=0, lt=1)
    # Regular expressions over module names, each matched in full (peft's regex form).
    target_modules: tuple[str, ...] = spec(
        PAPER_LORA_TARGETS, Rule(lambda targets: len(targets) >= 1, "a non-empty list of regexes"))


@dataclass(frozen=True)
class TrainConfig(Section):
    """LoRA + MoGLE training (paper section 4.1)."""

    steps: int = spec(4000, ge=1)
    batch_size: int = spec(4, ge=1)
    grad_accum: int = spec(1, ge=1)
    optimizer: Literal["prodigy", "adamw"] = "prodigy"
    lr: float = spec(1.0, gt=0)  # Prodigy's lr is a multiplier on its estimated step size
    weight_decay: float = spec(0.01, ge=0, expected="non-negative")
    grad_clip: float = spec(0.5, gt=0)
    text_drop: float = spec(0.1, **_PROBABILITY)
    local_mask_drop: float = spec(0.1, **_PROBABILITY)  # each local mask independently
    mask_drop: float = spec(0.1, **_PROBABILITY)  # the whole mask: trains text-only generation
    logit_normal_mean: float = 0.0
    logit_normal_std: float = spec(1.0, gt=0, expected="positive")
    guidance: float = 1.0  # guidance-embedding value while training (FLUX.1-dev)
    checkpoint_every: int = spec(1000, ge=1)
    keep_checkpoints: int = spec(2, ge=1)
    log_every: int = spec(10, ge=1)
    mixed_precision: Precision = "bf16"
    gradient_checkpointing: bool = True
    compile: bool = False  # torch.compile the transformer blocks (GPU; slow to start on CPU)
    num_processes: int = spec(1, ge=1)  # processes per node under torchrun (one per device)
    # Nodes: the run joins nnodes x num_processes processes, and `train` refuses any other count
    # (batch_size counts samples per process, so the global batch would change).
    nnodes: int = spec(1, ge=1)
    # host:port of torchrun's c10d rendezvous in dvc.yaml. localhost:0: a store on a free port
    # of this machine, what torchrun's --standalone sets (one node). Several nodes: a fixed
    # port on one of them that every node reaches. It says where the processes meet, not what
    # they train, so it is left out of the config checkpoints are matched on
    # (`facemogle.training.launch`).
    rdzv_endpoint: str = spec("localhost:0", Rule(
        lambda v: _endpoint_port(v) is not None, "host:port, e.g. node0:29500"))

    def _check_across_fields(self) -> None:
        check(self.nnodes == 1 or _endpoint_port(self.rdzv_endpoint) != 0,
              dotted_key(self, "rdzv_endpoint"),
              f"host:port with a fixed port that every node reaches when train.nnodes is "
              f"{self.nnodes} (port 0 picks a free port on each node apart)", self.rdzv_endpoint)


def _endpoint_port(endpoint: str) -> int | None:
    """The port of a rendezvous endpoint `host:port` (IPv6 hosts in brackets), or None when
    `endpoint` is not of that form."""
    host, colon, port = endpoint.rpartition(":")
    if (not colon or not host or any(c.isspace() for c in endpoint) or not port.isdigit()
            or int(port) > 65535):
        return None
    return int(port)


@dataclass(frozen=True)
class SampleConfig(Section):
    """Sampling the test split in the three modes (docs/design.md, "The three modes")."""

    steps: int = spec(28, ge=1)
    # guidance embedding, used when the transformer has one (FLUX.1-dev)
    guidance: float = SAMPLE_GUIDANCE
    # true classifier-free guidance; 1.0 is off
    cfg_scale: float = spec(1.0, ge=1, expected="a number >= 1.0 (1.0 = off)")
    batch_size: int = spec(8, ge=1)
    modes: tuple[Mode, ...] = spec(
        MODES, Rule(lambda modes: len(modes) >= 1 and len(set(modes)) == len(modes),
                    f"a non-empty list of distinct modes from {list(MODES)}"))
    max_images: int | None = spec(None, ge=1)
    # first-block residual caching: skip the blocks after the first at steps where the first
    # block's change differs from the last computed step's by less than this; 0 = off
    cache_threshold: float = spec(0.0, ge=0, expected="a number >= 0 (0 = off)")
    # processes under torchrun, one per device: images are split
    num_processes: int = spec(1, ge=1)


@dataclass(frozen=True)
class EvaluateConfig(Section):
    """Which metric backends run, and where their weights are (paper section 4.3)."""

    batch_size: int = spec(16, ge=1)
    kid_subsets: int = spec(100, ge=1)
    kid_subset_size: int = spec(1000, ge=2)
    inception_path: str | None = None
    clip_score_model: str | None = None  # e.g. openai/clip-vit-base-patch16
    cmmd_model: str | None = None  # e.g. openai/clip-vit-large-patch14-336
    dino_model: str | None = None  # e.g. facebook/dino-vitb8
    # both: dino_structure_paper (the official protocol's scale) beside dino_structure
    dino_protocol: Literal["corrected", "both"] = "corrected"
    imagereward_path: str | None = None
    cmmd_estimator: Literal["biased", "unbiased"] = "biased"  # CMMD paper's code: biased
    # cross-fitting folds of the embedded real-vs-generated detector
    detector_folds: int = spec(5, ge=2)
    detector_steps: int = spec(200, ge=1)
    detector_size: int = spec(64, ge=8, le=512)  # px the detector sees
    # the paper's Table 6 detectors, with the authors' weights (metrics/npr.py, wavelet_clip.py)
    npr_path: str | None = None  # NPR state dict, e.g. NPR.pth (.pth or .safetensors)
    wavelet_clip_path: str | None = None  # Wavelet-CLIP checkpoint, e.g. clip_wavelet_best.pth
    wavelet_clip_backbone: str | None = None  # local folder of openai/clip-vit-large-patch14


@dataclass(frozen=True)
class Params(Section, root=True):
    """All of `params.yaml`."""

    seed: int = 42
    gating: Gating = "matrix"
    experts: Experts = "global_local"
    data: DataConfig = field(default_factory=DataConfig)
    masks: MasksConfig = field(default_factory=MasksConfig)
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    offdist: OffDistConfig = field(default_factory=OffDistConfig)
    base: BaseConfig = field(default_factory=BaseConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


SECTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Params))


def params_from_dict(data: dict | None) -> Params:
    """Build and validate `Params` from a parsed `params.yaml` mapping."""
    return from_dict(Params, data or {})


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
    params = params_from_dict(read_yaml_mapping(path))
    return params if sections is None else SectionView(params, sections)
