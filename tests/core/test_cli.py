"""The gsv command line: import, synth, voice add/list/rm, with one-line errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from gsv.cli import main
from tests.conftest import speechlike


@pytest.fixture()
def ref_wav(tmp_path):
    x, sr = speechlike()
    p = tmp_path / "ref.wav"
    sf.write(p, x, sr)
    return p


def _wav_ok(path, min_seconds=0.3):
    data, sr = sf.read(path)
    assert sr == 32000 and data.ndim == 1 and data.size / sr >= min_seconds
    assert np.sqrt(np.mean(data**2)) > 1e-3 and np.isfinite(data).all()


def test_synth_tiny_bundle(tiny_full_bundle, ref_wav, tmp_path, capsys):
    out = tmp_path / "out.wav"
    rc = main(["synth", "--bundle", str(tiny_full_bundle.path), "--ref-audio", str(ref_wav), "--ref-text", "我们在北京。",
               "--ref-lang", "zh", "--text", "你好，欢迎来到北京。Hello there.", "--lang", "zh", "-o", str(out),
               "--seed", "3", "--max-tokens", "30"])
    assert rc == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["seed"] == 3 and info["semantic_tokens"] > 0
    _wav_ok(out)


def test_synth_is_reproducible_and_streaming_same_length(tiny_full_bundle, ref_wav, tmp_path):
    args = ["synth", "--bundle", str(tiny_full_bundle.path), "--ref-audio", str(ref_wav), "--ref-text", "我们在北京。",
            "--ref-lang", "zh", "--text", "今天天气很好。", "--lang", "zh", "--seed", "9", "--max-tokens", "25"]
    assert main(args + ["-o", str(tmp_path / "a.wav")]) == 0
    assert main(args + ["-o", str(tmp_path / "b.wav")]) == 0
    assert main(args + ["-o", str(tmp_path / "c.wav"), "--stream"]) == 0
    a, b, c = (sf.read(tmp_path / n)[0] for n in ("a.wav", "b.wav", "c.wav"))
    assert np.array_equal(a, b) and a.size == c.size


def test_voice_commands(tiny_full_bundle, ref_wav, tmp_path, capsys):
    voices = tmp_path / "voices"
    base = ["voice", "add", "--bundle", str(tiny_full_bundle.path), "--voices", str(voices), "--id", "v1",
            "--ref-audio", str(ref_wav), "--ref-text", "我们在北京。", "--ref-lang", "zh", "--consent", "yes"]
    assert main(base) == 0
    assert main(base) == 2  # exists
    assert main(["voice", "list", "--voices", str(voices), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"voice_id": "v1"' in out
    wav = tmp_path / "v.wav"
    assert main(["synth", "--bundle", str(tiny_full_bundle.path), "--voice", "v1", "--voices", str(voices),
                 "--text", "好的。", "--lang", "zh", "-o", str(wav), "--max-tokens", "20"]) == 0
    _wav_ok(wav, 0.1)
    assert main(["voice", "rm", "--voices", str(voices), "--id", "v1"]) == 0
    assert main(["voice", "rm", "--voices", str(voices), "--id", "v1"]) == 2


@pytest.mark.parametrize("extra,needle", [
    (["--lang", "xx"], "unknown language"),
    (["--lang", "zh", "--text", "😀"], "no text"),
    (["--lang", "zh", "--ref-audio", "/nope.wav"], "no such file"),
    (["--lang", "zh", "--temperature", "nan"], "temperature"),
])
def test_synth_errors_are_one_line(tiny_full_bundle, ref_wav, tmp_path, capsys, extra, needle):
    args = ["synth", "--bundle", str(tiny_full_bundle.path), "--ref-audio", str(ref_wav), "--ref-text", "我们在北京。",
            "--ref-lang", "zh", "--text", "你好。", "-o", str(tmp_path / "x.wav")]
    rc = main(args + extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len([l for l in err if l.startswith("gsv: error:")]) == 1 and needle in err[-1], err


@pytest.mark.slow
def test_import_and_synth_full_size(fake_ckpts, ref_wav, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    assert main(["import", "--gpt", str(fake_ckpts.get("s1_v2.json")), "--sovits", str(fake_ckpts.get("s2_v2.json")),
                 "--out", str(bundle)]) == 0
    out = tmp_path / "full.wav"
    rc = main(["synth", "--bundle", str(bundle), "--ref-audio", str(ref_wav), "--ref-text",
               "This is my reference voice.", "--ref-lang", "en", "--text", "Hello world, this is a test.",
               "--lang", "en", "-o", str(out), "--seed", "1", "--max-tokens", "25"])
    captured = capsys.readouterr()
    assert rc == 0 and "reference-free" in captured.err
    _wav_ok(out, 0.5)
