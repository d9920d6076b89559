"""The params schema: strict loading, clear errors, and params.yaml itself."""

import dataclasses
from pathlib import Path
from typing import Literal

import pytest
import yaml

from facemogle.core import schema
from facemogle.core.config import (
    ConfigError,
    Params,
    TinyTransformerConfig,
    TinyVAEConfig,
    load_params,
    params_from_dict,
    to_dict,
)

ROOT = Path(__file__).resolve().parents[1]


def test_params_yaml_loads_and_round_trips():
    params = load_params(ROOT / "params.yaml")
    assert isinstance(params, Params)
    assert params_from_dict(to_dict(params)) == params


def test_every_key_of_the_schema_is_in_params_yaml():
    # params.yaml documents the pipeline's schema (a key only in the dataclass could not be set
    # with -S); params-pretrain.yaml the whole `pretrain` section, which no DVC stage reads.
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    pretrain = yaml.safe_load((ROOT / "params-pretrain.yaml").read_text())
    full = to_dict(Params())

    def keys(d, prefix=""):
        for k, v in d.items():
            yield prefix + k
            if isinstance(v, dict):
                yield from keys(v, prefix + k + ".")

    schema = set(keys(full))
    assert schema - {"pretrain"} - set(keys(full["pretrain"], "pretrain.")) == set(keys(data))
    assert set(keys(full["pretrain"], "pretrain.")) == set(keys(pretrain["pretrain"], "pretrain."))
    assert load_params(ROOT / "params-pretrain.yaml").data == load_params(ROOT / "params.yaml").data


@pytest.mark.parametrize(
    "override, key, expected",
    [
        ({"gating": "foo"}, "gating", "['matrix', 'matrix_scaled', 'scalar', 'static', 'none']"),
        ({"experts": "both"}, "experts", "global_local"),
        ({"train": {"steps": -5}}, "train.steps", "positive"),
        ({"data": {"resolution": 100}}, "data.resolution", "multiple of 16"),
        ({"train": {"steps": "10"}}, "train.steps", "integer"),
        ({"train": {"stepz": 10}}, "train.stepz", "valid keys"),
        ({"lora": {"rank": 2.5}}, "lora.rank", "integer"),
        ({"sample": {"modes": ["multimodal", "sketch"]}}, "sample.modes[1]", "mask2face"),
        ({"train": {"gradient_checkpointing": "yes"}}, "train.gradient_checkpointing",
         "true or false"),
        ({"pretrain": {"vae": {"block_out_channels": [8, 8]}}}, "pretrain.vae.block_out_channels",
         "4"),
        ({"unknown_section": {}}, "unknown_section", "valid keys"),
    ],
)
def test_invalid_values_name_the_key_and_the_valid_values(override, key, expected):
    with pytest.raises(ConfigError) as err:
        params_from_dict(override)
    message = str(err.value)
    assert f"'{key}'" in message
    assert expected in message


@pytest.mark.parametrize(
    "override, message",
    [
        ({"pretrain": {"vae": {"lr": 0}}}, "'pretrain.vae.lr' must be a positive number, got 0.0"),
        ({"pretrain": {"parser": {"width": 2}}},
         "'pretrain.parser.width' must be an integer >= 4, got 2"),
        ({"pretrain": {"transformer": {"text_dropout": 1}}},
         "'pretrain.transformer.text_dropout' must be in [0, 1), got 1.0"),
        ({"pretrain": {"vae": {"block_out_channels": [8, 16, 30, 64]}}},
         ("'pretrain.vae.block_out_channels' must be widths that are multiples of 4 "
          "(GroupNorm groups), got (8, 16, 30, 64)")),
        ({"pretrain": {"transformer": {"attention_head_dim": 16}}},
         ("'pretrain.transformer.axes_dims_rope' must be three sizes summing to "
          "attention_head_dim=16, got (8, 12, 12)")),
        ({"zeroshot": {"parser": "segformer"}},
         ("'zeroshot.parser_path' must be a hub id or directory when zeroshot.parser is "
          "'segformer', got None")),
        ({"data": {"max_images": 0}},
         "'data.max_images' must be null or a positive integer, got 0"),
        ({"data": {"resolution": 1000}},
         "'data.resolution' must be a multiple of 16 between 64 and 1024, got 1000"),
        ({"train": {"mask_drop": 1.0}},
         "'train.mask_drop' must be a probability in [0, 1), got 1.0"),
    ],
)
def test_declared_rules_reach_nested_fields_by_their_dotted_key(override, message):
    with pytest.raises(ConfigError) as err:
        params_from_dict(override)
    assert str(err.value) == "params: " + message


