"""gsv-export on the tiny bundle: manifest, verify.json, ORT parity through the backend interface,
end-to-end synthesis with the onnx and onnx-int8 backends, and every user-error path."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from export import cli
from export.graphs import GRAPHS, applies, constants, io_manifest
from gsv.checkpoint.bundle import Bundle, sha256_file
from tests.conftest import REPO
from tests.export.conftest import clone_bundle


def _snapshot(path: Path) -> dict:
    """Every file under a bundle (relative path -> size, mtime): 'unchanged' means equal snapshots."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


def test_manifest_lists_every_verified_artifact(exported_tiny):
    b = Bundle.open(exported_tiny)
    consts = constants(b.gpt_config, b.sovits_config)
    arts = {(a["graph"], a["precision"]): a for a in b.artifacts if a["kind"] == "onnx"}
    graphs = {g: s for g, s in GRAPHS.items() if applies(s, consts)}
    assert "speaker_verification" not in graphs  # a v2 bundle has no speaker-verification model
    report = json.loads((b.path / "onnx" / "verify.json").read_text())
    assert report["precisions"]["int8"]["audio_int8"]["passed"]  # so the INT8 decoder/vocoder are installed
    expected = ({(g, "fp32") for g in graphs} | {(g, "fp16") for g in graphs}
                | {(g, "int8") for g, s in graphs.items() if s.quantize or s.quantize_static})
    assert set(arts) == expected
    for (graph, _), a in arts.items():
        f = b.path / a["file"]
        assert f.is_file() and f.stat().st_size == a["bytes"] and sha256_file(f) == a["sha256"]
        d = b.path / a["data_file"]  # the weights beside the graph (ONNX external data), checksummed too
        assert d.name == f.name + ".data" and d.stat().st_size == a["data_bytes"] and sha256_file(d) == a["data_sha256"]
        assert a["io"] == io_manifest(GRAPHS[graph], consts) and a["verified"] is True and a["opset"] == 17
    assert not list(b.path.glob(".export.tmp-*")) and not list(b.path.glob(".onnx.old-*"))


def test_graph_weights_are_external_data_beside_each_graph(exported_tiny):
    """ONNX Runtime memory-maps external weights (a smaller resident set than inline ones): no graph of
    the bundle keeps a large tensor inline, and each graph's weights file holds exactly its own tensors."""
    import onnx

    b = Bundle.open(exported_tiny)
    for a in (a for a in b.artifacts if a["kind"] == "onnx"):
        m = onnx.load(str(b.path / a["file"]), load_external_data=False)
        big = [t for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL or len(t.raw_data) >= 1024]
        assert big and all(t.data_location == onnx.TensorProto.EXTERNAL for t in big), a["file"]
        locations = {e.value for t in big for e in t.external_data if e.key == "location"}
        assert locations == {Path(a["data_file"]).name}


def test_verify_report(exported_tiny):
    r = json.loads((exported_tiny / "onnx" / "verify.json").read_text())
    assert r["passed"] and set(r["precisions"]) == {"fp32", "int8", "fp16"}
    for p, rep in r["precisions"].items():
        for g, gr in rep["graphs"].items():
            assert {"max_abs_error", "max_rel_error", "cases", "tolerance", "passed"} <= gr.keys()
            assert len(gr["cases"]) >= 3 and len({json.dumps(c["sizes"]) for c in gr["cases"]}) == len(gr["cases"])
        assert rep["greedy_steps"] == 50 and isinstance(rep["greedy_tokens_match"], bool)
    fp32 = r["precisions"]["fp32"]
    assert fp32["greedy_tokens_match"] and fp32["greedy_first_divergence"] is None
    assert all(g["max_rel_error"] < 1e-4 for g in fp32["graphs"].values())
    snr = fp32["snr_db"]
    assert (snr == "inf" or float(snr) > 60) and float(r["precisions"]["fp16"]["snr_db"]) > 25


@pytest.fixture(scope="module")
def backends(exported_tiny):
    from gsv.backends import open_backends

    b = Bundle.open(exported_tiny)
    return b, {name: open_backends(b, name, threads=2) for name in ("torch", "onnx", "onnx-int8")}


