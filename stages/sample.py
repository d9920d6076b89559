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

from stages import _worker  # noqa: F401  (first, before torch: see its docstring)

# isort: split
import json
import logging

import torch
from accelerate import PartialState
from PIL import Image
from tqdm import tqdm

from facemogle.base.loader import load_base
from facemogle.cache.store import load_cache
from facemogle.core import labels
from facemogle.core.io import read_jsonl, shared_atomic_dir
from facemogle.data import layout
from facemogle.sampling import samples_folder
from facemogle.sampling.off_distribution import sample_layouts
from facemogle.sampling.sampler import sample_rows
from facemogle.sampling.sheets import sheet_ids, to_uint8, write_sheets
from facemogle.training.checkpoint import load_trained
from stages import _cli

PARAMS = ("seed", "gating", "experts", "model", "lora", "sample")

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = _cli.parser(__doc__)
    for name in ("latents", "labels", "data", "base", "model", "out", "sheets"):
        parser.add_argument(f"--{name}", required=True)
    args = _cli.parse_args(parser, argv)
    params = _cli.load_params(args.params, sections=PARAMS)
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
            samples_folder.mode_dir(out, mode).mkdir(parents=True, exist_ok=True)
            for start in tqdm(range(0, len(mine), cfg.batch_size), desc=f"sample {mode}",
                              disable=not processes.is_main_process):
                rows = torch.tensor(mine[start:start + cfg.batch_size])
                images = to_uint8(sample_rows(model, base, cache, rows, mode, cfg,
                                              seed=params.seed))
                for r, image in zip(rows.tolist(), images):
                    Image.fromarray(image).save(samples_folder.sample_path(out, mode, cache.ids[r]))
        processes.wait_for_everyone()  # every image is written
        if processes.is_main_process:
            first = cache.ids[0]
            prompts = {r["id"]: r["captions"][0]
                       for r in read_jsonl(layout.captions_path(args.data))}
            off = sample_layouts(model, base, cache, 0, labels.load_label_map(
                layout.mask_path(args.labels, first)), cfg, seed=params.seed,
                caption=prompts[first])
            write_sheets(out, args.sheets, args.labels, prompts, cfg.modes,
                         sheet_ids(cache.ids[:count]), off)
            samples_folder.ids_path(out).write_text(json.dumps(cache.ids[:count]))
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli.run(main))
