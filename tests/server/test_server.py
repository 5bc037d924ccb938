"""In-process server on a tiny bundle: every RPC, streaming vs unary, batching, bad input, cancel,
drain, voice persistence, metrics and health."""
from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients import TtsClient, TtsError
from protos.tts.v1 import tts_pb2 as pb
from tests.conftest import speechlike, wav_bytes
from tests.server.harness import metric, start_server

REF_TEXT = "我们在北京。"
TEXT = "你好，欢迎来到北京。今天天气很好。"


@pytest.fixture(scope="module")
def server(tiny_full_bundle, tmp_path_factory):
    srv = start_server(tiny_full_bundle.path, tmp_path_factory.mktemp("voices"), max_live=4, max_queue=4)
    with TtsClient(srv.target) as c:
        x, sr = speechlike()
        c.register_voice("alice", wav_bytes(x, sr), REF_TEXT, "zh", consent="test speaker agreed")
    yield srv
    srv.stop()


@pytest.fixture()
def client(server):
    with TtsClient(server.target, timeout=120) as c:
        yield c


def test_health_and_config(server, client):
    stub = health_pb2_grpc.HealthStub(client.channel)
    assert stub.Check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.SERVING
    cfg = client.server_config()
    assert cfg.models[0].native_sample_rate_hz == 32000 and "zh" in cfg.languages
    assert cfg.limits.max_live_requests == 4


def test_voice_rpcs(client):
    v = client.get_voice("alice")
    assert v.language == "zh" and not v.reference_free and v.consent_statement == "test speaker agreed"
    assert "alice" in [x.voice_id for x in client.list_voices()]
    x, sr = speechlike(seed=3)
    client.register_voice("bob", wav_bytes(x, sr), "Hello there, friend.", "en", consent="ok")
    with pytest.raises(TtsError) as e:
        client.register_voice("bob", wav_bytes(x, sr), "Hello there, friend.", "en", consent="ok")
    assert e.value.code == grpc.StatusCode.ALREADY_EXISTS
    client.delete_voice("bob")
    with pytest.raises(TtsError) as e:
        client.get_voice("bob")
    assert e.value.code == grpc.StatusCode.NOT_FOUND


def test_streaming_matches_unary(client):
    r = client.stream(TEXT, "alice", seed=7, max_audio_seconds=3.0)
    u = client.synthesize(TEXT, "alice", seed=7, max_audio_seconds=3.0)
    unary = np.frombuffer(u.audio, "<i2").astype(np.float32) / 32767
    assert r.seed == u.seed == 7 and r.summary.finish_reason in (pb.COMPLETED, pb.MAX_AUDIO_LENGTH)
    assert [c.sequence for c in r.chunks] == list(range(len(r.chunks)))
    streamed = r.audio
    # same tokens, same length; the windows differ from whole-segment decoding only by the limited right
    # context of each chunk (documented bound: SNR >= 0 dB on random tiny models, identical length)
    assert streamed.size == unary.size
    err = streamed - unary
    snr = 10 * np.log10((unary**2).sum() / max((err**2).sum(), 1e-12))
    assert snr > 0, snr


def test_wav_and_float_formats(client):
    u = client.synthesize("好的。", "alice", seed=1, encoding="wav", sample_rate=16000, max_audio_seconds=1)
    assert u.audio[:4] == b"RIFF" and u.format.sample_rate_hz == 16000
    r = client.stream("好的。", "alice", seed=1, encoding="pcm_f32le", max_audio_seconds=1)
    assert r.chunks and r.chunks[0].samples.dtype == np.float32