def test_sections_built_in_code_name_their_dotted_key():
    with pytest.raises(ConfigError, match=r"'pretrain\.vae\.lr' must be a positive number"):
        TinyVAEConfig(lr=0.0)
    with pytest.raises(ConfigError, match=r"'pretrain\.transformer\.steps'"):
        dataclasses.replace(TinyTransformerConfig(), steps=-1)
    assert params_from_dict({"data": {"max_images": None}}).data.max_images is None


def test_every_rejected_number_names_its_own_dotted_key():
    # -1 on each numeric key, at every depth: it passes, or the error names that key.
    def leaves(d, prefix=()):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from leaves(v, prefix + (k,))
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                yield prefix + (k,)

    rejected = set()
    for path in leaves(to_dict(Params())):
        override = -1
        for k in reversed(path):
            override = {k: override}
        key = ".".join(path)
        try:
            params_from_dict(override)
        except ConfigError as err:
            # A rule between two fields names the one it constrains.
            named = {"pretrain.transformer.attention_head_dim":
                     "pretrain.transformer.axes_dims_rope"}.get(key, key)
            assert f"'{named}' must be" in str(err)
            rejected.add(key)
    assert {"pretrain.vae.kl_weight", "pretrain.parser.warmup_steps", "data.num_train",
            "train.log_every", "evaluate.detector_size"} <= rejected
    assert not {"seed", "train.guidance", "train.logit_normal_mean"} & rejected


def test_int_is_accepted_where_a_float_is_expected():
    params = params_from_dict({"lora": {"alpha": 4}, "train": {"lr": 1}})
    assert params.lora.alpha == 4.0 and isinstance(params.lora.alpha, float)


def test_section_view_refuses_undeclared_sections(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    view = load_params(path, sections=("seed", "train"))
    assert view.train.steps >= 1
    with pytest.raises(AttributeError, match="not declared"):
        view.sample


def test_unreadable_params_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


# The engine on its own (facemogle/core/schema.py): a toy schema, no facemogle section.


@dataclasses.dataclass(frozen=True)
class _Inner(schema.Section):
    size: int = schema.spec(8, ge=1)
    kind: Literal["a", "b"] = "a"
    low: float = 0.0
    high: float = 1.0

    def _check_across_fields(self) -> None:
        schema.check(self.low < self.high, schema.dotted_key(self, "high"),
                     f"greater than low={self.low}", self.high)


@dataclasses.dataclass(frozen=True)
class _Toy(schema.Section, root=True):
    name: str | None = None
    sizes: tuple[int, ...] = schema.spec((1, 2), schema.Rule(lambda s: len(s) >= 1, "non-empty"))
    inner: _Inner = dataclasses.field(default_factory=_Inner)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"nmae": "x"},
         "unknown key 'nmae'; valid keys under 'the top level': ['name', 'sizes', 'inner']"),
        ({"inner": {"sise": 3}},
         "unknown key 'inner.sise'; valid keys under 'inner': ['size', 'kind', 'low', 'high']"),
        ({"name": 3}, "'name' must be str or null, got 3"),
        ({"inner": {"size": "8"}}, "'inner.size' must be an integer, got '8'"),
        ({"inner": {"size": True}}, "'inner.size' must be an integer, got True"),
        ({"inner": {"kind": "c"}}, "'inner.kind' must be one of ['a', 'b'], got 'c'"),
        ({"inner": {"size": 0}}, "'inner.size' must be a positive integer, got 0"),
        ({"inner": {"high": 0}}, "'inner.high' must be greater than low=0.0, got 0.0"),
        ({"sizes": []}, "'sizes' must be non-empty, got ()"),
        ({"sizes": [1, "2"]}, "'sizes[1]' must be an integer, got '2'"),
        ({"inner": 3}, "'inner' must be a mapping of _Inner fields, got 3"),
    ],
)
def test_schema_rejects_a_toy_schema_s_bad_values_by_dotted_key(data, message):
    with pytest.raises(schema.ConfigError) as err:
        schema.from_dict(_Toy, data)
    assert str(err.value) == "params: " + message


def test_schema_converts_and_round_trips_a_toy_schema(tmp_path):
    toy = schema.from_dict(_Toy, {"sizes": [3], "inner": {"low": 1, "high": 2}})
    assert toy == _Toy(sizes=(3,), inner=_Inner(low=1.0, high=2.0))
    assert isinstance(toy.inner.low, float)
    assert schema.from_dict(_Toy, schema.to_dict(toy)) == toy
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(schema.to_dict(toy)))
    assert schema.from_dict(_Toy, schema.read_yaml_mapping(path)) == toy
    path.write_text("- a list\n")
    with pytest.raises(schema.ConfigError, match="must hold a mapping, got list"):
        schema.read_yaml_mapping(path)
    # built in code: the key is where the section nests under its root
    with pytest.raises(schema.ConfigError, match=r"'inner\.size' must be a positive integer"):
        _Inner(size=0)
