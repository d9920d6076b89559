"""The full setting (params-flux.yaml) on CPU, with a tiny FLUX.1-dev stand-in on disk.

The stand-in is a FluxPipeline-style folder of the real classes at toy size, written by
`save_pretrained` (model_index.json, transformer/, vae/, text_encoder/ + tokenizer/,
text_encoder_2/ + tokenizer_2/, scheduler/); its tokenizers are built from small vocabulary
files written here, so nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import CLIPTokenizer, T5Tokenizer

from facemogle.base.build import build_base
from facemogle.base.loader import load_base, read_manifest
from facemogle.base.text import FluxTextEncoder
from facemogle.cache.store import LatentCache
from facemogle.core import labels, latents
from facemogle.core.config import Params, load_params
from facemogle.models.facemogle import FaceMoGLE
from facemogle.sampling.sampler import Conditions, decode_images, generate_latents
from facemogle.training.step import make_batch, make_optimizer, training_loss
from flux_standin import save_flux_standin

ROOT = Path(__file__).resolve().parents[1]
PARAMS_FLUX = ROOT / "params-flux.yaml"
DOC = ROOT / "docs" / "full-setting.md"
TEXT_DIM = 32
RESOLUTION = 64  # the stand-in runs at 64 px; everything else is params-flux.yaml's
LETTERS = "abcdefghijklmnopqrstuvwxyz"


# ----------------------------------------------------------------------------------------------
# The stand-in folder
# ----------------------------------------------------------------------------------------------


def _clip_tokenizer(vocab_dir: Path) -> CLIPTokenizer:
    """CLIP's BPE over single letters, from vocab.json and an empty merges.txt."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        vocab.update({c + suffix: len(vocab) + i for i, c in enumerate(LETTERS)})
    vocab_dir.mkdir()
    (vocab_dir / "vocab.json").write_text(json.dumps(vocab))
    (vocab_dir / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(vocab_dir, model_max_length=77)


def _t5_tokenizer(vocab_file: Path) -> T5Tokenizer:
    """T5's Unigram over letters and word-initial letters, from a (piece, score) JSON list."""
    pieces = [["<pad>", 0.0], ["</s>", 0.0], ["<unk>", 0.0], ["\u2581", -2.0]]
    pieces += [[c, -3.0] for c in LETTERS] + [["\u2581" + c, -3.5] for c in LETTERS]
    vocab_file.write_text(json.dumps(pieces))
    return T5Tokenizer(vocab=[tuple(p) for p in json.loads(vocab_file.read_text())], extra_ids=0)


def _write_standin(directory: Path, scratch: Path) -> Path:
    """The stand-in with tokenizers loaded from vocabulary files (the slow T5 tokenizer)."""
    tokenizers = _clip_tokenizer(scratch / "clip"), _t5_tokenizer(scratch / "t5.json")
    return save_flux_standin(directory, text_dim=TEXT_DIM, tokenizers=tokenizers)


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory) -> Path:
    return _write_standin(tmp_path_factory.mktemp("hub") / "FLUX.1-dev",
                          tmp_path_factory.mktemp("vocab"))


@pytest.fixture(scope="module")
def params(flux_dir) -> Params:
    """params-flux.yaml with base.flux_path pointing at the stand-in."""
    p = load_params(PARAMS_FLUX)
    return dataclasses.replace(p, base=dataclasses.replace(p.base, flux_path=str(flux_dir)))


