"""``gsv voice add|list|rm|audit|keygen|rotate-key``: manage stored voices without a server.

``--voices`` is a folder or a ``postgresql://`` URL (the same stores ``gsv-serve --voices`` uses);
``--voice-key-file`` encrypts new voices at rest and decrypts stored ones; ``--owner`` is the
namespace (the owner name a bearer token maps to on a server with ``--tokens``).
"""
from __future__ import annotations

import argparse
import getpass
import json
import socket
from pathlib import Path

from gsv.errors import GsvError, VoiceNotFound


def who() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def _store_args(p, key: bool = True) -> None:
    p.add_argument("--voices", required=True, help="voices folder or postgresql://USER@HOST:PORT/DB")
    if key:
        p.add_argument("--voice-key-file", help="AES-GCM key file (encrypt new voices, decrypt stored ones)")
    p.add_argument("--owner", default="", help="namespace: the owner name of a server with --tokens")


def register(sub) -> None:
    v = sub.add_parser("voice", help="manage prepared voices (a folder or a PostgreSQL database)")
    vs = v.add_subparsers(dest="voice_command", required=True)
    a = vs.add_parser("add", help="prepare a voice from reference audio and store it")
    a.add_argument("--bundle", required=True)
    _store_args(a)
    a.add_argument("--id", required=True, dest="voice_id")
    a.add_argument("--ref-audio", required=True)
    a.add_argument("--ref-text", required=True)
    a.add_argument("--ref-lang", required=True)
    a.add_argument("--aux-ref", action="append", default=[])
    a.add_argument("--display-name", default="")
    a.add_argument("--consent", default="", help="the speaker's consent statement (recorded with the voice)")
    a.add_argument("--force", action="store_true", help="replace an existing voice")
    a.set_defaults(func=cmd_add)
    ls = vs.add_parser("list", help="list voices")
    _store_args(ls, key=False)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
    rm = vs.add_parser("rm", help="delete a voice (every stored copy)")
    _store_args(rm, key=False)
    rm.add_argument("--id", required=True, dest="voice_id")
    rm.set_defaults(func=cmd_rm)
    au = vs.add_parser("audit", help="print the audit trail (JSON lines, oldest first)")
    _store_args(au, key=False)
    au.add_argument("--id", dest="voice_id", default=None)
    au.set_defaults(func=cmd_audit)
    kg = vs.add_parser("keygen", help="add a new random AES-256 key to a key file and make it active")
    kg.add_argument("--voice-key-file", required=True)
    kg.add_argument("--id", required=True, dest="key_id")
    kg.set_defaults(func=cmd_keygen)
    rk = vs.add_parser("rotate-key", help="re-encrypt every voice stored with key OLD under key NEW (a voices "
                                          "folder: with its server stopped; a database: while replicas serve)")
    rk.add_argument("--voices", required=True, help="voices folder or postgresql://USER@HOST:PORT/DB")
    rk.add_argument("--voice-key-file", required=True, help="key file holding both keys")
    rk.add_argument("--old", required=True, help="key id to retire ('none': voices stored unencrypted)")
    rk.add_argument("--new", required=True, help="key id to encrypt with ('none': decrypt)")
    rk.set_defaults(func=cmd_rotate)


def open_vault(args, key: bool = True):
    """The vault over ``--voices`` (and ``--voice-key-file`` when given)."""
    from gsv.voicestore import open_backend
    from gsv.voicestore.crypto import KeyRing
    from gsv.voicestore.vault import VoiceVault

    keyring = KeyRing.load(args.voice_key_file) if key and getattr(args, "voice_key_file", None) else None
    return VoiceVault(open_backend(args.voices, actor=f"gsv voice ({who()})"), keyring)


