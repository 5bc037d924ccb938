"""``gsv-bench soak``: hours of mixed traffic against a running server, watching for leaks and drift.

    gsv-bench soak --server HOST:PORT --minutes M --concurrency C [--voice V] [--metrics URL | --server-pid PID]
                   [--out R.json]

``C`` clients each loop over a mix of requests: streaming, unary, bidirectional (text sent in pieces),
streams cancelled after their first audio, and voice churn (register a voice, synthesize with it,
delete it).  Per window (``--window-seconds``): requests and errors by gRPC code, time to first audio
and total latency p50/p95, the server's resident memory.  At the end: errors by code, RSS growth
after the warm-up (``--warmup-minutes``), and the drift of p95 time to first audio between the first
and the last ``--drift-minutes``.

The server's RSS is read from its Prometheus endpoint (``process_resident_memory_bytes``) or, for a
server on this machine, from ``/proc/PID/status``; with ``--server-log`` the ERROR lines the server
logged meanwhile are counted too (a fault a client never saw is still a fault).  Churned voices are registered from audio the
server itself synthesizes at the start (or ``--ref-audio``), so no reference file is needed.
"""
from __future__ import annotations

import asyncio
import io
import json
import random
import re
import sys
import time
import urllib.request
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.serve import TEXTS, machine, percentile
from clients.tts_client import AsyncTtsClient, TtsError

MIX = {"stream": 0.4, "unary": 0.2, "bidi": 0.2, "cancel": 0.1, "churn": 0.1}


def add_arguments(p) -> None:
    p.add_argument("--server", required=True, help="HOST:PORT of a running server")
    p.add_argument("--minutes", type=float, required=True)
    p.add_argument("--concurrency", type=int, required=True, help="clients sending requests back to back")
    p.add_argument("--voice", default="bench", help="voice to synthesize with (must exist)")
    p.add_argument("--lang", default="zh")
    p.add_argument("--token")
    p.add_argument("--metrics", help="server Prometheus URL (http://host:port/metrics), for its RSS")
    p.add_argument("--server-pid", type=int, help="PID of a server on this machine, for its RSS (/proc)")
    p.add_argument("--server-log", help="the server's log file: ERROR lines written during the soak are reported")
    p.add_argument("--max-audio-seconds", type=float, default=4.0, help="cap per request")
    p.add_argument("--window-seconds", type=float, default=60.0)
    p.add_argument("--warmup-minutes", type=float, default=5.0, help="RSS growth is measured after this")
    p.add_argument("--drift-minutes", type=float, default=5.0, help="TTFA drift: first vs last this long")
    p.add_argument("--sample-seconds", type=float, default=5.0, help="RSS sampling period")
    p.add_argument("--ref-audio", help="reference WAV for voice churn (default: synthesized by the server)")
    p.add_argument("--ref-text", help="transcript of --ref-audio")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--note", action="append", default=[], help="free text recorded in the results (repeatable)")
    p.add_argument("--out", help="JSON results (default: print only the summary)")


# ----------------------------------------------------------------------------------- measuring
@dataclass
class Sample:
    t: float  # seconds since the start (when the request ended)
    kind: str
    code: str  # gRPC code name; "OK" on success
    ttfa_ms: float | None = None
    total_ms: float | None = None


@dataclass
class Recorder:
    t0: float = field(default_factory=time.monotonic)
    samples: list[Sample] = field(default_factory=list)
    rss: list[tuple[float, float]] = field(default_factory=list)  # (t, MiB)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def add(self, kind: str, code: str, ttfa_ms=None, total_ms=None) -> None:
        self.samples.append(Sample(self.now(), kind, code, ttfa_ms, total_ms))


def read_rss_mb(metrics: str | None, pid: int | None) -> float | None:
    try:
        if pid is not None:
            m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
            return int(m.group(1)) / 1024 if m else None
        if metrics:
            body = urllib.request.urlopen(metrics, timeout=5).read().decode()
            m = re.search(r"^process_resident_memory_bytes ([0-9.e+]+)$", body, re.M)
            return float(m.group(1)) / 2**20 if m else None
    except OSError:
        return None
    return None