@pytest.fixture(scope="module")
def base_dir(params, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stages") / "base"
    build_base(params.base, None, out)
    return out


@pytest.fixture(scope="module")
def base(base_dir):
    return load_base(base_dir)  # dtype from the manifest: params-flux.yaml's bfloat16


# ----------------------------------------------------------------------------------------------
# The params switch
# ----------------------------------------------------------------------------------------------


def _doc_overrides() -> list[str]:
    """The `-S key=value` list of docs/full-setting.md's switch command."""
    block = re.search(r"<!-- switch-overrides -->\s*```(?:bash|sh)?\n(.*?)```", DOC.read_text(),
                      re.S)
    assert block, f"{DOC} must hold the switch command after <!-- switch-overrides -->"
    return re.findall(r"-S\s+'?([^\s']+)'?", block.group(1))


def test_params_flux_is_the_paper_setting():
    p = load_params(PARAMS_FLUX)
    assert (p.data.source, p.data.resolution, p.data.num_train, p.data.num_test,
            p.data.captions_per_image, p.data.local_path) == ("mmcelebahq", 512, 27000, 3000, 10,
                                                              None)
    assert (p.base.kind, p.base.dtype, p.base.text_max_tokens) == ("flux", "bfloat16", 512)
    assert p.base.flux_path == "black-forest-labs/FLUX.1-dev" and p.masks.parser == "none"
    assert (p.zeroshot.source, p.zeroshot.parser, p.zeroshot.local_path) == (
        "ffhq_text", "segformer", None)
    t = p.train
    assert (t.steps, t.batch_size, t.optimizer, t.lr, t.weight_decay, t.grad_clip) == (
        4000, 4, "prodigy", 1.0, 0.01, 0.5)
    assert (t.mixed_precision, t.gradient_checkpointing, t.logit_normal_mean) == ("bf16", True, 0.0)
    assert t.batch_size * t.grad_accum * t.num_processes == 8  # the paper's global batch
    assert (p.sample.steps, p.sample.guidance, p.sample.batch_size, p.sample.cfg_scale) == (
        28, 3.5, 8, 1.0)
    assert (p.lora.rank, p.lora.alpha, p.lora.init) == (4, 4.0, "gaussian")
    assert (p.model.expert_hidden, p.gating, p.experts) == (32, "matrix", "global_local")


def test_doc_overrides_on_params_yaml_give_params_flux(tmp_path):
    """`dvc exp run -S ...` edits params.yaml with Hydra overrides (dvc.utils.hydra, what `-S`
    calls); the documented list must turn params.yaml into params-flux.yaml exactly, apart from
    the data location the user fills in."""
    from dvc.utils.hydra import apply_overrides

    overrides = _doc_overrides()
    locations = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in overrides
                 if o.startswith(("data.local_path=", "zeroshot.local_path="))}
    assert len(locations) == 2, "the switch must set data.local_path and zeroshot.local_path"
    edited = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", edited)
    apply_overrides(edited, overrides)
    switched = load_params(edited)
    assert (switched.data.local_path, switched.zeroshot.local_path) == (
        locations["data.local_path"], locations["zeroshot.local_path"])
    unlocated = dataclasses.replace(
        switched, data=dataclasses.replace(switched.data, local_path=None),
        zeroshot=dataclasses.replace(switched.zeroshot, local_path=None))
    assert unlocated == load_params(PARAMS_FLUX), (
        "params.yaml + the -S list of docs/full-setting.md differs from params-flux.yaml: a key "
        "changed in one file and not in the other (or in the doc)")


def test_params_flux_lists_every_key_of_params_yaml():
    def keys(tree: dict, prefix: str = "") -> set[str]:
        return {k for name, v in tree.items() for k in (
            keys(v, f"{prefix}{name}.") if isinstance(v, dict) else {prefix + name})}

    assert keys(yaml.safe_load((ROOT / "params.yaml").read_text())) <= keys(
        yaml.safe_load(PARAMS_FLUX.read_text()))


# ----------------------------------------------------------------------------------------------
# Loading the FLUX folder in bf16
# ----------------------------------------------------------------------------------------------


def test_build_base_writes_the_manifest_and_copies_no_weights(base_dir, flux_dir):
    manifest = read_manifest(base_dir)
    assert manifest["kind"] == "flux" and manifest["dtype"] == "bfloat16"
    assert manifest["dir"] == str(flux_dir.resolve()) and manifest["guidance_embeds"] is True
    assert not list(base_dir.rglob("*.safetensors"))
    assert json.loads((base_dir / "text_encoder.json").read_text())["max_tokens"] == 512


