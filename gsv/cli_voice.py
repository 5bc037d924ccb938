"""``gsv voice add|blend|list|rm|audit|keygen|rotate-key``: manage stored voices without a server.

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
    b = vs.add_parser("blend", help="store a new voice blended from 2-4 voices (timbre interpolated by weight)")
    _store_args(b)
    b.add_argument("--id", required=True, dest="voice_id", help="id of the new voice")
    b.add_argument("--from", dest="sources", action="append", required=True, metavar="VOICE:WEIGHT",
                   help="a source voice and its weight (2-4 of them; weights are normalised)")
    b.add_argument("--bundle", help="blend as prepared for this bundle (sources prepared for another model of its "
                                    "family are carried to it from their reference audio); default: the bundle the "
                                    "heaviest source was prepared for")
    b.add_argument("--reference-free", action="store_true", help="no prompt: the blend sets only the timbre")
    b.add_argument("--display-name", default="")
    b.add_argument("--consent", default="", help="consent statement (default: the sources' statements)")
    b.add_argument("--force", action="store_true", help="replace an existing voice")
    b.set_defaults(func=cmd_blend)
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


def _blend_source(text: str) -> tuple[str, float]:
    vid, sep, weight = text.rpartition(":")
    try:
        if not sep or not vid:
            raise ValueError
        return vid, float(weight)
    except ValueError:
        raise GsvError(f"--from {text!r}: expected VOICE:WEIGHT (e.g. alice:0.7)") from None


def cmd_blend(args) -> int:
    """A blend (:mod:`gsv.blend`) of stored voices, prepared for one bundle: ``--bundle``, else the one the
    heaviest source was prepared for (every source must then be prepared for it too)."""
    from gsv.blend import blend_voices, recipe, rederive
    from gsv.voice import validate_voice_id
    from gsv.voicestore.base import AuditEvent

    validate_voice_id(args.voice_id)
    sources = [_blend_source(s) for s in args.sources]
    vault = open_vault(args)
    try:
        if vault.backend.exists(args.owner, args.voice_id) and not args.force:
            raise GsvError(f"voice {args.voice_id!r} already exists (use --force to replace it)")
        records = []
        for vid, _ in sources:
            validate_voice_id(vid)
            try:
                records.append(vault.backend.get(args.owner, vid, features=True, references=True))
            except VoiceNotFound:
                raise VoiceNotFound(f"unknown voice {vid!r}") from None
        bases, refs = [vault.open(r) for r in records], [vault.references(r) for r in records]
        families = {v.family for v in bases}
        if len(families) > 1:
            raise GsvError(f"cannot blend voices of incompatible versions ({', '.join(sorted(families))} phone sets)")
        voices = _carried(args, bases, refs, records, [w for _, w in sources], rederive)
        consent = args.consent.strip() or "blend of " + "; ".join(f"{v.voice_id} (consent: {v.consent[:200]})"
                                                                  for v in voices)
        weighted = [(v, w) for v, (_, w) in zip(voices, sources)]
        voice = blend_voices(args.voice_id, weighted, reference_free=args.reference_free, owner=args.owner,
                             consent=consent)
        meta = recipe([(v, w, len(r)) for (v, w), r in zip(weighted, refs)], args.reference_free)
        record = vault.seal(args.owner, voice, [d for r in refs for d in r], display_name=args.display_name,
                            consent_by=who())
        record.meta["blend"] = meta
        audit = AuditEvent("register", args.owner, args.voice_id, who(), consent,
                           {"model_id": voice.bundle_id, "encrypted": bool(record.key_id), "blend": meta})
        stored = vault.backend.put(record, overwrite=args.force, audit=audit)
        print(json.dumps(stored.describe(), ensure_ascii=False))
    finally:
        vault.backend.close()
    return 0


def _carried(args, bases, refs, records, weights, rederive):
    """The sources as prepared for the blend's bundle (see :func:`cmd_blend`)."""
    if not args.bundle:
        heaviest = bases[max(range(len(bases)), key=lambda i: (weights[i], -i))]
        for v in bases:
            if v.bundle_id != heaviest.bundle_id:
                raise GsvError(f"voice {v.voice_id!r} was prepared for another model than the heaviest source "
                               f"({heaviest.bundle_id}); give --bundle to carry the sources to one model")
        return bases
    from gsv.checkpoint.bundle import Bundle
    from gsv.pipeline import TextPreparer, make_voice_preparer

    bundle = Bundle.open(args.bundle)
    if bundle.symbol_version != bases[0].family:
        raise GsvError(f"the voices belong to {bases[0].family} models; {args.bundle} is a {bundle.model_version} "
                       "model of another phone set")
    preparer, out = None, []
    for v, r, rec in zip(bases, refs, records):
        if v.bundle_id != bundle.bundle_id:
            preparer = preparer or make_voice_preparer(bundle, TextPreparer.from_bundle(bundle))
            keep = bool(v.prompt_space) and v.prompt_space == bundle.prompt_space()
            v = rederive(preparer, v, rec.describe(), r, keep_prompt=keep)
        out.append(v)
    return out


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
