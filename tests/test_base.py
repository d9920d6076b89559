"""The embedded base (trained by the pretraining command at toy size, checked by the base
stage), FLUX resolution, loading, and the pretraining helpers."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, TINY_DATA, TINY_PRETRAIN_PARAMS, params_file
from facemogle.base import loader as base_mod
from facemogle.base.build import build_base
from facemogle.base.embedded import check_embedded
from facemogle.base.flux import resolve_flux
from facemogle.base.loader import load_base, load_vae
from facemogle.base.segmenter import FaceParser, load_parser
from facemogle.base.text import FluxTextEncoder, MiniLMTextEncoder
from facemogle.core import latents
from facemogle.core.config import BaseConfig, ConfigError, DataConfig, load_params
from facemogle.core.io import InputError, file_sha256
from facemogle.core.labels import LABEL_INDEX, NUM_LABELS
from facemogle.data.layout import split_path
from facemogle.pretrain.parser import FLIP_LABELS, augment, class_weights, parser_miou
from facemogle.pretrain.train_embedded import faces_for
from facemogle.pretrain.transformer import CaptionTable, encode_texts
from facemogle.pretrain.vae import color_latent_loss, vae_norm_groups
from flux_standin import save_flux_standin
from stages import base as stage


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    return save_flux_standin(tmp_path_factory.mktemp("flux") / "FLUX.1-dev")


def _weights(directory):
    return load_file(str(next(directory.glob("*.safetensors"))))


def _params(tmp_path, embedded, **data):
    """A params file of the tiny run pointing `base.tiny_path` at `embedded`."""
    return params_file(tmp_path / "params.yaml", {
        "data": {**TINY_DATA, **data}, "base": {"tiny_path": str(embedded), "dtype": "float32",
                                                "text_max_tokens": 8}})


@pytest.fixture
def resolved(embedded_base, tmp_path):
    assert stage.main(["--out", str(tmp_path / "base"), "--params",
                       str(_params(tmp_path, embedded_base))]) == 0
    return tmp_path / "base"


# ---- the embedded base: pretraining command ---------------------------------------------------


def test_pretrain_writes_weights_and_provenance(embedded_base):
    names = sorted(p.name for p in embedded_base.iterdir())
    assert names == ["parser", "provenance.json", "scheduler", "text_encoder.json",
                     "transformer", "vae"]
    record = json.loads((embedded_base / "provenance.json").read_text())
    assert record["command"].startswith("python -m stages.pretrain --params ")
    assert record["machine"]["cpu"] and record["machine"]["torch"] == torch.__version__
    assert set(record["wall_time"]) == {"vae_s", "parser_s", "transformer_s", "evaluation_s"}
    assert record["data"]["num_train"] == TINY_DATA["num_train"] and record["resolution"] == 64
    assert record["pretrain"]["vae"]["steps"] == 20
    assert set(record["metrics"]) == {"vae_psnr_faces", "vae_psnr_color", "vae_psnr_binary",
                                      "parser_miou", "parser_miou_decoded"}
    files = {str(f.relative_to(embedded_base)) for f in embedded_base.rglob("*")
             if f.is_file() and f.name != "provenance.json"}
    assert set(record["files"]) == files
    assert all(record["files"][f] == file_sha256(embedded_base / f) for f in files)
    for part in ("vae", "transformer", "parser"):  # pretrain.weights_dtype: float16
        assert {t.dtype for t in _weights(embedded_base / part).values()} == {torch.float16}
    assert not list(embedded_base.parent.glob(".embedded.*")), "temporary folder left behind"


def test_pretrain_logs_losses(embedded_base):
    metrics = embedded_base.parent / "metrics"
    for name in ("vae/l1", "vae/kl", "transformer/loss", "parser/loss"):
        rows = (metrics / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()
        assert rows[0].split("\t")[0] == "step" and len(rows) >= 2, name
    assert (metrics / "plots" / "images" / "base_previews.png").is_file()


def test_pretrain_resumes_bit_for_bit(embedded_base, tmp_path, monkeypatch):
    """Interrupted inside the transformer phase, a re-run resumes from its checkpoint (step 10 of
    20) and ships the same bytes as the uninterrupted run; the loss curve logs no step twice
    (step 15 was logged before the interruption and is logged again after the resume)."""
    from facemogle.core import flow
    from facemogle.pretrain import common as pretrain_mod
    from stages import pretrain

    params_file(tmp_path / "p.yaml", TINY_PRETRAIN_PARAMS, "params-pretrain.yaml")
    monkeypatch.chdir(tmp_path)  # relative paths, as in the documented command
    monkeypatch.setattr(pretrain_mod, "LOG_EVERY", 5)
    args = ["--params", "p.yaml", "--work", "work", "--out", "out", "--metrics-dir", "metrics"]
    real_loss, calls = flow.rectified_flow_loss, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 17:
            raise KeyboardInterrupt
        return real_loss(*a, **k)

    monkeypatch.setattr(flow, "rectified_flow_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pretrain.main(args)
    assert not (tmp_path / "out").exists()
    state = json.loads((tmp_path / "work" / "checkpoints" / "transformer" / "state.json")
                       .read_text())
    assert state["step"] == 10
    monkeypatch.setattr(flow, "rectified_flow_loss", real_loss)
    assert pretrain.main(args) == 0
    record = json.loads((tmp_path / "out" / "provenance.json").read_text())
    theirs = json.loads((embedded_base / "provenance.json").read_text())["files"]
    assert record["files"] == theirs
    curve = (tmp_path / "metrics" / "plots" / "metrics" / "transformer" / "loss.tsv")
    assert [int(r.split("\t")[0]) for r in curve.read_text().splitlines()[1:]] == [5, 10, 15, 20]
    # a phase's wall time is its training time as saved, not the time until the run ended
    for phase in ("vae", "parser", "transformer"):
        saved = json.loads((tmp_path / "work" / "checkpoints" / phase / "state.json")
                           .read_text())["elapsed"]
        assert record["wall_time"][f"{phase}_s"] == round(saved, 1)


# ---- kind: tiny: the base stage checks and points to the embedded base ------------------------


def test_base_stage_points_to_the_embedded_base(resolved, embedded_base):
    assert sorted(p.name for p in resolved.iterdir()) == ["base.json", "text_encoder.json"]
    manifest = json.loads((resolved / "base.json").read_text())
    assert manifest["kind"] == "tiny"
    assert (resolved / manifest["dir"]).resolve() == embedded_base.resolve()
    assert manifest["parser_sha256"] == file_sha256(embedded_base / "parser" /
                                                    "model.safetensors")
    assert manifest["provenance_sha256"] == file_sha256(embedded_base / "provenance.json")
    assert json.loads((resolved / "text_encoder.json").read_text()) == {
        "name": "all-MiniLM-L6-v2", "max_tokens": 8}


def test_load_tiny_base(resolved, embedded_base):
    base = load_base(resolved)
    assert base.kind == "tiny" and base.guidance_embeds is False
    assert isinstance(base.text_encoder, MiniLMTextEncoder) and base.text_encoder.max_tokens == 8
    assert base.vae.dtype == base.transformer.dtype == torch.float32  # stored float16
    assert not base.vae.training and not any(p.requires_grad for p in base.vae.parameters())
    # the latent normalization was measured on the training faces, not left at (0, 1)
    assert base.vae.config.shift_factor != 0.0 and base.vae.config.scaling_factor != 1.0
    assert base.scheduler_config["use_dynamic_shifting"] is True
    # the parts fit together: text encoder -> transformer on VAE latents of a 64 px image
    seq, pooled = base.text_encoder.encode(["a woman", ""])
    z = latents.pack(latents.encode(base.vae, torch.rand(2, 3, 64, 64)))  # (2, 16, 64)
    out = base.transformer(hidden_states=z, encoder_hidden_states=seq, pooled_projections=pooled,
                           timestep=torch.tensor([0.5, 0.5]), img_ids=latents.image_ids(8, 8),
                           txt_ids=latents.text_ids(8)).sample
    assert out.shape == z.shape and torch.isfinite(out).all()
    parser = load_parser(embedded_base / "parser")
    assert parser.parse(torch.rand(1, 3, 64, 64)).shape == (1, 64, 64)
    assert load_vae(resolved).config == base.vae.config


def test_load_tiny_base_casts_and_skips_text(resolved):
    base = load_base(resolved, dtype=torch.bfloat16, load_text_encoder=False)
    assert base.text_encoder is None
    assert base.vae.dtype == base.transformer.dtype == torch.bfloat16


def test_base_refuses_a_changed_weight_file(embedded_base, tmp_path):
    copy = tmp_path / "embedded"
    shutil.copytree(embedded_base, copy)
    weights = copy / "transformer" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"diffusion_pytorch_model\.safetensors: SHA-256 .* "
                                         r"differs from .* recorded in .*provenance\.json"):
        stage.main(["--out", str(tmp_path / "base"), "--params", str(_params(tmp_path, copy))])
    assert not (tmp_path / "base").exists()
    weights.unlink()
    with pytest.raises(InputError, match="listed in provenance.json but missing"):
        stage.main(["--out", str(tmp_path / "base"), "--params", str(_params(tmp_path, copy))])


def test_base_refuses_data_it_was_trained_on(embedded_base, tmp_path):
    """With fewer train images than the base saw, test ids would be faces it was trained on."""
    params = _params(tmp_path, embedded_base, num_train=TINY_DATA["num_train"] - 1)
    with pytest.raises(InputError, match="trained on the first 8 images"):
        stage.main(["--out", str(tmp_path / "base"), "--params", str(params)])
    params = _params(tmp_path, embedded_base, resolution=128)
    with pytest.raises(InputError, match="re-train the base for this data"):
        stage.main(["--out", str(tmp_path / "base"), "--params", str(params)])


def test_base_refuses_a_text_length_the_base_was_not_trained_on(embedded_base, tmp_path):
    params = params_file(tmp_path / "params.yaml", {
        "data": TINY_DATA, "base": {"tiny_path": str(embedded_base), "text_max_tokens": 12}})
    with pytest.raises(InputError, match="text_max_tokens is 12, .* trained on 8 text tokens"):
        stage.main(["--out", str(tmp_path / "base"), "--params", str(params)])
    assert not (tmp_path / "base").exists()


def test_base_refuses_a_provenance_that_leaves_a_part_unchecked(embedded_base, tmp_path):
    copy = tmp_path / "embedded"
    shutil.copytree(embedded_base, copy)
    record = json.loads((copy / "provenance.json").read_text())
    record["files"] = {k: v for k, v in record["files"].items() if not k.startswith("parser/")}
    (copy / "provenance.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match=r"lists nothing under \['parser'\]"):
        stage.main(["--out", str(tmp_path / "base"), "--params", str(_params(tmp_path, copy))])


def test_pretraining_faces_follow_the_data_params(tmp_path):
    """The pretraining work folder renders its faces again when `data` changes."""
    small = DataConfig(**{**TINY_DATA, "source": "synthfaces", "num_train": 2, "num_test": 1})
    raw = faces_for(small, tmp_path)
    first = json.loads(split_path(raw).read_text())
    stamp = split_path(raw).stat().st_mtime_ns
    assert faces_for(small, tmp_path) == raw and split_path(raw).stat().st_mtime_ns == stamp
    larger = DataConfig(**{**TINY_DATA, "source": "synthfaces", "num_train": 3, "num_test": 1})
    second = json.loads(split_path(faces_for(larger, tmp_path)).read_text())
    assert second != first
    assert json.loads((tmp_path / "raw.json").read_text())["num_train"] == 3


def test_stage_declares_its_params():
    assert stage.PARAMS == ("data", "base")


def test_shipped_embedded_base_matches_its_provenance():
    """The repository's own embedded base: every file as recorded, trained on params.yaml's
    train split."""
    params = load_params(ROOT / "params.yaml")
    record = check_embedded(ROOT / params.base.tiny_path, params.data)
    assert record["resolution"] == params.data.resolution


# ---- kind: flux ------------------------------------------------------------------------------


def test_flux_manifest_copies_no_weights(flux_dir, tmp_path):
    cfg = BaseConfig(kind="flux", flux_path=str(flux_dir), text_max_tokens=8)
    build_base(cfg, None, tmp_path / "base")
    assert sorted(p.name for p in (tmp_path / "base").iterdir()) == ["base.json",
                                                                     "text_encoder.json"]
    manifest = json.loads((tmp_path / "base" / "base.json").read_text())
    assert manifest["kind"] == "flux" and manifest["dir"] == str(flux_dir.resolve())
    assert manifest["flux_path"] == str(flux_dir) and manifest["guidance_embeds"] is True


@pytest.mark.parametrize("dtype", [None, torch.float32])
def test_flux_loads(flux_dir, tmp_path, dtype):
    build_base(BaseConfig(kind="flux", flux_path=str(flux_dir), text_max_tokens=8), None,
               tmp_path / "base")
    base = load_base(tmp_path / "base", dtype=dtype)
    expected = dtype or torch.bfloat16  # base.dtype's default: FLUX.1-dev runs in bf16
    assert base.kind == "flux" and base.guidance_embeds is True
    assert base.vae.dtype == base.transformer.dtype == expected
    assert base.vae.config.shift_factor == pytest.approx(0.1159)
    assert isinstance(base.text_encoder, FluxTextEncoder)
    assert base.text_encoder.t5.dtype == base.text_encoder.clip.dtype == expected
    seq, pooled = base.text_encoder.encode(["a face"])
    assert seq.shape == (1, 8, 32) and pooled.shape == (1, 32)
    z = torch.randn(1, 4, 64, dtype=expected)
    out = base.transformer(hidden_states=z, encoder_hidden_states=seq.to(expected),
                           pooled_projections=pooled.to(expected),
                           timestep=torch.tensor([0.5], dtype=expected),
                           guidance=torch.tensor([3.5], dtype=expected),
                           img_ids=latents.image_ids(4, 4), txt_ids=latents.text_ids(8)).sample
    assert out.shape == z.shape and out.dtype == expected


def test_flux_folder_missing_a_part(flux_dir, tmp_path):
    broken = tmp_path / "flux"
    broken.mkdir()
    for part in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        (broken / part).symlink_to(flux_dir / part)
    with pytest.raises(ConfigError, match=r"base\.flux_path.*\['text_encoder_2', 'tokenizer_2'\]"):
        resolve_flux(str(broken))


def test_flux_offline_hub_id_is_a_clear_error(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = BaseConfig(kind="flux", flux_path="black-forest-labs/FLUX.1-dev")
    with pytest.raises(ConfigError, match=r"'base\.flux_path'.*set base\.flux_path to a local "
                                          r"directory"):
        build_base(cfg, None, tmp_path / "base")
    assert not (tmp_path / "base").exists()


def test_flux_missing_local_dir(tmp_path):
    with pytest.raises(ConfigError, match="neither an existing directory"):
        resolve_flux(str(tmp_path / "no-such-flux"))


def test_load_base_errors(tmp_path, flux_dir):
    with pytest.raises(InputError, match="base.json"):
        load_base(tmp_path)
    build_base(BaseConfig(kind="flux", flux_path=str(flux_dir)), None, tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "base.json").read_text())
    manifest["dir"] = str(tmp_path / "moved")
    (tmp_path / "b" / "base.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="re-run the base stage"):
        load_base(tmp_path / "b", load_text_encoder=False)


# ---- helpers ---------------------------------------------------------------------------------


def test_vae_norm_groups():
    assert vae_norm_groups((128, 256, 512, 512)) == 32  # FLUX's VAE
    assert vae_norm_groups((32, 64, 64, 64)) == 8
    assert vae_norm_groups((4, 8, 8, 8)) == 1


def test_flip_swaps_left_and_right():
    pairs = [("l_eye", "r_eye"), ("l_brow", "r_brow"), ("l_ear", "r_ear")]
    for left, right in pairs:
        assert FLIP_LABELS[LABEL_INDEX[left]] == LABEL_INDEX[right]
        assert FLIP_LABELS[LABEL_INDEX[right]] == LABEL_INDEX[left]
    assert torch.equal(FLIP_LABELS[FLIP_LABELS], torch.arange(NUM_LABELS))
    assert FLIP_LABELS[LABEL_INDEX["hair"]] == LABEL_INDEX["hair"]


def test_augment_keeps_labels_aligned():
    """A mirrored face carries mirrored, side-swapped labels; images stay in [0, 1]."""
    images = torch.zeros(64, 3, 8, 8)
    images[:, :, :, :4] = 1.0  # bright left half
    labels = torch.zeros(64, 8, 8, dtype=torch.long)
    labels[:, :, :4] = LABEL_INDEX["l_eye"]
    out_images, out_labels = augment(images, labels, torch.Generator().manual_seed(0))
    flipped = out_labels[:, 0, 7] == LABEL_INDEX["r_eye"]
    assert 0 < int(flipped.sum()) < 64  # some, not all, mirrored
    assert (out_labels[flipped][:, :, 4:] == LABEL_INDEX["r_eye"]).all()
    assert (out_labels[~flipped][:, :, :4] == LABEL_INDEX["l_eye"]).all()
    right, left = out_images[..., 4:].mean((1, 2, 3)), out_images[..., :4].mean((1, 2, 3))
    assert torch.equal(right > left, flipped)
    assert out_images.min() >= 0 and out_images.max() <= 1


def test_class_weights_favour_rare_classes():
    labels = torch.zeros(1, 10, 10, dtype=torch.uint8)
    labels[0, :1, :1] = 4  # 1 pixel of l_eye, 99 background
    weights = class_weights(labels)
    assert weights.shape == (NUM_LABELS,)
    assert weights[4] > weights[0]
    freq = torch.bincount(labels.flatten().long(), minlength=NUM_LABELS).float() / 100
    assert float((weights * freq).sum()) == pytest.approx(1.0)


def test_caption_table_draw_and_dropout():
    table = CaptionTable(seq=torch.arange(3.0)[:, None, None].expand(3, 2, 4),
                         pooled=torch.arange(3.0)[:, None].expand(3, 4),
                         owners=torch.tensor([[0, 1], [2, 0]]), counts=torch.tensor([2, 1]),
                         empty_seq=torch.full((1, 2, 4), -1.0),
                         empty_pooled=torch.full((1, 4), -1.0))
    g = torch.Generator().manual_seed(0)
    seq, pooled = table.draw(torch.tensor([0, 1] * 50), 0.0, g)
    assert seq.shape == (100, 2, 4) and pooled.shape == (100, 4)
    assert set(pooled[0::2, 0].tolist()) == {0.0, 1.0}  # image 0 owns captions 0 and 1
    assert set(pooled[1::2, 0].tolist()) == {2.0}  # image 1 owns only caption 2
    assert torch.equal(seq[:, 0, 0], pooled[:, 0])
    _, dropped = table.draw(torch.tensor([0, 1] * 500), 0.3, g)
    share = float((dropped[:, 0] == -1).float().mean())
    assert 0.2 < share < 0.4


def test_tiny_manifest_rejects_unknown_kind(tmp_path):
    (tmp_path / "base.json").write_text('{"kind": "sdxl", "dtype": "float32"}')
    with pytest.raises(InputError, match="kind"):
        base_mod.read_manifest(tmp_path)


def test_parser_miou_counts_present_classes():
    """A parser that always answers background: IoU 1 on an all-background map; on a map half
    background, half skin: background 0.5, skin 0, mean 0.25 (absent classes do not count)."""
    parser = FaceParser(width=4).eval()
    with torch.no_grad():
        parser.head.weight.zero_()
        parser.head.bias.zero_()
        parser.head.bias[0] = 10.0
    images = torch.rand(2, 3, 8, 8)
    labels = torch.zeros(2, 8, 8, dtype=torch.uint8)
    assert parser_miou(parser, images, labels) == pytest.approx(1.0)
    labels[:, :, 4:] = LABEL_INDEX["skin"]
    assert parser_miou(parser, images, labels) == pytest.approx(0.25)


def test_color_latent_loss_targets_cell_means():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    cells = torch.nn.functional.avg_pool2d(x, 8)  # (2, 3, 2, 2)
    mean = torch.cat([cells, torch.randn(2, 13, 2, 2)], dim=1)  # free channels 3..15
    assert float(color_latent_loss(mean, x)) == pytest.approx(0.0, abs=1e-12)
    assert float(color_latent_loss(mean + 0.1, x)) == pytest.approx(0.01, rel=1e-4)


def test_encode_texts_keeps_the_input_order():
    """Texts are batched by length; the rows come back in the caller's order."""

    class Echo:
        def encode(self, prompts):  # (B, 1, 1) and (B, 1): the prompt's length
            lengths = torch.tensor([[float(len(p))] for p in prompts])
            return lengths[:, None], lengths

    texts = ["ccc", "a", "bbbbb", "dd", ""]
    seq, pooled = encode_texts(Echo(), texts, batch_size=2)
    assert pooled[:, 0].tolist() == [3.0, 1.0, 5.0, 2.0, 0.0]
    assert seq[:, 0, 0].tolist() == [3.0, 1.0, 5.0, 2.0, 0.0]


