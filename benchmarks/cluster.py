"""``gsv-bench cluster``: scaling out through the nginx load balancer, on real local clusters.

    gsv-bench cluster --bundle B --replicas 1,2,3 --concurrency 6 --requests 48 --out R.json

For each replica count N, a local cluster of real processes (the machinery of scripts/cluster.py:
PostgreSQL, N gsv-serve replicas, nginx in front) with a voice registered through the balancer:

* with N = 1, the balancer's overhead: time to first audio at concurrency 1 through nginx and
  directly to the replica, request by request interleaved (A B, B A, ...) so drift hits both alike,
  and the round trip of a unary call that does no synthesis (the proxy hop alone);
* a closed loop of ``--concurrency`` streams through nginx: aggregate audio seconds per wall second,
  time to first audio, and each replica's requests and audio seconds (from its own metrics) with
  their spread ((max - min) / mean).  Two more spreads tell the balancer from the machine: of each
  replica's streams in progress (sampled every 50 ms: what least_conn balances) and of its CPU
  seconds (replicas sharing too few cores make audio in proportion to the CPU they get);
* voice-store queries per request, summed over the replicas' ``tts_voice_store_queries_total``
  (the voice is in every replica's cache after its first use: 0 is expected).

Every cluster is torn down before the next starts.  Ratios are within this one run (the machine's
speed changes between sessions).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks import doors
from benchmarks.serve import closed_loop, machine, replica_figures, scrape_replicas, summarize
from clients.tts_client import AsyncTtsClient, TtsClient
from protos.tts.v1 import tts_pb2 as pb

RTT_PAIRS = 300
TEXT = ["The quick brown fox jumps over the lazy dog.", "Welcome back, traveler. The gates open at dawn."]


def add_arguments(p) -> None:
    p.add_argument("--bundle", required=True, help="bundle every replica serves")
    p.add_argument("--replicas", default="1,2,3", help="replica counts, one cluster each")
    p.add_argument("--concurrency", type=int, default=6, help="streams at once through the balancer")
    p.add_argument("--requests", type=int, default=48, help="requests per scaling level")
    p.add_argument("--overhead-requests", type=int, default=40, help="request pairs (direct, balancer) at N=1")
    p.add_argument("--max-audio-seconds", type=float, default=3.0)
    p.add_argument("--ref-audio", required=True, help="reference audio of the voice")
    p.add_argument("--ref-text", required=True)
    p.add_argument("--ref-lang", required=True)
    p.add_argument("--lang", default="en")
    p.add_argument("--text", action="append", help="text(s) to synthesize")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--serve-arg", action="append", default=[], help="extra gsv-serve argument for every replica")
    p.add_argument("--out", required=True)


def _level_args(args) -> argparse.Namespace:
    """What benchmarks.serve's closed loop reads."""
    return argparse.Namespace(requests=args.requests, voice="bench", lang=args.lang, text=args.text or TEXT,
                              seed=args.seed, max_audio_seconds=args.max_audio_seconds, latency="balanced",
                              token=None)


async def _overhead(direct: str, balanced: str, args) -> dict:
    texts = args.text or TEXT
    ttfa = {"direct": [], "balancer": []}
    async with AsyncTtsClient(direct, retry=None) as d, AsyncTtsClient(balanced, retry=None) as b:
        clients = {"direct": d, "balancer": b}
        for c in clients.values():  # warm both channels and the replica
            await c.stream(texts[0], "bench", language=args.lang, seed=1, max_audio_seconds=args.max_audio_seconds)
        for i in range(args.overhead_requests):
            order = ("direct", "balancer") if i % 2 == 0 else ("balancer", "direct")
            for name in order:
                r = await clients[name].stream(texts[i % len(texts)], "bench", language=args.lang,
                                               seed=args.seed + i, max_audio_seconds=args.max_audio_seconds)
                ttfa[name].append(r.ttfa_ms)
        rtt = {"direct": [], "balancer": []}  # the proxy hop alone: a unary call that does no synthesis
        for i in range(RTT_PAIRS):
            for name in (("direct", "balancer") if i % 2 == 0 else ("balancer", "direct")):
                t0 = time.perf_counter()
                await clients[name].stub.GetServerConfig(pb.GetServerConfigRequest(), timeout=10)
                rtt[name].append(1000 * (time.perf_counter() - t0))
    d, b = np.array(ttfa["direct"]), np.array(ttfa["balancer"])
    rd, rb = np.array(rtt["direct"]), np.array(rtt["balancer"])
    return {"unary_rtt_ms_p50_direct": float(np.median(rd)), "unary_rtt_ms_p50_balancer": float(np.median(rb)),
            "unary_rtt_ms_p50_added": float(np.median(rb) - np.median(rd)), "unary_pairs": RTT_PAIRS,"pairs": int(d.size), "ttfa_ms_p50_direct": float(np.median(d)), "ttfa_ms_p50_balancer": float(np.median(b)),
            "ttfa_ms_p50_added": float(np.median(b) - np.median(d)),
            "ttfa_ms_added_median_of_pairs": float(np.median(b - d)),
            "ttfa_ms_p95_direct": float(np.percentile(d, 95)), "ttfa_ms_p95_balancer": float(np.percentile(b, 95))}


