"""``gsv-serve``: the gRPC streaming TTS server (and, with ``--http-port``, its HTTP/WebSocket doors).

    gsv-serve --bundle BUNDLE --voices DIR|postgresql://USER@HOST:PORT/DB [--voice-key-file KEYS.json]
              --port P --metrics-port M [--backend ...] [--max-live N] [--max-queue N]
              [--http-port H [--ref-audio-dir DIR] [--no-playground]]
    gsv-serve --bundle [ID=]A --bundle [ID=]B ... | --models DIR  [--default-model ID] [--max-resident-models N]
              [--preload ID,...] --voices DIR ...

Several models: every ``--bundle`` and every bundle folder in ``--models`` is a model (its id: the
manifest's "name", else the folder name; ``ID=PATH`` names it).  Requests pick one by id (empty: the
default model); models load on first use and, with ``--max-resident-models``, the least recently
used idle one is unloaded to make room.

Ready when grpc.health.v1 reports SERVING.  SIGTERM drains in-flight streams (up to --grace
seconds), refusing new ones with UNAVAILABLE (for --drain-notice seconds with the port open and
health NOT_SERVING, then with the port closed), then exits.  Replicas share voices through
PostgreSQL (``--voices postgresql://...``); ``--voice-key-file`` encrypts voices at rest.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from gsv.errors import GsvError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gsv-serve", description="GPT-SoVITS gRPC streaming TTS server",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bundle", action="append", default=[], metavar="[ID=]BUNDLE",
                   help="a model to serve (repeatable; ID= names it, default: the manifest's name or the folder name)")
    p.add_argument("--models", type=Path, default=None, metavar="DIR",
                   help="serve every bundle folder in DIR (one that fails to open is reported and refused)")
    p.add_argument("--default-model", default=None, metavar="ID",
                   help="model of requests that name none (default: the first --bundle, else the first of --models)")
    p.add_argument("--max-resident-models", type=int, default=None, metavar="N",
                   help="keep at most N models loaded; the least recently used idle one is unloaded (default: no limit)")
    p.add_argument("--preload", default="", metavar="ID,...", help="models to load at start besides the default")
    p.add_argument("--onnx-prepack", choices=["on", "off"], default=None,
                   help="ONNX Runtime's pre-packed weight copies (faster matrix kernels, ~18%% more memory per "
                        "model); default: on with one model, off with several")
    p.add_argument("--voices", required=True,
                   help="voices folder (created if missing), or postgresql://USER@HOST:PORT/DB shared by replicas")
    p.add_argument("--voice-key-file", type=Path, default=None,
                   help='JSON {"active": ID, "keys": {ID: base64 32-byte key}}: encrypt voices at rest (AES-GCM); '
                        "make one with `gsv voice keygen`")
    p.add_argument("--port", type=int, default=50051)
    p.add_argument("--host", default="[::]")
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus /metrics HTTP port (no auth)")
    p.add_argument("--metrics-host", default=None,
                   help="interface of the /metrics endpoint (default: the same as --host)")
    p.add_argument("--backend", choices=["torch", "onnx", "onnx-int8", "onnx-fp16", "trt"], default=None,
                   help="default: onnx when the bundle has ONNX graphs, torch otherwise")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="compute threads of both stages (default: all cores)")
    p.add_argument("--ar-threads", type=int, default=None,
                   help="threads of the GPT (AR) stage (default: --threads, else all cores)")
    p.add_argument("--decoder-threads", type=int, default=None,
                   help="threads of the decoder+vocoder stage (default: --threads, else all cores)")
    p.add_argument("--max-live", type=int, default=8, help="requests generating at once (GPT batch rows)")
    p.add_argument("--max-queue", type=int, default=16, help="admitted requests waiting beyond --max-live")
    p.add_argument("--max-decode-batch", type=int, default=4)
    p.add_argument("--stage-priority", choices=("on", "off"), default="on",
                   help="on: the GPT step pauses while the decoder renders a window whose listener is about to "
                        "run dry or a stream's first audio (both stages use every core; default); off: the two "
                        "stages always run side by side")
    p.add_argument("--no-deadline-chunks", action="store_true",
                   help="never cut a shorter chunk when a listener would run dry (fixed chunk boundaries)")
    p.add_argument("--max-text-chars", type=int, default=2000)
    p.add_argument("--max-audio-seconds", type=float, default=120.0)
    p.add_argument("--grace", type=float, default=30.0, help="seconds to let in-flight streams finish on SIGTERM")
    p.add_argument("--drain-notice", type=float, default=1.0,
                   help="seconds after SIGTERM during which health says NOT_SERVING before the gRPC port closes")
    p.add_argument("--bidi-idle-timeout", type=float, default=30.0,
                   help="close a BidiSynthesize stream after this many seconds without text or audio")
    p.add_argument("--http-port", type=int, default=None,
                   help="also serve HTTP + WebSocket here: upstream-compatible /tts, OpenAI /v1/audio/speech, "
                        "/v1/ws/synthesize and the playground at / (off when not given)")
    p.add_argument("--http-host", default=None, help="interface of the HTTP port (default: the same as --host)")
    p.add_argument("--ref-audio-dir", type=Path, default=None,
                   help="folder whose audio files /tts may name as ref_audio_path (prepared once, cached)")
    p.add_argument("--no-playground", action="store_true", help="no browser playground at / on the HTTP port")
    p.add_argument("--tls-cert", type=Path)
    p.add_argument("--tls-key", type=Path)
    p.add_argument("--tokens", type=Path, help='JSON file {"<bearer token>": "<owner name>", ...}; enables auth')
    p.add_argument("--no-reflection", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def parse_bundle_arg(value: str) -> tuple[str | None, Path]:
    """``ID=PATH`` or ``PATH`` (a path that exists as given is never split)."""
    from gsv.voice import VOICE_ID_RE

    name, sep, path = value.partition("=")
    if sep and VOICE_ID_RE.fullmatch(name) and not Path(value).exists():
        return name, Path(path)
    return None, Path(value)


def config_from_args(args):
    from gsv.voicestore import is_database_url
    from server.config import ServerConfig

    tokens = {}
    if args.tokens:
        try:
            tokens = json.loads(args.tokens.read_text())
        except (OSError, ValueError) as e:
            raise GsvError(f"--tokens {args.tokens}: {e}") from None
        if not isinstance(tokens, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tokens.items()):
            raise GsvError("--tokens must be a JSON object of token -> owner strings")
        if not tokens:  # never start open when the operator asked for auth
            raise GsvError(f"--tokens {args.tokens} has no tokens; auth would be off")
    try:
        voices = args.voices if is_database_url(args.voices) else Path(args.voices)
        bundles = [parse_bundle_arg(b) for b in args.bundle]
        first = bundles.pop(0) if bundles and bundles[0][0] is None else None
        return ServerConfig(bundle=first[1] if first else None, bundles=tuple(bundles), models_dir=args.models,
                            default_model=args.default_model, max_resident_models=args.max_resident_models,
                            preload=tuple(p for p in args.preload.split(",") if p), voices=voices,
                            onnx_prepack=None if args.onnx_prepack is None else args.onnx_prepack == "on",
                            port=args.port, host=args.host, metrics_port=args.metrics_port,
                            metrics_host=args.metrics_host, backend=args.backend, device=args.device,
                            threads=args.threads, ar_threads=args.ar_threads,
                            decoder_threads=args.decoder_threads, max_live=args.max_live, max_queue=args.max_queue,
                            max_decode_batch=args.max_decode_batch,
                            deadline_chunks=not args.no_deadline_chunks,
                            stage_priority=args.stage_priority == "on", max_text_chars=args.max_text_chars,
                            max_audio_seconds=args.max_audio_seconds, drain_grace_seconds=args.grace,
                            drain_notice_seconds=args.drain_notice, voice_key_file=args.voice_key_file,
                            bidi_idle_timeout=args.bidi_idle_timeout,
                            tls_cert=args.tls_cert, tls_key=args.tls_key, tokens=tokens,
                            reflection=not args.no_reflection, http_port=args.http_port, http_host=args.http_host,
                            ref_audio_dir=args.ref_audio_dir, playground=not args.no_playground)
    except ValueError as e:
        raise GsvError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        from server.app import serve

        asyncio.run(serve(config_from_args(args)))
    except (GsvError, OSError) as e:  # bad config, or the port/files cannot be opened
        print(f"gsv-serve: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
