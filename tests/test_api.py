"""`FaceMoGLEPipeline` on a tiny checkpoint trained through the real stages (tests/conftest.py)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from facemogle.app.gate_maps import GatingTrace, gating_grid
from facemogle.app.pipeline import FaceMoGLEPipeline, mask_to_label_map
from facemogle.base.build import build_base
from facemogle.base.loader import load_base
from facemogle.cache.store import INDEX
from facemogle.core import flow, labels
from facemogle.core.config import BaseConfig, Params, load_params
from facemogle.core.io import InputError, read_jsonl, write_json
from facemogle.core.labels import MaskColorError
from facemogle.data.layout import captions_path, mask_path
from facemogle.models.facemogle import FaceMoGLE
from facemogle.sampling.samples_folder import ids_path
from facemogle.training.checkpoint import save_model
from flux_standin import save_flux_standin
from stages import sample
from stages.train import resolved_config

STEPS = 3


@pytest.fixture(scope="module")
def pipe(trained_run):
    pipe = FaceMoGLEPipeline.from_pretrained(trained_run.model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sampled(trained_run, tmp_path_factory):
    """The `sample` stage's output for the run (its test ids in the three modes)."""
    out = tmp_path_factory.mktemp("sampled")
    r = trained_run
    assert sample.main(["--latents", str(r.latents), "--labels", str(r.labels), "--data",
                        str(r.raw), "--base", str(r.base), "--model", str(r.model), "--out",
                        str(out / "samples"), "--sheets", str(out / "sheets"), "--params",
                        str(r.params)]) == 0
    return out / "samples"


def first_captions(run) -> dict[str, str]:
    return {row["id"]: row["captions"][0] for row in read_jsonl(captions_path(run.raw))}


def mask_file(run, image_id: str):
    return mask_path(run.labels, image_id)


def test_pipeline_equals_the_sample_stage_for_each_id_seed_and_mode(pipe, trained_run, sampled):
    params = load_params(trained_run.params)
    captions = first_captions(trained_run)
    ids = json.loads(ids_path(sampled).read_text())
    assert len(ids) == 2
    for mode in [m for m in params.sample.modes if m != "base"]:  # base: a stage reference row
        for image_id in ids:
            out = pipe(prompt=None if mode == "mask2face" else captions[image_id],
                       mask=None if mode == "text2face" else mask_file(trained_run, image_id),
                       seed=flow.seed_for(image_id, params.seed),
                       num_inference_steps=params.sample.steps,
                       guidance_scale=params.sample.guidance,
                       true_cfg_scale=params.sample.cfg_scale)
            expected = np.asarray(Image.open(sampled / mode / f"{image_id}.png"))
            np.testing.assert_array_equal(np.asarray(out.images[0]), expected,
                                          err_msg=f"{mode} {image_id}")


def test_batch_of_two_equals_two_single_calls(pipe, trained_run):
    captions = first_captions(trained_run)
    ids = ["000008", "000009"]
    prompts = [captions[i] for i in ids]
    masks = [mask_file(trained_run, ids[0]), None]  # a multimodal and a text2face sample
    batch = pipe(prompt=prompts, mask=masks, seed=[11, 12], num_inference_steps=STEPS,
                 output_type="pt").images
    singles = [pipe(prompt=p, mask=m, seed=s, num_inference_steps=STEPS, output_type="pt"
                    ).images[0] for p, m, s in zip(prompts, masks, [11, 12])]
    assert batch.shape == (2, 3, 64, 64)
    # Not bitwise: on CPU a matrix product's rounding depends on how many rows it has.
    torch.testing.assert_close(batch, torch.stack(singles), rtol=0, atol=1e-5)
    assert (batch[0] - batch[1]).abs().max() > 0.05


