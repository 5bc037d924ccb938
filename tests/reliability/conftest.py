"""Shared pieces of the reliability suite: servers (in-process and as a real ``gsv-serve`` process),
health checks, an error-log watch and raw-bytes calls."""
from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients import TtsClient
from tests.conftest import speechlike, wav_bytes
from tests.server.harness import start_server

SERVICE = "/gsv.tts.v1.TextToSpeech/"
REF_TEXT = "我们在北京。"
TOKEN = "tok-reliability"
OTHER_TOKEN = "tok-other-owner"
# codes that mean "the server broke", never an answer to bad input
FAULT_CODES = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS,
               grpc.StatusCode.UNIMPLEMENTED}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reference_wav(seed: int = 0) -> bytes:
    x, sr = speechlike(seed=seed)
    return wav_bytes(x, sr)


class ErrorLog(logging.Handler):
    """Collects ERROR (and worse) records of every logger while installed."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def lines(self) -> list[str]:
        return [f"{r.name}: {r.getMessage()}" for r in self.records]


@pytest.fixture(autouse=True, scope="module")
def _modules_hypothesis_can_scan():
    """Hypothesis reads ``__file__`` of every module in sys.modules; optional integrations of some
    libraries (speechbrain's lazy flair/... modules, imported by other tests) raise ImportError
    there instead of AttributeError.  Such never-importable placeholders are dropped first."""
    import sys

    for name, module in list(sys.modules.items()):
        try:
            getattr(module, "__file__", None)
        except Exception:  # noqa: BLE001 - a lazy module whose target cannot be imported
            del sys.modules[name]
    yield


@pytest.fixture()
def error_log():
    h = ErrorLog()
    logging.getLogger().addHandler(h)
    yield h
    logging.getLogger().removeHandler(h)


def wait_idle(server, timeout: float = 10.0) -> None:
    """Wait until the server holds no request (admission, GPT rows, decode queues); fail otherwise."""
    state = server.state
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if state.in_flight == 0 and state.engine.live == 0 and not state.engine.waiting and state.engine.idle():
            return
        time.sleep(0.005)
    raise AssertionError(f"server not idle: in_flight={state.in_flight} live={state.engine.live} "
                         f"waiting={len(state.engine.waiting)} queues={len(state.engine.queues)}")


def assert_healthy(server, channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    assert stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status == \
        health_pb2.HealthCheckResponse.SERVING
    wait_idle(server)


def raw_unary(channel, method: str):
    return channel.unary_unary(SERVICE + method, request_serializer=lambda b: b, response_deserializer=lambda b: b)


def raw_stream(channel, method: str):
    return channel.unary_stream(SERVICE + method, request_serializer=lambda b: b, response_deserializer=lambda b: b)


def raw_bidi(channel, method: str = "BidiSynthesize"):
    return channel.stream_stream(SERVICE + method, request_serializer=lambda b: b, response_deserializer=lambda b: b)


@pytest.fixture(scope="module")
def rel_server(tiny_full_bundle, tmp_path_factory):
    """An in-process server with auth, small limits and a registered voice "alice"."""
    srv = start_server(tiny_full_bundle.path, tmp_path_factory.mktemp("voices"),
                       tokens={TOKEN: "tester", OTHER_TOKEN: "other"}, max_live=2, max_queue=4, max_audio_seconds=1.0,
                       max_text_chars=1000, bidi_idle_timeout=2.0, bidi_max_buffer_seconds=0.3)
    with TtsClient(srv.target, token=TOKEN) as c:
        c.register_voice("alice", reference_wav(), REF_TEXT, "zh", consent="the speaker agreed")
    yield srv
    srv.stop()


@pytest.fixture()
def client(rel_server):
    with TtsClient(rel_server.target, token=TOKEN, timeout=60) as c:
        yield c


# ------------------------------------------------------------------------------ real server processes
class ServerProcess:
    """``python -m server`` on 127.0.0.1 with its stderr captured to a file."""

    def __init__(self, bundle: Path, voices: Path, log: Path, *args: str):
        self.port = free_port()
        self.log = log
        self._err = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "server", "--bundle", str(bundle), "--voices", str(voices),
                                      "--host", "127.0.0.1", "--port", str(self.port), *args],
                                     stdout=subprocess.DEVNULL, stderr=self._err)
        self.target = f"127.0.0.1:{self.port}"

    def wait_serving(self, timeout: float = 120.0) -> "ServerProcess":
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.stderr()}")
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                            health_pb2.HealthCheckResponse.SERVING:
                        return self
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise AssertionError("server did not become ready")

    def signal(self, sig=signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._err.close()

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")  # the child writes the file directly

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self._err.close()
