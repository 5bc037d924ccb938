"""Smoke test of the demo path (make demo) with a reduced step count."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("version", ["v2", "v2ProPlus"])
def test_demo_end_to_end(tmp_path, version):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make setup installs it)")
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py"), "--out", str(tmp_path), "--steps", "10",
                        "--bench-requests", "2", "--pretrained", str(tmp_path / "no-pretrained"), "--version", version],
                       capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["base"] == "tiny" and summary["model_version"] == version
    assert "tensorrt" in summary["tensorrt"].lower()  # no GPU here: the demo reports why no engine was built
    audio, sr = sf.read(tmp_path / "demo.wav")
    assert sr == 32000 and audio.size > 0
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert [lv["concurrency"] for lv in bench["levels"]] == [1, 2, 4] and all(not lv["errors"] for lv in bench["levels"])
    assert (tmp_path / "bench.png").stat().st_size > 1000
