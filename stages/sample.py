"""`sample` stage: the test split in the three modes (multimodal, mask2face, text2face).

    python -m stages.sample --latents data/latents --labels data/labels --data data/raw \
        --base data/base --model data/model --out data/samples --sheets metrics/sheets
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from facemogle import labels
from facemogle.base import load_base
from facemogle.cache import load_cache
from facemogle.checkpoint import load_model_weights
from facemogle.config import load_params
from facemogle.io import atomic_path, read_jsonl
from facemogle.models.facemogle import FaceMoGLE
from facemogle.sampling import sample_rows
from facemogle.viz import contact_sheet, save_sheet, to_uint8

PARAMS = ("seed", "gating", "experts", "model", "lora", "sample")
SHEET_ROWS = 12


def load_trained(base, model_dir: str | Path, params) -> FaceMoGLE:
    """Rebuild Face-MoGLE on `base` and load the trained weights of `model_dir`."""
    model = FaceMoGLE.build(base.transformer, params.model, params.lora,
                            experts=params.experts, gating=params.gating)
    load_model_weights(model_dir, model)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("latents", "labels", "data", "base", "model", "out", "sheets"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params(args.params, sections=PARAMS)
    cfg = params.sample
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base = load_base(args.base, device=device, load_text_encoder=False)
    model = load_trained(base, args.model, params).to(device)
    cache = load_cache(args.latents, "test")
    count = len(cache.ids) if cfg.max_images is None else min(cfg.max_images, len(cache.ids))
    prompts = {r["id"]: r["captions"][0] for r in read_jsonl(Path(args.data) / "captions.jsonl")}
    with atomic_path(args.out) as out, atomic_path(args.sheets) as sheets:
        sheets.mkdir()
        for mode in cfg.modes:
            (out / mode).mkdir(parents=True)
            sheet_rows = []
            for start in tqdm(range(0, count, cfg.batch_size), desc=f"sample {mode}"):
                rows = torch.arange(start, min(start + cfg.batch_size, count))
                images = to_uint8(sample_rows(model, base, cache, rows, mode, cfg,
                                              seed=params.seed))
                for r, image in zip(rows.tolist(), images):
                    image_id = cache.ids[r]
                    Image.fromarray(image).save(out / mode / f"{image_id}.png")
                    if len(sheet_rows) < SHEET_ROWS:
                        mask_path = Path(args.labels) / "masks" / f"{image_id}.png"
                        mask = labels.load_label_map(mask_path)
                        sheet_rows.append({
                            "id": image_id, "image": image,
                            "mask": None if mode == "text2face" else mask,
                            "prompt": "" if mode == "mask2face" else prompts[image_id],
                        })
            save_sheet(sheets / f"{mode}.png", contact_sheet(sheet_rows, f"Face-MoGLE: {mode}"))
        (out / "ids.json").write_text(json.dumps(cache.ids[:count]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
