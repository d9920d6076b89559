"""Face-MoGLE: MoGLE condition tokens on a frozen FLUX transformer with condition-only LoRA.

The data path of one denoising step, with the shapes of the paper's setting (FLUX.1-dev at
512 x 512 px, params-flux.yaml: L = 1024 image tokens of C = 64, T = 512 text tokens, width
D = 3072). The embedded default (128 px, params.yaml) has L = 64, T <= 64 and D = 128.

    mask          (B, 512, 512) label map, 19 labels with background (facemogle/core/labels.py)
    -> 20 slots   slot 0 the colour mask, slots 1..19 one binary mask per label; each slot image
                  VAE-encoded to (16, 64, 64) and packed 2x2 by the cache stage
                  (facemogle/cache/build.py): cond_latents (B, 20, 1024, 64)
    -> MoGLE      one expert per slot, mixed per token by a gate that reads the colour-mask slot,
                  z_t and sigma (facemogle/models/mogle.py): cond_tokens (B, 1024, 64)
    -> FLUX       x_embedder on [z_t; cond_tokens] (B, 2048, 64) -> (B, 2048, 3072) (LoRA on the
                  condition half only), context_embedder on the T5 text (B, 512, 4096) ->
                  (B, 512, 3072); each block attends over [text; image; condition]
                  (B, 2560, 3072) (facemogle/models/condition.py)
    -> velocity   norm_out and proj_out on the image tokens only: (B, 1024, 64) = noise - data

`FaceMoGLE` holds the trainable parts (the MoGLE mask encoder and the LoRA adapter, which lives
inside the transformer: facemogle/models/lora.py) next to the frozen transformer, and predicts
the flow velocity for one denoising step. The three modes (docs/design.md, "The three modes")
differ only in the inputs:

- multimodal: prompt embeddings + mask slot latents;
- mask2face: embeddings of the empty prompt + mask slot latents;
- text2face: prompt embeddings + the empty mask (20 empty slot latents), through MoGLE;
- the `base` reference: prompt embeddings, no condition tokens at all (`cond_latents=None`): the
  stock transformer forward.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from facemogle.core.config import LoraConfig, ModelConfig
from facemogle.models.condition import ResidualCache, condition_forward
from facemogle.models.lora import attach_lora
from facemogle.models.mogle import MoGLE, build_mogle


class FaceMoGLE(nn.Module):
    """The frozen FLUX transformer (with a condition LoRA) plus MoGLE."""

    def __init__(self, transformer: nn.Module, mogle: MoGLE, *, condition_guidance: float = 1.0,
                 condition_attention: str = "full"):
        super().__init__()
        self.transformer = transformer
        self.mogle = mogle
        self.condition_guidance = condition_guidance
        self.condition_attention = condition_attention

    @classmethod
    def build(cls, transformer: nn.Module, model_cfg: ModelConfig, lora_cfg: LoraConfig, *,
              experts: str, gating: str) -> FaceMoGLE:
        """Attach the condition LoRA to `transformer` (frozen) and build MoGLE for its tokens."""
        attach_lora(transformer, lora_cfg)
        token_dim = transformer.config.in_channels
        mogle = build_mogle(model_cfg, experts=experts, gating=gating, token_dim=token_dim)
        return cls(transformer, mogle, condition_guidance=model_cfg.condition_guidance,
                   condition_attention=model_cfg.condition_attention)

    @classmethod
    def from_params(cls, transformer: nn.Module, params) -> FaceMoGLE:
        """`build` from the `model`, `lora`, `experts` and `gating` params of a `Params`."""
        return cls.build(transformer, params.model, params.lora, experts=params.experts,
                         gating=params.gating)

    @property
    def guidance_embeds(self) -> bool:
        return bool(self.transformer.config.guidance_embeds)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """LoRA and MoGLE parameters (everything else is frozen)."""
        return [p for p in self.parameters() if p.requires_grad]

    def float32_trainables(self) -> list[nn.Parameter]:
        """Keep LoRA and MoGLE in float32 whatever the base's dtype (fp32 master weights in
        training; the same weights at sampling), and return them."""
        trainable = self.trainable_parameters()
        for p in trainable:
            p.data = p.data.float()
        return trainable

    def forward(self, z_t: Tensor, sigma: Tensor, text: Tensor, pooled: Tensor, *,
                img_ids: Tensor, txt_ids: Tensor, cond_latents: Tensor | None = None,
                guidance: float | None = None, checkpointing: bool = False,
                expert_out: Tensor | None = None,
                residual_cache: ResidualCache | None = None) -> Tensor:
        """Velocity for the packed noisy latents.

        Args:
            z_t: (B, L, C) packed noisy image latents.
            sigma: (B,) flow time in [0, 1]; the same value reaches MoGLE's gate and the
                transformer (which scales it by 1000 itself), in training and sampling alike.
            text: (B, T, D) text sequence embeddings; pooled: (B, P).
            img_ids: (L, 3) image token positions; txt_ids: (T, 3).
            cond_latents: (B, 20, L, C) packed VAE latents of the 20 mask slots (text2face and
                a dropped mask: 20 empty slots), or None for no condition tokens (the plain base).
            guidance: the guidance-embedding value, used only if the transformer has one.
            expert_out: `self.mogle.experts(cond_latents)`, when a sampler computed it once for
                all steps (the experts read only the mask).
            residual_cache: first-block residual caching across a sampler's steps.

        Returns:
            (B, L, C) predicted velocity (noise - data).
        """
        cond_tokens = None
        if cond_latents is not None:
            # (B, L, C)
            cond_tokens = self.mogle(cond_latents, z_t, sigma, expert_out=expert_out)
        guidance_t = None
        if self.guidance_embeds:
            value = 1.0 if guidance is None else guidance
            guidance_t = torch.full_like(sigma, value)  # (B,)
        return condition_forward(
            self.transformer, hidden_states=z_t, encoder_hidden_states=text,
            pooled_projections=pooled, timestep=sigma, img_ids=img_ids, txt_ids=txt_ids,
            guidance=guidance_t, cond_tokens=cond_tokens,
            cond_guidance=self.condition_guidance, cond_attention=self.condition_attention,
            checkpointing=checkpointing, residual_cache=residual_cache,
        )
