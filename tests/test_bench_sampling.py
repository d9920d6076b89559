"""The sampling benchmark's bookkeeping: its quality rule and resuming a cut run."""

from __future__ import annotations

from pathlib import Path

import pytest

from facemogle.bench import sampling


def _figures(loop_s: float, miou: float) -> dict[str, float]:
    return {"loop_s": loop_s, "mask_miou": miou, "attribute_acc": 0.7, "fd_parser": 0.02}


def test_summary_compares_every_option_with_the_reference_seeds_spread():
    result = {"modes": ["multimodal"], "options": {
        "before, seed +0": {"modes": {"multimodal": _figures(100.0, 0.46)}},
        "before, seed +1": {"modes": {"multimodal": _figures(60.0, 0.48)}},
        "before, seed +2": {"modes": {"multimodal": _figures(50.0, 0.47)}},
        "residual cache 0.3": {"modes": {"multimodal": _figures(20.0, 0.485)}},
        "residual cache 0.4": {"modes": {"multimodal": _figures(15.0, 0.50)}},
    }}
    sampling.summarise(result, seeds=3)
    near = result["options"]["residual cache 0.3"]["modes"]["multimodal"]
    far = result["options"]["residual cache 0.4"]["modes"]["multimodal"]
    # against the median reference loop (60 s), not the slow first seed (100 s)
    assert near["speedup"] == pytest.approx(3.0) and near["within_spread"]  # 0.46-0.48 +- 0.01
    assert not far["within_spread"]
    assert result["spread"]["multimodal"]["mask_miou"] == [0.46, 0.48, 0.47]


def test_resume_refuses_a_result_of_other_settings_or_another_processor():
    mine = {"images": 128, "modes": ["multimodal"], "sample": {"steps": 28},
            "model_fingerprint": "ab", "machine": {"cpu": "AMD EPYC"}, "options": {}}
    earlier = {**mine, "options": {"before, seed +0": {}}}
    assert sampling.resumed_options(earlier, mine, Path("r.json")) == {"before, seed +0": {}}
    with pytest.raises(SystemExit, match="r.json: --resume needs the same modes"):
        sampling.resumed_options({**earlier, "modes": ["base"]}, mine, Path("r.json"))
    with pytest.raises(SystemExit, match="r.json: --resume needs the same model_fingerprint"):
        sampling.resumed_options({**earlier, "model_fingerprint": "cd"}, mine, Path("r.json"))
    with pytest.raises(SystemExit, match="measured on Intel"):
        sampling.resumed_options({**earlier, "machine": {"cpu": "Intel Xeon"}}, mine,
                                 Path("r.json"))


def test_progress_file_sits_beside_the_result():
    assert sampling.partial_path(Path("m/x.json")) == Path("m/x.partial.json")
