"""Client library, gsv-say, gsv-voices and the serving benchmark against an in-process server."""
from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import wave

import numpy as np
import pytest
import soundfile as sf

from clients import AsyncTtsClient, TtsClient, TtsError
from clients import say, voices_cli
from tests.conftest import speechlike, wav_bytes
from tests.server.harness import start_server


def _port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_full_bundle, tmp_path_factory):
    srv = start_server(tiny_full_bundle.path, tmp_path_factory.mktemp("voices"), metrics_port=_port())
    with TtsClient(srv.target) as c:
        x, sr = speechlike()
        c.register_voice("bench", wav_bytes(x, sr), "我们在北京。", "zh", consent="ok")
    yield srv
    srv.stop()


def test_clients_never_import_torch():
    code = "import sys, clients, clients.say, clients.voices_cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sync_and_async_clients(server):
    with TtsClient(server.target) as c:
        r = c.stream("你好。", "bench", seed=2, max_audio_seconds=1)
        assert r.chunks and r.ttfa_ms > 0 and r.audio_seconds > 0 and r.seed == 2

    async def go():
        async with AsyncTtsClient(server.target) as c:
            res = await c.stream("你好。", "bench", seed=2, max_audio_seconds=1)
            voices = await c.list_voices()
            return res, voices

    res, voices = asyncio.run(go())
    np.testing.assert_array_equal(res.audio, r.audio)
    assert [v.voice_id for v in voices] == ["bench"]


def test_gsv_say_writes_wav_and_json(server, tmp_path, capsys):
    out = tmp_path / "say.wav"
    assert say.main(["--server", server.target, "--voice", "bench", "--text", "今天天气很好。", "-o", str(out),
                     "--seed", "4", "--max-audio-seconds", "2"]) == 0
    info = json.loads(capsys.readouterr().out.strip())
    assert {"ttfa_ms", "total_ms", "audio_seconds"} <= set(info) and info["audio_seconds"] > 0
    with wave.open(str(out)) as w:
        assert w.getframerate() == 32000 and abs(w.getnframes() / 32000 - info["audio_seconds"]) < 1e-3


def test_gsv_say_errors(server, tmp_path, capsys):
    assert say.main(["--server", server.target, "--voice", "nobody", "--text", "hi", "-o", str(tmp_path / "x.wav")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NOT_FOUND" in err[0]


def test_gsv_voices(server, tmp_path, capsys):
    x, sr = speechlike(seed=5)
    ref = tmp_path / "r.wav"
    sf.write(ref, x, sr)
    base = ["--server", server.target]
    assert voices_cli.main(base + ["add", "--voice", "carol", "--ref-audio", str(ref), "--ref-text", "Hello there, friend.",
                                   "--ref-lang", "en"]) == 0
    assert voices_cli.main(base + ["list"]) == 0
    listed = [json.loads(l)["voice_id"] for l in capsys.readouterr().out.strip().splitlines()[1:]]
    assert "carol" in listed
    assert voices_cli.main(base + ["rm", "--voice", "carol"]) == 0
    assert voices_cli.main(base + ["rm", "--voice", "carol"]) == 1


def test_serving_benchmark_harness(server, tmp_path):
    from benchmarks.cli import main

    out, png = tmp_path / "r.json", tmp_path / "r.png"
    metrics = f"http://localhost:{server.config.metrics_port}/metrics"
    assert main(["serve", "--server", server.target, "--voice", "bench", "--concurrency", "1,2", "--requests", "3",
                 "--rates", "4", "--out", str(out), "--plot", str(png), "--max-audio-seconds", "1", "--lang", "zh",
                 "--metrics", metrics, "--warmup", "0"]) == 0
    report = json.loads(out.read_text())
    assert [lv["concurrency"] for lv in report["levels"]] == [1, 2]
    for lv in report["levels"] + report["poisson"]:
        for key in ("ttfa_ms_p50", "ttfa_ms_p95", "ttfa_ms_p99", "audio_seconds_per_second", "underruns", "errors"):
            assert key in lv
        assert lv["ok"] == 3 and lv["errors"] == {}
        assert lv["ttfa_ms_p50"] <= lv["ttfa_ms_p95"] <= lv["ttfa_ms_p99"]
        assert 0 < lv["audio_seconds"] and lv["audio_seconds_per_second"] == pytest.approx(lv["audio_seconds"] / lv["wall_seconds"])
    assert report["levels"][0]["server_mean_ar_batch"] == pytest.approx(1.0)  # one stream: one row per step
    assert report["levels"][1]["server_mean_ar_batch"] > 1.2  # two clients: their rows share GPT steps
    assert png.stat().st_size > 1000
