"""The full setting rehearsed on CPU: FLUX.1-dev's shapes with random weights, and a handful of
faces in the real datasets' on-disk layouts (docs/full-setting.md, "Dress rehearsal").

    python -m facemogle.bench.rehearsal --out data/rehearsal

writes the folders that `params-rehearsal.yaml` names:

    FLUX.1-dev/     the real classes at FLUX.1-dev's configs (transformer width 3072, 24 heads
                    x 128, guidance embedding, in_channels 64, joint_attention_dim 4096, pooled
                    768; the real VAE; T5 v1.1 XXL's encoder at d_model 4096; CLIP-L's text
                    model) with two differences: depth (`REHEARSAL_DEPTH`: 1 double + 1 single
                    block, T5 with 1 layer) and letter-level tokenizers (no vocabulary files
                    exist offline); random weights, bfloat16 as the release stores them
    face-parsing/   a SegFormer-B5 face parser (the zero-shot set's masks) with random weights
    mmcelebahq/     faces in MM-CelebA-HQ's layout (`facemogle.bench.fake_layouts`)
    ffhq-text/      faces in FFHQ-Text's layout, the zero-shot set

Every stage then runs the full setting's code at its real widths and sequence lengths (512 px,
1024 image tokens, 512 T5 tokens); only the number of blocks, images and steps is small.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from facemogle.base.standin import save_flux_folder
from facemogle.bench.fake_layouts import split_ids, write_ffhq_text, write_mmcelebahq
from facemogle.core.flux import FLUX_DEV_TRANSFORMER, FLUX_DEV_VAE
from facemogle.core.labels import LABELS

# FLUX.1-dev's text encoders (its `text_encoder/config.json`, CLIP ViT-L/14's text model, whose
# pooled output is the 768-d `pooled_projections`; `text_encoder_2/config.json`, the encoder of
# T5 v1.1 XXL, whose 4096-d states are the text tokens). Only the rehearsal builds them from a
# config; every other path loads them from a FLUX.1-dev folder.
FLUX_DEV_CLIP_TEXT: dict[str, Any] = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
    "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77,
    "hidden_act": "quick_gelu", "projection_dim": 768,
}
FLUX_DEV_T5: dict[str, Any] = {
    "vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24,
    "num_heads": 64, "relative_attention_num_buckets": 32, "feed_forward_proj": "gated-gelu",
    "is_encoder_decoder": False, "use_cache": False,
}

# What the rehearsal changes in FLUX.1-dev's configs: the depth, nothing that sets a shape.
REHEARSAL_DEPTH: dict[str, dict[str, int]] = {
    "transformer": {"num_layers": 1, "num_single_layers": 1},
    "t5": {"num_layers": 1},
}

# SegFormer-B5 (mit-b5) with a 19-class CelebAMask-HQ head, the architecture of the usual
# face-parsing checkpoints.
SEGFORMER_B5: dict[str, Any] = {
    "depths": [3, 6, 40, 3], "hidden_sizes": [64, 128, 320, 512],
    "num_attention_heads": [1, 2, 5, 8], "sr_ratios": [8, 4, 2, 1],
    "decoder_hidden_size": 768, "num_labels": len(LABELS),
    "id2label": dict(enumerate(LABELS)), "label2id": {n: i for i, n in enumerate(LABELS)},
}


def rehearsal_configs() -> dict[str, dict[str, Any]]:
    """The configs of the rehearsal's FLUX.1-dev folder: FLUX.1-dev's, at `REHEARSAL_DEPTH`."""
    return {"transformer": {**FLUX_DEV_TRANSFORMER, **REHEARSAL_DEPTH["transformer"]},
            "vae": dict(FLUX_DEV_VAE), "clip": dict(FLUX_DEV_CLIP_TEXT),
            "t5": {**FLUX_DEV_T5, **REHEARSAL_DEPTH["t5"]}}


def save_segformer(directory: str | Path, config: dict[str, Any], seed: int = 0) -> Path:
    """A SegFormer face parser with random weights and the preprocessing of the usual
    checkpoints (512 px, ImageNet mean and std), as `masks.parser_path` reads it."""
    from transformers import (
        SegformerConfig,
        SegformerForSemanticSegmentation,
        SegformerImageProcessor,
    )

    torch.manual_seed(seed)
    directory = Path(directory)
    SegformerForSemanticSegmentation(SegformerConfig(**config)).save_pretrained(directory)
    SegformerImageProcessor(size={"height": 512, "width": 512}).save_pretrained(directory)
    return directory


def write_rehearsal(out: str | Path, *, configs: dict[str, dict[str, Any]] | None = None,
                    segformer: dict[str, Any] | None = None, seed: int = 0) -> Path:
    """Write the rehearsal's folders (module docstring) into `out`; `configs` and `segformer`
    default to the rehearsal's (the tests pass toy widths). Returns `out`."""
    out = Path(out)
    save_flux_folder(out / "FLUX.1-dev", **(configs or rehearsal_configs()), seed=seed,
                     dtype=torch.bfloat16)
    save_segformer(out / "face-parsing", segformer or SEGFORMER_B5, seed=seed)
    # MM-CelebA-HQ at its sizes (1024 px faces, 512 px masks, 10 captions): ids 0-2 are train
    # and 27000-27001 test under the paper's data.num_train of 27000
    write_mmcelebahq(out / "mmcelebahq", split_ids(3, 2), size=1024, mask_size=512,
                     num_captions=10, seed=seed)
    write_ffhq_text(out / "ffhq-text", ["00000", "00001"], size=1024, num_captions=10,
                    seed=seed)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/rehearsal")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_rehearsal(args.out, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
