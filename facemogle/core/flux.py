"""FLUX.1-dev's constants: its architecture, resolution, text length, guidance and latent layout.

Every module that needs one of these numbers imports it from here.
"""

from __future__ import annotations

from typing import Any

LATENT_CHANNELS = 16  # FLUX's VAE: 16 latent channels, x8 down; 2x2 packing -> 64-d tokens
# FLUX's VAE latent normalisation (shift_factor, scaling_factor)
VAE_SHIFT, VAE_SCALE = 0.1159, 0.3611

# FLUX.1-dev's `transformer/config.json` and `vae/config.json` (diffusers layout).
FLUX_DEV_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1, "in_channels": 4 * LATENT_CHANNELS, "num_layers": 19, "num_single_layers": 38,
    "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
    "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": (16, 56, 56),
}


FLUX_DEV_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": LATENT_CHANNELS,
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "act_fn": "silu",
    "norm_num_groups": 32, "sample_size": 1024, "scaling_factor": VAE_SCALE,
    "shift_factor": VAE_SHIFT,
    "use_quant_conv": False, "use_post_quant_conv": False, "force_upcast": True,
    "mid_block_add_attention": True,
}


FLUX_RESOLUTION = 512


FLUX_TEXT_TOKENS = 512  # T5 sequence length of FLUX.1-dev


SAMPLE_GUIDANCE = 3.5  # FLUX.1-dev's guidance embedding (sampling and the benchmark)
