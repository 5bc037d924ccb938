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


def test_quality_stages_on_tiny(tiny_models_dir, tiny_bundle, voice_data, tmp_path):
    """--stages scores the speaker after the posterior reconstruction and after the prior from the real
    tokens, on the training utterances, and names the stage with the largest drop; a bundle without the
    posterior encoder or HuBERT skips that stage and says why."""
    from benchmarks.cli import main
    from gsv.checkpoint.bundle import write_bundle
    from tests.conftest import tiny_gpt, tiny_sovits

    hubert, bert = tiny_models_dir
    g, s = tiny_gpt(0), tiny_sovits(0, with_posterior=True)
    bundle = write_bundle(tmp_path / "b", g.cfg, g.state_dict(), s.cfg, s.state_dict(), sources={"kind": "test"},
                          hubert_dir=hubert, bert_dir=bert)
    args = ["quality", "--voice-audio", str(voice_data / "data.list"), "--heldout-audio",
            str(voice_data / "heldout.list"), "--sentences", str(voice_data / "heldout.txt"), "--backend", "torch",
            "--stages", "--threads", "1"]
    assert main(args + ["--bundle", str(bundle.path), "--out", str(tmp_path / "r.json")]) == 0
    st = json.loads((tmp_path / "r.json").read_text())["stages"]
    assert st["utterances"] == 4 and st["noise_scale"] == 0.5
    for key in ("reconstruction", "prior_from_real_tokens"):
        assert len(st[key]["per_utterance"]) == 4 and all(_in(v, -1, 1) for v in st[key]["per_utterance"])
        assert st[key]["speaker_similarity"] == pytest.approx(sum(st[key]["per_utterance"]) / 4, abs=1e-4)
    assert set(st["spectrum_db"]) >= {"0-100", "300-700", "5000-8000", "12000-16000"}
    assert all(_in(v, -200, 200) for v in st["spectrum_db"].values())
    assert st["weakest_stage"] in ("reconstruction", "prior_from_real_tokens", "synthesis")
    # reproducible: the posterior's sample and the prior's noise come from the seed
    assert main(args + ["--bundle", str(bundle.path), "--out", str(tmp_path / "again.json")]) == 0
    assert json.loads((tmp_path / "again.json").read_text())["stages"] == st

    assert main(args + ["--bundle", str(tiny_bundle.path), "--out", str(tmp_path / "r2.json")]) == 0
    st = json.loads((tmp_path / "r2.json").read_text())["stages"]
    assert "posterior encoder" in st["reconstruction"]["skipped"] and "HuBERT" in st["prior_from_real_tokens"]["skipped"]
    assert "spectrum_db" not in st and st["weakest_stage"] == "synthesis"


def test_band_power_ratio_measures_known_gains():
    import numpy as np

    from benchmarks.quality_stages import band_power_ratio_db

    rng = np.random.default_rng(0)
    x = rng.standard_normal(32000 * 2)
    assert all(v == pytest.approx(6.0206, abs=0.01) for v in band_power_ratio_db(2 * x, x, 32000).values())
    spectrum = np.fft.rfft(x)
    spectrum[np.fft.rfftfreq(x.size, 1 / 32000) >= 3000] = 0  # a low-pass: the bands above 3 kHz lose everything
    r = band_power_ratio_db(np.fft.irfft(spectrum, x.size), x, 32000)
    assert abs(r["700-1500"]) < 0.5 and r["5000-8000"] < -40 and r["12000-16000"] < -40


def test_reference_clip_is_one_recording_when_one_fits_and_joins_short_ones(tmp_path):
    """The GPT trains on one utterance as its prompt: a joined prompt made the demo's voice end sentences early."""
    import numpy as np
    import soundfile as sf

    from benchmarks.quality import Utterance, reference_clip

    sr = 32000

    def utt(name, seconds, text):
        return Utterance(tmp_path / name, np.full(int(seconds * sr), 0.1, np.float32), sr, text, "en")

    short = [utt("a.wav", 2.0, "one"), utt("b.wav", 2.0, "two")]
    path, text, lang = reference_clip(short + [utt("c.wav", 3.4, "three"), utt("d.wav", 4.5, "four"),
                                               utt("e.wav", 12.0, "too long")], tmp_path / "ref1.wav")
    assert (text, lang) == ("four", "en") and sf.info(path).duration == 4.5  # the longest that fits, alone
    path, text, _ = reference_clip(short, tmp_path / "ref2.wav")
    assert text == "one two" and 4.0 < sf.info(path).duration < 9.0  # none fits alone: joined with pauses
