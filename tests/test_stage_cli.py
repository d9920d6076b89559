"""How a stage script ends on an error (stages/_cli.py): an error the user can fix is one line
on stderr and a non-zero exit, before torchrun starts workers; a bug still prints its traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, params_file
from facemogle.core.config import ConfigError
from facemogle.core.io import InputError
from stages import _cli

DVC_YAML = ROOT / "dvc.yaml"
GATING_CHOICES = "['matrix', 'matrix_scaled', 'scalar', 'static', 'none']"


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


def _gating_typo(tmp_path: Path) -> Path:
    return params_file(tmp_path / "params.yaml", {"gating": "sclar"})


def test_a_user_error_is_one_line_and_status_2(capsys):
    def main(argv):
        raise InputError("data/raw/split.json: not found (run the download stage first)")

    assert _cli.run(main) == _cli.USER_ERROR_STATUS
    assert capsys.readouterr().err == ("error: data/raw/split.json: not found (run the download "
                                       "stage first)\n")


def test_a_bad_param_names_the_params_file_and_the_valid_choices(tmp_path, capsys):
    params = _gating_typo(tmp_path)

    def main(argv):
        _cli.load_params(params, sections=("gating",))
        return 0

    with pytest.raises(ConfigError):  # main itself raises, as the tests that call it expect
        main(None)
    assert _cli.run(main) == _cli.USER_ERROR_STATUS
    assert capsys.readouterr().err == (f"error: {params}: 'gating' must be one of "
                                       f"{GATING_CHOICES}, got 'sclar'\n")


def test_a_missing_file_is_a_user_error(tmp_path, capsys):
    def main(argv):
        (tmp_path / "absent.json").read_text()

    assert _cli.run(main) == _cli.USER_ERROR_STATUS
    assert capsys.readouterr().err == (f"error: {tmp_path / 'absent.json'}: "
                                       "no such file or directory\n")


def test_a_bug_keeps_its_traceback():
    def main(argv):
        raise ValueError("shapes (3,) and (4,) not aligned")  # not the project's own class

    with pytest.raises(ValueError, match="not aligned"):
        _cli.run(main)
    assert not _cli.is_user_error(KeyError("x")) and _cli.is_user_error(ConfigError("x"))


def test_a_stage_with_a_param_typo_prints_one_line_without_a_traceback(tmp_path):
    params = _gating_typo(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "stages.parse_masks", "--data", str(tmp_path / "raw"), "--out",
         str(tmp_path / "labels"), "--metrics", str(tmp_path / "classes.json"), "--params",
         str(params)], cwd=ROOT, env=_env(), check=False, capture_output=True, text=True,
        timeout=300)
    assert result.returncode == _cli.USER_ERROR_STATUS
    assert result.stderr == (f"error: {params}: 'gating' must be one of {GATING_CHOICES}, got "
                             f"'sclar'\n")
    assert not (tmp_path / "labels").exists()


def test_params_are_checked_before_torchrun_starts_the_workers(tmp_path):
    """torchrun reports any failed worker with a traceback of its own, so every torchrun stage
    of dvc.yaml checks the params first, and a typo ends there with its one line."""
    params = _gating_typo(tmp_path)
    result = subprocess.run(
        ["/bin/bash", "--noprofile", "--norc", "-c",
         f"{sys.executable} -m stages.check_params --params {params} && echo workers started"],
        cwd=ROOT, env=_env(), check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == _cli.USER_ERROR_STATUS
    assert result.stdout == ""
    assert result.stderr == (f"error: {params}: 'gating' must be one of {GATING_CHOICES}, got "
                             f"'sclar'\n")
    commands = [cmd for cmd in re.findall(r"cmd: >-\n((?: +.*\n)+)", DVC_YAML.read_text())
                if "torchrun" in cmd]
    assert len(commands) == 3
    for cmd in commands:
        assert " ".join(cmd.split()).startswith("python -m stages.check_params && torchrun ")
