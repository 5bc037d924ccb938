"""The C++ client (clients/cpp): build it once with CMake and run gsv_say_cpp against an in-process server.

Skipped when the toolchain is missing (cmake, a C++ compiler, protoc + grpc_cpp_plugin, grpc++ dev files);
`make cpp-client` installs it on Debian/Ubuntu.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import wave

import numpy as np
import pytest
import soundfile as sf

from clients import TtsClient
from tests.conftest import REPO, speechlike, wav_bytes
from tests.server.harness import start_server

CPP_DIR = REPO / "clients" / "cpp"
TEXT = "今天天气很好。"


def _missing_toolchain() -> str | None:
    for tool in ("cmake", "protoc", "grpc_cpp_plugin", "pkg-config"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (run `make cpp-client` to install the C++ toolchain)"
    if shutil.which("c++") is None and shutil.which("g++") is None:
        return "no C++ compiler (run `make cpp-client`)"
    if subprocess.run(["pkg-config", "--exists", "grpc++"]).returncode != 0:
        return "grpc++ development files not installed (run `make cpp-client`)"
    return None


@pytest.fixture(scope="module")
def gsv_say_cpp(tmp_path_factory):
    reason = _missing_toolchain()
    if reason:
        pytest.skip(reason)
    build = tmp_path_factory.mktemp("cpp-build")
    for cmd in (["cmake", "-S", str(CPP_DIR), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"],
                ["cmake", "--build", str(build), "-j2"]):
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if p.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    exe = build / "gsv_say_cpp"
    assert exe.is_file()
    return exe


@pytest.fixture(scope="module")
def server(gsv_say_cpp, tiny_full_bundle, tmp_path_factory):
    # Depends on gsv_say_cpp so that a missing toolchain skips before a server is started.
    # fixed chunk cuts (no listener-driven windows): two streams of one seed give the same samples, which
    # the tests compare against the Python client
    srv = start_server(tiny_full_bundle.path, tmp_path_factory.mktemp("voices"), deadline_chunks=False)
    with TtsClient(srv.target) as c:
        x, sr = speechlike()
        c.register_voice("bench", wav_bytes(x, sr), "我们在北京。", "zh", consent="ok")
    yield srv
    srv.stop()


def _say(exe, server, *args):
    return subprocess.run([str(exe), "--server", server.target, *args], capture_output=True, text=True, timeout=300)


def test_cpp_say_streams_a_wav(gsv_say_cpp, server, tmp_path):
    out = tmp_path / "out.wav"
    p = _say(gsv_say_cpp, server, "--voice", "bench", "--text", TEXT, "-o", str(out), "--seed", "4",
             "--max-audio-seconds", "2")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout.strip())
    assert 0 < info["ttfa_ms"] <= info["total_ms"] and info["chunks"] >= 1 and info["seed"] == 4
    with wave.open(str(out)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (32000, 1, 2)
        n = w.getnframes()
        pcm = np.frombuffer(w.readframes(n), dtype="<i2")
    assert n > 0 and abs(n / 32000 - info["audio_seconds"]) < 1e-3
    # Same seed through the Python client: the C++ client must have delivered exactly these samples.
    with TtsClient(server.target) as c:
        ref = c.stream(TEXT, "bench", seed=4, max_audio_seconds=2).audio
    np.testing.assert_array_equal(pcm, np.round(ref * 32767).astype(np.int16))


def test_cpp_say_float_pcm(gsv_say_cpp, server, tmp_path):
    out = tmp_path / "f.wav"
    p = _say(gsv_say_cpp, server, "--voice", "bench", "--text", TEXT, "-o", str(out), "--seed", "4",
             "--max-audio-seconds", "2", "--float")
    assert p.returncode == 0, p.stderr
    x, sr = sf.read(str(out), dtype="float32")
    assert sr == 32000 and sf.info(str(out)).subtype == "FLOAT" and x.size > 0
    with TtsClient(server.target) as c:
        ref = c.stream(TEXT, "bench", seed=4, max_audio_seconds=2, encoding="pcm_f32le").audio
    np.testing.assert_array_equal(x, ref)


def test_cpp_say_unknown_voice(gsv_say_cpp, server, tmp_path):
    out = tmp_path / "x.wav"
    p = _say(gsv_say_cpp, server, "--voice", "nobody", "--text", "hi", "-o", str(out))
    assert p.returncode != 0
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "NOT_FOUND" in err[0] and err[0].startswith("gsv_say_cpp: error:"), p.stderr
    assert not out.exists()  # nothing is written before the server accepts the request


def test_cpp_say_usage_error(gsv_say_cpp):
    p = subprocess.run([str(gsv_say_cpp), "--server", "localhost:1", "--voice", "v"], capture_output=True, text=True)
    assert p.returncode == 2 and "required" in p.stderr


def test_cpp_say_model_flag_selects_a_model(gsv_say_cpp, server, tmp_path):
    with TtsClient(server.target) as c:
        model = c.list_models().default_model_id
        ref = c.stream(TEXT, "bench", seed=4, max_audio_seconds=2).audio
    out = tmp_path / "m.wav"
    p = _say(gsv_say_cpp, server, "--voice", "bench", "--text", TEXT, "-o", str(out), "--seed", "4",
             "--max-audio-seconds", "2", "--model", model)
    assert p.returncode == 0, p.stderr
    with wave.open(str(out)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    np.testing.assert_array_equal(pcm, np.round(ref * 32767).astype(np.int16))
    # A model the server does not hold reaches the server (NOT_FOUND), not a silent default.
    p = _say(gsv_say_cpp, server, "--voice", "bench", "--text", "hi", "-o", str(tmp_path / "n.wav"),
             "--model", "no-such-model")
    assert p.returncode == 1 and "NOT_FOUND" in p.stderr and "no-such-model" in p.stderr, p.stderr
