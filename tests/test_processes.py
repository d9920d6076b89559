"""`cache_latents` and `sample` split their work over torchrun processes (gloo on CPU) and
write what one process writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from facemogle.cache.store import load_cache
from facemogle.sampling.samples_folder import ids_path, mode_dir, sample_path

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = str(Path(sys.executable).parent / "torchrun")


def _torchrun(processes: int, module: str, args: list[str]) -> str:
    # One thread per process in both runs: CPU kernels may sum in another order with more.
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    result = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", str(processes),
                             "-m", module, *map(str, args)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{module} x{processes} failed:\n{result.stderr[-4000:]}"
    return result.stderr


def _params(trained_run, tmp_path: Path, **sections) -> Path:
    params = yaml.safe_load(trained_run.params.read_text())
    for section, values in sections.items():
        params[section] = {**params[section], **values}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.mark.slow
def test_two_processes_write_the_shards_of_one_process(trained_run, tmp_path):
    params = _params(trained_run, tmp_path, cache={"shard_size": 5})  # 12 images: 3 shards
    outs, logs = {}, {}
    for n in (1, 2):
        outs[n] = tmp_path / f"latents{n}"
        logs[n] = _torchrun(n, "stages.cache_latents", ["--data", trained_run.raw, "--labels",
                                               trained_run.labels, "--base", trained_run.base,
                                               "--out", outs[n], "--params", params])
    assert "process 1/1: 3 of 3 shards (0::1)" in logs[1]
    assert "process 1/2: 2 of 3 shards (0::2)" in logs[2]
    assert "process 2/2: 1 of 3 shards (1::2)" in logs[2]
    names = sorted(p.name for p in outs[1].iterdir())
    assert names == sorted(p.name for p in outs[2].iterdir())
    assert [n for n in names if n.startswith("shard-")] == [f"shard-0000{i}.safetensors"
                                                           for i in range(3)]
    for name in names:  # DVC hashes bytes: the process count must not change them
        assert (outs[1] / name).read_bytes() == (outs[2] / name).read_bytes(), name
    # The same tensors as the fixture's single-shard cache (sharding is only a layout).
    split, reference = load_cache(outs[2]), load_cache(trained_run.latents)
    rows = torch.arange(len(reference.ids))
    assert split.ids == reference.ids
    assert torch.allclose(split.image, reference.image, atol=1e-3)
    assert torch.allclose(split.slots(rows), reference.slots(rows), atol=1e-3)
    assert torch.equal(split.slot_index >= 0, reference.slot_index >= 0)
    assert torch.equal(split.caption_offsets, reference.caption_offsets)


@pytest.mark.slow
def test_two_processes_sample_the_images_of_one_process(trained_run, tmp_path):
    params = _params(trained_run, tmp_path, sample={"max_images": 3, "batch_size": 1})
    outs, logs = {}, {}
    for n in (1, 2):
        outs[n] = tmp_path / f"samples{n}"
        logs[n] = _torchrun(n, "stages.sample", ["--latents", trained_run.latents, "--labels",
                                        trained_run.labels, "--data", trained_run.raw, "--base",
                                        trained_run.base, "--model", trained_run.model, "--out",
                                        outs[n], "--sheets", tmp_path / f"sheets{n}",
                                        "--params", params])
    assert "process 1/2: 2 of 3 test images (0::2)" in logs[2]
    assert "process 2/2: 1 of 3 test images (1::2)" in logs[2]
    ids = json.loads(ids_path(outs[1]).read_text())
    assert len(ids) == 3 and json.loads(ids_path(outs[2]).read_text()) == ids
    for mode in ("multimodal", "mask2face", "text2face"):
        assert sorted(p.stem for p in mode_dir(outs[2], mode).glob("*.png")) == sorted(ids)
        for i in ids:
            one, two = (np.asarray(Image.open(sample_path(outs[n], mode, i))) for n in (1, 2))
            assert np.array_equal(one, two), (mode, i)
        assert (tmp_path / "sheets2" / f"{mode}.png").read_bytes() == \
            (tmp_path / "sheets1" / f"{mode}.png").read_bytes()
    assert not list(tmp_path.glob(".*.partial")), "the shared work folder was left behind"
