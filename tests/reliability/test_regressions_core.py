"""Regression tests of the faults of issue 12 that live in the core package (each failed before its fix),
and of the "one definition" rules (latent frames, weight-norm fold, sampling defaults, config fields)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from gsv import constants as C
from gsv.errors import AudioError, VoiceError
from gsv.sampling import SamplingOptions
from gsv.session import Session, SynthesisOptions
from tests.conftest import make_tiny_bert, make_tiny_hubert, speechlike, tiny_sovits


# ------------------------------------------------------------------------------ 1: fp16 model folders
def _as_fp16_folder(src_maker, path):
    """A model folder whose weights and config.json say float16, as the published chinese-* folders do."""
    from transformers import AutoModel

    src_maker(path)
    model = AutoModel.from_pretrained(str(path), dtype=torch.float32)
    model.half().save_pretrained(path)
    cfg = json.loads((path / "config.json").read_text())
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "float16"
    return path


def test_fp16_hubert_and_bert_folders_load_in_float32(tmp_path):
    from gsv.features import BertExtractor, HubertExtractor

    hubert = HubertExtractor(_as_fp16_folder(make_tiny_hubert, tmp_path / "hubert"))
    assert all(p.dtype == torch.float32 for p in hubert.model.parameters())
    x, _ = speechlike(3.0)
    assert hubert(x).dtype == torch.float32  # fp16 weights would fail on the float32 waveform
    # (the BERT folder keeps its tokenizer files; only the weights are re-saved in half precision)
    bert_dir = make_tiny_bert(tmp_path / "bert")
    from transformers import BertForMaskedLM

    BertForMaskedLM.from_pretrained(str(bert_dir), dtype=torch.float32).half().save_pretrained(bert_dir)
    bert = BertExtractor(bert_dir)
    assert all(p.dtype == torch.float32 for p in bert.model.parameters())
    assert bert("你好。", [2, 2, 1]).shape == (bert.dim, 5)


# ------------------------------------------------------------------------------ 2: BERT beyond 510 characters
def test_bert_encodes_text_longer_than_its_positions(tiny_models_dir):
    from gsv.features import BertExtractor

    bert = BertExtractor(tiny_models_dir[1])
    assert bert.window == 510
    text = "我们在北京" * 230  # 1150 characters, no punctuation: three windows
    feats = bert(text, [2] * len(text))
    assert feats.shape == (bert.dim, 2 * len(text)) and torch.isfinite(feats).all()
    # each window is encoded as the text alone would be
    torch.testing.assert_close(feats[:, : 2 * 510], bert(text[:510], [2] * 510))


# ------------------------------------------------------------------------------ 6 / 8: ids and consent
@pytest.mark.parametrize("vid", ["nl\n", "alice\n", "a\nb", " a", "a ", "", "a" * 65, "-a", "_owners", "a/b", "é"])
def test_voice_id_must_match_whole(vid, tmp_path):
    from gsv.voice import VoiceStore, validate_voice_id

    with pytest.raises(VoiceError):
        validate_voice_id(vid)
    with pytest.raises(VoiceError):
        VoiceStore(tmp_path).path(vid)


def test_voice_id_error_shows_only_a_preview():
    from gsv.voice import validate_voice_id

    with pytest.raises(VoiceError) as e:
        validate_voice_id("x" * 100_000 + "\n")
    assert len(str(e.value)) < 200


@pytest.mark.parametrize("consent", ["", " ", "\u200b", "\u200b\u2060\ufeff\u200d", "\n\t\r", "\u00a0\u3000", "\x00",
                                     "\u202e", "...", "!!!"])
def test_consent_needs_words(consent):
    from gsv.voice import validate_consent

    with pytest.raises(VoiceError):
        validate_consent(consent)


@pytest.mark.parametrize("consent", ["I agree", "同意", "ok", "ja, einverstanden", "1"])
def test_real_consent_is_accepted(consent):
    from gsv.voice import validate_consent

    assert validate_consent(consent) == consent


def test_tiny_auxiliary_reference_is_bad_audio(tiny_full_bundle):
    """Found by the fuzz: a few samples of auxiliary reference crashed the spectrogram (INTERNAL)."""
    from gsv.pipeline import TextPreparer, make_voice_preparer
    from tests.conftest import wav_bytes

    prep = make_voice_preparer(tiny_full_bundle, TextPreparer.from_bundle(tiny_full_bundle))
    x, sr = speechlike()
    for n in (1, 2, 40, 2000):
        with pytest.raises(AudioError, match="auxiliary"):
            prep.prepare("v", wav_bytes(x, sr), "我们在北京。", "zh", [wav_bytes(x[:n], sr)])


# ------------------------------------------------------------------------------ 16: max_audio_seconds
@pytest.mark.parametrize("speed,streaming", [(1.0, True), (1.0, False), (1.3, True), (0.8, False)])
def test_max_audio_seconds_is_never_exceeded_across_segments(speed, streaming):
    from gsv.backends.torch_backend import TorchAudioBackend, TorchGPTBackend
    from gsv.engine import Engine
    from tests.conftest import tiny_gpt
    from tests.core.test_engine import make_segments, make_voice

    eng = Engine(TorchGPTBackend(tiny_gpt(seed=5)), TorchAudioBackend(tiny_sovits(seed=5)))
    chunks = []
    # five segments of at most 10 tokens (0.4 s) each, with 0.3 s pauses between them
    opts = SynthesisOptions(sampling=SamplingOptions(seed=3, max_tokens=10, top_k=5), speed=speed,
                            streaming=streaming, max_audio_seconds=1.5)
    s = Session("cap", make_voice(3), make_segments(3, n=5), opts, sink=lambda c: chunks.append(c.samples))
    eng.submit(s)
    eng.run(s)
    audio_seconds = sum(c.size for c in chunks) / C.SAMPLE_RATE
    assert audio_seconds <= 1.5 and s.finish_reason == "max_audio", audio_seconds
    assert audio_seconds > 1.5 - 0.3 - 2 / (C.TOKENS_PER_SECOND * speed)  # not cut far below the cap either


def test_cap_keeps_every_other_sampling_option():
    """The per-segment token cap rebuilds the sampling options with dataclasses.replace (not by position)."""
    opts = SynthesisOptions(sampling=SamplingOptions(top_k=7, top_p=0.5, temperature=0.7, repetition_penalty=1.1,
                                                     seed=9, max_tokens=100), max_audio_seconds=0.4)
    from tests.core.test_engine import make_segments, make_voice

    s = Session("k", make_voice(), make_segments(n=1), opts)
    s.start_segment(C.SEMANTIC_VOCAB + 1, C.EOS_TOKEN)
    got = s.sampler.options
    assert got == dataclasses.replace(opts.sampling, max_tokens=10)


# ------------------------------------------------------------------------------ one definition each
def test_latent_frames_agree_everywhere_at_awkward_speeds():
    """speed 0.55 with 11 tokens: double maths gives 40 frames, the exported graph's float32 maths 41.
    Every backend and the engine use one formula now, so noise is never padded or cropped."""
    from gsv.backends.torch_backend import TorchAudioBackend
    from gsv.models.sovits.model import latent_frames, speed_frames

    speed = float(np.float32(0.55))
    assert latent_frames(11, speed) == 41 == speed_frames(torch.zeros(1, 1, 22), speed)
    assert int(speed_frames(torch.zeros(1, 1, 22), torch.tensor(speed, dtype=torch.float32))) == 41
    be = TorchAudioBackend(tiny_sovits(seed=1))
    cfg = be.config
    noise = torch.randn(1, cfg.inter_channels, latent_frames(11, speed))
    audio = be.decode_audio(torch.randint(0, 1024, (1, 11)), torch.tensor([11]), torch.randint(0, 700, (1, 6)),
                            torch.tensor([6]), torch.randn(1, cfg.gin_channels, 1), noise, speed)
    assert audio.shape[1] == 41 * C.SAMPLES_PER_FRAME


def test_noise_of_another_length_is_refused():
    from gsv.backends.base import check_noise

    with pytest.raises(ValueError):
        check_noise(torch.zeros(1, 4, 40), 41)


def test_one_weight_norm_fold():
    from gsv.checkpoint.upstream import fold_weight_norm, unfold_weight_norm
    from gsv.models.weightnorm import apply_weight_norm, fold, folded_state_dict, magnitude

    w = torch.randn(6, 3, 5)
    torch.testing.assert_close(fold(magnitude(w), w), w)
    g, v = torch.rand(6, 1, 1) + 0.5, torch.randn(6, 3, 5)
    upstream = fold_weight_norm({"c.weight_g": g, "c.weight_v": v})["c.weight"]
    conv = torch.nn.Sequential(torch.nn.Conv1d(3, 6, 5))
    apply_weight_norm(conv, ["0"])
    with torch.no_grad():
        conv[0].parametrizations.weight.original0.copy_(g)
        conv[0].parametrizations.weight.original1.copy_(v)
    torch.testing.assert_close(folded_state_dict(conv)["0.weight"], upstream)
    torch.testing.assert_close(fold_weight_norm(unfold_weight_norm({"0.weight": upstream}, {"0"}))["0.weight"],
                               upstream)


def test_gpt_config_has_no_sampling_knob_but_checkpoints_round_trip():
    from gsv.models.config import GPTConfig

    assert "top_k" not in {f.name for f in dataclasses.fields(GPTConfig)}
    legacy = dataclasses.asdict(GPTConfig()) | {"top_k": 15}  # a bundle written before
    assert GPTConfig.from_dict(legacy) == GPTConfig()
    assert GPTConfig().to_upstream()["inference"] == {"top_k": SamplingOptions().top_k}
    assert GPTConfig().to_upstream({"top_k": 5})["inference"] == {"top_k": 5}
    src = GPTConfig().to_upstream() | {"inference": {"top_k": 5}}
    assert GPTConfig.from_upstream(src) == GPTConfig()


def test_sampling_defaults_defined_once():
    from gsv.cli import build_parser
    from gsv.cli_synth import _options

    args = build_parser().parse_args(["synth", "--bundle", "b", "--text", "x", "--lang", "en", "-o", "o.wav",
                                      "--seed", "1"])
    options, seed = _options(args)
    assert options.sampling == dataclasses.replace(SamplingOptions(), seed=1) and seed == 1
    assert (options.speed, options.noise_scale) == (SynthesisOptions().speed, SynthesisOptions().noise_scale)


def test_trt_backend_gets_the_device(monkeypatch, tiny_bundle):
    import gsv.backends.trt_backend as trt_backend
    from gsv.backends import open_backends

    seen = []
    monkeypatch.setattr(trt_backend, "open_trt_backends", lambda bundle, device="cuda": seen.append(device))
    open_backends(tiny_bundle, "trt", device="cuda:1")
    open_backends(tiny_bundle, "trt")
    assert seen == ["cuda:1", "cuda"]


def test_cancel_after_the_last_token_still_ends_the_request():
    """Found by the storm: a request cancelled after its GPT row ended (only decoding left) kept its
    decode queue and never finished — a leak per disconnected client."""
    from gsv.backends.torch_backend import TorchAudioBackend, TorchGPTBackend
    from gsv.engine import Engine
    from tests.conftest import tiny_gpt
    from tests.core.test_engine import make_segments, make_voice

    eng = Engine(TorchGPTBackend(tiny_gpt(seed=5)), TorchAudioBackend(tiny_sovits(seed=5)))
    s = Session("late", make_voice(), make_segments(n=1), SynthesisOptions(sampling=SamplingOptions(seed=1,
                                                                                                      max_tokens=5)))
    eng.submit(s)
    while eng.ar_step() and eng.live:  # the AR side finishes; the decoder never ran
        pass
    assert eng.live == 0 and eng.queues[s] and not s.done.is_set()
    eng.cancel(s)
    assert s.done.is_set() and s.finish_reason == "cancelled" and s not in eng.queues and eng.idle()


def test_cancel_during_an_ar_step_never_leaves_a_gap_for_the_decoder():
    """Found by the 30-minute soak: a cancel landing between an AR step's retire and its scheduling
    dropped the queued windows, then queued the next one; the decoder then raised "windows accepted
    out of order" (and lost the audio of every other request in that batch)."""
    from gsv.backends.torch_backend import TorchAudioBackend, TorchGPTBackend
    from gsv.engine import Engine
    from tests.conftest import tiny_gpt
    from tests.core.test_engine import make_segments, make_voice

    eng = Engine(TorchGPTBackend(tiny_gpt(seed=5)), TorchAudioBackend(tiny_sovits(seed=5)))
    other = Session("other", make_voice(1), make_segments(1, n=1), SynthesisOptions(
        sampling=SamplingOptions(seed=2, max_tokens=60)), sink=lambda c: None)
    s = Session("gap", make_voice(), make_segments(n=1), SynthesisOptions(sampling=SamplingOptions(seed=1,
                                                                                                   max_tokens=60)))
    eng.submit(s)
    eng.submit(other)
    while len(eng.queues[s]) < 2:  # at least two windows queued, none decoded
        eng.ar_step()
    eng.decode_step()
    eng.cancel(s)  # drops the queued windows; the row goes at the next retire ...
    eng._retire_dead = lambda: None  # ... which this cancel just missed
    for _ in range(40):
        eng.ar_step()
    assert not eng.queues.get(s)  # nothing queued after the gap
    while eng.decode_step():  # and the decoder keeps serving the other request
        pass
    assert other.samples_out > 0
