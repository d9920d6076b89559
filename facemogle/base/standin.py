"""The one factory of small FLUX transformers and VAEs, built from the real classes: the embedded
base's architecture (`facemogle/pretrain/`) and every test's toy model (`tests/flux_standin.py`
saves a whole toy FLUX.1-dev folder from them)."""

from __future__ import annotations

from diffusers import AutoencoderKL, FluxTransformer2DModel

from facemogle.core.flux import LATENT_CHANNELS, VAE_SCALE, VAE_SHIFT

# Toy sizes of FLUX.1-dev's classes: the layout of the real ones (patch size 1 over packed 64-d
# tokens, 16-channel x8 VAE without quant convs) at widths that build in milliseconds.
TINY_TRANSFORMER: dict = dict(
    patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=1, num_single_layers=1,
    attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
    pooled_projection_dim=32, guidance_embeds=False, axes_dims_rope=(4, 6, 6))
TINY_VAE: dict = dict(
    in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=2,
    use_quant_conv=False, use_post_quant_conv=False, shift_factor=VAE_SHIFT,
    scaling_factor=VAE_SCALE)


def tiny_transformer(**overrides) -> FluxTransformer2DModel:
    """A `FluxTransformer2DModel` of `TINY_TRANSFORMER`'s config with `overrides` applied (the one
    factory for every small FLUX transformer: tests, stand-ins and the embedded base)."""
    return FluxTransformer2DModel(**{**TINY_TRANSFORMER, **overrides})


def tiny_vae(**overrides) -> AutoencoderKL:
    """An `AutoencoderKL` in FLUX's layout (`TINY_VAE`) with `overrides` applied."""
    return AutoencoderKL(**{**TINY_VAE, **overrides})
