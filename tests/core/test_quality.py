"""gsv.quality: speaker similarity from a *pretrained* encoder (Resemblyzer's GE2E, offline), its
reference points, and the signal checks."""
from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest

SENTENCES = ("The sun was warm on the old stone wall.", "Please bring the blue folder to the meeting.",
             "A quiet river runs behind the village school.", "Every morning the baker opens his shop at six.")
HELD_OUT = "I will meet you at the harbour when the sun goes down tonight."


@pytest.fixture(scope="module")
def encoder():
    from gsv.quality import ResemblyzerEncoder, SpeakerEncoderUnavailable

    try:
        return ResemblyzerEncoder()
    except SpeakerEncoderUnavailable as e:  # make setup installs it; a bare environment says why
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def speak(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make setup installs it)")
    import soundfile as sf

    from trainer.synthetic import find_espeak, speak as espeak

    d = tmp_path_factory.mktemp("voices")

    def say(text: str, voice: str = "en-us", i: int = 0):
        path = d / f"{voice}-{abs(hash(text)) % 10**8}-{i}.wav"
        espeak(text, path, find_espeak(), voice)
        x, sr = sf.read(path, dtype="float32")
        return x, sr

    return say


def test_same_espeak_voice_scores_higher_than_another_voice_and_noise_lowest(encoder, speak):
    from gsv.quality import ENCODER_SAMPLE_RATE, SpeakerReference, noise_signal

    ref = SpeakerReference.build(encoder, [speak(s) for s in SENTENCES])
    same = ref.similarity(encoder, *speak(HELD_OUT))
    other = ref.similarity(encoder, *speak(HELD_OUT, "en-us+f3"))  # another espeak-ng voice, same words
    noise = ref.similarity(encoder, noise_signal("white", seed=5), ENCODER_SAMPLE_RATE)
    assert same > other > noise, (same, other, noise)
    assert same > 0.8  # a real pretrained model: an unseen sentence of the speaker is close to the centroid
    # the run's reference points order the same way and are measured with the same encoder
    assert ref.ceiling_method == "leave-one-out" and ref.ceiling_utterances == len(SENTENCES)
    assert ref.ceiling > ref.floor and set(ref.floor_by_kind) == {"white", "pink", "brown"}
    assert ref.relative(ref.ceiling) == pytest.approx(1.0) and ref.relative(ref.floor) == pytest.approx(0.0)
    assert ref.encoder == "resemblyzer-ge2e"


def test_held_out_utterances_give_the_ceiling(encoder, speak):
    from gsv.quality import SpeakerReference

    ref = SpeakerReference.build(encoder, [speak(s) for s in SENTENCES[:3]], [speak(HELD_OUT)])
    assert ref.ceiling_method == "held-out" and ref.ceiling_utterances == 1
    assert ref.ceiling == pytest.approx(ref.similarity(encoder, *speak(HELD_OUT)), abs=1e-5)


def test_embedding_resamples_to_the_encoder_rate(encoder, speak):
    from gsv.audio import resample_soxr
    from gsv.quality import cosine

    x, sr = speak(SENTENCES[0])
    e1 = encoder.embed(x, sr)
    e2 = encoder.embed(resample_soxr(x, sr, 32000), 32000)
    assert e1.shape == (256,) and abs(float(np.linalg.norm(e1)) - 1) < 1e-5
    assert cosine(e1, e2) > 0.98  # the same audio at another rate is the same voice


def test_too_short_or_silent_audio_gives_no_number(encoder):
    from gsv.quality import cosine

    assert encoder.embed(np.zeros(16000, np.float32), 16000) is None
    assert encoder.embed(np.ones(1000, np.float32) * 0.1, 16000) is None
    assert np.isnan(cosine(None, np.ones(3)))


def test_no_pretrained_encoder_is_an_error_not_a_number(monkeypatch, tmp_path):
    from gsv.quality import SpeakerEncoderUnavailable, open_speaker_encoder

    monkeypatch.setitem(sys.modules, "resemblyzer", None)  # import fails as if not installed
    with pytest.raises(SpeakerEncoderUnavailable, match="not installed"):
        open_speaker_encoder()
    with pytest.raises(SpeakerEncoderUnavailable, match="embedding_model.ckpt"):
        open_speaker_encoder(tmp_path)  # a folder without speechbrain's ECAPA weights


def test_ecapa_from_a_local_folder(tmp_path):
    """The speechbrain path loads the folder's weights (here a small architecture via ecapa.json)."""
    pytest.importorskip("speechbrain")
    import json

    import torch
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

    from gsv.quality import EcapaEncoder

    arch = {"input_size": 80, "channels": [64, 64, 64, 64, 192], "lin_neurons": 32}
    (tmp_path / "ecapa.json").write_text(json.dumps(arch))
    torch.manual_seed(0)
    model = ECAPA_TDNN(**arch)
    torch.save(model.state_dict(), tmp_path / "embedding_model.ckpt")
    enc = EcapaEncoder(tmp_path)
    x = np.sin(np.arange(32000) / 9.0).astype(np.float32) * 0.3
    e = enc.embed(x, 32000)
    assert e.shape == (32,) and enc.name == f"ecapa:{tmp_path.name}"
    for k, v in model.state_dict().items():
        assert torch.equal(enc._model.state_dict()[k], v)


def test_signal_checks():
    from gsv.quality import signal_checks

    sr = 16000
    tone = 0.5 * np.sin(np.arange(sr) * 2 * np.pi * 220 / sr)
    quiet = np.concatenate([tone, np.zeros(sr)])
    c = signal_checks(quiet, sr)
    assert c["seconds"] == pytest.approx(2.0) and c["silence_share"] == pytest.approx(0.5, abs=0.03)
    assert c["clipped_share"] == 0.0 and c["peak"] == pytest.approx(0.5, abs=1e-3)
    loud = signal_checks(np.clip(3 * tone, -1, 1), sr)
    assert loud["clipped_share"] > 0.3 and loud["silence_share"] == 0.0


def test_noise_signals_are_seeded_and_levelled():
    from gsv.quality import noise_signal

    for kind in ("white", "pink", "brown"):
        a, b = noise_signal(kind, seed=1), noise_signal(kind, seed=1)
        assert np.array_equal(a, b) and not np.array_equal(a, noise_signal(kind, seed=2))
        assert 20 * np.log10(np.sqrt(np.mean(a.astype(np.float64) ** 2))) == pytest.approx(-20.0, abs=0.1)
    with pytest.raises(ValueError):
        noise_signal("purple")
