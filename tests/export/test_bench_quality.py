"""gsv-bench quality on the tiny exported bundle: report keys and ranges, backend and streaming
comparisons, clear errors.  (No threshold that depends on training: a random model is measured.)"""
from __future__ import annotations

import json
import math
import shutil
import sys

import pytest


@pytest.fixture(scope="module")
def voice_data(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make setup installs it)")
    from gsv.quality import ResemblyzerEncoder, SpeakerEncoderUnavailable
    from trainer.synthetic import make_dataset

    try:
        ResemblyzerEncoder()
    except SpeakerEncoderUnavailable as e:
        pytest.skip(str(e))
    d = tmp_path_factory.mktemp("speaker")
    make_dataset(d, 4, heldout=2)
    return d


def _in(v, lo, hi):
    return v is not None and math.isfinite(v) and lo <= v <= hi


def test_quality_report_on_tiny(exported_tiny, voice_data, tmp_path):
    from benchmarks.cli import main

    out = tmp_path / "r.json"
    assert main(["quality", "--bundle", str(exported_tiny), "--voice-audio", str(voice_data / "data.list"),
                 "--heldout-audio", str(voice_data / "heldout.list"), "--sentences", str(voice_data / "heldout.txt"),
                 "--out", str(out), "--compare-backends", "onnx,onnx-int8", "--stream", "--threads", "1",
                 "--score-audio", str(voice_data / "heldout" / "held_00.wav")]) == 0
    r = json.loads(out.read_text())
    for key in ("speaker_similarity", "relative", "ceiling", "floor", "encoder", "reference", "runs", "comparisons",
                "passed", "training_data", "machine", "voice", "scored_audio"):
        assert key in r, key
    assert r["encoder"] == "resemblyzer-ge2e"
    assert _in(r["speaker_similarity"], -1, 1) and _in(r["ceiling"], 0, 1) and _in(r["floor"], -1, 1)
    assert r["ceiling"] > r["floor"] and r["reference"]["ceiling_method"] == "held-out"
    assert r["training_data"]["utterances"] == 4 and _in(r["training_data"]["seconds_per_phone"], 0.02, 0.5)
    assert [(x["backend"], x["stream"]) for x in r["runs"]] == [("onnx", False), ("onnx", True),
                                                               ("onnx-int8", False), ("onnx-int8", True)]
    for run in r["runs"]:
        assert len(run["sentences"]) == 2 and _in(run["speaker_similarity"], -1, 1)
        for s in run["sentences"]:
            assert _in(s["speaker_similarity"], -1, 1) and s["phones"] > 0 and s["tokens"] > 0
            assert _in(s["silence_share"], 0, 1) and _in(s["clipped_share"], 0, 1) and s["seconds"] > 0
            assert s["tokens"] <= math.ceil(25 * s["max_seconds"]) and s["hit_token_limit"] in (True, False)
        assert isinstance(run["warnings"], list)
    labels = [(c["a"], c["b"]) for c in r["comparisons"]]
    assert labels == [("onnx", "onnx-int8"), ("onnx", "onnx+stream"), ("onnx-int8", "onnx-int8+stream")]
    for c in r["comparisons"]:
        a = next(x for x in r["runs"] if (x["backend"] + ("+stream" if x["stream"] else "")) == c["a"])
        b = next(x for x in r["runs"] if (x["backend"] + ("+stream" if x["stream"] else "")) == c["b"])
        assert c["speaker_similarity_difference"] == pytest.approx(b["speaker_similarity"] - a["speaker_similarity"],
                                                                   abs=1e-4)
        assert c["passed"] == (abs(c["speaker_similarity_difference"]) <= c["max_difference"])
    assert r["passed"] == all(c["passed"] for c in r["comparisons"])
    # a real recording of the speaker scores like the ceiling it is part of
    (scored,) = r["scored_audio"]
    assert scored["speaker_similarity"] > r["floor"] + 0.2


def test_quality_errors_are_clear(exported_tiny, voice_data, tmp_path, monkeypatch, capsys):
    from benchmarks.cli import main

    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    args = ["quality", "--bundle", str(exported_tiny), "--voice-audio", str(voice_data / "data.list"),
            "--out", str(tmp_path / "r.json")]
    assert main(args + ["--sentences", str(empty)]) == 2
    assert "has no sentences" in capsys.readouterr().err
    assert main(args + ["--sentences", str(voice_data / "heldout.txt"), "--voice-audio", str(tmp_path / "nope")]) == 2
    assert "no such file" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "resemblyzer", None)  # no pretrained encoder: no number, a reason
    assert main(args + ["--sentences", str(voice_data / "heldout.txt")]) == 2
    assert "not installed" in capsys.readouterr().err and not (tmp_path / "r.json").exists()
