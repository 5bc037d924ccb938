"""``gsv-bench memory``: resident memory of ``gsv-serve`` with one voice, after a run of requests.

    gsv-bench memory --launch "bundle=B,backend=onnx" [--launch "bundle=B,code=../before,http=off" ...]
                     --ref-audio R.wav --ref-text T --ref-lang L [--requests 10] --out R.json

For each server spec (the ``gsv-bench serve`` spec format; ``code=DIR`` runs another checkout, for a
before/after in one run): launch it, read its RSS when ready, register the voice, stream ``--requests``
requests one after another, then read ``VmRSS`` and ``VmHWM`` (the peak) from ``/proc/PID/status``.
Servers are measured one at a time so they do not push each other out of memory.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from benchmarks import serve
from clients.tts_client import TtsClient

GIB = 1 << 30


def add_arguments(p) -> None:
    p.add_argument("--launch", action="append", required=True, metavar="SPEC", help="server spec (repeatable)")
    p.add_argument("--ref-audio", required=True)
    p.add_argument("--ref-text", required=True)
    p.add_argument("--ref-lang", required=True)
    p.add_argument("--voice", default="bench")
    p.add_argument("--lang", default="en")
    p.add_argument("--text", action="append", help="text(s) to synthesize (default: built-in game lines)")
    p.add_argument("--requests", type=int, default=10)
    p.add_argument("--max-audio-seconds", type=float, default=6.0)
    p.add_argument("--token")
    p.add_argument("--out", required=True)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a process in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def measure(spec: str, args) -> dict:
    ready_args = type("A", (), {"token": args.token, "ref_audio": None})()  # register after the first reading
    server = serve.LaunchedServer(spec, ready_args)
    try:
        at_start = proc_status(server.proc.pid)
        texts = args.text or serve.TEXTS.get(args.lang, serve.TEXTS["en"])
        with TtsClient(server.target, token=args.token, timeout=600) as c:
            c.register_voice(args.voice, Path(args.ref_audio).read_bytes(), args.ref_text, args.ref_lang,
                             consent="benchmark reference voice")
            after_voice = proc_status(server.proc.pid)
            audio = 0.0
            for i in range(args.requests):
                r = c.stream(texts[i % len(texts)], args.voice, language=args.lang, seed=i,
                             max_audio_seconds=args.max_audio_seconds)
                audio += r.audio.size / r.sample_rate
        after = proc_status(server.proc.pid)
    finally:
        server.stop()
    return {"spec": spec, "rss_ready_bytes": at_start["VmRSS"], "rss_after_voice_bytes": after_voice["VmRSS"],
            "rss_after_requests_bytes": after["VmRSS"], "peak_rss_bytes": after["VmHWM"],
            "peak_rss_gib": after["VmHWM"] / GIB, "requests": args.requests, "audio_seconds": audio}


def run(args) -> int:
    if not Path("/proc/self/status").exists():
        print("gsv-bench: error: memory reads /proc/PID/status (Linux only)", file=sys.stderr)
        return 2
    report = {"benchmark": "memory", "machine": serve.machine(), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "servers": []}
    for spec in args.launch:
        r = measure(spec, args)
        print(f"[memory] {spec}: peak {r['peak_rss_gib']:.2f} GiB, ready {r['rss_ready_bytes'] / GIB:.2f} GiB",
              file=sys.stderr)
        report["servers"].append(r)
    if len(report["servers"]) > 1:
        first = report["servers"][0]["peak_rss_bytes"]
        report["peak_ratio_vs_first"] = [s["peak_rss_bytes"] / first for s in report["servers"]]
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({"out": args.out, "peak_rss_gib": [s["peak_rss_gib"] for s in report["servers"]]}))
    return 0