def _concurrent_vs_alone(srv, client, seeds):
    alone = {s: client.stream(TEXT, "alice", seed=s, max_audio_seconds=2.0).audio for s in seeds}
    results = {}

    def run(seed):
        with TtsClient(srv.target, timeout=300) as c:
            results[seed] = c.stream(TEXT, "alice", seed=seed, max_audio_seconds=2.0).audio

    threads = [threading.Thread(target=run, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return alone, results


def test_concurrent_streams_equal_sequential(tiny_full_bundle, tmp_path):
    """Batching never changes a stream: with fixed window cuts (--no-deadline-chunks) the audio of 8
    concurrent streams is the audio each gives alone, up to PCM16 rounding."""
    srv = start_server(tiny_full_bundle.path, tmp_path / "voices", max_live=4, max_queue=4, deadline_chunks=False)
    try:
        with TtsClient(srv.target, timeout=120) as client:
            x, sr = speechlike()
            client.register_voice("alice", wav_bytes(x, sr), REF_TEXT, "zh", consent="test speaker agreed")
            alone, results = _concurrent_vs_alone(srv, client, list(range(20, 28)))
        for s in alone:
            np.testing.assert_allclose(results[s], alone[s], atol=3e-4)  # PCM16 rounding of float-identical audio
        assert metric(srv, "tts_ar_batch_size_sum") / max(metric(srv, "tts_ar_batch_size_count"), 1) > 1
    finally:
        srv.stop()


def test_concurrent_streams_close_to_sequential_with_deadline_chunks(server, client):
    """With listener-driven window cuts (the default) load moves the cuts, so only the decoder's context
    at a few joins differs: same length, same tokens, audio within 30 dB SNR of the stream alone."""
    alone, results = _concurrent_vs_alone(server, client, list(range(30, 36)))
    for s in alone:
        a, b = alone[s].astype(np.float64), results[s].astype(np.float64)
        assert a.shape == b.shape
        snr = 10 * np.log10(np.sum(a**2) / max(np.sum((a - b) ** 2), 1e-20))
        assert snr >= 30.0, (s, snr)


@pytest.mark.parametrize("text,code", [("", "INVALID_ARGUMENT"), ("   \n ", "INVALID_ARGUMENT"),
                                       ("x" * 5000, "INVALID_ARGUMENT"), ("😀😀😀", "INVALID_ARGUMENT")])
def test_bad_text(client, text, code):
    with pytest.raises(TtsError) as e:
        client.stream(text, "alice")
    assert e.value.code.name == code


@pytest.mark.parametrize("kw", [dict(temperature=float("nan")), dict(temperature=-1.0), dict(top_k=0),
                                dict(top_p=1.5), dict(repetition_penalty=0.5), dict(speed=0.0),
                                dict(max_audio_seconds=-1.0), dict(sample_rate=7)])
def test_bad_parameters(client, kw):
    with pytest.raises(TtsError) as e:
        client.stream(TEXT, "alice", **kw)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_voice_and_enum(client):
    with pytest.raises(TtsError) as e:
        client.stream(TEXT, "nobody")
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    cfg = pb.SynthesisConfig(voice_id="alice", latency_mode=99)
    with pytest.raises(grpc.RpcError) as e:
        list(client.stub.StreamingSynthesize(pb.SynthesizeRequest(config=cfg, text=TEXT)))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("case", ["broken", "short", "long", "silent", "nan"])
def test_bad_reference_audio(client, case):
    x, sr = speechlike()
    data = {"broken": b"RIFF\x00\x00not a wav", "short": wav_bytes(x[: sr], sr), "long": wav_bytes(np.tile(x, 4), sr),
            "silent": wav_bytes(np.zeros_like(x), sr)}.get(case)
    if case == "nan":
        import io

        import soundfile as sf

        buf = io.BytesIO()
        y = x.copy()
        y[100] = np.nan
        sf.write(buf, y, sr, format="WAV", subtype="FLOAT")
        data = buf.getvalue()
    with pytest.raises(TtsError) as e:
        client.register_voice(f"bad-{case}", data, REF_TEXT, "zh", consent="ok")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(TtsError):
        client.get_voice(f"bad-{case}")


def test_consent_required(client):
    x, sr = speechlike()
    with pytest.raises(TtsError) as e:
        client.register_voice("noconsent", wav_bytes(x, sr), REF_TEXT, "zh", consent="  ")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_bidi(client):
    r = client.bidi(["你好，", "欢迎来到北京。", ("今天天气", True), "很好。"], "alice", seed=3, max_audio_seconds=4)
    assert r.chunks and r.summary is not None


def test_bidi_protocol_errors(client):
    def reqs(*msgs):
        return iter(msgs)

    text = pb.BidiSynthesizeRequest(input=pb.TextInput(text="你好。"))
    conf = pb.BidiSynthesizeRequest(config=pb.SynthesisConfig(voice_id="alice"))
    for msgs in ([text], [conf, conf, text], [conf]):
        with pytest.raises(grpc.RpcError) as e:
            list(client.stub.BidiSynthesize(reqs(*msgs), timeout=60))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_cancel_frees_slot(server, client):
    call = client.stub.StreamingSynthesize(pb.SynthesizeRequest(
        config=pb.SynthesisConfig(voice_id="alice", max_audio_seconds=60), text=TEXT * 5))
    it = iter(call)
    next(it)  # start
    next(it)  # first audio
    before = metric(server, "tts_cancellations_total", {"reason": "cancelled"})
    call.cancel()
    deadline = time.time() + 30
    while time.time() < deadline and (server.state.engine.live or server.state.in_flight):
        time.sleep(0.05)
    assert server.state.engine.live == 0 and server.state.in_flight == 0
    assert metric(server, "tts_cancellations_total", {"reason": "cancelled"}) == before + 1


def test_deadline(client):
    with pytest.raises(grpc.RpcError) as e:
        list(client.stub.StreamingSynthesize(pb.SynthesizeRequest(
            config=pb.SynthesisConfig(voice_id="alice", max_audio_seconds=60), text=TEXT * 5), timeout=0.5))
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_metrics_move(server, client):
    before = metric(server, "tts_requests_total", {"method": "StreamingSynthesize", "code": "OK"})
    client.stream("好的。", "alice", seed=1, max_audio_seconds=1)
    assert metric(server, "tts_requests_total", {"method": "StreamingSynthesize", "code": "OK"}) == before + 1
    assert metric(server, "tts_time_to_first_audio_seconds_count", {"method": "StreamingSynthesize"}) > 0
    assert metric(server, "tts_semantic_tokens_total") > 0 and metric(server, "tts_audio_seconds_total") > 0
    from prometheus_client import generate_latest

    text = generate_latest(server.state.metrics.registry).decode()
    for name in ("tts_time_to_first_audio_seconds", "tts_request_duration_seconds", "tts_queue_wait_seconds",
                 "tts_ar_step_seconds", "tts_ar_batch_size", "tts_decoder_batch_size", "tts_decode_chunk_seconds",
                 "tts_real_time_factor", "tts_audio_seconds_total", "tts_semantic_tokens_total",
                 "tts_requests_in_flight", "tts_queue_depth", "tts_requests_total", "tts_admission_rejections_total",
                 "tts_underruns_total", "tts_build_info", "tts_model_info", "tts_decoded_audio_seconds_total",
                 "tts_decoder_overhead_ratio"):
        assert name in text, name


def test_decoder_overhead_ratio_reported(server, client):
    """Decoded (vocoded, context included) audio is counted beside emitted audio; the gauge is their
    ratio over the last minute: above 1 (windows re-render context) and well below re-decoding all."""
    decoded0, emitted0 = metric(server, "tts_decoded_audio_seconds_total"), metric(server, "tts_audio_seconds_total")
    client.stream(TEXT, "alice", seed=4, max_audio_seconds=3)
    decoded = metric(server, "tts_decoded_audio_seconds_total") - decoded0
    emitted = metric(server, "tts_audio_seconds_total") - emitted0
    assert emitted > 0 and 1.0 < decoded / emitted < 2.0
    assert 1.0 < metric(server, "tts_decoder_overhead_ratio") < 2.0


def test_sliding_ratio_forgets_after_its_window():
    from server.metrics import SlidingRatio

    now = [1000.0]
    r = SlidingRatio(window_s=60, clock=lambda: now[0])
    assert r.value() == 0.0
    r.add(numerator=3.0, denominator=1.0)
    now[0] += 30
    r.add(numerator=1.0, denominator=1.0)
    assert r.value() == 2.0
    now[0] += 31  # the first second left the window
    assert r.value() == 1.0
    now[0] += 60
    assert r.value() == 0.0


def test_positions_at_resampled_rate(client):
    r = client.stream(TEXT, "alice", seed=2, sample_rate=16000, max_audio_seconds=2)
    assert r.sample_rate == 16000
    pos = 0
    for i, c in enumerate(r.chunks):
        assert c.sequence == i and c.start_sample == pos
        pos += c.samples.size
