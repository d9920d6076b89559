"""`cache_latents` stage: frozen VAE latents of faces and mask slots, text embeddings of captions.

    torchrun --standalone --nproc_per_node 1 -m stages.cache_latents --data data/raw \
        --labels data/labels --base data/base --out data/latents

Under torchrun with n processes (`cache.num_processes`, one per GPU) each encodes every n-th
shard; `python -m stages.cache_latents ...` runs it as one process.

The shards are written into `--resume-dir` (default `<out's folder>/.resume/<out's name>`, e.g.
`data/.resume/latents`: not a DVC output, git- and dvc-ignored), where an interrupted run finds
them again; the finished folder is renamed to `--out` (`facemogle.cache.build`).
"""

from __future__ import annotations

from stages import _worker  # noqa: F401  (first, before torch: see its docstring)

# isort: split
import torch
from accelerate import PartialState

from facemogle.base.loader import load_base
from facemogle.cache.build import CacheOptions, build_cache, folder_fingerprint
from facemogle.core.config import to_dict
from stages import _cli

PARAMS = ("data", "cache")



def main(argv: list[str] | None = None) -> int:
    parser = _cli.parser(__doc__)
    parser.add_argument("--data", required=True, help="download stage output")
    parser.add_argument("--labels", required=True, help="parse_masks stage output")
    parser.add_argument("--base", required=True, help="base stage output")
    parser.add_argument("--out", required=True)
    parser.add_argument("--resume-dir", help="work folder kept across interruptions, on the "
                        "file system of --out (default: <out's folder>/.resume/<out's name>)")
    args = _cli.parse_args(parser, argv)
    params = _cli.load_params(args.params, sections=PARAMS)
    processes = PartialState(cpu=not torch.cuda.is_available())  # one device per process
    base = load_base(args.base, device=processes.device)
    build_cache(base, args.data, args.labels, args.out, resolution=params.data.resolution,
                batch_size=params.cache.batch_size, shard_size=params.cache.shard_size,
                text_batch_size=params.cache.text_batch_size,
                precision=params.cache.precision,
                processes=processes,
                config={"data": to_dict(params.data), "base": folder_fingerprint(args.base)},
                options=CacheOptions(max_captions=params.cache.max_captions,
                                     trim_text_padding=params.cache.trim_text_padding),
                work_dir=args.resume_dir or _cli.resume_folder(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli.run(main))