def test_seed_generator_and_batch_broadcasting(pipe, trained_run):
    mask = mask_file(trained_run, "000010")
    by_seed = pipe(prompt="a face", mask=mask, seed=7, num_inference_steps=2,
                   output_type="pt").images
    by_generator = pipe(prompt="a face", mask=mask, generator=torch.Generator().manual_seed(7),
                        num_inference_steps=2, output_type="pt").images
    assert torch.equal(by_seed, by_generator)
    # One prompt and mask, two seeds: a batch of two different images, the first as above.
    two = pipe(prompt="a face", mask=mask, seed=[7, 8], num_inference_steps=2,
               output_type="pt").images
    assert two.shape[0] == 2
    torch.testing.assert_close(two[0], by_seed[0], rtol=0, atol=1e-5)
    assert not torch.allclose(two[0], two[1])
    with pytest.raises(ValueError, match="one length"):
        pipe(prompt=["a", "b", "c"], mask=[mask, mask], seed=0)
    with pytest.raises(ValueError, match="either seed or generator"):
        pipe(prompt="a", seed=1, generator=torch.Generator())


def test_the_four_input_combinations_give_different_faces(pipe, trained_run):
    mask = mask_file(trained_run, "000008")
    inputs = (("a face", mask), (None, mask), ("a face", None), (None, None))
    images = [pipe(prompt=p, mask=m, seed=3, num_inference_steps=2, output_type="np").images[0]
              for p, m in inputs]
    again = pipe(prompt="a face", mask=mask, seed=3, num_inference_steps=2, output_type="np")
    np.testing.assert_array_equal(again.images[0], images[0])  # deterministic per seed
    for a in range(4):
        assert images[a].shape == (64, 64, 3) and 0.0 <= images[a].min() <= images[a].max() <= 1
        for b in range(a):
            # The toy checkpoint trained 6 steps: the mask moves pixels by about 1e-3.
            assert np.abs(images[a] - images[b]).max() > 1e-4, (a, b)


def test_masks_are_accepted_as_label_maps_or_palette_colours(pipe, trained_run, tmp_path):
    label_map = labels.load_label_map(mask_file(trained_run, "000009"))
    color = labels.label_map_to_color(label_map)
    rgb_png = tmp_path / "color.png"
    Image.fromarray(color).save(rgb_png)
    forms = [mask_file(trained_run, "000009"), rgb_png, label_map, label_map.astype(np.int64),
             torch.tensor(label_map), color, Image.fromarray(color),
             labels.label_map_image(label_map)]
    for form in forms:
        np.testing.assert_array_equal(mask_to_label_map(form, size=(64, 64)), label_map)
    a = pipe(mask=label_map, seed=1, num_inference_steps=2, output_type="pt").images
    b = pipe(mask=rgb_png, seed=1, num_inference_steps=2, output_type="pt").images
    assert torch.equal(a, b)


def test_bad_masks_are_refused_naming_the_problem(pipe, trained_run):
    label_map = labels.load_label_map(mask_file(trained_run, "000009"))
    color = labels.label_map_to_color(label_map)
    color[0, :3] = (5, 200, 8)
    with pytest.raises(MaskColorError, match=r"\(5, 200, 8\) \(3 px\)"):
        pipe(mask=color, seed=0, num_inference_steps=1)
    # Within a tolerance the colour snaps to the palette's (0, 204, 0) "cloth".
    snapped = mask_to_label_map(color, size=(64, 64), tolerance=10)
    assert (snapped[0, :3] == labels.LABEL_INDEX["cloth"]).all()
    small = labels.resize_label_map(label_map, 32)
    with pytest.raises(InputError, match="32x32 px, the model generates 64x64"):
        pipe(mask=small, seed=0, num_inference_steps=1)
    resized = mask_to_label_map(small, size=(64, 64), resize=True)
    np.testing.assert_array_equal(resized, labels.resize_label_map(small, 64))
    with pytest.raises(InputError, match="label indices must be in 0..18"):
        pipe(mask=np.full((64, 64), 19), seed=0, num_inference_steps=1)
    with pytest.raises(ValueError, match="multiples of 16"):
        pipe(prompt="a", height=72, width=72, seed=0, num_inference_steps=1)


