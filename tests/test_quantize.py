"""`base.quantization`: the frozen transformer quantized once by the base stage (int8 weight-only
through torchao on CPU; NF4 needs CUDA), loaded as saved, trained with full-precision LoRA."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("torchao")
from peft.tuners.lora import LoraLayer  # noqa: E402
from torchao.quantization import Int8Tensor  # noqa: E402

from conftest import flat_params, params_file  # noqa: E402
from facemogle.base.build import build_base  # noqa: E402
from facemogle.base.loader import load_base, read_manifest  # noqa: E402
from facemogle.base.quantize import quantization_config  # noqa: E402
from facemogle.base.standin import TINY_TRANSFORMER  # noqa: E402
from facemogle.bench import weights  # noqa: E402
from facemogle.core.config import ConfigError, load_params  # noqa: E402
from facemogle.core.io import InputError, read_json  # noqa: E402
from facemogle.models.lora import lora_parameters  # noqa: E402
from facemogle.training.checkpoint import load_trained  # noqa: E402
from flux_standin import save_flux_standin  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _linear_weights(transformer) -> list:
    return [m.weight for m in transformer.modules() if isinstance(m, torch.nn.Linear)]


def _forward(transformer, seed: int = 0):
    cfg = transformer.config
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, cfg.in_channels, generator=g)
    text = torch.randn(1, 4, cfg.joint_attention_dim, generator=g)
    kwargs = {"guidance": torch.tensor([3.5])} if cfg.guidance_embeds else {}
    with torch.no_grad():
        return transformer(hidden_states=x, encoder_hidden_states=text,
                           pooled_projections=torch.randn(1, cfg.pooled_projection_dim,
                                                          generator=g),
                           timestep=torch.tensor([0.5]), img_ids=torch.zeros(16, 3),
                           txt_ids=torch.zeros(4, 3), **kwargs).sample


@pytest.fixture(scope="module")
def flux_bases(tmp_path_factory):
    """The FLUX stand-in resolved twice by the base stage: as it is and int8-quantized."""
    root = tmp_path_factory.mktemp("quantize")
    flux = save_flux_standin(root / "FLUX.1-dev")
    params = load_params(params_file(root / "params.yaml", {"base": {"flux_path": str(flux)}},
                                     "params-flux.yaml"))
    plain, int8 = root / "base", root / "base-int8"
    build_base(params.base, None, plain)
    build_base(dataclasses.replace(params.base, quantization="int8"), None, int8)
    return plain, int8


def test_base_stage_saves_the_int8_transformer_once(flux_bases):
    plain, int8 = flux_bases
    assert "quantization" not in read_manifest(plain)  # an unquantized base is unchanged
    assert read_manifest(int8)["quantization"] == "int8"
    saved = int8 / "transformer"
    assert list(saved.glob("*.safetensors")) and not list(saved.glob("*.bin"))
    assert json.loads((saved / "config.json").read_text())["quantization_config"]["quant_method"] \
        == "torchao"
    base = load_base(int8)
    weights = _linear_weights(base.transformer)
    assert weights and all(isinstance(w, Int8Tensor) for w in weights)


def test_int8_transformer_computes_close_to_the_bf16_one(flux_bases):
    plain, int8 = flux_bases
    ref = _forward(load_base(plain, dtype=torch.float32, load_text_encoder=False).transformer)
    out = _forward(load_base(int8, dtype=torch.float32, load_text_encoder=False).transformer)
    rel = (out - ref).norm() / ref.norm()
    assert 0 < rel < 0.05, rel  # quantized, so not equal, but within weight-only int8 error


def test_a_manifest_alone_cannot_locate_a_quantized_transformer(flux_bases):
    with pytest.raises(InputError, match="base stage's output folder"):
        load_base(read_manifest(flux_bases[1]), load_text_encoder=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is CPU-only")
def test_nf4_on_cpu_is_refused_by_name():
    with pytest.raises(ConfigError, match="'nf4' needs a CUDA GPU"):
        quantization_config("nf4", torch.bfloat16)


def test_model_trained_on_an_int8_base_loads_on_the_unquantized_base(trained_run, tmp_path):
    """train on the int8 embedded base: LoRA stays fp32 and trains, the frozen int8 weights do
    not move, and the saved model applies to the float32 base."""
    from stages import base as base_stage

    params = params_file(tmp_path / "params.yaml", {"base": {"quantization": "int8"}},
                         str(trained_run.params))
    base_dir, model_dir = tmp_path / "base", tmp_path / "model"
    p = ["--params", str(params)]
    assert base_stage.main(["--out", str(base_dir), *p]) == 0
    # Through torchrun, as the pipeline runs it: accelerate wraps the model in DDP, which must
    # not broadcast the frozen int8 weights.
    result = subprocess.run(
        [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "1",
         "-m", "stages.train", "--latents", str(trained_run.latents), "--base", str(base_dir),
         "--out", str(model_dir), "--metrics-dir", str(tmp_path / "metrics"), *p],
        cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
        timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    quantized = load_base(base_dir, load_text_encoder=False).transformer
    plain = load_base(trained_run.base, load_text_encoder=False).transformer
    loaded = load_params(params)
    on_int8 = load_trained(quantized, model_dir, loaded)
    on_plain = load_trained(plain, model_dir, loaded)
    lora_int8, lora_plain = list(lora_parameters(quantized)), list(lora_parameters(plain))
    assert lora_int8 and all(p.dtype == torch.float32 for p in lora_int8)
    assert all(torch.equal(a, b) for a, b in zip(lora_int8, lora_plain, strict=True))
    assert any(p.abs().sum() > 0 for p in lora_int8)  # lora_B starts at zero: it trained
    wrapped = [m for m in on_int8.transformer.modules() if isinstance(m, LoraLayer)]
    assert wrapped and all(isinstance(m.base_layer.weight, Int8Tensor) for m in wrapped)
    assert read_json(model_dir / "config.json")["base_manifest"]["quantization"] == "int8"
    assert on_plain.mogle.state_dict().keys() == on_int8.mogle.state_dict().keys()


@pytest.mark.parametrize("quantization", ["none", "int8"])
def test_weight_bytes_extrapolate_from_one_block_of_each_kind(quantization):
    """`bench.weights`: shared + 2 x double + 3 x single, from a 1 + 1 block copy, equals the
    saved bytes of the 2 + 3 block transformer."""
    config = {**TINY_TRANSFORMER, "num_layers": 2, "num_single_layers": 3}
    predicted = weights.measure(quantization, torch.device("cpu"), config)["full_bytes"]
    assert predicted == sum(weights.saved_bytes(config, quantization, torch.device("cpu")).values())


def test_the_24gb_profile_is_the_full_setting_quantized_at_the_papers_global_batch():
    root = Path(__file__).resolve().parents[1]
    flux = flat_params(root / "params-flux.yaml")
    small = flat_params(root / "params-flux-24gb.yaml")
    assert small.keys() == flux.keys()
    assert {k for k in flux if flux[k] != small[k]} == {
        "base.quantization", "train.batch_size", "train.grad_accum", "cache.batch_size"}
    params = load_params(root / "params-flux-24gb.yaml")
    assert params.base.quantization == "int8"
    assert params.train.batch_size * params.train.grad_accum * params.train.num_processes == 8


def test_gpu_session_runs_each_quantization_in_its_own_process(tmp_path, capsys):
    """`bench.gpu --dry-run`: one full-depth benchmark per quantization (caching only once) and
    the weight sizes; every command parses with the benchmark's own argument parsers."""
    from facemogle.bench import gpu, run

    runs = gpu.commands(tmp_path, ["none", "int8", "nf4"])
    assert list(runs) == ["flux-none", "flux-int8", "flux-nf4", "weights"]
    for name in ("flux-none", "flux-int8", "flux-nf4"):
        argv = runs[name][3:]  # after python -m facemogle.bench
        args = run._parser().parse_args(argv)
        assert args.size == "flux" and args.quantization == name.split("-")[1]
        assert args.batch_sizes == [1, 2, 4] and ("cache" in args.parts) == (name == "flux-none")
    assert gpu.main(["--out", str(tmp_path), "--dry-run"]) == 0
    assert capsys.readouterr().out.count("facemogle.bench") == 4