# ----------------------------------------------------------------------------------- traffic
class Traffic:
    def __init__(self, client: AsyncTtsClient, args, rec: Recorder, reference: tuple[bytes, str]):
        self.c, self.args, self.rec, self.reference = client, args, rec, reference
        self.texts = TEXTS.get(args.lang, TEXTS["en"])

    async def one(self, rng: random.Random, worker: int, n: int) -> None:
        kind = rng.choices(list(MIX), weights=list(MIX.values()))[0]
        text = self.texts[n % len(self.texts)]
        kw = dict(seed=rng.randrange(2**31), max_audio_seconds=self.args.max_audio_seconds, language=self.args.lang)
        t = time.monotonic()
        try:
            if kind == "stream":
                r = await self.c.stream(text, self.args.voice, **kw)
                self.rec.add(kind, "OK", r.ttfa_ms, r.total_ms)
            elif kind == "unary":
                await self.c.synthesize(text, self.args.voice, **kw)
                self.rec.add(kind, "OK", None, 1000 * (time.monotonic() - t))
            elif kind == "bidi":
                pieces = [p for p in re.split(r"(?<=[，,。.!?！？])", text) if p]  # clause by clause
                r = await self.c.bidi([(p, i == len(pieces) - 1) for i, p in enumerate(pieces)], self.args.voice,
                                      pause=0.05, **kw)
                self.rec.add(kind, "OK", r.ttfa_ms, r.total_ms)
            elif kind == "cancel":
                async for _ in self.c.stream_chunks(text, self.args.voice, **kw):
                    break  # hang up after the first audio (the generator cancels the call)
                self.rec.add(kind, "OK")
            else:
                vid = f"soak-{worker}-{n}"
                audio, ref_text = self.reference
                await self.c.register_voice(vid, audio, ref_text, self.args.lang, consent="soak test voice")
                r = await self.c.stream(text, vid, **kw)
                await self.c.delete_voice(vid)
                self.rec.add(kind, "OK", r.ttfa_ms, r.total_ms)
        except TtsError as e:
            self.rec.add(kind, e.code.name)

    async def worker(self, worker: int, until: float) -> None:
        rng = random.Random(self.args.seed * 1000 + worker)
        n = 0
        while time.monotonic() < until:
            await self.one(rng, worker, n)
            n += 1