def test_gating_weights_are_recorded_per_step_and_drawn(pipe, trained_run):
    out = pipe(prompt="a face", mask=mask_file(trained_run, "000008"), seed=2,
               num_inference_steps=4, return_gating=True)
    trace = out.gating
    assert isinstance(trace, GatingTrace)
    assert trace.weights.shape == (4, 1, 16, 20)  # steps, batch, 4x4 tokens, 20 experts
    # Matrix gating: a softmax over experts per token, and the time changes the weights.
    torch.testing.assert_close(trace.weights.sum(-1), torch.ones(4, 1, 16))
    assert trace.sigmas[0] == 1.0 and bool((trace.sigmas.diff() < 0).all())
    assert (trace.weights[0] - trace.weights[-1]).abs().max() > 0
    assert trace.names[:3] == ["global", "background", "skin"]
    grid = gating_grid(trace, experts=["global", "l_eye"], steps=[0, 3], cell=32)
    assert grid.size == (84 + 2 * 34, 30 + 2 * 34)
    assert gating_grid(trace).size == (84 + 4 * 66, 30 + 6 * 66)  # 6 experts, all 4 steps
    with pytest.raises(ValueError, match="unknown experts"):
        gating_grid(trace, experts=["nose_ring"])
    # text2face runs through MoGLE too (the empty mask), so it has gate weights of its own.
    text_only = pipe(prompt="a face", seed=2, num_inference_steps=1, return_gating=True).gating
    assert text_only.weights.shape == (1, 1, 16, 20)


def test_save_pretrained_round_trips_into_a_self_contained_folder(pipe, trained_run, tmp_path):
    saved = tmp_path / "saved"
    pipe.save_pretrained(saved)
    assert {p.name for p in saved.iterdir()} == {"lora.safetensors", "mogle.safetensors",
                                                 "config.json", "manifest.json", "base"}
    for name in ("lora.safetensors", "mogle.safetensors"):
        original, copy = load_file(str(trained_run.model / name)), load_file(str(saved / name))
        assert original.keys() == copy.keys()
        assert all(torch.equal(original[k], copy[k]) for k in original)
    # Moved away from the run, the folder still loads: the base comes from its base/ copy.
    moved = shutil.move(str(saved), str(tmp_path / "elsewhere" / "face-mogle"))
    again = FaceMoGLEPipeline.from_pretrained(moved)
    assert again.base_dir is not None and again.base_dir.parent == tmp_path / "elsewhere" / \
        "face-mogle"
    kwargs = dict(prompt="a face", mask=mask_file(trained_run, "000011"), seed=4,
                  num_inference_steps=2, output_type="pt")
    assert torch.equal(pipe(**kwargs).images, again(**kwargs).images)


def test_from_pretrained_errors_name_the_folder(trained_run, tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        FaceMoGLEPipeline.from_pretrained(tmp_path / "missing")
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(trained_run.model / "config.json", partial / "config.json")
    with pytest.raises(InputError, match=r"missing \['lora.safetensors', 'mogle.safetensors'\]"):
        FaceMoGLEPipeline.from_pretrained(partial)
    # A checkpoint copied away from its run without a base: the base must be named.
    lonely = tmp_path / "lonely" / "model"
    shutil.copytree(trained_run.model, lonely)
    with pytest.raises(InputError, match="no base folder found"):
        FaceMoGLEPipeline.from_pretrained(lonely)
    other = tmp_path / "other-base"
    shutil.copytree(trained_run.base, other)
    manifest = json.loads((other / "base.json").read_text())
    write_json(other / "base.json", {**manifest, "provenance_sha256": "0" * 64})
    with pytest.raises(InputError, match="not the base this model was trained on"):
        FaceMoGLEPipeline.from_pretrained(lonely, base_dir=other)


def test_to_moves_every_component_to_a_dtype(trained_run):
    pipe = FaceMoGLEPipeline.from_pretrained(trained_run.model)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="a face", mask=mask_file(trained_run, "000009"), seed=5,
                  num_inference_steps=2, output_type="pt")
    reference = pipe(**kwargs).images
    assert pipe.to(torch.float64) is pipe
    modules = [pipe.model, pipe.vae, pipe.text_encoder.model]
    assert all(p.dtype == torch.float64 for m in modules for p in m.parameters())
    assert pipe.dtype == torch.float64 and pipe.device == torch.device("cpu")
    wide = pipe.to("cpu", dtype=torch.float64)(**kwargs).images
    torch.testing.assert_close(wide, reference, rtol=0, atol=1e-3)


