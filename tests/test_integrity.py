"""Saved weights carry a SHA-256 manifest: a damaged file stops loading with an error naming it,
a resume skips a damaged checkpoint for the newest sound one, and a failed write leaves nothing."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from facemogle.app.pipeline import FaceMoGLEPipeline
from facemogle.base.standin import tiny_transformer
from facemogle.core.config import LoraConfig, ModelConfig
from facemogle.core.io import (
    MANIFEST_FILE,
    InputError,
    WriteError,
    atomic_path,
    load_safetensors,
    read_json,
    verify_manifest,
    write_manifest,
)
from facemogle.models.facemogle import FaceMoGLE
from facemogle.pretrain.phase_store import PhaseStore
from facemogle.training import checkpoint
from facemogle.training.checkpoint import (
    find_resumable,
    load_model_weights,
    load_training_state,
    save_model,
    save_training_state,
)

DEMO_MODEL = Path(__file__).parent / "assets" / "demo_model"
CONFIG = {"train": {"steps": 2}}


def tiny_model() -> FaceMoGLE:
    torch.manual_seed(0)
    return FaceMoGLE.build(tiny_transformer(), ModelConfig(), LoraConfig(),
                           experts="global_local", gating="matrix")


def flip_last_byte(path: Path) -> None:
    """Flip a byte of the last tensor's data (a safetensors file ends with its data buffer), so
    the header stays valid and safetensors alone would load the file."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_manifest_records_every_file_and_refuses_a_folder_without_one(tmp_path):
    (tmp_path / "sub").mkdir()
    save_file({"w": torch.arange(4.0)}, str(tmp_path / "w.safetensors"))
    (tmp_path / "sub" / "config.json").write_text("{}\n")
    write_manifest(tmp_path)
    manifest = read_json(tmp_path / MANIFEST_FILE)
    assert manifest["sha256"] == {
        name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
        for name in ("sub/config.json", "w.safetensors")}
    assert manifest["bytes"]["sub/config.json"] == 3
    assert verify_manifest(tmp_path) is True
    (tmp_path / "sub" / "config.json").write_text("[]\n")  # same size, other bytes
    with pytest.raises(InputError, match=r"sub/config.json: sha256 [0-9a-f]{64}, expected"):
        verify_manifest(tmp_path)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    assert verify_manifest(legacy, required=False) is False
    with pytest.raises(InputError, match=r"legacy/manifest.json: missing"):
        verify_manifest(legacy)


def test_a_flipped_byte_inside_a_tensor_stops_loading_naming_the_file(tmp_path):
    save_model(tmp_path / "model", tiny_model(), CONFIG)
    flip_last_byte(tmp_path / "model" / "mogle.safetensors")
    load_safetensors(tmp_path / "model" / "mogle.safetensors")  # safetensors itself accepts it
    with pytest.raises(InputError, match=r"mogle\.safetensors: sha256 [0-9a-f]{64}, expected"):
        load_model_weights(tmp_path / "model", tiny_model())
    # The pipeline checks before it reads config.json (which has no base_manifest here).
    with pytest.raises(InputError, match=r"mogle\.safetensors: sha256"):
        FaceMoGLEPipeline.from_pretrained(tmp_path / "model")


