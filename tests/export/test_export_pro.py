"""gsv-export of full-size v2Pro / v2ProPlus bundles (the kit's fake files) and of tiny ones: the
speaker-verification graph, the Pro conditioning in the SoVITS graphs, parity and engine synthesis."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from export.graphs import GRAPHS, constants, input_names
from gsv.checkpoint.bundle import Bundle
from tests.export.conftest import clone_bundle


# The serving graphs plus the speaker-verification one; v2ProPlus shares v2Pro's GPT (the v2 one), so its
# export skips the GPT graphs.  The Pro `sv` input of speaker_encoder/sovits_decoder is covered by the tiny
# export below (every graph, every precision): full size adds only time there.
PRO_GRAPHS = {"v2Pro": ("gpt_prefill", "gpt_decode", "speaker_verification", "sovits_window", "vocoder"),
              "v2ProPlus": ("speaker_verification", "sovits_window", "vocoder")}


@pytest.fixture(scope="module")
def exported_full_pro(full_pro_bundle, tmp_path_factory):
    from export.pipeline import ExportOptions, export_bundle

    version = full_pro_bundle.model_version
    path = clone_bundle(full_pro_bundle.path, tmp_path_factory.mktemp("export_pro") / version)
    export_bundle(path, ExportOptions(precisions=("fp32",), graphs=PRO_GRAPHS[version], threads=2, progress=False))
    return path


@pytest.mark.slow
def test_full_size_pro_verify_report(exported_full_pro):
    b = Bundle.open(exported_full_pro)
    r = json.loads((exported_full_pro / "onnx" / "verify.json").read_text())
    fp32 = r["precisions"]["fp32"]
    assert r["passed"] and fp32["passed"]
    assert set(fp32["graphs"]) == set(PRO_GRAPHS[b.model_version])  # the speaker-verification graph included
    if b.model_version == "v2Pro":
        assert fp32["greedy_tokens_match"] and fp32["greedy_steps"] == 50
    assert all(g["max_rel_error"] < 1e-4 for g in fp32["graphs"].values())
    assert fp32["snr_db"] == "inf" or fp32["snr_db"] > 60  # documented fp32 bound: 50 dB
    consts = constants(b.gpt_config, b.sovits_config)
    assert "sv" in input_names(GRAPHS["speaker_encoder"], consts) and consts["gin"] == 1024 and consts["pro"] == 1


@pytest.mark.slow
def test_full_size_pro_engine_synthesis_matches_torch(exported_full_pro):
    from gsv.backends import open_backends
    from gsv.backends.onnx_backend import OnnxAudioBackend
    from gsv.engine import Engine
    from gsv.sampling import SamplingOptions
    from gsv.session import Session, SynthesisOptions, TextSegment
    from gsv.voice import Voice

    b = Bundle.open(exported_full_pro)
    g = torch.Generator().manual_seed(1)
    sovits, sv = b.load_sovits(), b.load_sv()
    refer = torch.rand(1, 1025, 150, generator=g)
    emb = sv(0.3 * torch.randn(1, 32000, generator=g))
    with torch.no_grad():
        ge = sovits.speaker_embedding(refer, emb)[0]
    voice = Voice("v", "en", "x", torch.randint(0, 732, (12,), generator=g).tolist(), torch.randn(1024, 12, generator=g),
                  torch.randint(0, 1024, (20,), generator=g), ge, b.bundle_id, sv_emb=emb)
    seg = TextSegment("t", torch.randint(0, 732, (10,), generator=g).tolist(), torch.zeros(1024, 10))
    outs = {}
    torch_gpt, _ = open_backends(b, "torch")
    for name in ("torch", "onnx"):
        if name == "onnx" and b.model_version == "v2ProPlus":  # exported without its (v2) GPT graphs
            art = {a["graph"]: b.path / a["file"] for a in b.artifacts if a["precision"] == "fp32"}
            gpt, audio = torch_gpt, OnnxAudioBackend.from_files(b.sovits_config, art["sovits_window"], art["vocoder"],
                                                                threads=2)
        else:
            gpt, audio = open_backends(b, name, threads=2)
        chunks = []
        s = Session(name, voice, [seg], SynthesisOptions(sampling=SamplingOptions(seed=3, max_tokens=20)),
                    sink=chunks.append)
        eng = Engine(gpt, audio)
        eng.submit(s)
        eng.run(s)
        assert s.finish_reason == "completed"
        outs[name] = np.concatenate([c.samples for c in chunks])
    a, o = outs["torch"], outs["onnx"]
    assert a.size == o.size >= 1280
    snr = 10 * np.log10(np.sum(a**2) / max(np.sum((a - o) ** 2), 1e-30))
    assert snr > 50, snr


def test_tiny_pro_export_every_precision(tmp_path):
    """Every precision of a tiny v2ProPlus bundle verifies; INT8 quantises only the GPT graphs."""
    from export.pipeline import ExportOptions, export_bundle
    from tests.conftest import make_tiny_bundle

    path = make_tiny_bundle(tmp_path / "b", version="v2ProPlus").path
    report = export_bundle(path, ExportOptions(precisions=("fp32", "int8", "fp16"), threads=1, progress=False))
    assert report["passed"]
    assert set(report["precisions"]["int8"]["graphs"]) == {"gpt_prefill", "gpt_decode"}
    assert "speaker_verification" in report["precisions"]["fp16"]["graphs"]
    arts = {(a["graph"], a["precision"]) for a in Bundle.open(path).artifacts}
    assert ("speaker_verification", "fp32") in arts


def test_bench_components_and_versions_on_tiny_pro(tiny_bundle, tmp_path):
    """gsv-bench components runs on a Pro bundle; gsv-bench versions compares v2 with v2Pro/v2ProPlus."""
    from benchmarks.cli import main
    from export.pipeline import ExportOptions, export_bundle
    from tests.conftest import make_tiny_bundle

    paths = [clone_bundle(tiny_bundle.path, tmp_path / "v2")]
    for v in ("v2Pro", "v2ProPlus"):
        paths.append(make_tiny_bundle(tmp_path / v, version=v).path)
    for p in paths:
        export_bundle(p, ExportOptions(precisions=("fp32",), graphs=("gpt_prefill", "gpt_decode", "sovits_window",
                                                                     "vocoder"), threads=1, progress=False))
    out = tmp_path / "c.json"
    assert main(["components", "--bundle", str(paths[2]), "--backends", "torch,onnx", "--out", str(out), "--threads",
                 "1", "--steps", "2", "--repeats", "1", "--warmup", "1", "--context", "20", "--probe-gib", "0.05"]) == 0
    assert json.loads(out.read_text())["decoder_vocoder_ms_per_audio_second"]["onnx"] > 0
    out = tmp_path / "v.json"
    assert main(["versions", "--bundles", ",".join(map(str, paths)), "--out", str(out), "--threads", "1",
                 "--steps", "2", "--repeats", "2", "--warmup", "1", "--context", "20"]) == 0
    r = json.loads(out.read_text())["bundles"]
    assert list(r) == ["v2", "v2Pro", "v2ProPlus"]
    assert "speaker_verification" not in r["v2"] and r["v2Pro"]["speaker_verification"]["ms_per_3s_reference"] > 0
    assert r["v2ProPlus"]["vs_first"]["vocoder_params"] > r["v2Pro"]["vs_first"]["vocoder_params"]
    assert all(x["estimated_realtime_streams"] > 0 for x in r.values())
