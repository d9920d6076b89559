"""Side-by-side timing of the `cache_latents` stage under cache settings, with a byte check.

    python -m facemogle.bench.caching --images 512 --out metrics/bench/caching-cpu.json

Each setting runs the stage's body (`facemogle.cache.run.cache_latents`, which
`stages/cache_latents.py` calls) under torchrun as DVC runs the stage, one process per device,
model loading included (`torchrun ... -m facemogle.bench.caching --worker ...`). It runs on the
first `--images` images of the test split's data, with `params.yaml`'s `cache` section changed as
the setting says, into a temporary folder. Every image's stored
tensors (face latent, each stored slot latent, each caption's text states) are then compared
with the first setting's: `identical` is True when every byte agrees.

Levers that need no stage setting are measured in the same run on one batch of real slot
images (`levers`): `channels_last`, bfloat16 autocast (with its latent error against the VAE
posterior's own standard deviation) and single-thread throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file

from facemogle.cache.run import cache_latents
from facemogle.cache.store import INDEX
from facemogle.core import labels, latents
from facemogle.core.config import load_params
from facemogle.core.io import write_json
from facemogle.core.machine import machine
from facemogle.data import layout

# name -> changes of the `cache` section; the first is the reference for the byte check.
SETTINGS: dict[str, dict[str, Any]] = {
    "batch 32, 1 process (before)": {"batch_size": 32, "num_processes": 1, "shard_size": 256},
    "batch 4, 1 process": {"batch_size": 4, "num_processes": 1, "shard_size": 256},
    "batch 4, 2 processes x 1 thread": {"batch_size": 4, "num_processes": 2, "shard_size": 64},
    "batch 4, 2 processes x 1 thread, bf16": {"batch_size": 4, "num_processes": 2,
                                              "shard_size": 64, "precision": "bfloat16"},
}


def subset_labels(labels_dir: Path, count: int, work: Path) -> Path:
    """A labels folder whose split holds the first `count` ids (masks linked, not copied)."""
    split = json.loads(layout.split_path(labels_dir).read_text())
    ids = (list(split["train"]) + list(split["test"]))[:count]
    out = work / "labels"
    out.mkdir()
    (out / layout.MASKS).symlink_to((labels_dir / layout.MASKS).resolve())
    layout.split_path(out).write_text(json.dumps({"train": ids, "test": []}))
    return out


def run_stage(setting: dict[str, Any], params: Path, data: Path, labels_dir: Path, base: Path,
              out: Path) -> float:
    """Seconds of one `cache_latents` run with `setting` applied to the params' `cache`."""
    values = yaml.safe_load(params.read_text())
    values["cache"] = {**values["cache"], **setting}
    changed = out.parent / f"{out.name}.params.yaml"
    changed.write_text(yaml.safe_dump(values))
    command = ["torchrun", "--standalone", "--nproc_per_node", str(setting["num_processes"]),
               "-m", "facemogle.bench.caching", "--worker", "--data", str(data), "--labels",
               str(labels_dir), "--base", str(base), "--params", str(changed), "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def per_image(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Every image's stored tensors by id, whatever the shard layout."""
    index = json.loads((out / INDEX).read_text())
    rows: dict[str, dict[str, torch.Tensor]] = {}
    for shard in index["shards"]:
        t = load_file(out / shard["file"])
        for n, i in enumerate(shard["ids"]):
            slots = t["slot_index"][n]
            first, last = t["caption_offsets"][n], t["caption_offsets"][n + 1]
            rows[i] = {"image": t["image"][n], "slots": t["slot_latents"][slots[slots >= 0]],
                       "text": t["text_seq"][first:last], "pooled": t["text_pooled"][first:last]}
    return rows


def compare(a: dict, b: dict) -> dict[str, Any]:
    """Whether two caches store the same bytes per image, and the largest difference of a
    latent (face or slot) and of a text state."""
    if a.keys() != b.keys():
        raise ValueError("the two caches hold different images")
    worst = {"latent": 0.0, "text": 0.0}
    for i in a:
        for key, kind in (("image", "latent"), ("slots", "latent"), ("text", "text"),
                          ("pooled", "text")):
            gap = (a[i][key].float() - b[i][key].float()).abs().max().item()
            worst[kind] = max(worst[kind], gap)
    return {"identical": worst == {"latent": 0.0, "text": 0.0},
            "max_abs_difference": worst}


def lever_batch(labels_dir: Path, count: int) -> torch.Tensor:
    """The stored slot images of the first `count` images: (S, 3, H, W)."""
    split = json.loads(layout.split_path(labels_dir).read_text())
    slots = []
    for i in split["train"][:count]:
        label_map = labels.load_label_map(layout.mask_path(labels_dir, i))
        slots.append(labels.decouple(label_map)[torch.from_numpy(labels.slot_presence(label_map))])
    return torch.cat(slots)


def _rate(vae, x: torch.Tensor, batch: int, **autocast) -> tuple[float, torch.Tensor]:
    """Images per second of `latents.encode` over `x` in batches (the second of two passes)."""
    for _ in range(2):
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast("cpu", **autocast):
            z = torch.cat([latents.encode(vae, x[i:i + batch]).float()
                           for i in range(0, len(x), batch)])
        seconds = time.perf_counter() - start
    return len(x) / seconds, z


def measure_levers(base: Path, labels_dir: Path) -> dict[str, Any]:
    from facemogle.base.loader import load_base

    vae = load_base(base, load_text_encoder=False).vae
    x = lever_batch(labels_dir, 24)  # (S, 3, H, W)
    rate32, ref = _rate(vae, x, 32, enabled=False)
    rate4, _ = _rate(vae, x, 4, enabled=False)
    bf16_rate, bf16 = _rate(vae, x, 4, dtype=torch.bfloat16)
    with torch.no_grad():
        std = vae.encode(latents.to_vae_range(x[:64])).latent_dist.std
    vae.to(memory_format=torch.channels_last)
    cl_rate, cl = _rate(vae, x.contiguous(memory_format=torch.channels_last), 4, enabled=False)
    vae.to(memory_format=torch.contiguous_format)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    one_rate, _ = _rate(vae, x, 4, enabled=False)
    torch.set_num_threads(threads)
    return {
        "slot_images": len(x),
        "images_per_s": {"fp32 batch 32": rate32, "fp32 batch 4": rate4,
                         "channels_last batch 4": cl_rate, "bf16 autocast batch 4": bf16_rate,
                         "fp32 batch 4, 1 thread": one_rate},
        "channels_last_float16_identical": bool(torch.equal(cl.half(), ref.half())),
        "bf16_mean_abs_error": float((bf16 - ref).abs().mean()),
        "bf16_max_abs_error": float((bf16 - ref).abs().max()),
        "posterior_std_mean": float((std * vae.config.scaling_factor).mean()),
        "latent_mean_abs": float(ref.abs().mean()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/raw"))
    parser.add_argument("--labels", type=Path, default=Path("data/labels"))
    parser.add_argument("--base", type=Path, default=Path("data/base"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--worker", action="store_true",
                        help="internal: one torchrun process of a setting's run")
    args = parser.parse_args(argv)
    if args.worker:
        cache_latents(load_params(args.params), args.data, args.labels, args.base, args.out,
                      args.out.parent / f".{args.out.name}.work")
        return 0
    result: dict[str, Any] = {"machine": machine(), "images": args.images, "settings": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        labels_dir = subset_labels(args.labels, args.images, work)
        reference = None
        for n, (name, setting) in enumerate(SETTINGS.items()):
            out = work / f"cache{n}"
            seconds = run_stage(setting, args.params, args.data, labels_dir, args.base, out)
            rows = per_image(out)
            reference = reference or rows
            result["settings"][name] = {"cache": setting, "seconds": seconds,
                                        **compare(rows, reference)}
            print(f"{name}: {seconds:.1f} s", file=sys.stderr)
        before = next(iter(result["settings"].values()))["seconds"]
        for entry in result["settings"].values():
            entry["speedup"] = before / entry["seconds"]
        result["levers"] = measure_levers(args.base, args.labels)
    write_json(args.out, result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