def test_phase_store_ignores_a_checkpoint_of_another_run(tmp_path):
    from facemogle.pretrain.common import _optimizer
    from facemogle.pretrain.phase_store import PhaseStore

    def parts():
        model = torch.nn.Linear(3, 2)
        opt, schedule = _optimizer(model, 1e-2, 1, 10)
        return model, opt, schedule, torch.Generator().manual_seed(0)

    model, opt, schedule, generator = parts()
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    schedule.step()
    PhaseStore(tmp_path / "vae", 5, {"lr": 1}).save(1, model, opt, schedule, generator)
    same = parts()
    assert PhaseStore(tmp_path / "vae", 5, {"lr": 1}).restore(*same) == 1
    torch.testing.assert_close(same[0].weight, model.weight)
    assert same[2].get_last_lr() == schedule.get_last_lr()
    other = parts()
    before = other[0].weight.detach().clone()
    assert PhaseStore(tmp_path / "vae", 5, {"lr": 2}).restore(*other) == 0
    torch.testing.assert_close(other[0].weight.detach(), before)


def test_phase_key_ignores_checkpoint_frequency_and_shipped_dtype(tmp_path):
    import dataclasses

    from facemogle.pretrain.train_embedded import _stores

    params = load_params(ROOT / "params-pretrain.yaml")
    changed = dataclasses.replace(params, pretrain=dataclasses.replace(
        params.pretrain, checkpoint_every=7, weights_dtype="float32"))
    longer = dataclasses.replace(params, pretrain=dataclasses.replace(
        params.pretrain, vae=dataclasses.replace(params.pretrain.vae, steps=1)))
    key = _stores(params, tmp_path)["vae"].key
    assert _stores(changed, tmp_path)["vae"].key == key
    assert _stores(longer, tmp_path)["vae"].key != key


