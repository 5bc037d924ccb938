"""SIGTERM under load, on a real ``gsv-serve`` process: in-flight streams finish (or, past the grace
period, end cleanly), new work is refused with UNAVAILABLE, the process exits 0 and logs no error."""
from __future__ import annotations

import re
import signal
import threading
import time
import urllib.request

import grpc

from clients import TtsClient, TtsError
from tests.reliability.conftest import REF_TEXT, ServerProcess, free_port, reference_wav

TEXT = "你好，欢迎来到北京。今天天气很好。我们去散步吧。" * 4


def start_load(target: str, n: int, results: list) -> list[threading.Thread]:
    def run(i):
        try:
            with TtsClient(target, timeout=120) as c:
                r = c.stream(TEXT, "alice", seed=i, max_audio_seconds=12)
                results.append(("OK", r.summary is not None))
        except TtsError as e:
            results.append((e.code.name, False))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return threads


def in_flight(metrics_port: int) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    m = re.search(r"^tts_requests_in_flight ([0-9.e+-]+)$", body, re.M)
    return float(m.group(1)) if m else 0.0


def serve_and_load(bundle, tmp_path, grace: str, n: int = 4):
    """A server with ``n`` streams generating (checked on its metrics endpoint)."""
    mport = free_port()
    srv = ServerProcess(bundle, tmp_path / "voices", tmp_path / "server.log", "--grace", grace, "--max-live", "4",
                        "--metrics-port", str(mport)).wait_serving()
    with TtsClient(srv.target, timeout=60) as c:
        c.register_voice("alice", reference_wav(), REF_TEXT, "zh", consent="ok")
    results: list = []
    threads = start_load(srv.target, n, results)
    deadline = time.monotonic() + 30
    while in_flight(mport) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    assert in_flight(mport) == n and not results  # all of them running when the signal comes
    return srv, threads, results


def assert_clean_exit(srv) -> None:
    rc = srv.wait(90)
    log = srv.stderr()
    assert rc == 0, log[-2000:]
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def test_sigterm_drains_in_flight_streams(tiny_full_bundle, tmp_path):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    srv, threads, results = serve_and_load(tiny_full_bundle.path, tmp_path, grace="60")
    srv.signal(signal.SIGTERM)
    time.sleep(0.3)
    with grpc.insecure_channel(srv.target) as ch:  # load balancers see the drain
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    with TtsClient(srv.target, timeout=10, retry=None) as c:
        try:
            c.synthesize("好的。", "alice")
            refused = "OK"
        except TtsError as e:
            refused = e.code.name
    for t in threads:
        t.join(120)
    assert refused == "UNAVAILABLE", refused
    assert results == [("OK", True)] * 4, results  # every stream finished with its summary
    assert_clean_exit(srv)


def test_sigterm_with_a_short_grace_cuts_streams_cleanly(tiny_full_bundle, tmp_path):
    srv, threads, results = serve_and_load(tiny_full_bundle.path, tmp_path, grace="0.2")
    srv.signal(signal.SIGTERM)
    for t in threads:
        t.join(120)
    assert len(results) == 4 and all(code in ("OK", "UNAVAILABLE", "CANCELLED") for code, _ in results), results
    assert_clean_exit(srv)  # no CancelledError tracebacks at ERROR
