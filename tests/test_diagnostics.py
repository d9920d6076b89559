"""`python -m facemogle.app.diagnostics`: MoGLE's scale, the position-dependent share of the
condition tokens after x_embedder, and the gate's weights, per noise level."""

from __future__ import annotations

import contextlib
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
    assert m["expert_weight"] == pytest.approx([0.75, 0.25])


def _run(name: str, weights: list[float], norm: float) -> dict:
    level = {"mogle_norm": norm, "position_norm": norm / 2, "constant_norm": 1.0,
             "gate_entropy": 0.5, "weight_sum": sum(weights), "expert_weight": weights}
    return {"model": name, "images": 4, "sigmas": [1.0], "experts": ["global", "skin"],
            "x_embedder_bias_norm": 1.1, "gate_entropy_max": 1.0, "levels": [level]}


def test_summary_averages_each_variant_over_its_seeds_main_first():
    runs = [_run("gating-none-seed0", [1.0, 1.0], 20.0), _run("main-seed0", [0.2, 0.8], 4.0),
            _run("main-seed1", [0.4, 0.6], 6.0)]
    lines = diagnostics.summary(runs).splitlines()
    rows = [line for line in lines if line.startswith("| main") or line.startswith("| gating")]
    assert rows[0] == "| main | 2 | 1.00 | 1.10 | 5.00; 2.50; 1.00 |"
    assert rows[1] == "| gating-none | 1 | 2.00 | 1.10 | 20.00; 10.00; 1.00 |"
    assert rows[2] == "| main | 0.50; skin 0.70 |"  # mean share of the weight, not of the sum
    assert rows[3] == "| gating-none | 0.50; global 0.50 |"
    assert "(no input norms recorded)" in lines
    single = {**_run("experts-global-seed0", [1.0], 3.0), "experts": ["global"],
              "gate_entropy_max": 0.0}  # one expert: log 1 = 0, no choice to measure
    assert "| experts-global | -; global 1.00 |" in diagnostics.summary([single])
    norms = {"image_latent_norm": 7.0, "global_slot_norm": 11.0, "local_slot_norm": 9.0}
    assert "a clean image latent 7.00 (what the frozen x_embedder was trained on), the global " \
           "mask slot 11.00, a local mask slot 9.00." in diagnostics.summary(
               [{**run, **norms} for run in runs])


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
        assert sum(level["expert_weight"]) == pytest.approx(level["weight_sum"], abs=1e-5)
    assert r["x_embedder_bias_norm"] > 0
    assert min(r["image_latent_norm"], r["global_slot_norm"], r["local_slot_norm"]) > 0
    assert torch.tensor(r["mean_weight"]).shape == (3, 20)
    per_region = r["per_region"]
    assert len(per_region) == 3 and len(per_region[0]) == 20 and len(per_region[0][0]) == 19
    # the gate depends on z_t and the time: its weights differ between noise levels
    assert r["mean_weight"][0] != r["mean_weight"][2]


def test_records_are_diagnosed_once_each_and_summarised(trained_run, tmp_path, monkeypatch):
    @contextlib.contextmanager
    def from_run(model, params, experiment=None, commit=None):
        assert commit == "0123abc"  # the record's experiment commit, not a name's lookup
        yield trained_run.model, trained_run.params

    monkeypatch.setattr(diagnostics, "_model_and_params", from_run)
    records = tmp_path / "records"
    records.mkdir()
    (records / "main-seed0.json").write_text(json.dumps({"experiment": "lnm1-seed0",
                                                         "commit": "0123abc"}))
    args = ["--records", str(records), "--base", str(trained_run.base), "--latents",
            str(trained_run.latents), "--labels", str(trained_run.labels), "--images", "2",
            "--sigmas", "1.0,0.1"]
    assert diagnostics.main(args) == 0
    written = records / "diagnostics" / "main-seed0.json"
    assert json.loads(written.read_text())["model"] == "main-seed0"
    assert "| main | 1 |" in (records / "diagnostics" / "summary.md").read_text()
    before = written.stat().st_mtime_ns
    assert diagnostics.main(args) == 0 and written.stat().st_mtime_ns == before  # not redone


@pytest.mark.parametrize("sigmas", ["0.5,x", "1.5"])
def test_bad_sigmas_are_refused_by_name(sigmas, capsys):
    with pytest.raises(SystemExit):
        diagnostics.main(["--model", "m", "--base", "b", "--latents", "l", "--labels", "x",
                          "--out", "o.json", "--sigmas", sigmas])
    assert "--sigmas must" in capsys.readouterr().err


def test_an_experiment_is_found_by_its_git_ref_and_refused_when_absent_or_ambiguous(tmp_path):
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
    git("update-ref", "refs/exps/12/3456/gating-none-seed3", head)  # the name on a second baseline
    with pytest.raises(InputError, match="2 DVC experiments named 'gating-none-seed3'"):
        experiment_commit(tmp_path, "gating-none-seed3")


def test_model_and_experiment_are_exclusive(capsys):
    with pytest.raises(SystemExit):
        diagnostics.main(["--base", "b", "--latents", "l", "--labels", "x", "--out", "o"])
    assert "give one of --model (with --params), --experiment or --records" in (
        capsys.readouterr().err)
