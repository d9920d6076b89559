"""Train the embedded base once: VAE, face parser, text-to-image transformer (not a DVC stage).

    python -m stages.pretrain --params params-pretrain.yaml --work data/pretrain \
        --out pretrained/embedded [--metrics-dir metrics/pretrain] [--reuse-vae-parser DIR]

Hours on a CPU: every phase checkpoints into `--work` and a re-run resumes where it stopped. The
result replaces `--out` atomically with the weights and `provenance.json`; `dvc repro` then
re-runs from the `base` stage, which checks the new files against that record.
"""

from __future__ import annotations

import shlex
import sys

from facemogle.pretrain.train_embedded import pretrain_embedded
from stages import _cli


def main(argv: list[str] | None = None) -> int:
    parser = _cli.parser(__doc__)
    parser.add_argument("--params", default="params-pretrain.yaml",
                        help="params file: seed, data (the train split), base.text_max_tokens, "
                             "pretrain")
    parser.add_argument("--work", required=True,
                        help="rendered data and resumable checkpoints (kept between runs)")
    parser.add_argument("--out", required=True, help="embedded base folder (replaced atomically)")
    parser.add_argument("--reuse-vae-parser", default=None, metavar="FOLDER",
                        help="train only the transformer; take the VAE and parser of this "
                             "embedded-base folder (same data and recipe)")
    parser.add_argument("--metrics-dir", default=None,
                        help="DVCLive folder for the loss curves and previews")
    args = _cli.parse_args(parser, argv, params=None)
    params = _cli.load_params(args.params)
    command = shlex.join(["python", "-m", "stages.pretrain",
                          *(argv if argv is not None else sys.argv[1:])])
    if args.metrics_dir is None:
        pretrain_embedded(params, args.work, args.out, command=command,
                          reuse=args.reuse_vae_parser)
        return 0
    from dvclive import Live

    with Live(args.metrics_dir, dvcyaml=False, save_dvc_exp=False, resume=True) as live:
        pretrain_embedded(params, args.work, args.out, command=command, live=live,
                          reuse=args.reuse_vae_parser)
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli.run(main))
