"""The params schema: strict loading, clear errors, and params.yaml itself."""

from pathlib import Path

import pytest
import yaml

from facemogle.core.config import ConfigError, Params, load_params, params_from_dict, to_dict

ROOT = Path(__file__).resolve().parents[1]


def test_params_yaml_loads_and_round_trips():
    params = load_params(ROOT / "params.yaml")
    assert isinstance(params, Params)
    assert params_from_dict(to_dict(params)) == params


def test_every_key_of_the_schema_is_in_params_yaml():
    # params.yaml documents the whole schema: a key only in the dataclass could not be set with -S.
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    full = to_dict(Params())

    def keys(d, prefix=""):
        for k, v in d.items():
            yield prefix + k
            if isinstance(v, dict):
                yield from keys(v, prefix + k + ".")

    assert set(keys(full)) == set(keys(data))


@pytest.mark.parametrize(
    "override, key, expected",
    [
        ({"gating": "foo"}, "gating", "['matrix', 'scalar', 'static', 'none']"),
        ({"experts": "both"}, "experts", "global_local"),
        ({"train": {"steps": -5}}, "train.steps", "positive"),
        ({"data": {"resolution": 100}}, "data.resolution", "multiple of 16"),
        ({"train": {"steps": "10"}}, "train.steps", "integer"),
        ({"train": {"stepz": 10}}, "train.stepz", "valid keys"),
        ({"lora": {"rank": 2.5}}, "lora.rank", "integer"),
        ({"sample": {"modes": ["multimodal", "sketch"]}}, "sample.modes[1]", "mask2face"),
        ({"train": {"gradient_checkpointing": "yes"}}, "train.gradient_checkpointing", "true or false"),
        ({"base": {"vae": {"block_out_channels": [8, 8]}}}, "base.vae.block_out_channels", "4"),
        ({"unknown_section": {}}, "unknown_section", "valid keys"),
    ],
)
def test_invalid_values_name_the_key_and_the_valid_values(override, key, expected):
    with pytest.raises(ConfigError) as err:
        params_from_dict(override)
    message = str(err.value)
    assert f"'{key}'" in message
    assert expected in message


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
