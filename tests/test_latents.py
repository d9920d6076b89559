"""FLUX latent conventions, checked against diffusers' FluxPipeline and a tiny AutoencoderKL."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL, FluxPipeline

from facemogle.base.standin import tiny_vae
from facemogle.core.latents import (
    decode,
    encode,
    encode_batched,
    from_vae_range,
    image_ids,
    pack,
    text_ids,
    to_vae_range,
    unpack,
)

SHIFT, SCALE = 0.1159, 0.3611  # FLUX.1-dev AE


@pytest.fixture(scope="module")
def vae() -> AutoencoderKL:
    """16 latent channels, 4 blocks -> x8 down, as the FLUX AE; tiny widths."""
    torch.manual_seed(0)
    return tiny_vae(norm_num_groups=4, block_out_channels=(8, 8, 16, 16), use_quant_conv=True,
                    use_post_quant_conv=True, shift_factor=SHIFT, scaling_factor=SCALE).eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(3, 3, 32, 48, generator=torch.Generator().manual_seed(0))  # (B, 3, H, W)


def test_pack_matches_diffusers():
    latents = torch.randn(2, 16, 6, 10)
    tokens = pack(latents)
    assert tokens.shape == (2, 15, 64)
    torch.testing.assert_close(tokens, FluxPipeline._pack_latents(latents, 2, 16, 6, 10),
                               rtol=0, atol=0)
    # a token holds one 2x2 patch: token 0 = latents[:, c, 0:2, 0:2] flattened per channel
    torch.testing.assert_close(tokens[:, 0].view(2, 16, 4), latents[:, :, :2, :2].flatten(2))


def test_unpack_inverts_pack_and_matches_diffusers():
    latents = torch.randn(2, 16, 6, 10)
    tokens = pack(latents)
    assert torch.equal(unpack(tokens, 6, 10), latents)
    # diffusers takes pixel sizes and the VAE scale factor (8): 6 x 10 latents = 48 x 80 px
    assert torch.equal(unpack(tokens, 6, 10), FluxPipeline._unpack_latents(tokens, 48, 80, 8))


def test_pack_unpack_reject_bad_shapes():
    with pytest.raises(ValueError, match="even"):
        pack(torch.zeros(1, 16, 5, 4))
    with pytest.raises(ValueError, match="6 x 10"):
        unpack(torch.zeros(1, 14, 64), 6, 10)


def test_ids_match_diffusers():
    ids = image_ids(6, 10)
    assert ids.shape == (15, 3) and ids.dtype == torch.float32
    assert torch.equal(ids, FluxPipeline._prepare_latent_image_ids(1, 3, 5, "cpu", torch.float32))
    assert ids[7].tolist() == [0.0, 1.0, 2.0]  # token 7 = packed row 1, column 2
    assert torch.equal(text_ids(5), torch.zeros(5, 3))
    assert image_ids(4, 4, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_vae_range_round_trip(images):
    x = to_vae_range(images)
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.9 and x.max() > 0.9
    torch.testing.assert_close(from_vae_range(x), images)


@torch.no_grad()
def test_encode_is_deterministic_and_normalised(vae, images):
    z = encode(vae, images)
    assert z.shape == (3, 16, 4, 6)
    assert torch.equal(z, encode(vae, images))
    raw = vae.encode(to_vae_range(images)).latent_dist.mean
    torch.testing.assert_close(z, (raw - SHIFT) * SCALE)
    tokens = pack(z)
    assert tokens.shape == (3, 6, 64)


@torch.no_grad()
def test_encode_sample_is_seeded(vae, images):
    a = encode(vae, images, sample=True, generator=torch.Generator().manual_seed(3))
    b = encode(vae, images, sample=True, generator=torch.Generator().manual_seed(3))
    c = encode(vae, images, sample=True, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, encode(vae, images))


@torch.no_grad()
def test_encode_batched_equals_one_batch(vae, images):
    torch.testing.assert_close(encode_batched(vae, images, 2), encode(vae, images),
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        encode_batched(vae, images, 0)


@torch.no_grad()
def test_decode_inverts_normalisation_and_clamps(vae, images):
    z = encode(vae, images)
    out = decode(vae, z)
    assert out.shape == images.shape
    assert out.min() >= 0 and out.max() <= 1
    raw = vae.decode(z / SCALE + SHIFT).sample
    torch.testing.assert_close(out, ((raw + 1) / 2).clamp(0, 1))
    wild = torch.randn(z.shape, generator=torch.Generator().manual_seed(0)) * 100  # (B, 16, h, w)
    unclamped = from_vae_range(vae.decode(wild / SCALE + SHIFT).sample)
    assert unclamped.min() < 0 or unclamped.max() > 1
    torch.testing.assert_close(decode(vae, wild), unclamped.clamp(0, 1))


def test_shift_none_means_zero(images):
    torch.manual_seed(0)
    vae = AutoencoderKL(latent_channels=4, norm_num_groups=4, block_out_channels=(8,),
                        scaling_factor=0.5).eval()
    with torch.no_grad():
        z = encode(vae, images)
        torch.testing.assert_close(z, vae.encode(to_vae_range(images)).latent_dist.mean * 0.5)


def test_encode_rejects_bad_images(vae):
    with pytest.raises(ValueError, match="multiples of 8"):
        encode(vae, torch.rand(1, 3, 20, 16))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        encode(vae, torch.rand(3, 16, 16))
