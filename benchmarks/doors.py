"""The server's doors as ``gsv-bench serve`` sees them: one request through gRPC StreamingSynthesize,
upstream-compatible ``/tts`` (raw PCM, streamed), OpenAI ``/v1/audio/speech`` (``pcm``, streamed) or
the WebSocket session, each measured from the client's side into the same
:class:`~clients.tts_client.StreamResult`; the overload burst; and the door-vs-gRPC ratios.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import numpy as np

from clients.tts_client import AsyncTtsClient, TtsError

PROTOCOLS = ("grpc", "http", "openai", "ws")
HTTP_DOOR = {"http": "tts", "openai": "openai", "ws": "ws"}  # protocol -> clients.http_client door
# the targets: a door's time to first audio within +10% or +15 ms of gRPC's (whichever is
# larger), its throughput within 5% of gRPC's
TTFA_RATIO, TTFA_SLACK_MS, THROUGHPUT_RATIO = 1.10, 15.0, 0.95


@dataclass(frozen=True)
class Door:
    protocol: str  # one of PROTOCOLS
    address: str  # HOST:PORT for grpc, the HTTP base URL otherwise


def as_door(target) -> Door:
    return target if isinstance(target, Door) else Door("grpc", target)


@contextlib.asynccontextmanager
async def open_client(door: Door, token: str | None, connections: int = 64):
    if door.protocol == "grpc":
        async with AsyncTtsClient(door.address, token=token, retry=None) as client:  # measure, never retry
            yield client
    else:
        import logging

        from clients.http_client import AsyncHttpTtsClient  # httpx/websockets only when a door needs them

        logging.getLogger("httpx").setLevel(logging.WARNING)  # (one INFO line per request otherwise)
        async with AsyncHttpTtsClient(door.address, token=token, max_connections=connections) as client:
            yield client


def is_request_error(e) -> bool:
    return isinstance(e, TtsError) or type(e).__name__ in ("HttpTtsError", "RawHttpError")


def error_code(e: BaseException) -> str:
    return e.code.name if isinstance(e, TtsError) else e.code_name


async def request(client, door: Door, text: str, args, i: int, model: str = ""):
    """One streamed request (to ``model``; "" = the server's default); a failure the server answered
    is returned (not raised)."""
    try:
        if door.protocol == "grpc":
            return await client.stream(text, args.voice, language=args.lang, seed=args.seed + i,
                                       max_audio_seconds=args.max_audio_seconds, latency=args.latency, model=model)
        return await client.stream(text, args.voice, door=HTTP_DOOR[door.protocol], language=args.lang,
                                   seed=args.seed + i, latency=args.latency, max_audio_seconds=args.max_audio_seconds,
                                   model=model)
    except Exception as e:  # noqa: BLE001 - counted by code; anything else is a harness bug and raised
        if is_request_error(e):
            return e
        raise


def _pct(xs, q):
    return float(np.percentile(xs, q)) if len(xs) else None


def _delivery(results) -> dict:
    """How admitted streams were delivered: time to first audio, and the real-time factor of the
    stream after its first audio (wall seconds / audio seconds; below 1 = faster than playback)."""
    ok = [r for r in results if not isinstance(r, BaseException) and r.audio_seconds]
    rtf = [(r.t_end - r.t_first_audio) / r.audio_seconds for r in ok if r.t_first_audio is not None]
    ttfa = [r.ttfa_ms for r in ok if r.ttfa_ms is not None]
    return {"streams": len(ok), "ttfa_ms_p50": _pct(ttfa, 50), "ttfa_ms_p99": _pct(ttfa, 99),
            "stream_rtf_mean": float(np.mean(rtf)) if rtf else None, "stream_rtf_max": max(rtf) if rtf else None,
            "underruns": sum(r.underruns() for r in ok)}


class RawHttpError(Exception):
    """A refused request of the raw /tts burst client (``code_name`` as HttpTtsError's)."""

    def __init__(self, status: int, code: str):
        super().__init__(f"{code} ({status})")
        self.status, self.code_name = status, code


async def _raw_tts_burst(base_url: str, args, texts: list[str], n: int) -> list[tuple[object, float]]:
    """``n`` upstream /tts requests written at the same moment on ``n`` connections opened beforehand,
    by a client that does almost no work (HTTP/1.0: the body is the raw PCM until the server closes),
    so the times measure the server and not a Python HTTP client's per-request cost.  Each outcome:
    (StreamResult or RawHttpError, ms from writing the request to its status line)."""
    import json
    import urllib.parse

    from clients.tts_client import StreamResult

    url = urllib.parse.urlsplit(base_url)
    auth = f"Authorization: Bearer {args.token}\r\n" if args.token else ""
    conns = await asyncio.gather(*(asyncio.open_connection(url.hostname, url.port) for _ in range(n)))

    async def one(i, reader, writer):
        body = json.dumps({"text": texts[i % len(texts)], "text_lang": args.lang, "ref_audio_path": args.voice,
                           "media_type": "raw", "streaming_mode": 2, "seed": args.seed + i}).encode()
        head = (f"POST /tts HTTP/1.0\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n{auth}"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        result = StreamResult(t_start=time.monotonic(), sample_rate=32000)
        writer.write(head + body)
        status = int((await reader.readline()).split()[1])
        ms = 1000 * (time.monotonic() - result.t_start)
        while (await reader.readline()).strip():  # headers
            pass
        try:
            if status != 200:
                code = json.loads(await reader.read()).get("Exception", "INTERNAL")
                return RawHttpError(status, code), ms
            from clients.http_client import _PcmCollector

            collect = _PcmCollector(result, 32000)
            while data := await reader.read(65536):
                collect.feed(data)
            result.t_end = time.monotonic()
            return result, ms
        finally:
            writer.close()

    return await asyncio.gather(*(one(i, r, w) for i, (r, w) in enumerate(conns)))


async def burst(door: Door, args, texts: list[str], n: int, baseline: int) -> dict:
    """``baseline`` concurrent streams alone, then ``n`` requests at once: the excess must be refused
    at once (429 / RESOURCE_EXHAUSTED) while the admitted streams keep their real-time factor."""
    async with open_client(door, args.token, connections=n + 8) as client:
        alone = await asyncio.gather(*(request(client, door, texts[i % len(texts)], args, i) for i in range(baseline)))

        async def timed(i):
            t0 = time.monotonic()
            r = await request(client, door, texts[i % len(texts)], args, i)
            return r, 1000 * (time.monotonic() - t0)

        t0 = time.monotonic()
        if door.protocol == "http":
            outcomes = await _raw_tts_burst(door.address, args, texts, n)
        else:
            outcomes = await asyncio.gather(*(timed(i) for i in range(n)))
        wall = time.monotonic() - t0
    rejected = [ms for r, ms in outcomes if is_request_error(r) and error_code(r) == "RESOURCE_EXHAUSTED"]
    errors: dict[str, int] = {}
    for r, _ in outcomes:
        if is_request_error(r):
            errors[error_code(r)] = errors.get(error_code(r), 0) + 1
    admitted = [r for r, _ in outcomes if not is_request_error(r)]
    client = "raw HTTP/1.0, connections opened first" if door.protocol == "http" else "the door's client"
    return {"protocol": door.protocol, "client": client, "requests": n, "wall_seconds": wall, "errors": errors,
            "rejected": len(rejected), "rejected_ms_p50": _pct(rejected, 50), "rejected_ms_p99": _pct(rejected, 99),
            "rejected_ms_max": max(rejected) if rejected else None,
            "admitted": _delivery(admitted), f"alone_{baseline}_streams": _delivery(alone)}


def ratios_vs_grpc(levels: dict[str, list[dict]]) -> list[dict]:
    """Per door and level: time to first audio and throughput against gRPC's at the same level."""
    out = []
    for proto, lvls in levels.items():
        if proto == "grpc":
            continue
        for g, d in zip(levels["grpc"], lvls):
            row = {"protocol": proto, "concurrency": g["concurrency"]}
            for k in ("ttfa_ms_p50", "ttfa_ms_mean", "ttfa_ms_p95"):
                row[f"{k}_ratio"] = d[k] / g[k] if g.get(k) and d.get(k) is not None else None
                row[f"{k}_diff"] = d[k] - g[k] if g.get(k) is not None and d.get(k) is not None else None
            row["throughput_ratio"] = (d["audio_seconds_per_second"] / g["audio_seconds_per_second"]
                                       if g["audio_seconds_per_second"] else None)
            if g.get("ttfa_ms_mean") is not None and d.get("ttfa_ms_mean") is not None:
                row["ttfa_within_target"] = d["ttfa_ms_mean"] <= max(TTFA_RATIO * g["ttfa_ms_mean"],
                                                                     g["ttfa_ms_mean"] + TTFA_SLACK_MS)
            if row["throughput_ratio"] is not None:
                row["throughput_within_target"] = row["throughput_ratio"] >= THROUGHPUT_RATIO
            out.append(row)
    return out


def summary_vs_grpc(levels: dict[str, list[dict]]) -> list[dict]:
    """Repeated levels pooled per door and concurrency (a shared machine's drift averages out):
    mean time to first audio over every request, audio seconds per wall second over every level,
    each against gRPC's, with the targets' verdicts."""
    def pooled(lvls, c):
        same = [lv for lv in lvls if lv["concurrency"] == c and lv.get("ttfa_ms_mean") is not None]
        n = sum(lv["ok"] for lv in same)
        return {"levels": len(same), "requests": n,
                "ttfa_ms_mean": sum(lv["ttfa_ms_mean"] * lv["ok"] for lv in same) / n if n else None,
                "ttfa_ms_p50_median": float(np.median([lv["ttfa_ms_p50"] for lv in same])) if same else None,
                "audio_seconds_per_second": (sum(lv["audio_seconds"] for lv in same)
                                             / sum(lv["wall_seconds"] for lv in same)) if same else None}

    out = []
    for c in sorted({lv["concurrency"] for lv in levels.get("grpc", [])}):
        g = pooled(levels["grpc"], c)
        for proto, lvls in levels.items():
            d = pooled(lvls, c)
            row = {"protocol": proto, "concurrency": c, **d}
            if proto != "grpc" and g["ttfa_ms_mean"] and d["ttfa_ms_mean"] is not None:
                row["ttfa_ms_mean_ratio"] = d["ttfa_ms_mean"] / g["ttfa_ms_mean"]
                row["ttfa_ms_mean_diff"] = d["ttfa_ms_mean"] - g["ttfa_ms_mean"]
                row["ttfa_allowed_ms"] = max(TTFA_RATIO * g["ttfa_ms_mean"], g["ttfa_ms_mean"] + TTFA_SLACK_MS)
                row["ttfa_within_target"] = d["ttfa_ms_mean"] <= row["ttfa_allowed_ms"]
                row["throughput_ratio"] = d["audio_seconds_per_second"] / g["audio_seconds_per_second"]
                row["throughput_within_target"] = row["throughput_ratio"] >= THROUGHPUT_RATIO
            out.append(row)
    return out
