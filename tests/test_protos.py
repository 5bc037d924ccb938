"""The committed gRPC stubs are exactly what protoc generates from the .proto."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_generated_stubs_are_up_to_date(tmp_path):
    work = tmp_path / "src"
    (work / "protos/tts/v1").mkdir(parents=True)
    shutil.copy(REPO / "protos/tts/v1/tts.proto", work / "protos/tts/v1/tts.proto")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", ".", "--python_out=.", "--grpc_python_out=.",
                    "--pyi_out=.", "protos/tts/v1/tts.proto"], cwd=work, check=True)
    for name in ("tts_pb2.py", "tts_pb2_grpc.py", "tts_pb2.pyi"):
        assert (work / "protos/tts/v1" / name).read_text() == (REPO / "protos/tts/v1" / name).read_text(), \
            f"{name} is stale: run `make protos`"