def test_flux_checkpoint_uses_its_recorded_folder_and_saves_only_a_manifest(tmp_path):
    """The full-setting code path on a tiny FLUX.1-dev stand-in (guidance embedding, CLIP + T5):
    a checkpoint with no base folder finds FLUX through its config's base_manifest."""
    flux = save_flux_standin(tmp_path / "FLUX.1-dev")
    cfg = BaseConfig(kind="flux", flux_path=str(flux), dtype="float32", text_max_tokens=8)
    build_base(cfg, None, tmp_path / "base")
    base = load_base(tmp_path / "base", load_text_encoder=False)
    params = Params(base=cfg)
    model = FaceMoGLE.build(base.transformer, params.model, params.lora, experts=params.experts,
                            gating=params.gating)
    (tmp_path / "latents").mkdir()
    (tmp_path / "latents" / INDEX).write_text('{"fingerprint": "0123"}')
    save_model(tmp_path / "run" / "model", model,
               resolved_config(params, tmp_path / "base", tmp_path / "latents"))

    pipe = FaceMoGLEPipeline.from_pretrained(tmp_path / "run" / "model")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.kind == "flux" and pipe.base_dir is None and pipe.resolution == 512
    label_map = np.zeros((64, 64), dtype=np.uint8)
    label_map[16:48, 16:48] = labels.LABEL_INDEX["skin"]
    kwargs = dict(prompt="a face", mask=label_map, seed=0, num_inference_steps=2, height=64,
                  width=64, output_type="pt")
    images = pipe(**kwargs).images
    assert images.shape == (1, 3, 64, 64)
    # The guidance embedding is used: another guidance value gives another image.
    assert not torch.equal(images, pipe(**{**kwargs, "guidance_scale": 1.0}).images)

    pipe.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved" / "base").iterdir()) == [
        "base.json", "text_encoder.json"]
    again = FaceMoGLEPipeline.from_pretrained(tmp_path / "saved")
    again.set_progress_bar_config(disable=True)
    assert torch.equal(images, again(**kwargs).images)


