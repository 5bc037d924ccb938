"""``gsv-bench cluster``: scaling out through the nginx load balancer, on real local clusters.

    gsv-bench cluster --bundle B --replicas 1,2,3 --concurrency 6 --requests 48 --out R.json

For each replica count N, a local cluster of real processes (the machinery of scripts/cluster.py:
PostgreSQL, N gsv-serve replicas, nginx in front) with a voice registered through the balancer:

* with N = 1, the balancer's overhead: time to first audio at concurrency 1 through nginx and
  directly to the replica, request by request interleaved (A B, B A, ...) so drift hits both alike;
* a closed loop of ``--concurrency`` streams through nginx: aggregate audio seconds per wall second,
  time to first audio, and each replica's requests and audio seconds (from its own metrics) with
  their spread ((max - min) / mean);
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
import time
from pathlib import Path

import numpy as np

from benchmarks import doors
from benchmarks.serve import closed_loop, machine, replica_figures, scrape_replicas, summarize
from clients.tts_client import AsyncTtsClient, TtsClient

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
    d, b = np.array(ttfa["direct"]), np.array(ttfa["balancer"])
    return {"pairs": int(d.size), "ttfa_ms_p50_direct": float(np.median(d)), "ttfa_ms_p50_balancer": float(np.median(b)),
            "ttfa_ms_p50_added": float(np.median(b) - np.median(d)),
            "ttfa_ms_added_median_of_pairs": float(np.median(b - d)),
            "ttfa_ms_p95_direct": float(np.percentile(d, 95)), "ttfa_ms_p95_balancer": float(np.percentile(b, 95))}


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
        asyncio.run(closed_loop(st["address"], argparse.Namespace(**{**vars(level_args), "requests": 2 * n}), n))
        if n == 1:
            out["overhead"] = asyncio.run(_overhead(st["replicas"][0]["address"], st["address"], args))
            print(f"[balancer overhead] {out['overhead']}", file=sys.stderr)
        urls = [r["metrics"] for r in st["replicas"]]
        before = scrape_replicas(urls)
        results, wall = asyncio.run(closed_loop(st["address"], level_args, args.concurrency))
        errors: dict[str, int] = {}
        for r in results:
            if doors.is_request_error(r):
                errors[doors.error_code(r)] = errors.get(doors.error_code(r), 0) + 1
        level = summarize(results, errors, wall, {}, {})
        level.update(replica_figures(urls, before, scrape_replicas(urls)))
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
    report["replica_audio_spread"] = {str(c["replicas"]): c["level"]["replica_audio_spread"] for c in report["clusters"]}
    report["voice_store_queries_per_request"] = {str(c["replicas"]): c["level"]["voice_store_queries_per_request"]
                                                 for c in report["clusters"]}
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report.get(k) for k in ("balancer_overhead", "aggregate_vs_1_replica", "replica_audio_spread",
                                                 "voice_store_queries_per_request")}, indent=2))
    shutil.rmtree(state_root, ignore_errors=True)
    return 0
