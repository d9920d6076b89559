"""`python -m facemogle.app.diagnostics`: MoGLE's scale, the position-dependent share of the
condition tokens after x_embedder, and the gate's weights, per noise level."""

from __future__ import annotations

import json
import math
import subprocess

import pytest
import torch

from facemogle.app import diagnostics


def test_noise_level_splits_tokens_into_constant_and_position_parts():
    level = diagnostics.NoiseLevel()
    constant = torch.tensor([3.0, 4.0])  # norm 5, shared by every token of the image
    position = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # sums to zero over the 2 tokens
    embedded = (constant + position)[None]  # (1, 2, 2)
    out = torch.tensor([[[0.0, 2.0], [0.0, 2.0]]])  # norm 2 per token
    weights = torch.tensor([[[0.5, 0.5], [1.0, 0.0]]])  # entropies log 2 and 0
    level.add(out, embedded, weights)
    m = level.means()
    assert m["constant_norm"] == pytest.approx(5.0) and m["position_norm"] == pytest.approx(1.0)
    assert m["mogle_norm"] == pytest.approx(2.0) and m["weight_sum"] == pytest.approx(1.0)
    assert m["gate_entropy"] == pytest.approx(math.log(2) / 2)


def test_diagnostics_of_a_trained_model(trained_run, tmp_path):
    out = tmp_path / "diag.json"
    sigmas = "1.0,0.5,0.1"
    assert diagnostics.main([
        "--model", str(trained_run.model), "--base", str(trained_run.base), "--latents",
        str(trained_run.latents), "--labels", str(trained_run.labels), "--params",
        str(trained_run.params), "--out", str(out), "--images", "2", "--sigmas", sigmas]) == 0
    r = json.loads(out.read_text())
    assert r["gating"] == "matrix" and r["images"] == 2 and r["sigmas"] == [1.0, 0.5, 0.1]
    assert len(r["levels"]) == 3 and len(r["experts"]) == 20
    for level in r["levels"]:
        assert level["weight_sum"] == pytest.approx(1.0, abs=1e-5)  # the convex gate
        assert 0 <= level["gate_entropy"] <= r["gate_entropy_max"] + 1e-6
        assert level["mogle_norm"] > 0 and level["position_norm"] > 0
    assert r["x_embedder_bias_norm"] > 0
    assert torch.tensor(r["mean_weight"]).shape == (3, 20)
    per_region = r["per_region"]
    assert len(per_region) == 3 and len(per_region[0]) == 20 and len(per_region[0][0]) == 19
    # the gate depends on z_t and the time: its weights differ between noise levels
    assert r["mean_weight"][0] != r["mean_weight"][2]


@pytest.mark.parametrize("sigmas", ["0.5,x", "1.5"])
def test_bad_sigmas_are_refused_by_name(sigmas, capsys):
    with pytest.raises(SystemExit):
        diagnostics.main(["--model", "m", "--base", "b", "--latents", "l", "--labels", "x",
                          "--out", "o.json", "--sigmas", sigmas])
    assert "--sigmas must" in capsys.readouterr().err


def test_an_experiment_is_found_by_its_git_ref_and_refused_by_name_when_absent(tmp_path):
    from facemogle.core.io import InputError
    from facemogle.evaluation.ablations import experiment_commit

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), *args], check=True,
                              capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    git("add", "params.yaml")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline")
    head = git("rev-parse", "HEAD")
    git("update-ref", "refs/exps/ab/cdef/gating-none-seed3", head)  # where DVC keeps one
    assert experiment_commit(tmp_path, "gating-none-seed3") == head
    with pytest.raises(InputError, match="no DVC experiment named 'gating-none-seed4'"):
        experiment_commit(tmp_path, "gating-none-seed4")


def test_model_and_experiment_are_exclusive(capsys):
    with pytest.raises(SystemExit):
        diagnostics.main(["--base", "b", "--latents", "l", "--labels", "x", "--out", "o"])
    assert "give either --model (with --params) or --experiment" in capsys.readouterr().err