def test_load_base_gives_bf16_parts(base):
    assert base.kind == "flux" and base.guidance_embeds
    assert base.transformer.dtype == torch.bfloat16 and base.vae.dtype == torch.bfloat16
    enc = base.text_encoder
    assert isinstance(enc, FluxTextEncoder)
    assert enc.clip.dtype == torch.bfloat16 and enc.t5.dtype == torch.bfloat16
    seq, pooled = enc.encode(["a smiling woman", ""])
    assert seq.shape == (2, 512, TEXT_DIM) and pooled.shape == (2, TEXT_DIM)
    assert seq.dtype == torch.float32 and seq.isfinite().all()
    assert not any(p.requires_grad for p in base.transformer.parameters())


# ----------------------------------------------------------------------------------------------
# Training step and sampling on the bf16 base
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def _cache(base, n: int = 2) -> LatentCache:
    """A `LatentCache` (float32, as the train stage loads it) encoded by the stand-in."""
    g = np.random.default_rng(0)
    maps = g.integers(0, labels.NUM_LABELS, (n, RESOLUTION, RESOLUTION))
    slots = labels.decouple(maps).flatten(0, 1)  # (n * 20, 3, H, W)
    faces = torch.from_numpy(g.random((n, 3, RESOLUTION, RESOLUTION), dtype=np.float32))
    encode = lambda x: latents.pack(latents.encode(base.vae, x)).float()  # noqa: E731
    seq, pooled = base.text_encoder.encode(["a smiling woman", "a man with glasses"])
    empty_seq, empty_pooled = base.text_encoder.encode([""])
    return LatentCache(ids=[str(i) for i in range(n)], image=encode(faces),
                       slot_latents=encode(slots),
                       slot_index=torch.arange(n * labels.NUM_SLOTS).reshape(n, -1),
                       text_seq=seq, text_pooled=pooled, caption_offsets=torch.arange(n + 1),
                       empty_slot=encode(torch.zeros(1, 3, RESOLUTION, RESOLUTION))[0],
                       empty_text_seq=empty_seq[0], empty_text_pooled=empty_pooled[0],
                       latent_size=RESOLUTION // 8)


@pytest.fixture(scope="module")
def model_and_cache(base, params):
    model = FaceMoGLE.build(base.transformer, params.model, params.lora, experts=params.experts,
                            gating=params.gating)
    return model, _cache(base)


def test_training_step_bf16_autocast_keeps_fp32_trainables(model_and_cache, params):
    model, cache = model_and_cache
    trainable = model.trainable_parameters()
    for p in trainable:
        p.data = p.data.float()  # as facemogle.training.loop.train does
    frozen_before = model.transformer.x_embedder.base_layer.weight.clone()
    before = [p.detach().clone() for p in trainable]
    optimizer = make_optimizer(trainable, params.train)
    g = torch.Generator().manual_seed(0)
    batch = make_batch(cache, torch.tensor([0, 1]), params.train, g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = training_loss(model, batch, latent_size=cache.latent_size,
                             guidance=params.train.guidance,
                             checkpointing=params.train.gradient_checkpointing)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable)
    torch.nn.utils.clip_grad_norm_(trainable, params.train.grad_clip)
    optimizer.step()
    assert all(p.dtype == torch.float32 for p in trainable)
    assert any(not torch.equal(a, p) for a, p in zip(before, trainable))
    assert torch.equal(model.transformer.x_embedder.base_layer.weight, frozen_before)
    assert model.transformer.x_embedder.base_layer.weight.dtype == torch.bfloat16


def test_sampling_two_steps_on_the_bf16_base(model_and_cache, base):
    model, cache = model_and_cache
    rows = torch.tensor([0, 1])
    cond = Conditions(cache.text_seq[rows], cache.text_pooled[rows], cache.slots(rows),
                      cache.empty_text_seq, cache.empty_text_pooled)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        packed = generate_latents(model.eval(), cond, [1, 2], latent_size=cache.latent_size,
                                  steps=2, guidance=3.5, scheduler_config=base.scheduler_config)
        images = decode_images(base.vae, packed, cache.latent_size)
    assert images.shape == (2, 3, RESOLUTION, RESOLUTION) and images.dtype == torch.float32
    assert images.isfinite().all() and 0 <= images.min() and images.max() <= 1
    assert not torch.equal(images[0], images[1])
