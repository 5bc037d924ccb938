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


def test_v2_voice_gets_its_embedding_on_first_use_with_a_pro_bundle(tiny_full_bundle, tiny_pro_bundle, tmp_path):
    """A voice registered on a v2 bundle is re-prepared (speaker-verification embedding included) from its kept
    reference audio the first time a Pro server uses it; without kept audio the error says what to do."""
    import shutil

    from clients import TtsError
    from gsv.voice import VoiceStore

    voices = tmp_path / "voices"
    v2 = start_server(tiny_full_bundle.path, voices, max_live=2)
    try:
        with TtsClient(v2.target, timeout=120) as c:
            c.register_voice("old", wav_bytes(*speechlike(4.0, seed=5)), "我们在北京。", "zh", consent="agreed")
            c.register_voice("lost", wav_bytes(*speechlike(4.0, seed=6)), "我们在北京。", "zh", consent="agreed")
    finally:
        v2.stop()
    store = VoiceStore(voices)
    assert store.load("old").sv_emb is None
    meta = store.metadata("lost")
    for i in range(int(meta.get("references", 0))):  # a store that did not keep the reference audio
        (voices / "lost" / f"reference_{i}.bin").unlink()
    (voices / "lost" / "voice.json").write_text((voices / "lost" / "voice.json").read_text().replace(
        f'"references": {meta["references"]}', '"references": 0'))
    pro = start_server(tiny_pro_bundle.path, voices, max_live=2)
    try:
        with TtsClient(pro.target, timeout=120) as c:
            r = c.stream("你好。", "old", language="zh", seed=1, max_audio_seconds=1.0)
            assert r.audio.size > 0
            with pytest.raises(TtsError) as e:
                c.stream("你好。", "lost", language="zh", seed=1, max_audio_seconds=1.0)
            assert "no stored reference" in e.value.details
    finally:
        pro.stop()
    again = VoiceStore(voices).load("old", tiny_pro_bundle.bundle_id)  # cached on disk for the Pro bundle
    assert again.sv_emb is not None and again.sv_emb.shape[0] == 1
    shutil.rmtree(voices)
