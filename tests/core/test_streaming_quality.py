"""The streaming-quality bound: streamed audio against a whole-utterance decode of the same tokens and
noise, for every latency mode, on the tiny and the full-size architecture (bounds: gsv.streaming)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gsv.backends.torch_backend import TorchAudioBackend, TorchGPTBackend
from gsv.engine import Engine
from gsv.sampling import SamplingOptions
from gsv.session import Session, SynthesisOptions
from gsv.streaming import LATENCY_POLICIES, STREAMING_QUALITY_BOUNDS, streaming_quality
from tests.conftest import tiny_gpt, tiny_sovits
from tests.core.test_engine import make_segments, make_voice


def run(backends, voice, segments, streaming: bool, mode: str, seed: int = 3, max_tokens: int = 60):
    chunks = []
    opts = SynthesisOptions(sampling=SamplingOptions(seed=seed, max_tokens=max_tokens, top_k=5), streaming=streaming,
                            latency_mode=mode, noise_scale=0.5)
    s = Session(f"q{mode}{streaming}", voice, segments, opts, sink=chunks.append)
    eng = Engine(*backends)
    eng.submit(s)
    eng.run(s)
    assert s.finish_reason == "completed"
    audio = np.concatenate([c.samples for c in chunks])
    return audio, [c.start_sample for c in chunks]


def quality(backends, voice, segments, mode: str, max_tokens: int = 60) -> dict:
    whole, _ = run(backends, voice, segments, False, mode, max_tokens=max_tokens)
    streamed, joins = run(backends, voice, segments, True, mode, max_tokens=max_tokens)
    q = streaming_quality(whole, streamed, joins)
    assert q["joins"] >= 2, "too few joins to measure anything"
    return q


def check(q: dict, bound: dict, what: str) -> None:
    assert q["snr_db"] >= bound["snr_db"], (what, q)
    assert q["join_snr_db_min"] >= bound["join_snr_db_min"], (what, q)
    assert q["log_mel_l1"] <= bound["log_mel_l1"], (what, q)


@pytest.mark.parametrize("mode", list(LATENCY_POLICIES))
def test_streaming_quality_bound_tiny(mode):
    backends = TorchGPTBackend(tiny_gpt(seed=7)), TorchAudioBackend(tiny_sovits(seed=7))
    check(quality(backends, make_voice(2), make_segments(2), mode), STREAMING_QUALITY_BOUNDS["tiny"][mode], mode)


@pytest.fixture(scope="module")
def full_backends(full_bundle):
    torch.manual_seed(0)
    return TorchGPTBackend(full_bundle.load_gpt()), TorchAudioBackend(full_bundle.load_sovits())


@pytest.mark.parametrize("mode", list(LATENCY_POLICIES))
def test_streaming_quality_bound_full_size(full_backends, mode):
    gpt, audio = full_backends
    g = torch.Generator().manual_seed(11)
    cfg = gpt.config
    voice = make_voice(3)
    voice = type(voice)(voice.prompt_phones, torch.randn(1024, len(voice.prompt_phones), generator=g),
                        voice.prompt_tokens, torch.randn(audio.config.gin_channels, 1, generator=g))
    segments = [type(s)(s.text, s.phones, torch.randn(1024, len(s.phones), generator=g))
                for s in make_segments(3, n=1)]
    assert cfg.bert_dim == 1024
    check(quality(full_backends, voice, segments, mode, max_tokens=70), STREAMING_QUALITY_BOUNDS["full_size"][mode], mode)
