"""``gsv-voices``: manage the voices of a gsv server.

    gsv-voices --server HOST:PORT add --voice ID --ref-audio R.wav --ref-text "…" --ref-lang LANG [--consent "…"]
    gsv-voices --server HOST:PORT list
    gsv-voices --server HOST:PORT rm --voice ID
    gsv-voices --server HOST:PORT blend --voice C --from A:0.7 --from B:0.3 [--reference-free]
    gsv-voices --server HOST:PORT models

``blend`` makes a new voice of 2-4 of your voices: their timbre interpolated by weight (weights are
normalised), the prompt of the heaviest one (or none with ``--reference-free``).  ``models`` lists
the server's models (a voice is usable with every model of its family; ``--model`` on ``add`` and
``blend`` picks the model it is first prepared for).

The server records a consent statement with every voice.  ``--consent`` sets it; without it the
statement records that the registering user affirms the speaker's consent (running the command is
that affirmation — do not register voices of people who did not agree).
"""
from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
from pathlib import Path

from clients.tts_client import TtsClient, TtsError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gsv-voices", description="Manage voices on a gsv TTS server")
    p.add_argument("--server", required=True, help="HOST:PORT")
    p.add_argument("--token", help="bearer token")
    p.add_argument("--tls-root", help="PEM root certificate: use TLS")
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("add", help="register a voice from reference audio")
    a.add_argument("--voice", required=True)
    a.add_argument("--ref-audio", required=True)
    a.add_argument("--ref-text", required=True)
    a.add_argument("--ref-lang", required=True)
    a.add_argument("--aux-ref", action="append", default=[])
    a.add_argument("--display-name", default="")
    a.add_argument("--consent", help="the speaker's consent statement")
    a.add_argument("--overwrite", action="store_true")
    a.add_argument("--model", default="", help="prepare it for this model (default: the server's default model)")
    b = sub.add_parser("blend", help="create a voice blended from 2-4 of your voices")
    b.add_argument("--voice", required=True, help="id of the new voice")
    b.add_argument("--from", dest="sources", action="append", required=True, metavar="VOICE:WEIGHT",
                   help="a source voice and its weight (repeat 2-4 times)")
    b.add_argument("--reference-free", action="store_true", help="no prompt: the blend sets only the timbre")
    b.add_argument("--display-name", default="")
    b.add_argument("--consent", default="", help="consent statement (default: the sources' statements)")
    b.add_argument("--overwrite", action="store_true")
    b.add_argument("--model", default="", help="blend as prepared for this model (default: the server's default)")
    sub.add_parser("models", help="list the server's models")
    ls = sub.add_parser("list", help="list voices")
    ls.add_argument("--lang", default="")
    rm = sub.add_parser("rm", help="delete a voice")
    rm.add_argument("--voice", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        root = open(args.tls_root, "rb").read() if args.tls_root else None
        with TtsClient(args.server, token=args.token, tls_root_cert=root, timeout=600) as client:
            if args.command == "add":
                refs = [Path(p) for p in [args.ref_audio, *args.aux_ref]]
                data = [r.read_bytes() for r in refs]
                consent = args.consent or (f"{getpass.getuser()}@{socket.gethostname()} affirms that the speaker of "
                                           f"{refs[0].name} consented to having their voice cloned")
                v = client.register_voice(args.voice, data[0], args.ref_text, args.ref_lang, consent, data[1:],
                                          args.display_name, args.overwrite, model=args.model)
                print(json.dumps({"voice_id": v.voice_id, "language": v.language, "version": v.version,
                                  "reference_free": v.reference_free}))
            elif args.command == "blend":
                v = client.blend_voice(args.voice, args.sources, args.consent, args.display_name, args.overwrite,
                                       model=args.model, reference_free=args.reference_free)
                print(json.dumps({"voice_id": v.voice_id, "language": v.language, "version": v.version,
                                  "reference_free": v.reference_free,
                                  "blend": {b.voice_id: round(b.weight, 6) for b in v.blend}}))
            elif args.command == "models":
                resp = client.list_models()
                for m in resp.models:
                    print(json.dumps({"model_id": m.model_id, "version": m.version, "backend": m.backend,
                                      "default": m.is_default, "resident": m.resident,
                                      "load_seconds": round(m.load_seconds, 3), "error": m.error}))
            elif args.command == "list":
                for v in client.list_voices(args.lang):
                    print(json.dumps({"voice_id": v.voice_id, "language": v.language, "version": v.version,
                                      "reference_text": v.reference_text}, ensure_ascii=False))
            else:
                client.delete_voice(args.voice)
    except (TtsError, OSError, ValueError) as e:
        print(f"gsv-voices: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
