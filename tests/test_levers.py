"""The lever study of the embedded base: token layouts, the small-region loss weights, and the
transformer phase with per-token weights and 16 x 16 tokens."""

from __future__ import annotations

import torch

from facemogle.base.standin import tiny_vae
from facemogle.core.config import TinyTransformerConfig
from facemogle.core.labels import LABEL_INDEX
from facemogle.evaluation.base_levers import (
    from_tokens,
    sample_plain_base,
    small_region_share,
    token_layout,
)
from facemogle.pretrain.transformer import CaptionTable, train_transformer

CFG = TinyTransformerConfig(num_layers=1, num_single_layers=1, attention_head_dim=8,
                            num_attention_heads=2, axes_dims_rope=(2, 2, 4), steps=2,
                            batch_size=2, warmup_steps=0)


def _table(n: int) -> CaptionTable:
    g = torch.Generator().manual_seed(1)
    return CaptionTable(seq=torch.randn(n, 3, 8, generator=g),
                        pooled=torch.randn(n, 8, generator=g),
                        owners=torch.arange(n)[:, None], counts=torch.ones(n, dtype=torch.long),
                        empty_seq=torch.zeros(1, 3, 8), empty_pooled=torch.zeros(1, 8))


def test_token_layouts_round_trip_with_distinct_positions():
    z = torch.randn(2, 16, 4, 6)
    for patch1, shape in ((True, (2, 24, 16)), (False, (2, 6, 64))):
        tokens, ids = token_layout(z, patch1)
        assert tokens.shape == shape and ids.shape == (shape[1], 3)
        assert len({tuple(r) for r in ids.tolist()}) == shape[1]  # one position per token
        assert torch.equal(from_tokens(tokens, 4, 6, patch1), z)
    tokens, ids = token_layout(z, True)
    # token k of the 16 x 16 layout is latent pixel (row, col) = ids[k, 1:]
    row, col = ids[7, 1:].long().tolist()
    assert torch.equal(tokens[:, 7], z[:, :, row, col])


def test_small_region_share_counts_small_classes_per_token():
    maps = torch.full((1, 32, 32), LABEL_INDEX["skin"], dtype=torch.uint8)
    maps[0, :16, :16] = LABEL_INDEX["l_eye"]  # the whole top-left token
    maps[0, 16:24, 16:] = LABEL_INDEX["hair"]  # not small
    maps[0, 24:, 16:] = LABEL_INDEX["nose"]  # half of the bottom-right token
    share = small_region_share(maps, 2)
    assert torch.allclose(share, torch.tensor([[1.0, 0.0, 0.0, 0.5]]))


def _trained(tokens, ids, weights=None):
    return train_transformer(CFG, tokens, ids, _table(len(tokens)),
                             generator=torch.Generator().manual_seed(0), token_weights=weights)


def test_uniform_token_weights_train_like_the_plain_loss():
    tokens, ids = token_layout(torch.randn(4, 16, 4, 4), False)
    torch.manual_seed(0)
    plain = _trained(tokens, ids)
    torch.manual_seed(0)
    uniform = _trained(tokens, ids, torch.full(tokens.shape[:2], 3.0))
    torch.manual_seed(0)
    skewed = _trained(tokens, ids, torch.tensor([[10.0, 1.0, 1.0, 1.0]]).expand(4, 4))
    pairs = list(zip(plain.parameters(), uniform.parameters(), skewed.parameters()))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b, _ in pairs)
    assert not all(torch.allclose(a, c, atol=1e-6) for a, _, c in pairs)


class _Encoder:
    def encode(self, prompts):
        return torch.ones(len(prompts), 3, 8) * len(prompts[0]), torch.ones(len(prompts), 8)


def test_sixteen_by_sixteen_tokens_train_and_sample():
    vae = tiny_vae(latent_channels=16).eval()
    tokens, ids = token_layout(torch.randn(3, 16, 4, 4), True)
    model = _trained(tokens, ids)
    assert model.config.in_channels == 16 and tokens.shape[1] == 16
    images = sample_plain_base(model, vae, _Encoder(), ["a face", ""], ["a", "b"], 32, True)
    assert images.shape == (2, 3, 32, 32)
    assert float(images.min()) >= 0 and float(images.max()) <= 1
