"""The benchmark: a tiny CPU run end to end, and the FLOP model against an independent count."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import FluxTransformer2DModel
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from facemogle.bench import device, flops, measure, run, setup
from facemogle.core import latents
from facemogle.core.config import LoraConfig, ModelConfig, load_params
from facemogle.core.flux import FLUX_DEV_TRANSFORMER
from facemogle.models.facemogle import FaceMoGLE

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["--size", "tiny", "--device", "cpu", "--out", str(out / "tiny.json"),
            "--params", str(ROOT / "params.yaml"), "--batch-sizes", "1,2", "--steps", "1",
            "--warmup", "1", "--sample-batch-sizes", "1,2", "--sample-steps", "2",
            "--cache-images", "1", "--cache-batch-size", "8", "--profile", str(out / "prof"),
            "--profile-steps", "1", "--markdown", str(out / "table.md")]
    assert run.main(argv) == 0
    return out, json.loads((out / "tiny.json").read_text())


@pytest.fixture(scope="module")
def flux_meta():
    """FLUX.1-dev + the paper's LoRA and MoGLE on the meta device (no memory, no init)."""
    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER)
        model = FaceMoGLE.build(transformer, ModelConfig(), LoraConfig(), experts="global_local",
                                gating="matrix")
    return model


def test_tiny_run_writes_device_versions_and_settings(tiny_result):
    _, r = tiny_result
    assert r["device"]["type"] == "cpu" and r["device"]["name"]
    assert {"torch", "diffusers", "peft", "transformers"} <= set(r["versions"])
    assert r["versions"]["torch"] == torch.__version__
    s = r["settings"]
    params = load_params(ROOT / "params.yaml")
    assert s["size"] == "tiny" and s["resolution"] == params.data.resolution
    assert s["dtype"] == "float32"
    image = (params.data.resolution // 16) ** 2  # x8 VAE, 2 x 2 packing: 64 at 128 px
    assert s["tokens"] == {"text": params.base.text_max_tokens, "image": image, "cond": image}
    assert s["gradient_checkpointing"] is True and s["train"]["optimizer"] == "prodigy"
    counts = r["parameters"]
    assert counts["mogle"] == 101780  # the paper's MoGLE (docs/design.md, "Scale figures")
    assert counts["trainable"] == counts["lora"] + counts["mogle"]
    # No peak FLOP/s for a CPU: MFU is null, with the reason.
    assert r["peak_flops"] is None and "cpu" in r["peak_flops_source"]


def test_tiny_run_training_sampling_caching(tiny_result):
    _, r = tiny_result
    assert [t["batch_size"] for t in r["train"]] == [1, 2]
    for t in r["train"]:
        assert t["status"] == "ok" and t["loss_finite"] is True and t["mfu"] is None
        assert t["samples_per_s"] == pytest.approx(t["batch_size"] / t["step_s"])
        assert sum(t["phases"].values()) == pytest.approx(t["step_s"], rel=1e-6)
        assert t["model_tflop_per_s"] == pytest.approx(
            t["batch_size"] * r["flops_per_sample"]["train_step_model"] / t["step_s"] / 1e12)
    assert [t["batch_size"] for t in r["sample"]] == [1, 2]
    assert all(t["status"] == "ok" and t["finite"] and t["s_per_image"] > 0 for t in r["sample"])
    cache = r["cache"]
    assert cache["encodes_per_image"] == 21 and cache["images_per_s"] > 0
    shard = cache["shard"]
    # float16 tokens: L image tokens x 64, 20 slots, params.yaml's captions x tokens x 384
    params = load_params(ROOT / "params.yaml")
    captions, tokens = params.data.captions_per_image, params.base.text_max_tokens
    L = (params.data.resolution // 16) ** 2
    assert shard["image_bytes"] == L * 64 * 2 and shard["slot_latents_bytes"] == 20 * L * 64 * 2
    assert shard["text_seq_bytes"] == captions * tokens * 384 * 2 and shard["captions"] == captions
    parts = sum(v for k, v in shard.items() if k.endswith("_bytes") and k != "total_bytes")
    assert parts < shard["total_bytes"] < parts + 2048  # plus the safetensors header


def test_tiny_run_checkpointing_costs_one_more_forward(tiny_result):
    _, r = tiny_result
    f = r["flops_per_sample"]
    assert f["train_step_model"] == pytest.approx(f["forward"] + f["backward"])
    # Checkpointing recomputes the blocks' forward: most of a forward, not the embedders.
    recompute = f["train_step_hardware"] - f["train_step_model"]
    assert 0.5 * f["forward"] < recompute < f["forward"]


def test_profile_lists_host_reads_with_their_sites(tiny_result):
    out, r = tiny_result
    prof = r["profile"]
    assert (out / "prof" / "train_ops.txt").read_text().count("aten::") > 5
    assert (out / "prof" / "sample_ops.txt").is_file()
    assert json.loads((out / "prof" / "host_syncs.json").read_text())["train_steps"] == 1
    sites = prof["train_syncs_per_step"]
    # Prodigy reads two values per parameter tensor per step (prodigyopt/prodigy.py).
    assert any((s["library_site"] or "").startswith("prodigyopt/prodigy.py") for s in sites)
    # The loss and the Face-MoGLE forward read nothing on the host.
    assert not [s for s in sites if s["site"].startswith(("facemogle/training.py",
                                                           "facemogle/models/facemogle.py"))]


def test_markdown_table(tiny_result):
    out, r = tiny_result
    table = (out / "table.md").read_text()
    assert table == run.markdown_table(r)
    assert "| training step | 1 |" in table and "| sampling, 2 steps | 2 |" in table
    assert "images/s" in table and "MiB/image" in table


def test_flux_linear_table_matches_the_model(flux_meta):
    config = dict(flux_meta.transformer.config)
    real = {name.replace(".base_layer", ""): (m.in_features, m.out_features)
            for name, m in flux_meta.transformer.named_modules()
            if isinstance(m, nn.Linear) and "lora_" not in name}
    assert {s.name: (s.fan_in, s.fan_out) for s in flops.flux_linears(config)} == real
    # docs/design.md, "Scale figures": 11.9 B parameters, LoRA 14,487,808 over 343 layers.
    assert sum(p.numel() for n, p in flux_meta.transformer.named_parameters()
               if "lora_" not in n) == 11_901_408_320
    assert len(flops.lora_layers(config, LoraConfig())) == 343
    assert flops.lora_param_count(config, LoraConfig()) == 14_487_808
    assert sum(p.numel() for n, p in flux_meta.transformer.named_parameters()
               if "lora_" in n) == 14_487_808


def test_flop_formula_matches_flop_counter_at_flux_size(flux_meta):
    """The analytic count against torch's FlopCounterMode over the real forward and backward
    (with activation checkpointing, so the backward includes the recomputed forward), 512 px."""
    model, b = flux_meta, 1
    z, sigma = torch.randn(b, 1024, 64, device="meta"), torch.rand(b, device="meta")
    text, pooled = torch.randn(b, 512, 4096, device="meta"), torch.randn(b, 768, device="meta")
    cond = torch.randn(b, 20, 1024, 64, device="meta")
    ids = dict(img_ids=latents.image_ids(64, 64, device="meta"),
               txt_ids=latents.text_ids(512, device="meta"))
    with FlopCounterMode(display=False) as forward:
        out = model(z, sigma, text, pooled, cond_latents=cond, guidance=3.5, checkpointing=True,
                    **ids)
    with FlopCounterMode(display=False) as backward:
        out.float().square().mean().backward()
    counted = flops.transformer_flops(
        dict(model.transformer.config), flops.Tokens(512, 1024, 1024), batch=b, lora=LoraConfig(),
        mogle_params=sum(p.numel() for p in model.mogle.parameters()))
    assert counted.forward == pytest.approx(forward.get_total_flops(), rel=0.01)
    assert counted.backward + counted.recompute == pytest.approx(backward.get_total_flops(),
                                                                 rel=0.01)
    # The figures the module docstring quotes (a naive 2 x params x tokens says ~65 TFLOP).
    assert 37.6e12 < counted.forward < 37.8e12 and 42.1e12 < counted.backward < 42.4e12


def test_no_condition_tokens_is_plain_flux():
    config = FLUX_DEV_TRANSFORMER
    plain = flops.transformer_flops(config, flops.Tokens(512, 1024, 0), lora=LoraConfig(),
                                    mogle_params=101780)
    joint = flops.transformer_flops(config, flops.Tokens(512, 1024, 1024), lora=LoraConfig())
    assert plain.parts["lora"] == 0 and plain.parts["mogle"] == 0
    # docs/design.md, "Scale figures": ~1.67x the linear FLOPs, ~2.8x the attention.
    assert joint.parts["linear"] / plain.parts["linear"] == pytest.approx(2560 / 1536, rel=0.01)
    assert joint.parts["attention"] / plain.parts["attention"] == pytest.approx(
        (2560 / 1536) ** 2)


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA L4", None)])
def test_peak_flops_table(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    value, source = flops.peak_flops(torch.device("cuda"))
    assert value == peak
    assert (name.upper() in source) == (peak is None)


def test_out_of_memory_is_recorded_and_the_sweep_goes_on(monkeypatch):
    def fake(run, batch_size, steps, warmup, seed):
        if batch_size == 4:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return {"batch_size": batch_size, "status": "ok"}

    monkeypatch.setattr(measure, "measure_training", fake)
    run = SimpleNamespace(model=nn.Linear(2, 2), device=torch.device("cpu"))
    results = measure.train_sweep(run, [2, 4, 8], steps=1, warmup=0, seed=0)
    assert [(r["batch_size"], r["status"]) for r in results] == [(2, "ok"), (4, "oom"),
                                                                  (8, "ok")]


def test_build_frozen_is_seeded_and_frozen():
    factory = lambda: nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16))  # noqa: E731
    a = setup.build_frozen(factory, torch.device("cpu"), torch.bfloat16, seed=3)
    b = setup.build_frozen(factory, torch.device("cpu"), torch.bfloat16, seed=3)
    c = setup.build_frozen(factory, torch.device("cpu"), torch.bfloat16, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a[0].weight, c[0].weight)
    assert a[0].weight.dtype == torch.bfloat16 and not any(p.requires_grad for p in a.parameters())
    assert torch.equal(a[1].weight, torch.ones(16, dtype=torch.bfloat16))  # norm scale 1
    assert not a[0].bias.any() and a[0].weight.float().std() == pytest.approx(8 ** -0.5, rel=0.3)


@pytest.mark.parametrize("argv, message", [
    (["--size", "flux", "--device", "cpu"], "needs a CUDA device"),
    (["--size", "tiny", "--batch-sizes", "0"], "positive integers"),
    (["--size", "tiny", "--parts", "train,eval"], "subset of"),
    (["--size", "tiny", "--steps", "0"], "--steps must be a positive integer"),
    (["--size", "tiny", "--blocks", "1,1"], "--blocks sets the depth of --size flux only"),
    (["--size", "flux", "--device", "cpu", "--blocks", "1"],
     "expected two positive integers DOUBLE,SINGLE"),
])
def test_bad_command_lines(argv, message, capsys):
    with pytest.raises(SystemExit):
        run.parse_args([*argv, "--out", "x.json"])
    assert message in capsys.readouterr().err


def test_blocks_build_flux_width_at_a_shallow_depth():
    opt = run.parse_args(["--size", "flux", "--device", "cpu", "--blocks", "2,3", "--out", "x"])
    assert opt.blocks == (2, 3)
    with torch.device("meta"):
        transformer = setup.flux_size(opt.blocks).transformer()
    assert (len(transformer.transformer_blocks), len(transformer.single_transformer_blocks)) \
        == (2, 3)
    assert transformer.config.num_attention_heads * transformer.config.attention_head_dim == 3072


def test_cpu_peak_memory_is_the_host_peak_since_reset():
    cpu = torch.device("cpu")
    device.reset_memory(cpu)
    before = device.host_rss()
    held = torch.ones(256 * 2**20 // 4)  # 256 MiB, touched
    peak = device.peak_memory(cpu)
    assert peak["peak_allocated_bytes"] is None
    assert peak["peak_host_rss_bytes"] - before >= 250 * 2**20
    del held
    device.reset_memory(cpu)  # the mark falls back to what the process holds now
    after = device.peak_memory(cpu)["peak_host_rss_bytes"]
    assert after < peak["peak_host_rss_bytes"] - 200 * 2**20