def test_a_truncated_file_is_named_with_its_expected_size(tmp_path):
    save_model(tmp_path / "model", tiny_model(), CONFIG)
    lora = tmp_path / "model" / "lora.safetensors"
    size = lora.stat().st_size
    lora.write_bytes(lora.read_bytes()[: size // 2])
    with pytest.raises(InputError, match=rf"lora\.safetensors: unexpected size, {size // 2} "
                                         rf"bytes where .* records {size}"):
        load_model_weights(tmp_path / "model", tiny_model())
    with pytest.raises(InputError, match=r"lora\.safetensors: not a readable safetensors file"):
        load_safetensors(lora)  # without a manifest too: never a raw SafetensorError


def _phase_parts():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 1), torch.Generator()


def test_phase_store_refuses_a_damaged_file_with_or_without_a_manifest(tmp_path):
    store = PhaseStore(tmp_path / "vae", 5, {"lr": 1})
    store.save(1, *_phase_parts())
    assert store.restore(*_phase_parts()) == 1
    flip_last_byte(tmp_path / "vae" / "model.safetensors")
    with pytest.raises(InputError, match=r"vae/model\.safetensors: sha256"):
        store.restore(*_phase_parts())
    # A store saved before manifests: a header safetensors cannot parse is still named.
    (tmp_path / "vae" / MANIFEST_FILE).unlink()
    (tmp_path / "vae" / "model.safetensors").write_bytes(b"\xff" * 8 + b"not a header")
    with pytest.raises(InputError, match=r"vae/model\.safetensors: not a readable safetensors"):
        store.restore(*_phase_parts())


def test_resume_skips_a_damaged_newest_checkpoint_and_says_so(tmp_path, caplog):
    model = tiny_model()
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(0)
    for step in (1, 2):
        save_training_state(tmp_path, step, model, optimizer, generator, [(step, 0.5)], CONFIG)
    assert find_resumable(tmp_path, CONFIG) == tmp_path / "step-000002"
    flip_last_byte(tmp_path / "step-000002" / "lora.safetensors")
    with caplog.at_level(logging.WARNING, logger="facemogle.training.checkpoint"):
        found = find_resumable(tmp_path, CONFIG)
    assert found == tmp_path / "step-000001"
    assert f"skipping checkpoint {tmp_path / 'step-000002'}: " in caplog.text
    assert "lora.safetensors: sha256" in caplog.text
    assert load_training_state(found, tiny_model(), optimizer, generator) == (1, [(1, 0.5)])
    (found / MANIFEST_FILE).unlink()  # a checkpoint without a manifest is not trusted either
    assert find_resumable(tmp_path, CONFIG) is None
    assert "step-000001: " in caplog.text and "manifest.json: missing" in caplog.text


def test_a_write_that_fails_part_way_leaves_no_output(tmp_path, monkeypatch):
    model = tiny_model()
    save_model(tmp_path / "kept", model, CONFIG)
    kept = {p.name: p.read_bytes() for p in (tmp_path / "kept").iterdir()}

    def disk_full(tensors, filename, metadata=None):
        save_file(tensors, filename, metadata)
        Path(filename).write_bytes(Path(filename).read_bytes()[:100])  # part of the file
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    with pytest.raises(WriteError, match="No space left") as raised:
        save_model(tmp_path / "run" / "model", model, CONFIG)
    assert str(raised.value).startswith(f"{tmp_path / 'run' / 'model'}: could not be written")
    assert list((tmp_path / "run").iterdir()) == []  # no model folder, no temporary one
    with pytest.raises(OSError, match="No space left"):
        save_model(tmp_path / "kept", model, {"train": {"steps": 3}})
    assert {p.name: p.read_bytes() for p in (tmp_path / "kept").iterdir()} == kept
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.1)
    with pytest.raises(OSError, match="No space left"):
        save_training_state(tmp_path / "checkpoints", 1, model, optimizer, torch.Generator(),
                            [], CONFIG)
    assert list((tmp_path / "checkpoints").iterdir()) == []
    assert not list(tmp_path.glob(".*"))  # no temporary sibling left behind


@pytest.mark.parametrize("error", [
    OSError(122, "Disk quota exceeded"),
    SafetensorError("Error while serializing: I/O error: File too large (os error 27)")],
    ids=["quota", "safetensors"])
def test_a_write_without_space_is_named_and_other_errors_pass_unchanged(tmp_path, error):
    with pytest.raises(WriteError, match=re.escape(f"{tmp_path / 'out.bin'}: could not be")):
        with atomic_path(tmp_path / "out.bin") as tmp:
            tmp.write_bytes(b"part")
            raise error
    with pytest.raises(PermissionError):  # not a want of space: raised as it was
        with atomic_path(tmp_path / "out.bin"):
            raise PermissionError(13, "Permission denied")
    assert list(tmp_path.iterdir()) == []


def test_the_committed_demo_model_passes_its_manifest():
    assert verify_manifest(DEMO_MODEL) is True
