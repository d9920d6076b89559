"""The per-stage time and memory record of `python -m facemogle.bench.stage_memory`."""

from __future__ import annotations

import io
import json
import sys

import pytest

from facemogle.bench import stage_memory

# A stand-in for `dvc repro`: two stages, the first holding 300 MB in a child process for a
# second, the second holding nothing; then it exits with status 3.
FAKE_REPRO = """
import subprocess, sys, time
print("Running stage 'big':", flush=True)
subprocess.run([sys.executable, "-c",
                "import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
                "time.sleep(1.5)"], check=True)
print("Running stage 'small':", flush=True)
subprocess.run([sys.executable, "-c", "import time; time.sleep(1.0)"], check=True)
sys.exit(3)
"""


def test_stages_get_their_own_time_and_peak(tmp_path):
    out = tmp_path / "stages.json"
    echo = io.StringIO()
    rc = stage_memory.run([sys.executable, "-c", FAKE_REPRO], out, interval=0.05, echo=echo)
    assert rc == 3
    assert "Running stage 'small'" in echo.getvalue()
    record = json.loads(out.read_text())
    assert record["returncode"] == 3
    big, small = record["stages"]
    assert (big["stage"], small["stage"]) == ("big", "small")
    assert big["seconds"] >= 1.5 and small["seconds"] >= 1.0
    assert big["peak_process_rss_bytes"] > 300 * 2**20
    assert big["peak_rss_bytes"] >= big["peak_process_rss_bytes"]
    assert small["peak_process_rss_bytes"] < 100 * 2**20


def test_a_command_is_required(tmp_path, capsys):
    with pytest.raises(SystemExit):
        stage_memory.main(["--out", str(tmp_path / "x.json")])
    assert "after --" in capsys.readouterr().err
