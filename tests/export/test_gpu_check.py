"""scripts/gpu_check.sh on a machine without a GPU: exit 2 at once, one line, nothing written."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import REPO


def _has_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return r.returncode == 0 and r.stdout.startswith("GPU ")


@pytest.mark.skipif(_has_gpu(), reason="this machine has a GPU: the script would run the real check")
def test_gpu_check_without_gpu_exits_2_and_writes_nothing(tiny_bundle, tmp_path):
    out = tmp_path / "gpu-out"
    r = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), str(tiny_bundle.path), str(out)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0] and r.stdout == ""
    assert not out.exists()


def test_gpu_check_usage_error(tmp_path):
    r = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "usage" in r.stderr
