"""``gsv-say``: stream one sentence from a gsv server to a WAV file (or the speakers).

    gsv-say --server HOST:PORT --voice V --text "Hello." -o out.wav [--model ID] [--max-audio-seconds S] [--seed N]
    gsv-say --http http://HOST:HTTP_PORT [--door ws|tts|openai] --voice V --text "Hello." -o out.wav

Prints one JSON line: {"ttfa_ms", "total_ms", "audio_seconds", ...}.  Any error: one line on stderr,
exit code 1 (2 for usage errors).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import wave

import numpy as np

from clients.tts_client import StreamResult, TtsClient, TtsError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gsv-say", description="Stream speech from a gsv TTS server")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", help="HOST:PORT of the gRPC service")
    where.add_argument("--http", metavar="URL", help="base URL of the server's HTTP port (gsv-serve --http-port); "
                                                     "the audio is written once the stream ends")
    p.add_argument("--door", choices=["ws", "tts", "openai"], default="ws",
                   help="with --http: the WebSocket session, upstream-compatible /tts, or OpenAI /v1/audio/speech")
    p.add_argument("--voice", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--model", default="", help="model id of the server (gsv-voices --server ADDR models lists them; "
                                                "default: the server's default model)")
    p.add_argument("-o", "--output", help="WAV file to write (default: play on the speakers if possible)")
    p.add_argument("--lang", default="", help="text language (default: the voice's language)")
    p.add_argument("--max-audio-seconds", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--speed", type=float, default=None)
    p.add_argument("--sample-rate", type=int, default=0, help="output rate (0 = native 32000)")
    p.add_argument("--latency", choices=["balanced", "lowest", "quality"], default="balanced")
    p.add_argument("--token", help="bearer token")
    p.add_argument("--tls-root", help="PEM root certificate: use TLS")
    p.add_argument("--timeout", type=float, default=300.0)
    return p


class HttpFailure(Exception):
    """A failed request through an HTTP door (the server's error, or no connection)."""


def _via_http(args) -> StreamResult:
    """The whole stream through one of the HTTP doors (httpx/websockets are imported only here)."""
    import ssl

    import httpx
    import websockets

    from clients.http_client import AsyncHttpTtsClient, HttpTtsError

    async def run():
        verify = ssl.create_default_context(cafile=args.tls_root) if args.tls_root else True
        async with AsyncHttpTtsClient(args.http, token=args.token, timeout=args.timeout, verify=verify) as client:
            return await client.stream(args.text, args.voice, door=args.door, language=args.lang, seed=args.seed,
                                       latency=args.latency, max_audio_seconds=args.max_audio_seconds,
                                       model=args.model)

    try:
        return asyncio.run(run())
    except (HttpTtsError, httpx.HTTPError, websockets.WebSocketException) as e:
        raise HttpFailure(str(e) or type(e).__name__) from None


def _emit(args, chunks, r: StreamResult, player) -> None:
    """Write the chunks to the WAV file (or play them) as they come."""
    writer = stream = None
    try:
        for chunk in chunks:
            pcm = (np.clip(chunk.samples, -1, 1) * 32767).round().astype("<i2")
            if args.output:
                if writer is None:
                    writer = wave.open(args.output, "wb")
                    writer.setnchannels(1)
                    writer.setsampwidth(2)
                    writer.setframerate(chunk.sample_rate)
                writer.writeframes(pcm.tobytes())
            else:
                if stream is None:
                    stream = player.OutputStream(samplerate=chunk.sample_rate, channels=1, dtype="int16")
                    stream.start()
                stream.write(pcm)
    finally:
        if writer is not None:
            writer.close()
        if stream is not None:
            stream.stop()
            stream.close()
    if writer is None and args.output:  # no audio at all: still write a valid empty file
        with wave.open(args.output, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(r.sample_rate)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    player = None
    if not args.output:
        try:
            import sounddevice  # optional

            player = sounddevice
        except Exception:  # noqa: BLE001 - no audio device or library
            print("gsv-say: error: no -o/--output given and sounddevice is not available", file=sys.stderr)
            return 2
    try:
        if args.http:
            r = _via_http(args)
            _emit(args, iter(r.chunks), r, player)
        else:
            root = open(args.tls_root, "rb").read() if args.tls_root else None
            with TtsClient(args.server, token=args.token, tls_root_cert=root, timeout=args.timeout) as client:
                r = StreamResult()
                chunks = client.stream_chunks(args.text, args.voice, result=r, language=args.lang, seed=args.seed,
                                              max_audio_seconds=args.max_audio_seconds, speed=args.speed,
                                              sample_rate=args.sample_rate, latency=args.latency, model=args.model)
                _emit(args, chunks, r, player)
    except (TtsError, HttpFailure, OSError) as e:
        print(f"gsv-say: error: {e}", file=sys.stderr)
        return 1
    out = {"ttfa_ms": round(r.ttfa_ms, 1) if r.ttfa_ms is not None else None, "total_ms": round(r.total_ms, 1),
           "audio_seconds": round(r.audio_seconds, 3), "chunks": len(r.chunks), "seed": r.seed,
           "request_id": r.request_id, "underruns": r.underruns(), "model_id": r.model_id}
    if args.output:
        out["output"] = args.output
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
