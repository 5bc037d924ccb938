"""TensorRT engines (FP16) and the native TensorRT backend: run only with a CUDA GPU and tensorrt."""
from __future__ import annotations

import json

import pytest
import torch

from gsv.checkpoint.bundle import Bundle
from tests.export.conftest import clone_bundle

pytestmark = [pytest.mark.gpu, pytest.mark.trt]


@pytest.fixture(scope="module")
def trt_bundle(tiny_bundle, tmp_path_factory):
    from export.pipeline import ExportOptions, export_bundle

    path = clone_bundle(tiny_bundle.path, tmp_path_factory.mktemp("trt") / "tiny")
    export_bundle(path, ExportOptions(precisions=("fp32",), trt=True, progress=False))
    return path


def test_engines_in_manifest(trt_bundle):
    import tensorrt as trt

    b = Bundle.open(trt_bundle)
    engines = [a for a in b.artifacts if a["kind"] == "trt"]
    major, minor = torch.cuda.get_device_capability(0)
    assert engines and all(a["gpu_arch"] == f"sm{major}{minor}" and a["trt_version"] == trt.__version__ for a in engines)
    assert all((trt_bundle / a["file"]).is_file() and a["file"].endswith(".plan") for a in engines)
    assert (trt_bundle / "trt" / "timing.cache").is_file()
    r = json.loads((trt_bundle / "onnx" / "verify.json").read_text())
    assert r["trt"]["passed"]


def test_trt_backend_synthesizes(trt_bundle):
    import numpy as np

    from gsv.backends import open_backends
    from gsv.engine import Engine
    from gsv.sampling import SamplingOptions
    from gsv.session import Session, SynthesisOptions
    from tests.core.test_engine import make_segments, make_voice

    gpt, audio = open_backends(Bundle.open(trt_bundle), "trt")
    chunks = []
    s = Session("trt", make_voice(2), make_segments(2), SynthesisOptions(sampling=SamplingOptions(seed=2, max_tokens=30)),
                sink=chunks.append)
    eng = Engine(gpt, audio)
    eng.submit(s)
    eng.run(s)
    out = np.concatenate([c.samples for c in chunks])
    assert s.finish_reason == "completed" and np.isfinite(out).all()


def test_onnx_cuda_backend_matches_cpu(trt_bundle):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    from gsv.backends import open_backends

    b = Bundle.open(trt_bundle)
    cpu, gpu = open_backends(b, "onnx", device="cpu"), open_backends(b, "onnx", device="cuda")
    phones, bert = torch.randint(0, 732, (1, 9)), torch.randn(1, 32, 9)
    args = (phones, torch.tensor([9]), bert, torch.randint(0, 1024, (1, 5)), torch.tensor([5]))
    torch.testing.assert_close(gpu[0].prefill(*args)[0].cpu(), cpu[0].prefill(*args)[0], atol=1e-4, rtol=1e-3)