def _spread(xs: list[float]) -> float | None:
    mean = sum(xs) / len(xs) if xs else 0.0
    return (max(xs) - min(xs)) / mean if mean else None


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a local process so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _StreamSampler(threading.Thread):
    """Every replica's ``tts_requests_in_flight`` every 50 ms, averaged over the level."""

    def __init__(self, urls: list[str]):
        super().__init__(daemon=True)
        self.urls, self.samples, self._stop_event = urls, [], threading.Event()

    def run(self):
        from server.cluster import scrape

        while not self._stop_event.wait(0.05):
            rows = [scrape(u) for u in self.urls]
            if all(rows):
                self.samples.append([r.get("tts_requests_in_flight", 0.0) for r in rows])

    def stop(self):
        self._stop_event.set()
        self.join(5)

    def means(self) -> list[float]:
        return [float(x) for x in np.mean(self.samples, axis=0)] if self.samples else [0.0] * len(self.urls)


def _one_cluster(n: int, args, state_root: Path) -> dict:
    from server.cluster import LocalCluster
    from server.localpg import free_port

    cluster = LocalCluster(state_root / f"n{n}")
    t0 = time.monotonic()
    st = cluster.up(Path(args.bundle), n, port=free_port(), http_port=free_port(), serve_args=args.serve_arg)
    out = {"replicas": n, "threads_per_replica": max(1, (os.cpu_count() or 1) // n),
           "startup_seconds": time.monotonic() - t0}
    try:
        with TtsClient(st["address"]) as c:
            c.register_voice("bench", Path(args.ref_audio).read_bytes(), args.ref_text, args.ref_lang,
                             consent="benchmark reference voice")
        level_args = _level_args(args)
        # every replica warmed directly (lazy frontend dictionaries, each pool thread): a cold one is
        # slow for seconds, and least_conn then hands its share of a short run to the warm ones
        warm = argparse.Namespace(**{**vars(level_args), "requests": 6})
        for r in st["replicas"]:
            asyncio.run(closed_loop(r["address"], warm, 3))
        if n == 1:
            out["overhead"] = asyncio.run(_overhead(st["replicas"][0]["address"], st["address"], args))
            print(f"[balancer overhead] {out['overhead']}", file=sys.stderr)
        urls = [r["metrics"] for r in st["replicas"]]
        before, cpu0 = scrape_replicas(urls), [_cpu_seconds(r["pid"]) for r in st["replicas"]]
        sampler = _StreamSampler(urls)
        sampler.start()
        try:
            results, wall = asyncio.run(closed_loop(st["address"], level_args, args.concurrency))
        finally:
            sampler.stop()
        errors: dict[str, int] = {}
        for r in results:
            if doors.is_request_error(r):
                errors[doors.error_code(r)] = errors.get(doors.error_code(r), 0) + 1
        level = summarize(results, errors, wall, {}, {})
        level.update(replica_figures(urls, before, scrape_replicas(urls)))
        cpu = [_cpu_seconds(r["pid"]) - c for r, c in zip(st["replicas"], cpu0)]
        streams = sampler.means()
        for row, c, m in zip(level["replicas"], cpu, streams):
            row["cpu_seconds"], row["mean_streams_in_progress"] = c, m
            row["audio_seconds_per_cpu_second"] = row["audio_seconds"] / c if c else None
        level["replica_streams_spread"] = _spread(streams)
        level["replica_cpu_spread"] = _spread(cpu)
        level["replica_audio_per_cpu_spread"] = _spread([r["audio_seconds_per_cpu_second"] or 0 for r in level["replicas"]])
        level["concurrency"] = args.concurrency
        queries = sum(r["voice_store_queries"] or 0 for r in level["replicas"])
        level["voice_store_queries_per_request"] = queries / max(1, level["ok"])
        out["level"] = level
        print(f"[{n} replicas] {level['audio_seconds_per_second']:.2f} audio s/s, ttfa p50 {level['ttfa_ms_p50']:.0f} ms, "
              f"spread {level['replica_audio_spread']}, queries/request {level['voice_store_queries_per_request']}",
              file=sys.stderr)
    finally:
        cluster.down()
    return out


def run(args) -> int:
    counts = [int(x) for x in args.replicas.split(",") if x]
    report = {"benchmark": "cluster", "machine": machine(), "bundle": str(args.bundle), "concurrency": args.concurrency,
              "requests_per_level": args.requests, "max_audio_seconds": args.max_audio_seconds,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "clusters": []}
    state_root = Path(tempfile.mkdtemp(prefix="gsv-bench-cluster-", dir="/tmp"))
    os.chmod(state_root, 0o755)
    for n in counts:
        report["clusters"].append(_one_cluster(n, args, state_root))
    base = next((c for c in report["clusters"] if c["replicas"] == 1), None)
    if base:
        report["balancer_overhead"] = base.get("overhead")
        one = base["level"]["audio_seconds_per_second"]
        report["aggregate_vs_1_replica"] = {str(c["replicas"]): c["level"]["audio_seconds_per_second"] / one
                                            for c in report["clusters"]}
    for key in ("replica_audio_spread", "replica_streams_spread", "replica_cpu_spread", "replica_audio_per_cpu_spread"):
        report[key] = {str(c["replicas"]): c["level"][key] for c in report["clusters"]}
    report["voice_store_queries_per_request"] = {str(c["replicas"]): c["level"]["voice_store_queries_per_request"]
                                                 for c in report["clusters"]}
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report.get(k) for k in ("balancer_overhead", "aggregate_vs_1_replica", "replica_audio_spread",
                                                 "replica_streams_spread", "replica_cpu_spread",
                                                 "replica_audio_per_cpu_spread", "voice_store_queries_per_request")},
                     indent=2))
    shutil.rmtree(state_root, ignore_errors=True)
    return 0
