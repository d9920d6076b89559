"""One resumable-state helper (`facemogle.core.resume`) behind the pretraining phases and the
train stage's checkpoints, and the manifest check of every folder they and `save_model` write:
a truncated, garbage or byte-flipped file stops loading with an error naming it and what the
manifest records; a resume skips a damaged newest checkpoint for the previous one."""

from __future__ import annotations

import json
import logging
import re
import struct
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from facemogle.app.pipeline import FaceMoGLEPipeline
from facemogle.base.standin import tiny_transformer
from facemogle.core.config import params_from_dict, to_dict
from facemogle.core.io import MANIFEST_FILE, InputError, load_safetensors, read_json
from facemogle.core.resume import check_folder, load_state, read_record, save_state
from facemogle.pretrain.phase_store import PhaseStore
from facemogle.training.checkpoint import (
    find_resumable,
    load_model_weights,
    load_trained,
    load_training_state,
    publish_model,
    save_model,
    save_training_state,
)
from facemogle.training.loop import train
from test_training import fake_cache, tiny_model

CONFIG = {"train": {"steps": 2}}


# -- faults ------------------------------------------------------------------------------------

def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garbage(path: Path) -> None:
    path.write_bytes(b"this is not a safetensors file\n" * 40)


def flip_mid_tensor(path: Path) -> None:
    """Flip one byte in the middle of the data buffer (after the 8-byte header length and the
    JSON header), so the file stays valid safetensors with one changed tensor value."""
    data = bytearray(path.read_bytes())
    start = 8 + struct.unpack("<Q", data[:8])[0]
    data[start + (len(data) - start) // 2] ^= 0x01
    path.write_bytes(bytes(data))


FAULTS = {
    # fault: what the error says, after "<file>: "
    truncate: r"unexpected size, \d+ bytes where .*manifest\.json records \d+; the file is "
              r"truncated or replaced: restore it",
    garbage: r"unexpected size, 1240 bytes where .*manifest\.json records \d+; the file is "
             r"truncated or replaced",
    flip_mid_tensor: r"sha256 [0-9a-f]{64}, expected [0-9a-f]{64} \(recorded in "
                     r".*manifest\.json\); the file is damaged .*: restore it",
}


def error_for(fault, path: Path) -> str:
    return rf"{path}: {FAULTS[fault]}"


# -- the helper --------------------------------------------------------------------------------

def _trained_parts():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    return model, optimizer, torch.Generator().manual_seed(3)


def test_a_state_folder_round_trips_and_lists_every_file_in_its_manifest(tmp_path):
    _, optimizer, generator = _trained_parts()
    torch.rand(5, generator=generator)  # a generator part-way through its stream

    def write_model(tmp: Path) -> None:
        (tmp / "model.txt").write_text("weights\n")

    folder = save_state(tmp_path / "s", 7, optimizer, generator, write_model=write_model,
                        record_file="record.json", record={"key": {"lr": 1}})
    assert sorted(p.name for p in folder.iterdir()) == [
        MANIFEST_FILE, "model.txt", "optimizer.safetensors", "record.json", "rng.safetensors"]
    assert sorted(read_json(folder / MANIFEST_FILE)["sha256"]) == [
        "model.txt", "optimizer.safetensors", "record.json", "rng.safetensors"]
    assert check_folder(folder) is True
    record = read_record(folder, "record.json")
    assert record["step"] == 7 and record["key"] == {"lr": 1}
    other = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=1e-2)
    restored = torch.Generator()
    assert load_state(folder, other, restored, record) == 7
    torch.testing.assert_close(other.state_dict()["state"][0]["exp_avg"],
                               optimizer.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(torch.rand(4, generator=restored), torch.rand(4, generator=generator))
    assert read_record(tmp_path / "none", "record.json") is None


def test_a_phase_store_is_a_state_folder(tmp_path):
    model, optimizer, generator = _trained_parts()
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    PhaseStore(tmp_path / "vae", 5, {"lr": 1}).save(3, model, optimizer, schedule, generator)
    state = read_record(tmp_path / "vae", "state.json")
    assert (state["step"], state["key"]) == (3, {"lr": 1})
    assert set(state) == {"step", "key", "schedule", "elapsed", "optimizer"}
    assert check_folder(tmp_path / "vae")
    saved = load_safetensors(tmp_path / "vae" / "model.safetensors")
    torch.testing.assert_close(saved["weight"], model.weight.detach())


@pytest.mark.parametrize("fault", list(FAULTS), ids=lambda f: f.__name__)
def test_a_damaged_phase_state_stops_the_restore_naming_the_file(tmp_path, fault):
    model, optimizer, generator = _trained_parts()
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    store = PhaseStore(tmp_path / "vae", 5, {"lr": 1})
    store.save(1, model, optimizer, schedule, generator)
    fault(tmp_path / "vae" / "optimizer.safetensors")
    with pytest.raises(InputError, match=error_for(fault, tmp_path / "vae" /
                                                    "optimizer.safetensors")):
        store.restore(*_trained_parts()[:2], schedule, torch.Generator())


# -- model folders -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["lora.safetensors", "mogle.safetensors"])
@pytest.mark.parametrize("fault", list(FAULTS), ids=lambda f: f.__name__)
def test_a_damaged_model_file_is_named_by_every_loader(tmp_path, fault, name):
    save_model(tmp_path / "model", tiny_model(), CONFIG)
    assert (tmp_path / "model" / MANIFEST_FILE).is_file()
    path = tmp_path / "model" / name
    fault(path)
    if fault is flip_mid_tensor:
        load_safetensors(path)  # safetensors alone loads the changed tensor
    with pytest.raises(InputError, match=error_for(fault, path)):
        load_model_weights(tmp_path / "model", tiny_model())
    with pytest.raises(InputError, match=error_for(fault, path)):
        load_trained(tiny_transformer(), tmp_path / "model", params_from_dict({}))
    with pytest.raises(InputError, match=error_for(fault, path)):
        FaceMoGLEPipeline.from_pretrained(tmp_path / "model")


def test_a_model_folder_without_a_manifest_is_refused_naming_it(tmp_path):
    model = tiny_model()
    save_model(tmp_path / "model", model, CONFIG)
    (tmp_path / "model" / MANIFEST_FILE).unlink()
    with pytest.raises(InputError, match=r"manifest\.json: missing"):
        load_model_weights(tmp_path / "model", tiny_model())


def test_save_model_moves_its_manifest_in_last(tmp_path, monkeypatch):
    moved = []
    replace = Path.replace

    def record(self, target):
        moved.append(Path(target).name)
        return replace(self, target)

    monkeypatch.setattr(Path, "replace", record)
    save_model(tmp_path / "model", tiny_model(), CONFIG)
    assert moved[-1] == MANIFEST_FILE and len(moved) == 4


def test_publish_model_renames_the_model_out_of_the_work_folder(tmp_path):
    """The train stage's last move: the model files `save_model` wrote beside the checkpoints
    go, renamed (same inode, same bytes), into a fresh output folder; the work folder, its
    checkpoints with it, is removed."""
    work, out = tmp_path / ".resume" / "model", tmp_path / "model"
    _checkpoints(work / "checkpoints")
    save_model(work, tiny_model(), CONFIG)
    written = {p.name: p.read_bytes() for p in work.iterdir() if p.is_file()}
    inode = (work / "lora.safetensors").stat().st_ino
    out.mkdir()
    (out / "stale.txt").write_text("an earlier run's file")
    assert publish_model(work, out) == out
    assert {p.name: p.read_bytes() for p in out.iterdir()} == written
    assert sorted(written) == ["config.json", "lora.safetensors", MANIFEST_FILE,
                               "mogle.safetensors"]
    assert (out / "lora.safetensors").stat().st_ino == inode
    assert not work.exists() and check_folder(out)


def test_publish_model_refuses_a_damaged_model_and_keeps_the_work_folder(tmp_path):
    work, out = tmp_path / "work", tmp_path / "model"
    save_model(work, tiny_model(), CONFIG)
    flip_mid_tensor(work / "mogle.safetensors")
    with pytest.raises(InputError, match=error_for(flip_mid_tensor, work /
                                                    "mogle.safetensors")):
        publish_model(work, out)
    assert not out.exists() and (work / "mogle.safetensors").exists()
    with pytest.raises(ValueError, match="lies inside"):
        publish_model(out / "work", out)


# -- checkpoints -------------------------------------------------------------------------------

def _checkpoints(root: Path, steps=(1, 2)) -> None:
    model = tiny_model()
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(0)
    for step in steps:
        save_training_state(root, step, model, optimizer, generator, [(step, 0.5)], CONFIG)


@pytest.mark.parametrize("name", ["lora.safetensors", "mogle.safetensors", "rng.safetensors"])
@pytest.mark.parametrize("fault", list(FAULTS), ids=lambda f: f.__name__)
def test_a_damaged_newest_checkpoint_is_skipped_with_its_fault(tmp_path, caplog, fault, name):
    _checkpoints(tmp_path)
    assert (tmp_path / "step-000002" / MANIFEST_FILE).is_file()
    fault(tmp_path / "step-000002" / name)
    with caplog.at_level(logging.WARNING, logger="facemogle.training.checkpoint"):
        found = find_resumable(tmp_path, CONFIG)
    assert found == tmp_path / "step-000001"
    assert f"skipping checkpoint {tmp_path / 'step-000002'}: " in caplog.text
    assert re.search(error_for(fault, tmp_path / "step-000002" / name), caplog.text)
    model = tiny_model()
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.1)
    assert load_training_state(found, model, optimizer, torch.Generator()) == (1, [(1, 0.5)])