def load_voice(voices: str, voice_id: str, bundle_id: str, key_file: str | None = None, owner: str = ""):
    """A stored voice for ``gsv synth --voice`` (refused when prepared for another bundle)."""
    from gsv.voice import validate_voice_id

    validate_voice_id(voice_id)
    vault = open_vault(argparse.Namespace(voices=voices, voice_key_file=key_file))
    try:
        record = vault.backend.get(owner, voice_id, features=True)
        if record.model_id != bundle_id:
            raise GsvError(f"voice {voice_id!r} was prepared for another bundle ({record.model_id}); re-register it "
                           "for this bundle")
        return vault.open(record)
    finally:
        vault.backend.close()


def cmd_add(args) -> int:
    from gsv.checkpoint.bundle import Bundle
    from gsv.pipeline import TextPreparer, make_voice_preparer
    from gsv.voice import validate_consent, validate_voice_id
    from gsv.voicestore.base import AuditEvent

    validate_voice_id(args.voice_id)
    if args.consent:
        validate_consent(args.consent)
    refs = [Path(p) for p in [args.ref_audio, *args.aux_ref]]
    for r in refs:
        if not r.is_file():
            raise GsvError(f"{r}: no such file")
    vault = open_vault(args)
    try:
        if vault.backend.exists(args.owner, args.voice_id) and not args.force:
            raise GsvError(f"voice {args.voice_id!r} already exists (use --force to replace it)")
        bundle = Bundle.open(args.bundle)
        preparer = make_voice_preparer(bundle, TextPreparer.from_bundle(bundle))
        voice = preparer.prepare(args.voice_id, refs[0], args.ref_text, args.ref_lang, refs[1:], owner=args.owner,
                                 consent=args.consent)
        data = [r.read_bytes() for r in refs]
        record = vault.seal(args.owner, voice, data, display_name=args.display_name, consent_by=who())
        audit = AuditEvent("register", args.owner, args.voice_id, who(), args.consent,
                           {"model_id": bundle.bundle_id, "encrypted": bool(record.key_id)})
        stored = vault.backend.put(record, overwrite=args.force, audit=audit)
        print(json.dumps(stored.describe(), ensure_ascii=False))
    finally:
        vault.backend.close()
    return 0


def cmd_list(args) -> int:
    vault = open_vault(args, key=False)
    try:
        metas = [r.describe() for r in vault.backend.list(args.owner)]
    finally:
        vault.backend.close()
    if args.json:
        print(json.dumps(metas, ensure_ascii=False, indent=2))
    else:
        for m in metas:
            print(f"{m['voice_id']}\t{m.get('language', '')}\t{'ref-free' if m.get('reference_free') else 'prompted'}\t"
                  f"{'encrypted' if m.get('key_id') else 'plain'}\t{m.get('ref_text', '')}")
    return 0


def cmd_rm(args) -> int:
    from gsv.voicestore.base import AuditEvent

    vault = open_vault(args, key=False)
    try:
        vault.backend.delete(args.owner, args.voice_id, audit=AuditEvent("delete", args.owner, args.voice_id, who()))
    except VoiceNotFound:
        raise VoiceNotFound(f"unknown voice {args.voice_id!r}") from None
    finally:
        vault.backend.close()
    return 0


def cmd_audit(args) -> int:
    vault = open_vault(args, key=False)
    try:
        for ev in vault.backend.audit_trail(args.owner, args.voice_id):
            print(json.dumps(ev, ensure_ascii=False, default=str))
    finally:
        vault.backend.close()
    return 0


def cmd_keygen(args) -> int:
    from gsv.voicestore.crypto import KeyRing

    ring = KeyRing.add_key(args.voice_key_file, args.key_id)
    print(json.dumps({"key_file": str(args.voice_key_file), "active": ring.active, "keys": sorted(ring.keys)}))
    return 0


def cmd_rotate(args) -> int:
    vault = open_vault(args)
    try:
        n = vault.rotate_key(args.old, args.new, who())
    finally:
        vault.backend.close()
    print(json.dumps({"rotated": n, "old": args.old, "new": args.new}))
    return 0
