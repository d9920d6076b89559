"""Loading the official release's weights (facemogle/app/official.py).

Synthetic files in the release's layout, at toy size: the LoRA with diffusers' peft key names
(`transformer.<module>.lora_A.weight`) through safetensors, the MoGLE as `torch.save` of the
state dict of a module with the release's parameter names and forward (written out below).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from safetensors.torch import load_file, save_file
from torch import nn

from facemogle.app.official import (
    OfficialWeightsError,
    convert_official,
    load_official,
    main,
)
from facemogle.base.standin import tiny_transformer
from facemogle.core.config import (
    SECTIONS,
    LoraConfig,
    ModelConfig,
    Params,
    params_from_dict,
)
from facemogle.models.facemogle import FaceMoGLE
from facemogle.training.checkpoint import load_trained

RANK = 4
NUM_EXPERTS = 20
DOUBLE = ("norm1.linear", "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "ff.net.2")
SINGLE = ("norm.linear", "proj_mlp", "proj_out", "attn.to_q", "attn.to_k", "attn.to_v")
OFFICIAL_PARAMS = Params(model=ModelConfig(gate_time_scale=1.0))


# ----------------------------------------------------------------------------------------------
# The release's MoGLE layout (names and forward), independent of facemogle.models.mogle
# ----------------------------------------------------------------------------------------------


class OfficialExpert(nn.Module):
    def __init__(self, dim: int = 64, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, x):
        return self.net(x)


class OfficialGating(nn.Module):
    def __init__(self, dim: int = 64):
        super().__init__()
        self.time_proj = Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.timestep_embedding = TimestepEmbedding(dim, dim)
        self.noise_proj = nn.Linear(dim, dim)
        self.gate = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, NUM_EXPERTS))

    def forward(self, global_tokens, z_t, t):
        emb = self.timestep_embedding(self.time_proj(t))  # (B, D): t = sigma, unscaled
        h = global_tokens + self.noise_proj(z_t) + emb[:, None]  # (B, L, D)
        return self.gate(h).softmax(dim=2)  # (B, L, 20)


class OfficialMoGLE(nn.Module):
    def __init__(self):
        super().__init__()
        self.global_expert = OfficialExpert()
        self.local_experts = nn.ModuleList(OfficialExpert() for _ in range(NUM_EXPERTS - 1))
        self.gating = OfficialGating()

    def forward(self, cond, z_t, sigma, expert_out=None):
        # FaceMoGLE passes `expert_out` (experts computed once by a sampler); here it is None.
        assert expert_out is None
        outs = [self.global_expert(cond[:, 0])] + [
            e(cond[:, i + 1]) for i, e in enumerate(self.local_experts)]
        outs = torch.stack(outs, dim=1)  # (B, 20, L, D)
        weights = self.gating(cond[:, 0], z_t, sigma)  # (B, L, 20)
        return (outs * weights.permute(0, 2, 1)[..., None]).sum(dim=1)  # (B, L, D)


def official_lora_layers(transformer) -> list[str]:
    names = ["x_embedder"]
    for i in range(len(transformer.transformer_blocks)):
        names += [f"transformer_blocks.{i}.{s}" for s in DOUBLE]
    for i in range(len(transformer.single_transformer_blocks)):
        names += [f"single_transformer_blocks.{i}.{s}" for s in SINGLE]
    return names


def official_lora(rank: int = RANK, seed: int = 1) -> dict[str, torch.Tensor]:
    base = tiny_transformer()
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name in official_lora_layers(base):
        layer = base.get_submodule(name)
        state[f"transformer.{name}.lora_A.weight"] = 0.1 * torch.randn(
            rank, layer.in_features, generator=g)  # (r, in)
        state[f"transformer.{name}.lora_B.weight"] = 0.1 * torch.randn(
            layer.out_features, rank, generator=g)  # (out, r)
    return state


@pytest.fixture
def files(tmp_path):
    torch.manual_seed(2)
    mogle = OfficialMoGLE()
    lora = official_lora()
    save_file(lora, str(tmp_path / "pytorch_lora_weights.safetensors"))
    torch.save(mogle.state_dict(), tmp_path / "mogle.pt")
    return tmp_path / "pytorch_lora_weights.safetensors", tmp_path / "mogle.pt", lora, mogle


def fresh_model(params: Params = OFFICIAL_PARAMS) -> FaceMoGLE:
    torch.manual_seed(0)
    return FaceMoGLE.from_params(tiny_transformer(), params).eval()


def inputs(batch: int = 2, side: int = 2, text: int = 3):
    g = torch.Generator().manual_seed(3)
    length = side * side
    img_ids = torch.zeros(length, 3)  # (L, 3) [0, row, col]
    img_ids[:, 1] = torch.arange(length) // side
    img_ids[:, 2] = torch.arange(length) % side
    return {"z_t": torch.randn(batch, length, 64, generator=g),  # (B, L, C)
            "sigma": torch.tensor([0.3, 0.9]),  # (B,)
            "text": torch.randn(batch, text, 32, generator=g),  # (B, T, Dtxt)
            "pooled": torch.randn(batch, 32, generator=g),  # (B, P)
            "img_ids": img_ids, "txt_ids": torch.zeros(text, 3),  # (T, 3)
            # (B, 20, L, C)
            "cond_latents": torch.randn(batch, NUM_EXPERTS, length, 64, generator=g)}


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def test_loaded_parameters_equal_the_files(files):
    lora_path, mogle_path, lora, official = files
    model = load_official(fresh_model(), lora_path, mogle_path)
    for key, value in lora.items():
        name, part = re.fullmatch(r"transformer\.(.+)\.(lora_[AB])\.weight", key).groups()
        layer = getattr(model.transformer.get_submodule(name), part)["condition"]
        torch.testing.assert_close(layer.weight, value, rtol=0, atol=0)
    experts, gate = model.mogle.experts, model.mogle.gate
    pairs = [(experts.global_expert.weight1[0], official.global_expert.net[0].weight),
             (experts.global_expert.bias2[0], official.global_expert.net[2].bias),
             (gate.noise_proj.weight, official.gating.noise_proj.weight),
             (gate.time_embed.linear_2.bias, official.gating.timestep_embedding.linear_2.bias),
             (gate.mlp[2].weight, official.gating.gate[2].weight)]
    for i, expert in enumerate(official.local_experts):
        pairs += [(experts.local_experts.weight1[i], expert.net[0].weight),
                  (experts.local_experts.bias1[i], expert.net[0].bias),
                  (experts.local_experts.weight2[i], expert.net[2].weight),
                  (experts.local_experts.bias2[i], expert.net[2].bias)]
    for ours, theirs in pairs:
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_forward_equals_the_official_weights_set_directly(files):
    lora_path, mogle_path, lora, official = files
    loaded = load_official(fresh_model(), lora_path, mogle_path)
    direct = fresh_model()
    for name in official_lora_layers(tiny_transformer()):
        layer = direct.transformer.get_submodule(name)
        for part in ("lora_A", "lora_B"):
            getattr(layer, part)["condition"].weight.data.copy_(
                lora[f"transformer.{name}.{part}.weight"])
    direct.mogle = official.eval()  # the release's own forward: the gate sees sigma unscaled
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded.mogle(x["cond_latents"], x["z_t"], x["sigma"]),
                                   official(x["cond_latents"], x["z_t"], x["sigma"]))
        out = loaded(x.pop("z_t"), x.pop("sigma"), x.pop("text"), x.pop("pooled"), **x)
        x = inputs()
        want = direct(x.pop("z_t"), x.pop("sigma"), x.pop("text"), x.pop("pooled"), **x)
    assert out.abs().max() > 0
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)


def test_the_release_ablation_without_experts_loads(tmp_path, files):
    lora_path, _, _, official = files
    gating_only = {k: v for k, v in official.state_dict().items() if k.startswith("gating.")}
    torch.save(gating_only, tmp_path / "gating.pt")
    params = Params(experts="none", model=ModelConfig(gate_time_scale=1.0))
    model = load_official(fresh_model(params), lora_path, tmp_path / "gating.pt")
    torch.testing.assert_close(model.mogle.gate.mlp[0].weight, official.gating.gate[0].weight)


# ----------------------------------------------------------------------------------------------
# Converting to a model folder
# ----------------------------------------------------------------------------------------------


def tiny_base(folder: Path) -> Path:
    tiny_transformer().save_pretrained(folder / "transformer")
    (folder / "base.json").write_text(json.dumps({"kind": "tiny", "dtype": "float32"}))
    return folder


def test_cli_writes_a_model_folder_that_loads(tmp_path, files):
    lora_path, mogle_path, _, _ = files
    base, out, params_file = tiny_base(tmp_path / "base"), tmp_path / "model", tmp_path / "p.yaml"
    params_file.write_text(yaml.safe_dump({}))  # defaults: gate_time_scale 1000, set to 1 here
    assert main(["--lora", str(lora_path), "--mogle", str(mogle_path), "--base", str(base),
                 "--params", str(params_file), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "lora.safetensors", "manifest.json", "mogle.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["gate_time_scale"] == 1.0
    assert config["base_manifest"] == {"kind": "tiny", "dtype": "float32"}
    assert config["official_release"]["mogle"] == "mogle.pt"
    params = params_from_dict({k: v for k, v in config.items() if k in SECTIONS})
    torch.manual_seed(0)
    from_folder = load_trained(tiny_transformer(), out, params)
    loaded = load_official(fresh_model(), lora_path, mogle_path)
    for (name, a), (_, b) in zip(from_folder.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert all(v.dtype == torch.float32 for v in load_file(out / "lora.safetensors").values())


def test_cli_failure_writes_nothing(tmp_path, files, capsys):
    _, mogle_path, lora, _ = files
    lora.pop("transformer.x_embedder.lora_A.weight")
    save_file(lora, str(tmp_path / "broken.safetensors"))
    argv = ["--lora", str(tmp_path / "broken.safetensors"), "--mogle", str(mogle_path),
            "--base", str(tiny_base(tmp_path / "base")), "--out", str(tmp_path / "model"),
            "--params", str(tmp_path / "p.yaml")]
    (tmp_path / "p.yaml").write_text("{}\n")
    assert main(argv) == 1
    assert "missing key 'transformer.x_embedder.lora_A.weight'" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


# ----------------------------------------------------------------------------------------------
# Mismatches are errors naming the file and the key
# ----------------------------------------------------------------------------------------------


def _lora_error(tmp_path, mogle_path, state, metadata=None, params=OFFICIAL_PARAMS) -> str:
    path = tmp_path / "pytorch_lora_weights.safetensors"
    save_file(state, str(path), metadata=metadata)
    with pytest.raises(OfficialWeightsError) as err:
        convert_official(fresh_model(params), path, mogle_path)
    assert str(path) in str(err.value)
    return str(err.value)


def test_lora_mismatches_are_errors(tmp_path, files):
    _, mogle_path, lora, _ = files
    key = "transformer.transformer_blocks.0.attn.to_q.lora_B.weight"
    missing = {k: v for k, v in lora.items() if k != key}
    assert f"missing key '{key}'" in _lora_error(tmp_path, mogle_path, missing)
    extra = {**lora, "text_encoder.x.lora_A.weight": torch.zeros(4, 2)}
    assert "unexpected key 'text_encoder.x.lora_A.weight'" in _lora_error(
        tmp_path, mogle_path, extra)
    wrong = {**lora, key: torch.zeros(7, RANK)}
    assert f"'{key}' has shape (7, 4)" in _lora_error(tmp_path, mogle_path, wrong)
    message = _lora_error(tmp_path, mogle_path, official_lora(rank=8))
    assert "has LoRA rank 8" in message and "lora.rank is 4" in message
    meta = {"lora_adapter_metadata": json.dumps({"transformer.r": 4,
                                                 "transformer.lora_alpha": 8})}
    assert "alpha 8" in _lora_error(tmp_path, mogle_path, lora, meta)
    # Without metadata diffusers loads alpha = rank: params with another alpha do not fit.
    params = Params(model=ModelConfig(gate_time_scale=1.0), lora=LoraConfig(alpha=2.0))
    assert "lora.alpha is 2.0" in _lora_error(tmp_path, mogle_path, lora, params=params)


def _mogle_error(lora_path, path, params=OFFICIAL_PARAMS) -> str:
    with pytest.raises(OfficialWeightsError) as err:
        convert_official(fresh_model(params), lora_path, path)
    assert str(path) in str(err.value)
    return str(err.value)


def test_mogle_mismatches_are_errors(tmp_path, files):
    lora_path, _, _, official = files
    state = official.state_dict()
    path = tmp_path / "mogle.pt"
    torch.save({k: v for k, v in state.items() if k != "local_experts.7.net.2.bias"}, path)
    assert "missing key 'local_experts.7.net.2.bias'" in _mogle_error(lora_path, path)
    torch.save({**state, "gating.extra.weight": torch.zeros(2)}, path)
    assert "unexpected key 'gating.extra.weight'" in _mogle_error(lora_path, path)
    torch.save({**state, "gating.gate.2.weight": torch.zeros(19, 64)}, path)
    assert "'gating.gate.2.weight' has shape (19, 64)" in _mogle_error(lora_path, path)


def test_mogle_file_that_is_not_a_plain_state_dict_is_refused(tmp_path, files):
    lora_path, _, _, official = files
    path = tmp_path / "mogle.pt"
    torch.save(official, path)  # the whole pickled module: weights_only refuses it
    assert "torch.load(weights_only=True) refused it" in _mogle_error(lora_path, path)
    torch.save([torch.zeros(2)], path)
    assert "expected a state dict" in _mogle_error(lora_path, path)


def test_models_the_release_cannot_fill_are_refused(files):
    lora_path, mogle_path, _, _ = files
    assert "model.gate_time_scale: 1.0" in _mogle_error(lora_path, mogle_path, Params())
    params = Params(experts="local", model=ModelConfig(gate_time_scale=1.0))
    assert "no such MoGLE" in _mogle_error(lora_path, mogle_path, params)
