"""`sample` stage: the test split in the modes of `sample.modes` (multimodal, mask2face,
text2face, and `base`: the plain base without condition tokens, a reference).

    torchrun --standalone --nproc_per_node 1 -m stages.sample --latents data/latents \
        --labels data/labels --data data/raw --base data/base --model data/model \
        --out data/samples --sheets metrics/sheets

Under torchrun with n processes (`sample.num_processes`, one per GPU) process i samples the
test images i, i + n, ...; an image depends on its id's seed only, so the split does not change
it beyond floating-point batch effects. `python -m stages.sample ...` runs it as one process.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from accelerate import PartialState
from PIL import Image
from tqdm import tqdm

from facemogle.base.loader import load_base
from facemogle.cache.store import load_cache
from facemogle.core import labels
from facemogle.core.config import load_params
from facemogle.core.io import atomic_path, read_jsonl, read_rgb, shared_atomic_dir
from facemogle.sampling.off_distribution import sample_layouts
from facemogle.sampling.sampler import sample_rows
from facemogle.sampling.sheets import contact_sheet, save_sheet, to_uint8
from facemogle.training.checkpoint import load_trained

PARAMS = ("seed", "gating", "experts", "model", "lora", "sample")
SHEET_ROWS = 12  # test images per contact sheet, spread evenly over the sampled ids

log = logging.getLogger(__name__)


# The plain base is no Face-MoGLE mode: its sheet says so.
SHEET_TITLES = {"base": "Plain base, no condition tokens (reference)"}


def write_sheets(samples: Path, sheets_dir: str | Path, labels_dir: str | Path,
                 prompts: dict[str, str], modes: tuple[str, ...], ids: list[str],
                 off_distribution: list[dict]) -> None:
    """One contact sheet per mode (prompt, mask, result) of the first sampled images, and the
    off-distribution sheet of `off_distribution` rows; `prompts`: id -> its first caption."""
    masks = {i: labels.load_label_map(Path(labels_dir) / "masks" / f"{i}.png") for i in ids}
    with atomic_path(sheets_dir) as sheets:
        sheets.mkdir()
        for mode in modes:
            rows = [{"id": i,
                     "image": read_rgb(samples / mode / f"{i}.png"),
                     "mask": masks[i] if mode in ("multimodal", "mask2face") else None,
                     "prompt": "" if mode == "mask2face" else prompts[i]} for i in ids]
            save_sheet(sheets / f"{mode}.png",
                       contact_sheet(rows, SHEET_TITLES.get(mode, f"Face-MoGLE: {mode}")))
        save_sheet(sheets / "off_distribution.png", contact_sheet(
            off_distribution, "Face-MoGLE multimodal: masks unlike any in training"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("latents", "labels", "data", "base", "model", "out", "sheets"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params(args.params, sections=PARAMS)
    cfg = params.sample
    processes = PartialState(cpu=not torch.cuda.is_available())  # one device per process
    base = load_base(args.base, device=processes.device, load_text_encoder=False)
    model = load_trained(base.transformer, args.model, params).to(processes.device)
    cache = load_cache(args.latents, "test")
    count = len(cache.ids) if cfg.max_images is None else min(cfg.max_images, len(cache.ids))
    mine = list(range(processes.process_index, count, processes.num_processes))
    log.info("process %d/%d: %d of %d test images (%d::%d)", processes.process_index + 1,
             processes.num_processes, len(mine), count, processes.process_index,
             processes.num_processes)
    with shared_atomic_dir(args.out, processes) as out:
        for mode in cfg.modes:
            (out / mode).mkdir(parents=True, exist_ok=True)
            for start in tqdm(range(0, len(mine), cfg.batch_size), desc=f"sample {mode}",
                              disable=not processes.is_main_process):
                rows = torch.tensor(mine[start:start + cfg.batch_size])
                images = to_uint8(sample_rows(model, base, cache, rows, mode, cfg,
                                              seed=params.seed))
                for r, image in zip(rows.tolist(), images):
                    Image.fromarray(image).save(out / mode / f"{cache.ids[r]}.png")
        processes.wait_for_everyone()  # every image is written
        if processes.is_main_process:
            first = cache.ids[0]
            prompts = {r["id"]: r["captions"][0]
                       for r in read_jsonl(Path(args.data) / "captions.jsonl")}
            off = sample_layouts(model, base, cache, 0, labels.load_label_map(
                Path(args.labels) / "masks" / f"{first}.png"), cfg, seed=params.seed,
                caption=prompts[first])
            write_sheets(out, args.sheets, args.labels, prompts, cfg.modes,
                         cache.ids[:count][::max(1, count // SHEET_ROWS)][:SHEET_ROWS], off)
            (out / "ids.json").write_text(json.dumps(cache.ids[:count]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
