"""The matrix gate's weights averaged per face region (facemogle.app.gate_regions)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import params_file
from facemogle.app.gate_maps import colorize
from facemogle.app.gate_regions import (
    CELL,
    MARGIN,
    RegionAverage,
    main,
    own_region_ratio,
    region_picture,
    token_regions,
)
from facemogle.core.io import InputError
from facemogle.core.labels import LABEL_INDEX, NUM_LABELS

SKIN, HAIR = LABEL_INDEX["skin"], LABEL_INDEX["hair"]


def _two_region_map() -> np.ndarray:
    """16 x 16 px: left half skin, right half hair, the top 4 rows of the top-left token
    background; a 2 x 2 token grid of 8 x 8 px tokens."""
    m = np.full((16, 16), SKIN)
    m[:, 8:] = HAIR
    m[:4, :8] = 0
    return m[None]


def test_token_regions_are_pixel_shares_in_row_major_token_order():
    shares = token_regions(_two_region_map(), (2, 2))  # (1, 4, 19)
    assert shares.shape == (1, 4, NUM_LABELS)
    torch.testing.assert_close(shares.sum(-1), torch.ones(1, 4))
    assert shares[0, 0, 0] == 0.5 and shares[0, 0, SKIN] == 0.5  # top-left
    assert shares[0, 1, HAIR] == 1.0 and shares[0, 3, HAIR] == 1.0  # right column
    assert shares[0, 2, SKIN] == 1.0  # bottom-left
    with pytest.raises(ValueError, match="do not tile"):
        token_regions(np.zeros((1, 10, 10), dtype=int), (3, 3))


def test_region_average_of_a_gate_that_follows_the_regions():
    """Experts (global, skin, hair): the skin expert takes every skin token and the hair expert
    every hair token; a uniform gate gives 1/3 everywhere and own-region ratios of 1."""
    regions = token_regions(_two_region_map(), (2, 2))
    slots = (0, SKIN + 1, HAIR + 1)
    follows = torch.zeros(1, 1, 4, 3)
    follows[0, 0, [0, 2], 1] = 1.0  # left tokens (skin, and half background) -> skin expert
    follows[0, 0, [1, 3], 2] = 1.0
    average = RegionAverage()
    average.add(follows, regions)
    per_region, mean = average.per_region(), average.mean()
    assert per_region[0, 1, SKIN] == 1.0 and per_region[0, 2, HAIR] == 1.0
    assert per_region[0, 1, 0] == 1.0 and per_region[0, 2, SKIN] == 0.0
    assert torch.isnan(per_region[0, 0, LABEL_INDEX["hat"]])  # no hat in the map
    ratio = own_region_ratio(per_region, mean, slots)
    assert set(ratio) == {"skin", "hair"} and ratio["hair"] == [2.0]  # 1.0 over a mean of 0.5
    uniform = RegionAverage()
    uniform.add(torch.full((2, 1, 4, 3), 1 / 3), regions)
    present = ~torch.isnan(uniform.per_region())
    torch.testing.assert_close(uniform.per_region()[present],
                               torch.full((int(present.sum()),), 1 / 3, dtype=torch.float64))
    assert np.allclose(own_region_ratio(uniform.per_region(), uniform.mean(), slots)["skin"], 1)
    picture = np.asarray(region_picture(per_region.numpy(), [1.0], ["global", "skin", "hair"],
                                        [0]))
    def cell(expert: int, region: int) -> np.ndarray:
        return picture[MARGIN + expert * CELL + CELL // 2, MARGIN + region * CELL + CELL // 2]
    assert (cell(1, SKIN) == colorize(np.ones(1), 1.0)[0]).all()  # the top of the scale
    assert (cell(2, SKIN) == colorize(np.zeros(1), 1.0)[0]).all()  # its bottom


def test_gate_regions_command_on_a_trained_model(trained_run, tmp_path):
    out = tmp_path / "gate"
    assert main(["--model", str(trained_run.model), "--params", str(trained_run.params),
                 "--base", str(trained_run.base), "--latents", str(trained_run.latents),
                 "--labels", str(trained_run.labels), "--out", str(out),
                 "--max-images", "2"]) == 0
    record = json.loads((out / "gate_regions.json").read_text())
    per_region = np.array(record["per_region"], dtype=float)  # (S, E, R), NaN where absent
    mean = np.array(record["mean_weight"])  # (S, E)
    assert record["images"] == 2 and len(record["sigmas"]) == 3  # sample.steps of the run
    assert per_region.shape == (3, len(record["experts"]), NUM_LABELS)
    assert record["experts"][0] == "global" and len(record["own_region_ratio"]) == 19
    np.testing.assert_allclose(mean.sum(-1), 1.0, rtol=1e-5)  # the gate's weights sum to 1
    assert all(r is None or np.isfinite(r) for ratios in record["own_region_ratio"].values()
               for r in ratios)  # strict JSON: absent regions are null, never NaN
    assert (out / "gate_regions.png").stat().st_size > 0


def test_gate_regions_refuses_a_model_without_the_matrix_gate(trained_run, tmp_path):
    params = params_file(tmp_path / "params.yaml", {"gating": "scalar"},
                         str(trained_run.params))
    with pytest.raises(InputError, match="matrix"):
        main(["--model", str(trained_run.model), "--params", str(params), "--base",
              str(trained_run.base), "--latents", str(trained_run.latents), "--labels",
              str(trained_run.labels), "--out", str(tmp_path / "gate")])
    assert not (tmp_path / "gate").exists()
