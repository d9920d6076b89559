"""`train` stage: LoRA + MoGLE on the frozen base, from cached latents (paper section 4.1).

    python -m stages.train --latents data/latents --base data/base --out data/model \
        --metrics-dir metrics/train

Checkpoints go to `--resume-dir` (default `<out's folder>/.resume/<out's name>`, e.g.
`data/.resume/model`: not a DVC output, git- and dvc-ignored), where a killed run resumes from
the last one; the finished model is moved into `--out`, which then holds the model files only,
and the work folder is deleted (`facemogle.training.checkpoint.publish_model`).
"""

from __future__ import annotations

from stages import _worker  # noqa: F401  (first, before torch: see its docstring)

# isort: split
import json
import logging
from pathlib import Path

import torch
from accelerate.utils import set_seed

from facemogle.base.loader import load_base
from facemogle.cache.store import INDEX, load_cache
from facemogle.core.config import to_dict
from facemogle.models.facemogle import FaceMoGLE
from facemogle.training.checkpoint import publish_model
from facemogle.training.loop import make_accelerator, train
from stages import _cli

log = logging.getLogger(__name__)

PARAMS = ("seed", "gating", "experts", "model", "lora", "train")


def resolved_config(params, base_dir: str | Path, latents_dir: str | Path) -> dict:
    """The declared params plus the base manifest (enough to rebuild the model later) and the
    latent cache's fingerprint (a checkpoint made on other data is not resumed)."""
    config = {name: to_dict(getattr(params, name)) for name in PARAMS}
    config["base_manifest"] = json.loads((Path(base_dir) / "base.json").read_text())
    config["latents"] = json.loads((Path(latents_dir) / INDEX).read_text())["fingerprint"]
    return config



def main(argv: list[str] | None = None) -> int:
    parser = _cli.parser(__doc__)
    parser.add_argument("--latents", required=True, help="cache_latents stage output")
    parser.add_argument("--base", required=True, help="base stage output")
    parser.add_argument("--out", required=True, help="model folder, written when training ends")
    parser.add_argument("--metrics-dir", required=True, help="DVCLive directory (loss curve)")
    parser.add_argument("--resume-dir", help="checkpoints, kept until the model is in --out, on "
                        "the file system of --out (default: <out's folder>/.resume/<out's name>)")
    args = _cli.parse_args(parser, argv)
    params = _cli.load_params(args.params, sections=PARAMS)
    cfg = params.train
    accelerator = make_accelerator(cfg)
    torch.manual_seed(params.seed)
    base = load_base(args.base, device=accelerator.device, load_text_encoder=False)
    model = FaceMoGLE.from_params(base.transformer, params)
    # The same initial weights on every process (above); from here on, module randomness (LoRA
    # dropout) is seeded per process with seed + process index, so ranks do not drop alike.
    # Batches, dropout of conditions, time and noise come from the shared generator in `train`.
    set_seed(params.seed, device_specific=True)
    log.info("process %d/%d: module randomness seeded with %d", accelerator.process_index + 1,
             accelerator.num_processes, torch.initial_seed())
    cache = load_cache(args.latents, "train")
    resolved = resolved_config(params, args.base, args.latents)
    work = args.resume_dir or _cli.resume_folder(args.out)
    train(model, cache, params, work, accelerator=accelerator, resolved=resolved,
          metrics_dir=args.metrics_dir)
    if accelerator.is_main_process:
        publish_model(work, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli.run(main))
