"""A v2Pro / v2ProPlus bundle served end to end over gRPC: registration computes the speaker-verification
embedding once, streaming and unary synthesis, the version in GetServerConfig, v2 voices re-prepared."""
from __future__ import annotations

import numpy as np
import pytest

from clients import TtsClient
from tests.conftest import speechlike, wav_bytes
from tests.server.harness import start_server


@pytest.fixture(scope="module")
def pro_server(tiny_pro_bundle, tmp_path_factory):
    voices = tmp_path_factory.mktemp("voices_pro")
    srv = start_server(tiny_pro_bundle.path, voices, max_live=2, max_queue=4)
    yield srv, voices
    srv.stop()


def test_pro_voice_served_end_to_end(pro_server, tiny_pro_bundle, monkeypatch):
    srv, voices = pro_server
    calls = []
    sv = srv.state.registry.preparer.sv
    real = sv.forward
    monkeypatch.setattr(sv, "forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    with TtsClient(srv.target, timeout=120) as c:
        assert c.server_config().models[0].version == tiny_pro_bundle.model_version
        c.register_voice("pro", wav_bytes(*speechlike(4.0, seed=1)), "我们在北京。", "zh", consent="agreed",
                         aux=[wav_bytes(*speechlike(3.0, seed=2))])
        assert len(calls) == 2  # one embedding per reference, at registration
        streamed = c.stream("你好，欢迎来到北京。", "pro", language="zh", seed=4, max_audio_seconds=2.0)
        unary = c.synthesize("你好，欢迎来到北京。", "pro", language="zh", seed=4, max_audio_seconds=2.0)
    assert len(calls) == 2  # synthesis never recomputes it
    audio = streamed.audio
    assert audio.size > 0 and np.abs(audio).max() > 1e-3 and streamed.summary.finish_reason
    assert len(unary.audio) > 0
    from gsv.voice import VoiceStore

    stored = VoiceStore(voices).load("pro", tiny_pro_bundle.bundle_id)
    assert stored.sv_emb.shape == (2, tiny_pro_bundle.sv_config.embedding_dim)
