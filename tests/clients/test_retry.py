"""Client resilience: a call that fails with UNAVAILABLE / RESOURCE_EXHAUSTED before any audio is
retried (bounded, backoff, the server's pushback hint), never after audio reached the caller.

A scripted TextToSpeech server on 127.0.0.1 answers each call from a list of behaviours."""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest

from clients import AsyncTtsClient, RetryPolicy, TtsClient, TtsError
from protos.tts.v1 import tts_pb2 as pb
from protos.tts.v1 import tts_pb2_grpc as pb_grpc

AUDIO = (np.ones(320, "<i2") * 1000).tobytes()


class Scripted(pb_grpc.TextToSpeechServicer):
    """Call n behaves as ``script[n]`` (the last entry repeats): "ok", "audio-then-UNAVAILABLE",
    or a status code name to fail with before any message (``"CODE:ms"`` adds a pushback hint)."""

    def __init__(self, script):
        self.script, self.calls, self.texts = script, 0, []
        self.lock = threading.Lock()

    def _next(self):
        with self.lock:
            step = self.script[min(self.calls, len(self.script) - 1)]
            self.calls += 1
            return step

    def _fail(self, step, context):
        code, _, ms = step.partition(":")
        if ms:
            context.set_trailing_metadata((("grpc-retry-pushback-ms", ms),))
        context.abort(getattr(grpc.StatusCode, code), f"scripted {code}")

    def _messages(self, step, context):
        yield pb.SynthesizeStreamResponse(start=pb.StreamStart(request_id="r", format=pb.AudioFormat(
            encoding=pb.PCM_S16LE, sample_rate_hz=32000)))
        yield pb.SynthesizeStreamResponse(audio=pb.AudioData(data=AUDIO, sequence=0, num_samples=320))
        if step == "audio-then-UNAVAILABLE":
            context.abort(grpc.StatusCode.UNAVAILABLE, "replica died")
        yield pb.SynthesizeStreamResponse(summary=pb.SynthesisSummary(audio_seconds=0.01))

    def StreamingSynthesize(self, request, context):
        step = self._next()
        if step not in ("ok", "audio-then-UNAVAILABLE"):
            self._fail(step, context)
        yield from self._messages(step, context)

    def BidiSynthesize(self, request_iterator, context):
        step = self._next()
        texts = [m.input.text for m in request_iterator if m.WhichOneof("request") == "input"]
        self.texts.append(texts)
        if step not in ("ok", "audio-then-UNAVAILABLE"):
            self._fail(step, context)
        yield from self._messages(step, context)

    def Synthesize(self, request, context):
        step = self._next()
        if step != "ok":
            self._fail(step, context)
        return pb.SynthesizeResponse(request_id="r", audio=AUDIO)

    def RegisterVoice(self, request, context):
        self._fail(self._next(), context)


@pytest.fixture()
def scripted():
    servers = []

    def start(script):
        servicer = Scripted(script)
        server = grpc.server(futures.ThreadPoolExecutor(4))
        pb_grpc.add_TextToSpeechServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return servicer, f"127.0.0.1:{port}"

    yield start
    for s in servers:
        s.stop(None)


FAST = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)


def test_stream_failing_before_audio_is_retried_and_succeeds(scripted):
    servicer, target = scripted(["UNAVAILABLE", "RESOURCE_EXHAUSTED", "ok"])
    with TtsClient(target, retry=FAST) as c:
        r = c.stream("hi", "v")
    assert servicer.calls == 3 and r.attempts == 3 and r.summary is not None and len(r.chunks) == 1


def test_retry_waits_for_the_servers_pushback_hint(scripted):
    servicer, target = scripted(["RESOURCE_EXHAUSTED:300", "ok"])
    with TtsClient(target, retry=FAST) as c:
        t0 = time.monotonic()
        r = c.stream("hi", "v")
    assert r.attempts == 2 and time.monotonic() - t0 >= 0.3  # the hint, not the 10-50 ms backoff


def test_no_retry_once_audio_was_delivered(scripted):
    servicer, target = scripted(["audio-then-UNAVAILABLE", "ok"])
    got = []
    with TtsClient(target, retry=FAST) as c:
        with pytest.raises(TtsError) as e:
            for chunk in c.stream_chunks("hi", "v"):
                got.append(chunk)
    assert e.value.code == grpc.StatusCode.UNAVAILABLE and servicer.calls == 1 and len(got) == 1


def test_retries_are_bounded(scripted):
    servicer, target = scripted(["UNAVAILABLE"])
    with TtsClient(target, retry=FAST) as c:
        with pytest.raises(TtsError) as e:
            c.stream("hi", "v")
    assert e.value.code == grpc.StatusCode.UNAVAILABLE and servicer.calls == FAST.max_attempts


@pytest.mark.parametrize("code", ["INVALID_ARGUMENT", "NOT_FOUND", "INTERNAL"])
def test_other_codes_are_not_retried(scripted, code):
    servicer, target = scripted([code, "ok"])
    with TtsClient(target, retry=FAST) as c:
        with pytest.raises(TtsError) as e:
            c.stream("hi", "v")
    assert e.value.code.name == code and servicer.calls == 1


def test_retry_none_and_writes_are_never_retried(scripted):
    servicer, target = scripted(["UNAVAILABLE", "ok"])
    with TtsClient(target, retry=None) as c:
        with pytest.raises(TtsError):
            c.synthesize("hi", "v")
    assert servicer.calls == 1
    servicer, target = scripted(["UNAVAILABLE"])
    with TtsClient(target, retry=FAST) as c:
        with pytest.raises(TtsError):
            c.register_voice("v", b"x", "t", "en", consent="ok")
    assert servicer.calls == 1


def test_unary_and_bidi_are_retried_with_the_text_sent_again(scripted):
    servicer, target = scripted(["UNAVAILABLE", "ok"])
    with TtsClient(target, retry=FAST) as c:
        assert c.synthesize("hi", "v").audio == AUDIO
    servicer, target = scripted(["UNAVAILABLE", "ok"])
    with TtsClient(target, retry=FAST) as c:
        r = c.bidi(iter(["one. ", ("two.", True)]), "v")  # a one-shot iterator: the client replays it
    assert r.attempts == 2 and servicer.texts == [["one. ", "two."], ["one. ", "two."]]


def test_async_stream_is_retried_before_audio_only(scripted):
    servicer, target = scripted(["UNAVAILABLE", "ok"])
    late, late_target = scripted(["audio-then-UNAVAILABLE", "ok"])

    async def main():
        async with AsyncTtsClient(target, retry=FAST) as c:
            r = await c.stream("hi", "v")
        async with AsyncTtsClient(late_target, retry=FAST) as c:
            with pytest.raises(TtsError):
                await c.stream("hi", "v")
        return r

    r = asyncio.run(main())
    assert r.attempts == 2 and servicer.calls == 2 and late.calls == 1