def _batch(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    tx, ty = [9, 4, 14], [6, 0, 11]
    n = len(tx)
    phones = torch.zeros(n, max(tx), dtype=torch.long)
    bert = torch.zeros(n, cfg.bert_dim, max(tx))
    prompt = torch.zeros(n, max(ty), dtype=torch.long)
    for i in range(n):
        phones[i, : tx[i]] = torch.randint(0, 732, (tx[i],), generator=g)
        bert[i, :, : tx[i]] = torch.randn(cfg.bert_dim, tx[i], generator=g)
        prompt[i, : ty[i]] = torch.randint(0, 1024, (ty[i],), generator=g)
    return phones, torch.tensor(tx), bert, prompt, torch.tensor(ty)


def test_onnx_gpt_backend_matches_torch(backends):
    b, be = backends
    torch_gpt, onnx_gpt = be["torch"][0], be["onnx"][0]
    inputs = _batch(b.gpt_config)
    caches, logits = [], []
    for gpt in (torch_gpt, onnx_gpt):
        lg, k, v, lens = gpt.prefill(*inputs)
        c = gpt.new_cache()
        c.add_rows(k, v, lens)
        caches.append(c)
        logits.append(lg)
    torch.testing.assert_close(logits[1], logits[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(caches[1].k, caches[0].k, atol=1e-5, rtol=1e-4)
    positions = inputs[4].clone()
    for step in range(6):
        tokens = torch.tensor([(31 * step + 7 * i) % 1024 for i in range(len(positions))])
        outs = []
        for gpt, c in zip((torch_gpt, onnx_gpt), caches):
            c.ensure_step()
            lg, nk, nv = gpt.decode_step(tokens, positions, c.k, c.v, c.kv_lens())
            c.append(nk, nv)
            outs.append(lg)
        torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-4)
        positions += 1
        if step == 2:  # rows leave mid-stream: the ORT graph sees a compacted cache
            for c in caches:
                c.remove_rows([1])
            positions = positions[[0, 2]]


@pytest.mark.parametrize("speed", [1.0, 0.8, 1.25])
def test_onnx_audio_backend_matches_torch(backends, speed):
    b, be = backends
    cfg = b.sovits_config
    g = torch.Generator().manual_seed(3)
    n = 2 if speed == 1.0 else 1
    codes = torch.randint(0, 1024, (n, 23), generator=g)
    code_lens = torch.tensor([23, 15][:n])
    phones = torch.randint(0, 732, (n, 12), generator=g)
    phone_lens = torch.tensor([12, 7][:n])
    ge = torch.randn(n, cfg.gin_channels, 1, generator=g)
    from gsv.models.sovits.model import latent_frames

    noise = 0.5 * torch.randn(n, cfg.inter_channels, latent_frames(23, speed), generator=g)
    ref = be["torch"][1].decode_audio(codes, code_lens, phones, phone_lens, ge, noise, speed)
    got = be["onnx"][1].decode_audio(codes, code_lens, phones, phone_lens, ge, noise, speed)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    none_ref = be["torch"][1].decode_audio(codes, code_lens, phones, phone_lens, ge, None, speed)
    torch.testing.assert_close(be["onnx"][1].decode_audio(codes, code_lens, phones, phone_lens, ge, None, speed),
                               none_ref, atol=1e-5, rtol=1e-4)


def _window_batch(cfg, seed=4):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1024, (3, 22), generator=g)
    phones = torch.randint(0, 732, (3, 10), generator=g)
    ge = torch.randn(3, cfg.gin_channels, 1, generator=g)
    noise = 0.5 * torch.randn(3, cfg.inter_channels, 44, generator=g)
    # a first window (kept from its start) beside mid-segment ones; tokens from each row's vocoded start
    return (codes, torch.tensor([22, 15, 19]), phones, torch.tensor([10, 8, 9]), ge, noise, 1.0,
            torch.tensor([0, 5, 8]), torch.tensor([[0, 12], [3, 7], [3, 8]]))


def test_onnx_trimmed_vocoder_matches_torch(backends):
    """The exported vocoder takes the rows' shifts and the trim as inputs: the kept audio of a batch of
    windows matches PyTorch's (ONNX Runtime renders the trimmed span only)."""
    b, be = backends
    call = _window_batch(b.sovits_config)
    assert be["onnx"][1].trims_vocoder
    ref = be["torch"][1].decode_audio(*call)
    got = be["onnx"][1].decode_audio(*call)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


def test_a_vocoder_graph_from_before_trimming_still_serves(backends, tmp_path):
    """Bundles exported before the trim inputs existed: the backend renders whole rows (no trim) and
    the kept audio is the same."""
    from gsv.backends.onnx_backend import OnnxAudioBackend

    b, be = backends
    sovits = be["torch"][1].model

    class OldVocoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.sovits = sovits

        def forward(self, z, ge, frame_lens):
            return self.sovits.vocode(z, ge, frame_lens)

    cfg = b.sovits_config
    z, ge = torch.randn(2, cfg.inter_channels, 20), torch.randn(2, cfg.gin_channels, 1)
    old = tmp_path / "vocoder_old.onnx"
    torch.onnx.export(OldVocoder().eval(), (z, ge, torch.tensor([20, 14])), str(old), dynamo=False, opset_version=17,
                      input_names=["z", "ge", "frame_lens"], output_names=["audio"],
                      dynamic_axes={"z": {0: "b", 2: "f"}, "ge": {0: "b"}, "frame_lens": {0: "b"}, "audio": {0: "b", 1: "s"}})
    window = next(a for a in b.artifacts if a["kind"] == "onnx" and a["graph"] == "sovits_window" and a["precision"] == "fp32")
    legacy = OnnxAudioBackend.from_files(cfg, b.path / window["file"], old, threads=2)
    assert not legacy.trims_vocoder
    call = _window_batch(cfg)
    ref = be["torch"][1].decode_audio(*call)
    got = legacy.decode_audio(*call)
    spt = 2 * cfg.hop_length
    for row, (k0, k1) in enumerate(call[-1].tolist()):
        torch.testing.assert_close(got[row, k0 * spt : k1 * spt], ref[row, k0 * spt : k1 * spt], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["onnx", "onnx-int8"])
def test_engine_synthesizes_end_to_end(backends, name):
    from gsv.engine import Engine
    from gsv.sampling import SamplingOptions
    from gsv.session import Session, SynthesisOptions
    from tests.core.test_engine import make_segments, make_voice

    _, be = backends

    def synth(pair):
        chunks = []
        opts = SynthesisOptions(sampling=SamplingOptions(seed=7, max_tokens=40, top_k=5))
        s = Session("e2e", make_voice(7), make_segments(7), opts, sink=chunks.append)
        engine = Engine(*pair)
        engine.submit(s)
        engine.run(s)
        return s, np.concatenate([c.samples for c in chunks])

    s, audio = synth(be[name])
    assert s.finish_reason == "completed" and audio.size > 0 and np.isfinite(audio).all()
    if name == "onnx":  # same seed, same tokens, same noise: the audio of torch and ORT agree
        _, ref = synth(be["torch"])
        np.testing.assert_allclose(audio, ref, atol=1e-4)


# ------------------------------------------------------------------------------------------ CLI errors
def test_missing_bundle_exits_2(tmp_path, capsys):
    assert cli.main(["--bundle", str(tmp_path / "nope"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and len(err.strip().splitlines()) == 1


def test_unsupported_version_exits_2(tiny_bundle, tmp_path, capsys):
    path = clone_bundle(tiny_bundle.path, tmp_path / "b")
    m = json.loads((path / "manifest.json").read_text())
    m["model_version"] = "v3"
    (path / "manifest.json").unlink()  # hard-linked: replace, never write through
    (path / "manifest.json").write_text(json.dumps(m))
    before = _snapshot(path)
    assert cli.main(["--bundle", str(path), "--no-progress"]) == 2
    assert "v3" in capsys.readouterr().err and _snapshot(path) == before


def test_unwritable_output_dir_exits_2(tiny_bundle, tmp_path, capsys):
    path = clone_bundle(tiny_bundle.path, tmp_path / "b")
    (path / "onnx").write_text("not a directory")  # works as root too, unlike chmod
    before = _snapshot(path)
    assert cli.main(["--bundle", str(path), "--no-progress"]) == 2
    assert "cannot write" in capsys.readouterr().err and _snapshot(path) == before
    if os.geteuid() != 0:
        (path / "onnx").unlink()
        path.chmod(0o555)
        try:
            assert cli.main(["--bundle", str(path), "--no-progress"]) == 2
        finally:
            path.chmod(0o755)


def test_trt_without_gpu_exits_2_and_writes_nothing(tiny_bundle, tmp_path, capsys):
    try:
        import tensorrt  # noqa: F401

        if torch.cuda.is_available():
            pytest.skip("a GPU with TensorRT is present")
    except ImportError:
        pass
    path = clone_bundle(tiny_bundle.path, tmp_path / "b")
    before = _snapshot(path)
    assert cli.main(["--bundle", str(path), "--trt", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ("tensorrt" in err or "GPU" in err)
    assert _snapshot(path) == before


def test_interrupted_export_leaves_bundle_unchanged(exported_tiny, tmp_path, monkeypatch, capsys):
    import export.pipeline as P

    path = clone_bundle(exported_tiny, tmp_path / "b")  # already has an export: it must survive intact
    before = _snapshot(path)
    calls = []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    real = P.export_fp32
    monkeypatch.setattr(P, "export_fp32", interrupted)
    assert cli.main(["--bundle", str(path), "--no-progress"]) == 130
    assert "unchanged" in capsys.readouterr().err and _snapshot(path) == before


def test_failed_verification_exits_1_and_installs_nothing(tiny_bundle, tmp_path, monkeypatch, capsys):
    import export.verify as V

    path = clone_bundle(tiny_bundle.path, tmp_path / "b")
    before = _snapshot(path)
    monkeypatch.setitem(V.TOLERANCES, "fp32", V.Tolerance(max_rel_error=1e-12, snr_db=math.inf, greedy_must_match=True))
    report = tmp_path / "report.json"
    rc = cli.main(["--bundle", str(path), "--precision", "fp32", "--graphs", "vocoder,sovits_window",
                   "--report", str(report), "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "verification failed" in err and "vocoder" in err and "SNR" in err
    assert json.loads(report.read_text())["precisions"]["fp32"]["passed"] is False
    assert _snapshot(path) == before


def test_reexport_keeps_other_artifacts(exported_tiny, tmp_path):
    path = clone_bundle(exported_tiny, tmp_path / "b")
    assert cli.main(["--bundle", str(path), "--precision", "fp32", "--graphs", "vocoder", "--no-progress"]) == 0
    b = Bundle.open(path)
    assert len([a for a in b.artifacts if a["kind"] == "onnx"]) == len(Bundle.open(exported_tiny).artifacts)
    assert all((path / a["file"]).is_file() for a in b.artifacts)
    r = json.loads((path / "onnx" / "verify.json").read_text())
    assert set(r["precisions"]) == {"fp32", "int8", "fp16"}  # earlier precisions' results are kept


def test_python_m_entry_points():
    for mod in ("export", "benchmarks"):
        out = subprocess.run([sys.executable, "-m", mod, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "usage" in out.stdout


def test_bench_components_on_tiny(exported_tiny, tmp_path):
    from benchmarks.cli import main

    out = tmp_path / "r.json"
    assert main(["components", "--bundle", str(exported_tiny), "--backends", "torch,onnx,onnx-int8", "--out", str(out),
                 "--threads", "1", "--steps", "2", "--repeats", "1", "--warmup", "1", "--context", "20"]) == 0
    r = json.loads(out.read_text())
    for key in ("memory_bandwidth_gbps", "gpt_param_bytes", "bandwidth_floor_ms", "machine"):
        assert key in r
    for name in ("torch", "onnx", "onnx-int8"):
        assert set(r["gpt_decode_ms_per_token"][name]) == {"1", "8"}
        assert r["prefill_ms_200"][name] > 0 and r["decoder_vocoder_ms_per_audio_second"][name] > 0
    assert set(r["goals"]) == {"ort_fp32_decode_b1_vs_floor", "int8_vs_fp32_decode_speedup",
                               "ort_vs_torch_decoder_vocoder_speedup"}
    floor = r["compute_floor"]
    assert floor["machine"]["matmul_gflops"] > 0 and floor["machine"]["conv1d_gflops"] > 0
    dec = floor["flops"]["decoder_vocoder_per_audio_second"]
    assert dec["conv"] > 0 and floor["flops"]["prefill_200"]["other"] > 0  # the vocoder convolves, the GPT multiplies
    for name in ("torch", "onnx"):  # measured time over the floor: a real machine is never below it
        assert r["backends"][name]["decoder_vocoder_vs_compute_floor"] >= 1.0
        assert r["backends"][name]["prefill_vs_compute_floor"] > 0
    for name in ("torch", "onnx", "onnx-int8"):  # a default-mode window, rendered whole and trimmed
        w = r["backends"][name]["streaming_window"]
        assert w["trims_vocoder"] and w["vocoded_tokens"] == 4 + w["new_tokens"] + 3
        assert w["whole_rows_ms_per_emitted_second"] > 0 and w["trimmed_ms_per_emitted_second"] > 0
