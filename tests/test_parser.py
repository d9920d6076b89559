"""The small face parser: shapes, save/load round trip, bad directories, that it can learn."""

from __future__ import annotations

import json

import pytest
import torch

from facemogle.base.segmenter import FaceParser, load_parser, save_parser
from facemogle.core.io import InputError
from facemogle.core.labels import NUM_LABELS


@pytest.fixture
def parser() -> FaceParser:
    torch.manual_seed(0)
    return FaceParser(width=8).eval()


@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_shapes(parser, size):
    images = torch.rand(2, 3, *size)
    logits = parser(images)
    labels = parser.parse(images)
    features = parser.features(images)
    assert logits.shape == (2, NUM_LABELS, *size)
    assert labels.shape == (2, *size) and labels.dtype == torch.uint8
    assert int(labels.max()) < NUM_LABELS
    assert torch.equal(labels, logits.argmax(1).to(torch.uint8))
    assert features.shape == (2, parser.feature_dim) == (2, 32)
    assert features.dtype == torch.float32


def test_features_tell_images_apart(parser):
    images = torch.stack([torch.zeros(3, 32, 32), torch.ones(3, 32, 32)])
    features = parser.features(images)
    assert (features[0] - features[1]).abs().max() > 1e-3


def test_save_load_round_trip_is_bitwise(parser, tmp_path):
    save_parser(parser, tmp_path / "parser")
    loaded = load_parser(tmp_path / "parser")
    assert json.loads((tmp_path / "parser" / "config.json").read_text()) == {
        "width": 8, "num_classes": NUM_LABELS}
    for (name, a), (_, b) in zip(parser.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(parser(images), loaded(images))
    assert not loaded.training


def test_save_replaces_directory(parser, tmp_path):
    (tmp_path / "parser").mkdir()
    (tmp_path / "parser" / "stale.txt").write_text("old")
    save_parser(parser, tmp_path / "parser")
    assert sorted(p.name for p in (tmp_path / "parser").iterdir()) == ["config.json",
                                                                       "model.safetensors"]


def test_load_errors_name_the_file(parser, tmp_path):
    with pytest.raises(InputError, match="config.json"):
        load_parser(tmp_path)
    save_parser(parser, tmp_path / "p")
    (tmp_path / "p" / "model.safetensors").unlink()
    with pytest.raises(InputError, match="model.safetensors"):
        load_parser(tmp_path / "p")
    (tmp_path / "p" / "config.json").write_text('{"width": 8}')
    with pytest.raises(InputError, match="num_classes"):
        load_parser(tmp_path / "p")


def test_learns_a_toy_segmentation():
    """A few steps fit two flat-coloured halves: the parse matches the labels afterwards."""
    torch.manual_seed(0)
    parser = FaceParser(width=8)
    images = torch.zeros(4, 3, 16, 16)
    images[:, 0, :, 8:] = 1.0  # right half red
    target = torch.zeros(4, 16, 16, dtype=torch.long)
    target[:, :, 8:] = 13  # hair
    opt = torch.optim.Adam(parser.parameters(), lr=1e-2)
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(parser(images), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (parser.parse(images).long() == target).float().mean() > 0.95
