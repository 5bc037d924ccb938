"""gsv-export of the full-size fakeckpt bundle (one export per session): parity, greedy tokens,
INT8 divergence measured, and ORT FP32/INT8 synthesis through the engine."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gsv.checkpoint.bundle import Bundle

pytestmark = pytest.mark.slow


def test_full_size_verify_report(exported_full):
    r = json.loads((exported_full / "onnx" / "verify.json").read_text())
    fp32, int8 = r["precisions"]["fp32"], r["precisions"]["int8"]
    assert r["passed"] and fp32["passed"] and int8["passed"]
    assert fp32["greedy_tokens_match"] and fp32["greedy_steps"] == 50
    assert all(g["max_rel_error"] < 1e-4 for g in fp32["graphs"].values())
    assert fp32["snr_db"] == "inf" or fp32["snr_db"] > 60
    # INT8: the divergence (if any) is measured, not hidden
    assert int8["greedy_tokens_match"] or int8["greedy_first_divergence"] is not None
    assert int8["teacher_forced_agreement"] >= 0.8
    assert set(int8["graphs"]) == {"gpt_prefill", "gpt_decode"}
    # the statically quantised decoder + vocoder, judged on their audio against PyTorch
    a8 = int8["audio_int8"]
    assert a8["passed"] and a8["snr_db"] >= 15 and a8["log_mel_l1"] <= 0.1 and a8["graphs"] == ["sovits_window", "vocoder"]


@pytest.mark.parametrize("name", ["onnx", "onnx-int8"])
def test_full_size_engine_synthesis(exported_full, name):
    from gsv.backends import open_backends
    from gsv.engine import Engine
    from gsv.sampling import SamplingOptions
    from gsv.session import Session, SynthesisOptions, TextSegment

    b = Bundle.open(exported_full)
    gpt, audio = open_backends(b, name, threads=2)

    class Voice:
        g = torch.Generator().manual_seed(1)
        prompt_phones = torch.randint(0, 732, (12,), generator=g).tolist()
        prompt_bert = torch.randn(1024, 12, generator=g)
        prompt_tokens = torch.randint(0, 1024, (20,), generator=g)
        ge = 0.1 * torch.randn(512, 1, generator=g)

    seg = TextSegment("t", torch.randint(0, 732, (10,)).tolist(), torch.zeros(1024, 10))
    chunks = []
    s = Session("full", Voice(), [seg], SynthesisOptions(sampling=SamplingOptions(seed=3, max_tokens=20)),
                sink=chunks.append)
    eng = Engine(gpt, audio)
    eng.submit(s)
    eng.run(s)
    out = np.concatenate([c.samples for c in chunks])
    assert s.finish_reason == "completed" and out.size >= 1280 and np.isfinite(out).all()


def test_int8_audio_outside_tolerance_falls_back_to_fp32(tiny_bundle, tmp_path, monkeypatch, caplog):
    """A bundle whose INT8 decoder/vocoder miss their tolerance: the export passes, installs only the INT8 GPT,
    and onnx-int8 runs the FP32 audio graphs and says why."""
    from export import verify as V
    from export.pipeline import ExportOptions, export_bundle
    from gsv.backends import open_backends
    from tests.export.conftest import clone_bundle

    monkeypatch.setattr(V, "INT8_AUDIO", V.AudioTolerance(snr_db=1000.0, log_mel_l1=0.0))
    path = clone_bundle(tiny_bundle.path, tmp_path / "b")
    report = export_bundle(path, ExportOptions(precisions=("fp32", "int8"), threads=1, progress=False))
    assert report["passed"] and report["precisions"]["int8"]["audio_int8"]["passed"] is False
    b = Bundle.open(path)
    int8 = {a["graph"] for a in b.artifacts if a["precision"] == "int8"}
    assert int8 == {"gpt_prefill", "gpt_decode"} and not (path / "onnx" / "vocoder.int8.onnx").exists()
    with caplog.at_level("WARNING"):
        _, audio = open_backends(b, "onnx-int8", threads=1)
    assert audio.vocoder_graph.path.name == "vocoder.fp32.onnx"
    assert "missed their tolerance" in caplog.text
