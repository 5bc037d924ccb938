"""A real local cluster: PostgreSQL, 3 ``gsv-serve`` processes, nginx in front — started, checked and
torn down by ``scripts/cluster.py`` exactly as a user would.

Per-request balancing of gRPC through the balancer (a voice registered through it synthesizes on
every replica; 12 concurrent streams from one client connection spread over all 3), SIGTERM of a
replica under load (health NOT_SERVING first, every admitted stream completes, new calls go to the
others), ``kill -9`` of a replica (calls without audio yet are retried by the client and succeed),
and nothing left running afterwards."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from clients import StreamResult, TtsClient, TtsError
from server.cluster import alive, health
from server.localpg import free_port
from tests.cluster.conftest import REF_TEXT, reference, sql

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
LONG_TEXT = "你好，欢迎来到北京。今天天气很好。我们去散步吧。" * 3
SHORT_TEXT = "好的，我们走吧。"


@dataclass
class Cluster:
    address: str
    state_dir: Path
    info: dict

    @property
    def replicas(self) -> list[dict]:
        return self.info["replicas"]

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "scripts/cluster.py", *args, "--state-dir", str(self.state_dir)],
                              cwd=REPO, capture_output=True, text=True, timeout=timeout)


def metric(replica: dict, name: str, **labels) -> float:
    body = urllib.request.urlopen(replica["metrics"], timeout=5).read().decode()
    total = 0.0
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def served(replica: dict) -> float:
    return metric(replica, "tts_requests_total", method="StreamingSynthesize", code="OK")


@pytest.fixture(scope="module")
def cluster(tiny_full_bundle):
    state = Path(tempfile.mkdtemp(prefix="gsv-cluster-test-", dir="/tmp"))
    c = Cluster("", state, {})
    r = c.cli("up", "--replicas", "3", "--bundle", str(tiny_full_bundle.path), "--port", str(free_port()),
              "--http-port", str(free_port()), "--grace", "60", "--serve-arg=--max-live=2", "--serve-arg=--max-queue=8")
    if r.returncode and ("apt-get" in r.stderr or "not found" in r.stderr):
        pytest.skip(f"PostgreSQL or nginx cannot be installed here: {r.stderr.strip()[-300:]}")
    assert r.returncode == 0, r.stderr[-3000:]
    c.address = r.stdout.strip().splitlines()[-1]
    c.info = json.loads((state / "state.json").read_text())
    with TtsClient(c.address) as client:
        client.register_voice("alice", reference(), REF_TEXT, "zh", consent="the speaker agreed")
    yield c
    c.cli("down")


def test_status_reports_every_replica(cluster):
    r = cluster.cli("status")
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    assert status["address"] == cluster.address and set(status) == {"address", "replicas"}
    assert [set(x) for x in status["replicas"]] == [{"address", "healthy", "requests_total"}] * 3
    assert [x["address"] for x in status["replicas"]] == [x["address"] for x in cluster.replicas]
    assert all(x["healthy"] is True and isinstance(x["requests_total"], int) for x in status["replicas"])


def test_a_voice_registered_through_the_balancer_serves_12_streams_spread_over_every_replica(cluster):
    before = [served(r) for r in cluster.replicas]
    results, errors = [], []
    with TtsClient(cluster.address, retry=None) as client:  # one client, one HTTP/2 connection

        def run(i):
            try:
                results.append(client.stream(SHORT_TEXT, "alice", seed=i, max_audio_seconds=1.5))
            except TtsError as e:
                errors.append(e)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    assert not errors and len(results) == 12 and all(r.summary is not None for r in results)
    per_replica = [served(r) - b for r, b in zip(cluster.replicas, before)]
    assert sum(per_replica) == 12 and min(per_replica) >= 2, per_replica  # least_conn: about 4 each
    loads = sql(cluster.info["postgres"]["url"],
                "SELECT count(DISTINCT actor) FROM voice_audit WHERE event = 'load' AND voice_id = 'alice'")
    assert loads == [(2,)]  # registered through one replica (cached there), loaded by the two others


def test_gsv_bench_serve_through_the_balancer_reports_every_replica(cluster, tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks", "serve", "--cluster", str(cluster.state_dir),
                        "--voice", "alice", "--lang", "zh", "--text", SHORT_TEXT, "--concurrency", "3",
                        "--requests", "6", "--warmup", "0", "--max-audio-seconds", "1", "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    level = json.loads(out.read_text())["levels"][0]
    rows = level["replicas"]
    assert [row["metrics"] for row in rows] == [x["metrics"] for x in cluster.replicas]
    assert sum(row["requests"] for row in rows) == level["ok"] == 6
    assert sum(row["audio_seconds"] for row in rows) == pytest.approx(level["audio_seconds"], rel=0.01)
    assert level["replica_audio_spread"] is not None and all(row["voice_store_queries"] == 0 for row in rows)


def test_the_http_and_websocket_doors_go_through_the_balancer_too(cluster):
    import asyncio

    from clients.http_client import AsyncHttpTtsClient

    before = [metric(r, "tts_requests_total", code="OK") for r in cluster.replicas]

    async def main():
        async with AsyncHttpTtsClient(f"http://{cluster.info['http_address']}") as c:
            return [await c.stream(SHORT_TEXT, "alice", door=door, seed=i, max_audio_seconds=1.0)
                    for i, door in enumerate(["tts", "openai", "ws"] * 2)]

    results = asyncio.run(main())
    assert all(r.audio_seconds > 0 for r in results)
    served_http = [metric(r, "tts_requests_total", code="OK") - b for r, b in zip(cluster.replicas, before)]
    assert sum(served_http) == 6 and sum(1 for n in served_http if n) >= 2, served_http  # per request, not pinned


def access_log(cluster) -> list[dict]:
    out = []
    for line in (cluster.state_dir / "lb" / "access.log").read_text().splitlines():
        parts = line.split()
        fields = dict(p.split("=", 1) for p in parts[4:] if "=" in p)
        out.append({"end": float(parts[0]), "uri": parts[2], "up": fields.get("up", "-"),
                    "grpc": (fields.get("grpc_h", "-") + fields.get("grpc_t", "-")).replace("-", ""),
                    "rt": float(fields.get("rt", 0))})
    return out


def test_sigterm_under_load_drains_and_new_calls_go_to_the_others(cluster):
    victim = cluster.replicas[0]
    results, errors = [], []
    with TtsClient(cluster.address) as client:

        def run(i, text, store):
            try:
                store.append(client.stream(text, "alice", seed=i, max_audio_seconds=6))
            except TtsError as e:
                errors.append(e)

        load = [threading.Thread(target=run, args=(i, LONG_TEXT, results)) for i in range(6)]
        for t in load:
            t.start()
        deadline = time.monotonic() + 60
        while metric(victim, "tts_requests_in_flight") < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        admitted = metric(victim, "tts_requests_in_flight")
        assert admitted >= 1
        t_signal = time.time()
        os.kill(victim["pid"], signal.SIGTERM)
        status = "SERVING"
        while status == "SERVING" and time.monotonic() < deadline:  # (until the signal is handled)
            status = health(victim["address"], timeout=1.0)
        assert status == "NOT_SERVING"  # health sees the drain first, before the port closes
        fresh = []
        new = [threading.Thread(target=run, args=(100 + i, SHORT_TEXT, fresh)) for i in range(6)]
        for t in new:
            t.start()
        for t in load + new:
            t.join(300)
    assert not errors, errors
    assert len(results) == 6 and all(r.summary is not None for r in results)  # every admitted stream completed
    assert len(fresh) == 6 and all(r.summary is not None for r in fresh)
    deadline = time.monotonic() + 90
    while alive(victim["pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(victim["pid"])
    late = [e for e in access_log(cluster) if e["uri"].endswith("/StreamingSynthesize") and e["end"] - e["rt"] > t_signal]
    assert len(late) >= 6
    served_by_victim = [e for e in late if e["up"].split(", ")[-1] == victim["address"] and e["grpc"] == "0"]
    assert served_by_victim == [], served_by_victim  # refused (UNAVAILABLE) or not sent there at all


def test_kill_9_calls_without_audio_are_retried_by_the_client(cluster):
    victim, survivor = cluster.replicas[1], cluster.replicas[2]
    outcomes = []
    with TtsClient(cluster.address) as client:

        def run(i):
            chunks, result = 0, StreamResult()
            try:
                for _ in client.stream_chunks(LONG_TEXT, "alice", result=result, seed=i, max_audio_seconds=6):
                    chunks += 1
                outcomes.append(("OK", result.attempts, chunks))
            except TtsError as e:
                outcomes.append((e.code.name, result.attempts, chunks))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
        deadline, in_flight = time.monotonic() + 60, 0.0
        while in_flight < 3 and time.monotonic() < deadline:
            in_flight = metric(victim, "tts_requests_in_flight")
            time.sleep(0.01)
        # more calls than its GPT rows (--max-live=2): some of the victim's calls have no audio yet
        assert in_flight >= 3
        os.kill(victim["pid"], signal.SIGKILL)
        for t in threads:
            t.join(300)
    assert len(outcomes) == 10
    failed = [o for o in outcomes if o[0] != "OK"]
    assert all(chunks > 0 for _, _, chunks in failed), failed  # only calls that already had audio fail
    retried = [o for o in outcomes if o[0] == "OK" and o[1] > 1]
    assert retried, outcomes  # the queued ones went to the survivor on the client's retry
    assert health(survivor["address"]) == "SERVING"


def test_down_leaves_nothing_running(cluster):
    pg_pid = int((Path(cluster.info["postgres"]["data"]) / "postmaster.pid").read_text().split()[0])
    nginx_pid = int((cluster.state_dir / "lb" / "nginx.pid").read_text().strip())
    pids = [r["pid"] for r in cluster.replicas] + [pg_pid, nginx_pid]
    r = cluster.cli("down")
    assert r.returncode == 0, r.stderr
    assert [p for p in pids if alive(p)] == []
    ports = [cluster.address] + [r["address"] for r in cluster.replicas] + [f"127.0.0.1:{cluster.info['postgres']['port']}"]
    for address in ports:
        host, port = address.rsplit(":", 1)
        with socket.socket() as s:
            assert s.connect_ex((host, int(port))) != 0, f"{address} still accepts connections"
    assert not cluster.state_dir.exists()
