"""`evaluate` stage: metrics per mode into metrics/eval/<mode>.json, and a paper-style table.

    python -m stages.evaluate --samples data/samples --data data/raw --labels data/labels \
        --base data/base --out metrics/eval

Any other method's images are scored the same way (same metrics, pairing by test id): a folder
`<mode>/<id>.png` (or .jpg) given as --samples, with `--ids data/samples/ids.json` to hold it
to the ids the sample stage generated (README, "Scoring another method's images").
"""

from __future__ import annotations

import torch

from facemogle.base.loader import load_vae, parts_dir, read_manifest
from facemogle.base.segmenter import WEIGHTS_NAME, load_parser
from facemogle.core.config import MODES
from facemogle.core.io import file_sha256
from facemogle.evaluation.evaluate import evaluate
from facemogle.sampling.samples_folder import mode_dir
from stages import _cli

PARAMS = ("seed", "evaluate")


def main(argv: list[str] | None = None) -> int:
    parser = _cli.parser(__doc__)
    for name in ("samples", "data", "labels", "base", "out"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--ids", default=None,
                        help="JSON list of the test ids to score (default: --samples/ids.json, "
                             "else the whole test split)")
    args = _cli.parse_args(parser, argv)
    params = _cli.load_params(args.params, sections=PARAMS)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    parser_dir = parts_dir(args.base, read_manifest(args.base)) / "parser"
    face_parser, vae, name = None, None, "face parser"
    if parser_dir.exists():  # the embedded base's fixed parser (FLUX.1-dev has none)
        face_parser = load_parser(parser_dir, device=device).eval()
        vae = load_vae(args.base, device=device)
        name = (f"facemogle tiny parser, {WEIGHTS_NAME} sha256 "
                f"{file_sha256(parser_dir / WEIGHTS_NAME)}")
    modes = [m for m in MODES if mode_dir(args.samples, m).is_dir()]
    evaluate(args.samples, args.data, args.labels, args.out, params.evaluate, modes=modes,
             parser=face_parser, seed=params.seed, device=device, ids_file=args.ids, vae=vae,
             parser_name=name)
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli.run(main))
