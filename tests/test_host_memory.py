"""The per-block memory model of `python -m facemogle.bench.host_memory`."""

from __future__ import annotations

import pytest

from facemogle.bench import host_memory


def test_training_fit_recovers_known_coefficients_and_predicts_full_depth():
    truth = {"c0": 3.0e9, "c1": 0.4e9, "a_d": 0.25e9, "a_s": 0.1e9, "w_d": 0.68e9, "w_s": 0.28e9}
    peaks = {(blocks, b): host_memory.predict_training(truth, blocks, b)
             for blocks, b in host_memory.TRAIN_POINTS}
    coef = host_memory.fit_training(peaks, (truth["w_d"], truth["w_s"]))
    for key, value in truth.items():
        assert coef[key] == pytest.approx(value)
    full = host_memory.predict_training(coef, (19, 38), 4)
    assert full == pytest.approx(3.0e9 + 1.6e9 + 19 * (0.68e9 + 1.0e9) + 38 * (0.28e9 + 0.4e9))


def test_block_bytes_count_frozen_bf16_and_lora_state():
    runs = {(1, 1): {"parameters": {"transformer": 100, "lora": 10}},
            (2, 1): {"parameters": {"transformer": 150, "lora": 13}},
            (1, 2): {"parameters": {"transformer": 120, "lora": 11}}}
    w_d, w_s = host_memory.block_bytes(runs)
    copies = host_memory.LORA_STATE_COPIES
    assert (w_d, w_s) == (2 * 50 + 4 * copies * 3, 2 * 20 + 4 * copies * 1)


def test_sampling_fit_is_exact_on_three_depths():
    peaks = {(1, 1): 10.0, (2, 1): 13.0, (1, 2): 11.5}
    coef = host_memory.fit_sampling(peaks)
    assert (coef["per_double"], coef["per_single"]) == pytest.approx((3.0, 1.5))
    assert coef["c"] == pytest.approx(5.5)