def test_pretrain_can_retrain_only_the_transformer(embedded_base, tmp_path):
    from stages import pretrain

    changed = {**TINY_PRETRAIN_PARAMS, "base": {"text_max_tokens": 12}}
    params = params_file(tmp_path / "p.yaml", changed, "params-pretrain.yaml")
    out = tmp_path / "retrained"
    assert pretrain.main(["--params", str(params), "--work", str(tmp_path / "work"), "--out",
                          str(out), "--reuse-vae-parser", str(embedded_base)]) == 0
    old = json.loads((embedded_base / "provenance.json").read_text())
    new = json.loads((out / "provenance.json").read_text())
    for name, sha in new["files"].items():  # the VAE and parser as stored, the transformer new
        part = name.split("/")[0]
        if part in ("vae", "parser"):
            assert sha == old["files"][name] == new["reused"]["files"][name], name
        elif name.endswith(".safetensors"):
            assert sha != old["files"][name]
    assert new["text_max_tokens"] == 12 and new["wall_time"]["vae_s"] == 0
    assert new["reused"]["from_provenance_sha256"] == file_sha256(embedded_base / "provenance.json")
    assert new["metrics"]["vae_psnr_faces"] == pytest.approx(old["metrics"]["vae_psnr_faces"])
    check_embedded(out, load_params(params).data)


def test_pretrain_refuses_to_reuse_a_vae_of_another_recipe(embedded_base, tmp_path):
    from stages import pretrain

    other = {**TINY_PRETRAIN_PARAMS, "pretrain": {
        **TINY_PRETRAIN_PARAMS["pretrain"],
        "parser": {**TINY_PRETRAIN_PARAMS["pretrain"]["parser"], "steps": 11}}}
    params = params_file(tmp_path / "p.yaml", other, "params-pretrain.yaml")
    with pytest.raises(InputError, match=r"\['parser'\] differ"):
        pretrain.main(["--params", str(params), "--work", str(tmp_path / "work"), "--out",
                       str(tmp_path / "out"), "--reuse-vae-parser", str(embedded_base)])
    assert not (tmp_path / "out").exists()
