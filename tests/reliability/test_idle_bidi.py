"""Idle bidirectional streams: waiting for text holds no admission slot, and an idle stream is closed."""
from __future__ import annotations

import queue
import threading
import time

import grpc
import pytest

from clients import TtsClient
from protos.tts.v1 import tts_pb2 as pb
from tests.reliability.conftest import REF_TEXT, reference_wav, wait_idle
from tests.server.harness import start_server

IDLE_TIMEOUT = 1.5


@pytest.fixture(scope="module")
def small_server(tiny_full_bundle, tmp_path_factory):
    srv = start_server(tiny_full_bundle.path, tmp_path_factory.mktemp("voices"), max_live=2, max_queue=0,
                       bidi_idle_timeout=IDLE_TIMEOUT)
    with TtsClient(srv.target) as c:
        c.register_voice("alice", reference_wav(), REF_TEXT, "zh", consent="ok")
    yield srv
    srv.stop()


class OpenBidi:
    """A bidi stream whose requests are fed by hand (the input stays open until ``close``)."""

    def __init__(self, client: TtsClient, max_audio_seconds: float = 3.0):
        self.q: queue.Queue = queue.Queue()
        self.q.put(pb.BidiSynthesizeRequest(config=pb.SynthesisConfig(voice_id="alice",
                                                                      max_audio_seconds=max_audio_seconds)))
        self.call = client.stub.BidiSynthesize(iter(self.q.get, None), timeout=60)
        self.messages, self.error, self.last_arrival = [], None, 0.0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for m in self.call:
                self.messages.append(m)
                self.last_arrival = time.monotonic()
        except grpc.RpcError as e:
            self.error = e

    def send(self, text: str, flush: bool = True):
        self.q.put(pb.BidiSynthesizeRequest(input=pb.TextInput(text=text, flush=flush)))

    def close(self):
        self.q.put(None)

    def join(self, timeout=30):
        self.thread.join(timeout)
        return self


def test_streams_waiting_for_text_hold_no_slot_and_time_out(small_server):
    with TtsClient(small_server.target, timeout=60) as c:
        idle = [OpenBidi(c) for _ in range(3)]  # more than max_live + max_queue
        deadline = time.monotonic() + 10
        while any(not s.messages for s in idle) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert all(s.messages[0].WhichOneof("event") == "start" for s in idle)
        assert small_server.state.in_flight == 0
        # everyone else is served meanwhile
        assert c.synthesize("好的。", "alice", max_audio_seconds=0.3).summary.audio_seconds > 0
        t0 = time.monotonic()
        for s in idle:
            s.join(IDLE_TIMEOUT + 10)
        assert all(s.error is not None and s.error.code() == grpc.StatusCode.DEADLINE_EXCEEDED for s in idle)
        assert time.monotonic() - t0 < IDLE_TIMEOUT + 5
        for s in idle:
            s.close()
    wait_idle(small_server)


def test_a_stream_is_admitted_with_its_first_text_and_may_pause_for_less_than_the_timeout(small_server):
    with TtsClient(small_server.target, timeout=60) as c:
        t0 = time.monotonic()
        s = OpenBidi(c)
        time.sleep(IDLE_TIMEOUT * 0.6)
        s.send("。")  # input, though nothing to say: the idle clock restarts, no admission yet
        time.sleep(IDLE_TIMEOUT * 0.6)
        assert small_server.state.in_flight == 0 and s.error is None
        s.send("你好，欢迎来到北京。")
        admitted = 0
        deadline = time.monotonic() + 20
        while not admitted and time.monotonic() < deadline and not s.error:
            admitted = max(admitted, small_server.state.in_flight)
            time.sleep(0.005)
        # End the input only now that the request is admitted: admission came with the text, not the close.
        # (Left open, a stream whose sampler ends the sentence before max_audio_seconds rightly goes idle and
        # is closed after the timeout, so the summary must not be awaited with the input open.)
        s.close()
        s.join()
        assert s.error is None, s.error
        assert admitted == 1  # admitted with its first speakable text
        assert any(m.WhichOneof("event") == "audio" for m in s.messages)
        # the stream outlived the idle timeout: pauses shorter than it never cut it
        assert s.messages[-1].WhichOneof("event") == "summary" and s.last_arrival - t0 > IDLE_TIMEOUT
    wait_idle(small_server)


def test_stream_refused_at_its_first_text_when_full(small_server):
    """Admission happens at the first text: when the server is full then, that stream is refused."""
    with TtsClient(small_server.target, timeout=60) as c:
        blockers = [OpenBidi(c) for _ in range(2)]
        for b in blockers:
            b.send("你好，欢迎来到北京。今天天气很好。" * 4, flush=False)
        deadline = time.monotonic() + 20
        while small_server.state.in_flight < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        late = OpenBidi(c)
        late.send("好的。")
        late.close()
        late.join()
        assert late.error is not None and late.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for b in blockers:
            b.close()
            b.join()
            assert b.error is None, b.error
    wait_idle(small_server)
