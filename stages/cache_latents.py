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
from facemogle.cache.run import cache_latents
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
    cache_latents(params, args.data, args.labels, args.base, args.out,
                  args.resume_dir or _cli.resume_folder(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli.run(main))
