"""``gsv-bench capacity``: how many full-length streams one server sustains, and the ``--max-live`` to use.

    gsv-bench capacity --bundle B [--backend onnx|onnx-int8|torch] --ref-audio R.wav --ref-text T --ref-lang L
                       [--ttfa-limit-ms 1000] [--max-concurrency 32] --out R.json

Launches ``gsv-serve`` on the bundle with admission wide open (so the search, not the server's limit,
decides), then searches over concurrency: doubling from 1 while a level passes, then bisecting between
the last passing and the first failing level.  A level passes when every request completed, none of its
streams underran (a chunk arriving after the audio before it had finished playing), and p95 time to
first audio is under the limit.  Each level is a ``gsv-bench serve`` closed-loop level (same JSON,
``decoder_overhead_ratio`` included) with ``--rounds`` requests per stream, so every stream plays
whole utterances back to back.  ``max_streams`` is the largest passing level (0 if even one stream
fails) and ``recommended_max_live`` the ``--max-live`` that admits exactly that many.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from benchmarks import serve


def add_arguments(p) -> None:
    serve.add_arguments(p)
    p.add_argument("--bundle", required=True, help="bundle to serve")
    p.add_argument("--backend", help="torch | onnx | onnx-int8 | trt (default: the server's choice)")
    p.add_argument("--threads", type=int, help="threads of both stages (default: all cores)")
    p.add_argument("--ttfa-limit-ms", type=float, default=1000.0, help="p95 time to first audio a level may have")
    p.add_argument("--max-concurrency", type=int, default=32, help="search no further than this many streams")
    p.add_argument("--rounds", type=int, default=2, help="requests per stream at each level")
    p.add_argument("--server-option", action="append", default=[], metavar="KEY=VALUE",
                   help="more gsv-serve options for the launched server (e.g. stage-priority=off)")


def passes(level: dict, limit_ms: float) -> tuple[bool, str]:
    if level["errors"] or level["ok"] < level["requests"]:
        return False, f"errors {level['errors']}"
    if level["requests_with_underrun"]:
        return False, f"{level['requests_with_underrun']} streams underran"
    if level["ttfa_ms_p95"] is None:
        return False, "no stream delivered audio"
    if level["ttfa_ms_p95"] > limit_ms:
        return False, f"p95 time to first audio {level['ttfa_ms_p95']:.0f} ms > {limit_ms:.0f} ms"
    return True, "ok"


def search(measure, max_concurrency: int) -> tuple[int, list[int]]:
    """Largest n in [1, max_concurrency] with measure(n) true, assuming it is monotone: doubling, then
    bisection.  Returns (n or 0, the levels tried in order)."""
    tried, good, bad = [], 0, None
    n = 1
    while n <= max_concurrency:
        tried.append(n)
        if not measure(n):
            bad = n
            break
        good, n = n, n * 2
    if bad is None:
        if good < max_concurrency:  # doubling stepped over the cap: try the cap itself
            tried.append(max_concurrency)
            if measure(max_concurrency):
                return max_concurrency, tried
            bad = max_concurrency
        else:
            return good, tried
    while bad - good > 1:
        mid = (good + bad) // 2
        tried.append(mid)
        if measure(mid):
            good = mid
        else:
            bad = mid
    return good, tried


def run(args) -> int:
    if not (args.ref_audio and args.ref_text and args.ref_lang):
        print("gsv-bench: error: capacity needs --ref-audio, --ref-text and --ref-lang (the voice to serve)",
              file=sys.stderr)
        return 2
    wide = max(args.max_concurrency, 1)
    spec = [f"bundle={args.bundle}", f"max-live={wide}", f"max-queue={wide}"]
    if args.backend:
        spec.append(f"backend={args.backend}")
    if args.threads:
        spec.append(f"threads={args.threads}")
    spec += args.server_option
    server = serve.LaunchedServer(",".join(spec), args)
    levels: dict[int, dict] = {}
    try:
        if args.warmup:
            warm = dict(vars(args), requests=args.warmup)
            asyncio.run(serve.closed_loop(server.target, argparse.Namespace(**warm), 1))

        def measure(n: int) -> bool:
            level_args = argparse.Namespace(**dict(vars(args), requests=n * args.rounds))
            lv = serve.run_level(server.target, level_args, "concurrency", n, server.metrics)
            ok, why = passes(lv, args.ttfa_limit_ms)
            lv["passed"], lv["reason"] = ok, why
            levels[n] = lv
            print(f"[capacity] {n} streams: {why}; ttfa p95 {lv['ttfa_ms_p95']} ms, "
                  f"{lv['audio_seconds_per_second']:.2f} audio s/s, overhead {lv.get('decoder_overhead_ratio')}",
                  file=sys.stderr)
            return ok

        best, tried = search(measure, args.max_concurrency)
    finally:
        server.stop()
    report = {
        "benchmark": "capacity", "machine": serve.machine(), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "bundle": args.bundle, "backend": args.backend, "server_options": args.server_option,
        "ttfa_limit_ms": args.ttfa_limit_ms, "rounds": args.rounds, "latency": args.latency,
        "max_streams": best, "recommended_max_live": max(best, 1), "tried": tried,
        "levels": [dict(levels[n], concurrency=n) for n in sorted(levels)],
    }
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("max_streams", "recommended_max_live", "tried")}))
    print(f"use: gsv-serve --max-live {report['recommended_max_live']}"
          + ("" if best else "  (not even one stream met the limits on this machine)"), file=sys.stderr)
    return 0