def test_bf16_pipeline_follows_the_sample_stages_precision_policy(tmp_path):
    """On a bf16 base (FLUX.1-dev's dtype; a tiny stand-in on CPU) the pipeline keeps LoRA and
    MoGLE float32 and samples as the `sample` stage does: `sample_rows` on a cache holding the
    pipeline's own encodings gives the pipeline's image, for a masked and a text-only face."""
    from types import SimpleNamespace

    from facemogle.cache.store import LatentCache
    from facemogle.sampling.sampler import sample_rows

    flux = save_flux_standin(tmp_path / "FLUX.1-dev")
    cfg = BaseConfig(kind="flux", flux_path=str(flux), dtype="bfloat16", text_max_tokens=8)
    build_base(cfg, None, tmp_path / "base")
    base = load_base(tmp_path / "base", load_text_encoder=False)
    params = Params(base=cfg)
    model = FaceMoGLE.from_params(base.transformer, params)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p.float()).to(p.dtype))  # non-trivial weights
    (tmp_path / "latents").mkdir()
    (tmp_path / "latents" / INDEX).write_text('{"fingerprint": "0123"}')
    save_model(tmp_path / "model", model, resolved_config(params, tmp_path / "base",
                                                          tmp_path / "latents"))
    pipe = FaceMoGLEPipeline.from_pretrained(tmp_path / "model")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.dtype == torch.bfloat16 and pipe.condition_dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in pipe.model.trainable_parameters())

    label_map = np.zeros((64, 64), dtype=np.uint8)
    label_map[16:48, 16:48] = labels.LABEL_INDEX["skin"]
    seq, pooled = pipe.encode_prompt("a face")
    empty_seq, empty_pooled = pipe.empty_prompt()
    cache = LatentCache(
        ids=["x"], image=torch.zeros(1, 16, 64), slot_latents=pipe.encode_mask(label_map),
        slot_index=torch.arange(20)[None], text_seq=seq[None], text_pooled=pooled[None],
        caption_offsets=torch.tensor([0, 1]), empty_slot=pipe._empty_slot((64, 64)),
        empty_text_seq=empty_seq, empty_text_pooled=empty_pooled, latent_size=8)
    stage_base = SimpleNamespace(transformer=pipe.model.transformer, vae=pipe.vae,
                                 scheduler_config=pipe.scheduler_config)
    sample_cfg = SimpleNamespace(steps=2, guidance=3.5, cfg_scale=1.0, cache_threshold=0.0)
    for mode, mask in (("multimodal", label_map), ("text2face", None)):
        stage = sample_rows(pipe.model, stage_base, cache, torch.tensor([0]), mode, sample_cfg,
                            seed=0)
        api = pipe(prompt="a face", mask=mask, seed=flow.seed_for("x", 0), height=64, width=64,
                   num_inference_steps=2, guidance_scale=3.5, output_type="pt").images
        torch.testing.assert_close(api, stage, rtol=0, atol=0)


def test_bf16_pipeline_encodes_masks_and_prompts_as_the_cache_stage(tmp_path):
    """On a bf16 base the pipeline's mask and prompt encodings are the `cache_latents` stage's
    (built one image and caption per call) bit for bit: both encode through
    `facemogle.cache.build`, which casts images to the VAE's dtype before it encodes them."""
    from facemogle.bench.cache_memory import CacheScale, write_standin_data
    from facemogle.cache.build import build_cache
    from facemogle.cache.store import load_cache

    flux = save_flux_standin(tmp_path / "FLUX.1-dev")
    cfg = BaseConfig(kind="flux", flux_path=str(flux), dtype="bfloat16", text_max_tokens=8)
    build_base(cfg, None, tmp_path / "base")
    base = load_base(tmp_path / "base")
    scale = CacheScale(images=2, captions=1, text_tokens=8, text_dim=32, pooled_dim=16,
                       resolution=64, batch_size=1)
    data_dir, labels_dir = write_standin_data(tmp_path, scale)
    build_cache(base, data_dir, labels_dir, tmp_path / "latents", resolution=64, batch_size=1,
                text_batch_size=1)
    cache = load_cache(tmp_path / "latents")
    model = FaceMoGLE.from_params(base.transformer, Params(base=cfg))
    pipe = FaceMoGLEPipeline(model, base, config={}, base_dir=None, resolution=64)
    captions = {row["id"]: row["captions"][0] for row in read_jsonl(captions_path(data_dir))}
    for n, image_id in enumerate(cache.ids):
        rows = torch.tensor([n])
        label_map = labels.load_label_map(mask_path(labels_dir, image_id))
        assert torch.equal(pipe.encode_mask(label_map), cache.slots(rows)[0])
        seq, pooled = cache.text(rows, torch.zeros(1, dtype=torch.long))
        api_seq, api_pooled = pipe.encode_prompt(captions[image_id])
        assert torch.equal(api_seq, seq[0]) and torch.equal(api_pooled, pooled[0])