async def reference_audio(client: AsyncTtsClient, args) -> tuple[bytes, str]:
    """(WAV bytes, transcript) for churned voices: --ref-audio, or speech of --voice itself, padded
    with silence to the 3 s a reference needs when the model stopped early."""
    if args.ref_audio:
        return Path(args.ref_audio).read_bytes(), args.ref_text or ""
    text = " ".join(TEXTS.get(args.lang, TEXTS["en"])[:2])
    resp = await client.synthesize(text, args.voice, encoding="wav", seed=args.seed, max_audio_seconds=8.0,
                                   language=args.lang)
    with wave.open(io.BytesIO(resp.audio)) as w:
        rate, pcm = w.getframerate(), w.readframes(w.getnframes())
    pcm += b"\x00\x00" * max(0, int(3.5 * rate) - len(pcm) // 2)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return out.getvalue(), text


async def soak(args) -> Recorder:
    async with AsyncTtsClient(args.server, token=args.token, timeout=300, retry=None) as client:
        reference = await reference_audio(client, args)
        rec = Recorder()
        until = rec.t0 + 60 * args.minutes
        traffic = Traffic(client, args, rec, reference)

        async def sample_rss():
            while time.monotonic() < until:
                mb = read_rss_mb(args.metrics, args.server_pid)
                if mb is not None:
                    rec.rss.append((rec.now(), mb))
                await asyncio.sleep(args.sample_seconds)

        sampler = asyncio.ensure_future(sample_rss())

        async def progress():
            while time.monotonic() < until:
                await asyncio.sleep(min(args.window_seconds, 60))
                errors = sum(s.code != "OK" for s in rec.samples)
                print(f"soak: {rec.now() / 60:.1f} min, {len(rec.samples)} requests, {errors} errors, "
                      f"rss {rec.rss[-1][1] if rec.rss else float('nan'):.0f} MiB", file=sys.stderr)

        reporter = asyncio.ensure_future(progress())
        await asyncio.gather(*(traffic.worker(w, until) for w in range(args.concurrency)))
        for task in (sampler, reporter):
            task.cancel()
        mb = read_rss_mb(args.metrics, args.server_pid)
        if mb is not None:
            rec.rss.append((rec.now(), mb))
        return rec


# ----------------------------------------------------------------------------------- report
def _codes(samples) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in samples:
        if s.code != "OK":
            out[s.code] = out.get(s.code, 0) + 1
    return out


def _latency(samples) -> dict:
    ttfa = [s.ttfa_ms for s in samples if s.ttfa_ms is not None]
    total = [s.total_ms for s in samples if s.total_ms is not None]
    return {"ttfa_ms_p50": percentile(ttfa, 50), "ttfa_ms_p95": percentile(ttfa, 95),
            "total_ms_p50": percentile(total, 50), "total_ms_p95": percentile(total, 95)}


def report(rec: Recorder, args) -> dict:
    duration = max(rec.now(), 1e-9)
    windows = []
    edges = np.arange(0.0, duration + args.window_seconds, args.window_seconds)
    for a, b in zip(edges, edges[1:]):
        ss = [s for s in rec.samples if a <= s.t < b]
        rss = [mb for t, mb in rec.rss if a <= t < b]
        kinds = {k: sum(s.kind == k for s in ss) for k in MIX}
        windows.append({"t_start_s": round(float(a), 1), "t_end_s": round(float(min(b, duration)), 1),
                        "requests": len(ss), "errors": _codes(ss), "by_kind": kinds, **_latency(ss),
                        "rss_mb": round(float(np.median(rss)), 1) if rss else None})
    warm = min(60 * args.warmup_minutes, duration / 2)
    drift_span = min(60 * args.drift_minutes, duration / 3)
    after = [mb for t, mb in rec.rss if t >= warm]
    first_rss = float(np.median([mb for t, mb in rec.rss if warm <= t < warm + args.window_seconds] or after[:1])) \
        if after else None
    last_rss = float(np.median([mb for t, mb in rec.rss if t >= duration - args.window_seconds] or after[-1:])) \
        if after else None
    first = _latency([s for s in rec.samples if s.t < drift_span])["ttfa_ms_p95"]
    last = _latency([s for s in rec.samples if s.t >= duration - drift_span])["ttfa_ms_p95"]
    errors = _codes(rec.samples)
    totals = {
        "requests": len(rec.samples), "by_kind": {k: sum(s.kind == k for s in rec.samples) for k in MIX},
        "errors_by_code": errors, "errors": sum(errors.values()),
        **_latency(rec.samples),
        "rss_mb_after_warmup": round(first_rss, 1) if first_rss else None,
        "rss_mb_end": round(last_rss, 1) if last_rss else None,
        "rss_mb_max": round(max(mb for _, mb in rec.rss), 1) if rec.rss else None,
        "rss_growth_pct_after_warmup": round(100 * (last_rss - first_rss) / first_rss, 2) if first_rss else None,
        "ttfa_ms_p95_first": first, "ttfa_ms_p95_last": last,
        "ttfa_p95_drift_pct": round(100 * (last - first) / first, 2) if first and last else None,
    }
    return {"benchmark": "soak", "server": args.server, "minutes": args.minutes, "concurrency": args.concurrency,
            "voice": args.voice, "lang": args.lang, "max_audio_seconds": args.max_audio_seconds, "mix": MIX,
            "window_seconds": args.window_seconds, "warmup_seconds": warm, "drift_seconds": drift_span,
            "machine": machine(), "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "notes": args.note,
            "totals": totals, "windows": windows,
            "rss_samples": [[round(t, 1), round(mb, 1)] for t, mb in rec.rss]}


def log_errors(path: str, start: int) -> list[str]:
    """ERROR and traceback lines the server logged after byte ``start`` of its log."""
    with open(path, "rb") as f:
        f.seek(start)
        lines = f.read().decode(errors="replace").splitlines()
    return [line for line in lines if " ERROR " in line or line.startswith("Traceback")]


def run(args) -> int:
    if args.minutes <= 0 or args.concurrency < 1:
        print("gsv-bench: error: --minutes must be > 0 and --concurrency >= 1", file=sys.stderr)
        return 2
    log_start = Path(args.server_log).stat().st_size if args.server_log else 0
    rec = asyncio.run(soak(args))
    result = report(rec, args)
    if args.server_log:
        errors = log_errors(args.server_log, log_start)
        result["totals"]["server_log_errors"] = len(errors)
        result["server_log_error_lines"] = errors[:20]
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({"out": args.out, **result["totals"]}))
    return 0
