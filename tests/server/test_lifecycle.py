"""Server lifecycle: restart with stored voices, kill during registration, drain, overload, auth, slow readers."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import grpc
import pytest

from clients import TtsClient, TtsError
from gsv.voice import VoiceStore
from protos.tts.v1 import tts_pb2 as pb
from tests.conftest import speechlike, wav_bytes
from tests.server.harness import start_server

TEXT = "你好，欢迎来到北京。今天天气很好。"


def register(c, vid="alice", text="我们在北京。"):
    x, sr = speechlike()
    return c.register_voice(vid, wav_bytes(x, sr), text, "zh", consent="agreed")


def test_voices_survive_restart(tiny_full_bundle, tmp_path):
    srv = start_server(tiny_full_bundle.path, tmp_path / "voices")
    with TtsClient(srv.target) as c:
        register(c)
        first = c.synthesize("好的。", "alice", seed=5, max_audio_seconds=1).audio
    srv.stop()
    srv = start_server(tiny_full_bundle.path, tmp_path / "voices")
    try:
        with TtsClient(srv.target) as c:
            assert [v.voice_id for v in c.list_voices()] == ["alice"]
            assert c.synthesize("好的。", "alice", seed=5, max_audio_seconds=1).audio == first
    finally:
        srv.stop()


KILL_SCRIPT = r"""
import os, signal, sys, torch
from gsv.voice import Voice, VoiceStore
store = VoiceStore(sys.argv[1])
real_replace = os.replace
def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)   # killed after writing, before the rename
os.replace = die
v = Voice("victim", "en", "x", [1, 2], torch.zeros(4, 2), torch.zeros(3, dtype=torch.long), torch.zeros(4, 1), "b")
store.save(v, [b"RIFF"])
"""


def test_kill_during_registration_leaves_store_consistent(tiny_full_bundle, tmp_path):
    voices = tmp_path / "voices"
    srv = start_server(tiny_full_bundle.path, voices)
    with TtsClient(srv.target) as c:
        register(c)
    srv.stop()
    r = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(voices)], capture_output=True)
    assert r.returncode == -9
    assert any(p.name.startswith(".tmp-") for p in voices.iterdir())  # debris of the killed write
    srv = start_server(tiny_full_bundle.path, voices)
    try:
        assert not any(p.name.startswith(".tmp-") for p in voices.iterdir())
        with TtsClient(srv.target) as c:
            assert [v.voice_id for v in c.list_voices()] == ["alice"]
            with pytest.raises(TtsError) as e:
                c.get_voice("victim")
            assert e.value.code == grpc.StatusCode.NOT_FOUND
            assert c.stream("好的。", "alice", seed=1, max_audio_seconds=1).chunks
    finally:
        srv.stop()


def test_overload_is_refused_at_once_and_drain(tiny_full_bundle, tmp_path):
    srv = start_server(tiny_full_bundle.path, tmp_path / "voices", max_live=1, max_queue=0)
    try:
        with TtsClient(srv.target, timeout=120, retry=None) as c:
            register(c)
            call = c.stub.StreamingSynthesize(pb.SynthesizeRequest(
                config=pb.SynthesisConfig(voice_id="alice", max_audio_seconds=8), text=TEXT * 3))
            it = iter(call)
            next(it)
            t0 = time.monotonic()
            with pytest.raises(TtsError) as e:
                c.synthesize("好的。", "alice")
            assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and e.value.retry_after_ms
            assert time.monotonic() - t0 < 2.0
            # drain: the running stream finishes, new requests are UNAVAILABLE
            srv.loop.call_soon_threadsafe(srv._stop.set)
            time.sleep(0.3)
            with pytest.raises(TtsError) as e:
                c.synthesize("好的。", "alice")
            assert e.value.code == grpc.StatusCode.UNAVAILABLE
            msgs = list(it)
            assert msgs[-1].WhichOneof("event") == "summary"
    finally:
        srv.stop()
    assert srv.state.metrics.registry.get_sample_value("tts_admission_rejections_total", {"reason": "queue_full"}) == 1


def test_bearer_tokens_scope_voices(tiny_full_bundle, tmp_path):
    srv = start_server(tiny_full_bundle.path, tmp_path / "voices", tokens={"tok-a": "ann", "tok-b": "ben"})
    try:
        with TtsClient(srv.target, token="tok-a") as a, TtsClient(srv.target, token="tok-b") as b, \
                TtsClient(srv.target) as anon:
            register(a)
            assert [v.voice_id for v in a.list_voices()] == ["alice"]
            assert b.list_voices() == []
            for fn in (lambda: b.get_voice("alice"), lambda: b.stream("好的。", "alice"), lambda: b.delete_voice("alice")):
                with pytest.raises(TtsError) as e:
                    fn()
                assert e.value.code == grpc.StatusCode.NOT_FOUND
            with pytest.raises(TtsError) as e:
                anon.list_voices()
            assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert a.stream("好的。", "alice", seed=1, max_audio_seconds=1).chunks
    finally:
        srv.stop()


def test_client_that_stops_reading_is_cut_off(tiny_full_bundle, tmp_path):
    srv = start_server(tiny_full_bundle.path, tmp_path / "voices", max_buffered_audio_seconds=1.0)
    try:
        with TtsClient(srv.target, timeout=120) as c:
            register(c)
            call = c.stub.StreamingSynthesize(pb.SynthesizeRequest(
                config=pb.SynthesisConfig(voice_id="alice", max_audio_seconds=60), text=TEXT * 20))
            deadline = time.time() + 60
            while time.time() < deadline and srv.state.in_flight:
                time.sleep(0.2)  # never read
            assert srv.state.in_flight == 0 and srv.state.engine.live == 0
            with pytest.raises(grpc.RpcError) as e:
                list(call)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        srv.stop()


def test_thread_plan_of_the_two_stages(tmp_path):
    from gsv.backends.base import ThreadPlan
    from server.cli import build_parser, config_from_args

    def plan(*flags):
        return config_from_args(build_parser().parse_args(["--bundle", "b", "--voices", "v", *flags])).thread_plan()

    assert plan() == ThreadPlan(None, None, audio_spinning=False)  # all cores each; decoder threads sleep when idle
    assert plan("--threads", "2") == ThreadPlan(2, 2, audio_spinning=False)
    assert plan("--threads", "2", "--ar-threads", "1") == ThreadPlan(1, 2, audio_spinning=False)
    assert plan("--decoder-threads", "3") == ThreadPlan(None, 3, audio_spinning=False)
    from gsv.errors import GsvError

    with pytest.raises(GsvError, match="thread counts"):
        plan("--ar-threads", "0")
    with pytest.raises(ValueError):
        ThreadPlan(gpt=0)