def test_a_damaged_config_is_not_taken_for_another_run(tmp_path, caplog):
    """A changed byte in config.json that keeps it valid JSON fails the manifest check (and is
    reported) instead of passing as a checkpoint of other params."""
    _checkpoints(tmp_path)
    config = tmp_path / "step-000002" / "config.json"
    config.write_text(config.read_text().replace("2", "3"))
    with caplog.at_level(logging.WARNING):
        assert find_resumable(tmp_path, CONFIG) == tmp_path / "step-000001"
    assert "step-000002/config.json: sha256" in caplog.text


def test_no_sound_checkpoint_means_a_fresh_start(tmp_path, caplog):
    _checkpoints(tmp_path)
    for step in (1, 2):
        flip_mid_tensor(tmp_path / f"step-00000{step}" / "mogle.safetensors")
    with caplog.at_level(logging.WARNING):
        assert find_resumable(tmp_path, CONFIG) is None
    assert caplog.text.count("skipping checkpoint") == 2


def test_train_resumes_from_the_newest_sound_checkpoint(tmp_path, caplog):
    """Killed after step 3 with step 3's checkpoint damaged: the rerun resumes at step 2, says
    which checkpoint it skipped, and ends where a run straight through ends."""
    def run(out, steps):
        p = params_from_dict({"train": {"steps": steps, "batch_size": 2, "checkpoint_every": 1,
                                        "log_every": 1, "optimizer": "adamw", "lr": 1e-3,
                                        "mixed_precision": "fp32"}})
        resolved = {"train": to_dict(p.train) | {"steps": 4}}
        return train(tiny_model(), fake_cache(), p, out, accelerator=Accelerator(cpu=True),
                     resolved=resolved)

    straight = run(tmp_path / "a", 4)
    run(tmp_path / "b", 3)
    checkpoints = tmp_path / "b" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-000002", "step-000003"]
    flip_mid_tensor(checkpoints / "step-000003" / "mogle.safetensors")
    with caplog.at_level(logging.INFO):
        resumed = run(tmp_path / "b", 4)
    assert f"skipping checkpoint {checkpoints / 'step-000003'}: " in caplog.text
    assert f"resuming from {checkpoints / 'step-000002'} at step 2" in caplog.text
    assert [s for s, _ in resumed] == [1, 2, 3, 4]
    assert [v for _, v in resumed] == pytest.approx([v for _, v in straight], rel=1e-5)
    assert json.loads((checkpoints / "step-000004" / "trainer.json").read_text())["step"] == 4
    assert check_folder(tmp_path / "b") and check_folder(checkpoints / "step-000003")
