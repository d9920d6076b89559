"""Training pieces: condition dropout, batch sharding, and exact resume from a checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate import Accelerator

from facemogle.base.standin import tiny_transformer
from facemogle.cache.store import LatentCache
from facemogle.core.config import LoraConfig, ModelConfig, params_from_dict, to_dict
from facemogle.models.facemogle import FaceMoGLE
from facemogle.training.checkpoint import load_model_weights
from facemogle.training.loop import train
from facemogle.training.step import make_batch, make_optimizer, training_loss

LATENT, TOKENS, T, D = 8, 16, 5, 24


def fake_cache(n: int = 6) -> LatentCache:
    g = torch.Generator().manual_seed(0)
    slot_index = torch.arange(n * 20).reshape(n, 20)
    slot_index[:, 5] = -1  # label 4 absent everywhere: the empty slot is used
    counts = torch.full((n,), 2)
    return LatentCache(
        ids=[f"{i:03d}" for i in range(n)], image=torch.randn(n, TOKENS, 64, generator=g),
        slot_latents=torch.randn(n * 20, TOKENS, 64, generator=g), slot_index=slot_index,
        text_seq=torch.randn(2 * n, T, D, generator=g),
        text_pooled=torch.randn(2 * n, D, generator=g),
        caption_offsets=torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]),
        empty_slot=torch.zeros(TOKENS, 64), empty_text_seq=torch.zeros(T, D),
        empty_text_pooled=torch.zeros(D), latent_size=LATENT)


def test_condition_dropout_rates_and_rules():
    cache = fake_cache()
    cfg = params_from_dict({"train": {"text_drop": 0.3, "local_mask_drop": 0.2,
                                      "mask_drop": 0.25}}).train
    rows = torch.randint(6, (4000,), generator=torch.Generator().manual_seed(1))
    batch = make_batch(cache, rows, cfg, torch.Generator().manual_seed(2))
    text_dropped = (batch.text == 0).all(dim=(1, 2)).float().mean()
    assert abs(text_dropped - 0.3) < 0.03
    empty = (batch.cond_latents == 0).all(dim=(2, 3))  # (B, 20): slot is the empty slot
    whole = empty.all(dim=1)  # (B,): the whole mask dropped, condition tokens kept
    assert abs(whole.float().mean() - 0.25) < 0.03
    assert not empty[~whole, 0].any()  # the colour mask is dropped only with the whole mask
    local_dropped = empty[~whole, 1:].float()  # (B', 19), samples that keep their mask
    assert abs(local_dropped[:, [i for i in range(19) if i != 4]].mean() - 0.2) < 0.02
    assert local_dropped[:, 4].all()  # absent label -> empty slot latent
    assert batch.cond_latents.shape[1] == 20  # every sample keeps its 20 condition slots
    assert 0 < batch.sigma.min() and batch.sigma.max() < 1


def test_shards_of_a_global_batch_partition_it():
    cache = fake_cache()
    cfg = params_from_dict({}).train
    batch = make_batch(cache, torch.arange(6), cfg, torch.Generator().manual_seed(0))
    parts = [batch.shard(r, 3) for r in range(3)]
    torch.testing.assert_close(torch.cat([p.noise for p in parts]), batch.noise)
    torch.testing.assert_close(torch.cat([p.x0 for p in parts]), batch.x0)


def tiny_model() -> FaceMoGLE:
    torch.manual_seed(0)
    transformer = tiny_transformer(joint_attention_dim=D, pooled_projection_dim=D)
    return FaceMoGLE.build(transformer, ModelConfig(), LoraConfig(), experts="global_local",
                           gating="matrix")


@pytest.mark.parametrize("optimizer", ["prodigy", "adamw"])
def test_resuming_from_a_checkpoint_equals_training_straight_through(tmp_path, optimizer):
    def params(steps):
        return params_from_dict({"train": {"steps": steps, "batch_size": 2, "checkpoint_every": 2,
                                           "log_every": 1, "optimizer": optimizer,
                                           "lr": 1.0 if optimizer == "prodigy" else 1e-3,
                                           "mixed_precision": "fp32"}})

    def run(out, steps):
        p = params(steps)
        resolved = {"train": to_dict(p.train) | {"steps": 4}}  # same config for both halves
        return train(tiny_model(), fake_cache(), p, out, accelerator=Accelerator(cpu=True),
                     resolved=resolved)

    straight = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 4)
    assert [s for s, _ in resumed] == [1, 2, 3, 4]
    assert [v for _, v in resumed] == pytest.approx([v for _, v in straight], rel=1e-5)
    a, b = tiny_model(), tiny_model()
    load_model_weights(tmp_path / "a", a)
    load_model_weights(tmp_path / "b", b)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, msg=name)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["train"]["steps"] == 4


def test_gradient_accumulation_steps_once_on_the_clipped_mean_gradient(tmp_path):
    """train.grad_accum=2: two micro-batches, then one optimizer step on the mean of their
    gradients, clipped once; the same update as done by hand (and unlike a step per batch)."""
    p = params_from_dict({"train": {"steps": 1, "batch_size": 2, "grad_accum": 2, "log_every": 1,
                                    "checkpoint_every": 1, "optimizer": "adamw", "lr": 1e-2,
                                    "grad_clip": 0.004, "mixed_precision": "fp32"}})
    cache = fake_cache()
    history = train(tiny_model(), cache, p, tmp_path / "run",
                    accelerator=Accelerator(cpu=True, gradient_accumulation_steps=2),
                    resolved={"train": to_dict(p.train)})

    model = tiny_model()
    trainable = model.trainable_parameters()
    optimizer = make_optimizer(trainable, p.train)
    generator = torch.Generator().manual_seed(p.seed)
    losses = []
    for _ in range(2):
        rows = torch.randint(len(cache.ids), (2,), generator=generator)
        batch = make_batch(cache, rows, p.train, generator)
        loss = training_loss(model, batch, latent_size=cache.latent_size,
                             guidance=p.train.guidance)
        (loss / 2).backward()
        losses.append(loss.item())
    norm = torch.nn.utils.clip_grad_norm_(trainable, p.train.grad_clip)
    assert norm > p.train.grad_clip  # the clip is active, so clipping per batch would differ
    optimizer.step()

    assert history == [(1, pytest.approx(sum(losses) / 2, rel=1e-5))]
    initial = dict(tiny_model().named_parameters())
    trained = tiny_model()
    load_model_weights(tmp_path / "run", trained)
    changed = 0
    for (name, expected), got in zip(model.named_parameters(), trained.parameters()):
        torch.testing.assert_close(got, expected, msg=name)
        changed += int(not torch.equal(got, initial[name]))
    assert changed > 0


def test_an_accelerator_with_another_accumulation_count_is_refused(tmp_path):
    p = params_from_dict({"train": {"steps": 1, "grad_accum": 2}})
    with pytest.raises(ValueError, match="train.grad_accum is 2"):
        train(tiny_model(), fake_cache(), p, tmp_path, accelerator=Accelerator(cpu=True),
              resolved={"train": to_dict(p.train)})
    assert not any(tmp_path.iterdir())
