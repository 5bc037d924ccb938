"""Voice data protection on both backends: AES-GCM at rest (unreadable without the key, round trip
with it, tampering detected), key rotation with ``gsv voice rotate-key``, the start-up warning
without a key, delete removing every copy, and ``gsv voice`` on a postgresql:// URL."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from clients import TtsClient
from gsv.cli import main as gsv_main
from gsv.errors import VoiceUnavailable
from gsv.voicestore.crypto import MAGIC, KeyRing
from server.voices import VoiceRegistry
from tests.cluster.conftest import REF_TEXT, TEXT, reference, sql
from tests.server.harness import start_server


@pytest.fixture(params=["folder", "postgresql"])
def voices(request, tmp_path):
    """A voice store location of each backend."""
    if request.param == "folder":
        return str(tmp_path / "voices")
    from tests.cluster.conftest import new_database

    return new_database(request.getfixturevalue("postgres"))


def stored_blobs(voices: str, voice_id: str) -> tuple[str, bytes, list[bytes]]:
    """(key id, features, references) exactly as stored."""
    from gsv.voicestore import open_backend

    backend = open_backend(voices)
    try:
        r = backend.get("", voice_id, features=True, references=True)
        return r.key_id, r.features, r.references
    finally:
        backend.close()


@pytest.fixture()
def registry():
    """Opens registries over a store (without a preparer); closes them after the test."""
    opened = []

    def open_(voices, bundle_id, keyring=None):
        opened.append(VoiceRegistry(voices, None, bundle_id, scoped=False, keyring=keyring))
        return opened[-1]

    yield open_
    for r in opened:
        r.close()


def same_voice(a, b) -> bool:
    return all(torch.equal(getattr(a, n), getattr(b, n)) for n in ("prompt_bert", "prompt_tokens", "ge")) \
        and a.prompt_phones == b.prompt_phones


def test_encrypted_voices_are_unreadable_without_the_key_and_round_trip_with_it(tiny_full_bundle, voices, key_file,
                                                                               caplog, registry):
    with caplog.at_level(logging.INFO, logger="server.app"):
        srv = start_server(tiny_full_bundle.path, voices, voice_key_file=key_file)
    try:
        assert "encrypted at rest" in caplog.text and "UNENCRYPTED" not in caplog.text
        with TtsClient(srv.target) as c:
            c.register_voice("secret", reference(), REF_TEXT, "zh", consent="ok")
            assert c.stream(TEXT, "secret", seed=3, max_audio_seconds=0.5).chunks
        original = srv.state.registry.cached("secret", "")
    finally:
        srv.stop()
    key_id, features, refs = stored_blobs(voices, "secret")
    assert key_id == "k1" and features.startswith(MAGIC) and b"prompt_bert" not in features
    assert refs and all(r.startswith(MAGIC) and b"RIFF" not in r and b"WAVE" not in r for r in refs)
    bundle_id = tiny_full_bundle.bundle_id
    with pytest.raises(VoiceUnavailable, match="encrypted"):
        registry(voices, bundle_id).get("secret", "")  # no key: unreadable
    other = KeyRing.add_key(key_file.with_name("other.json"), "k1")  # same id, another key
    with pytest.raises(VoiceUnavailable, match="does not decrypt"):
        registry(voices, bundle_id, other).get("secret", "")
    loaded = registry(voices, bundle_id, KeyRing.load(key_file)).get("secret", "")
    assert same_voice(loaded, original)


def test_key_rotation_reencrypts_every_voice(tiny_full_bundle, voices, key_file, capsys, registry):
    srv = start_server(tiny_full_bundle.path, voices, voice_key_file=key_file)
    try:
        with TtsClient(srv.target) as c:
            for vid in ("one", "two"):
                c.register_voice(vid, reference(), REF_TEXT, "zh", consent="ok")
        originals = {v: srv.state.registry.cached(v, "") for v in ("one", "two")}
    finally:
        srv.stop()
    before = {v: stored_blobs(voices, v) for v in originals}
    assert gsv_main(["voice", "keygen", "--voice-key-file", str(key_file), "--id", "k2"]) == 0
    args = ["voice", "rotate-key", "--voices", voices, "--voice-key-file", str(key_file), "--old", "k1", "--new", "k2"]
    capsys.readouterr()
    assert gsv_main(args) == 0
    assert json.loads(capsys.readouterr().out) == {"rotated": 2, "old": "k1", "new": "k2"}
    ring = KeyRing.load(key_file)
    only_k2 = KeyRing({"k2": ring.keys["k2"]}, "k2")  # the retired key is gone
    reg = registry(voices, tiny_full_bundle.bundle_id, only_k2)
    for vid, original in originals.items():
        key_id, features, refs = stored_blobs(voices, vid)
        assert key_id == "k2" and features != before[vid][1] and refs != before[vid][2]
        assert same_voice(reg.get(vid, ""), original)
    assert gsv_main(args) == 0 and json.loads(capsys.readouterr().out)["rotated"] == 0
    trail = [e for e in reg.backend.audit_trail() if e["event"] == "rotate-key"]
    assert sorted(e["voice_id"] for e in trail) == ["one", "two"]


def test_unencrypted_start_warns_and_delete_removes_every_copy(tiny_full_bundle, voices, caplog, registry):
    from pathlib import Path

    with caplog.at_level(logging.WARNING, logger="server.app"):
        srv = start_server(tiny_full_bundle.path, voices)
    try:
        assert "UNENCRYPTED" in caplog.text
        with TtsClient(srv.target) as c:
            c.register_voice("gone", reference(), REF_TEXT, "zh", consent="the speaker agreed")
            assert c.stream(TEXT, "gone", max_audio_seconds=0.3).chunks
            c.delete_voice("gone")
        assert srv.state.registry.cached("gone", "") is None
    finally:
        srv.stop()
    if voices.startswith("postgresql://"):
        assert sql(voices, "SELECT count(*) FROM voices") == [(0,)]
    else:
        leftovers = [p for p in Path(voices).rglob("*") if p.is_file() and p.name != "_audit.jsonl"]
        assert leftovers == []
    trail = registry(voices, tiny_full_bundle.bundle_id).backend.audit_trail(voice_id="gone")
    assert [e["event"] for e in trail] == ["register", "delete"]
    assert trail[-1]["consent"] == "the speaker agreed" and trail[-1]["who"] == "anonymous"


def test_gsv_voice_commands_accept_a_database_url(tiny_full_bundle, db_url, tmp_path, capsys):
    ref = tmp_path / "ref.wav"
    ref.write_bytes(reference())
    add = ["voice", "add", "--bundle", str(tiny_full_bundle.path), "--voices", db_url, "--id", "v1",
           "--ref-audio", str(ref), "--ref-text", REF_TEXT, "--ref-lang", "zh", "--consent", "yes"]
    assert gsv_main(add) == 0
    assert gsv_main(add) == 2  # exists
    capsys.readouterr()
    assert gsv_main(["voice", "list", "--voices", db_url, "--json"]) == 0
    assert [m["voice_id"] for m in json.loads(capsys.readouterr().out)] == ["v1"]
    wav = tmp_path / "v.wav"
    assert gsv_main(["synth", "--bundle", str(tiny_full_bundle.path), "--voice", "v1", "--voices", db_url,
                     "--text", "好的。", "--lang", "zh", "-o", str(wav), "--max-tokens", "20"]) == 0
    assert wav.stat().st_size > 44
    assert gsv_main(["voice", "rm", "--voices", db_url, "--id", "v1"]) == 0
    assert gsv_main(["voice", "rm", "--voices", db_url, "--id", "v1"]) == 2
    capsys.readouterr()
    assert gsv_main(["voice", "audit", "--voices", db_url]) == 0
    events = [json.loads(line)["event"] for line in capsys.readouterr().out.splitlines()]
    assert events == ["register", "delete"]
    assert gsv_main(["voice", "list", "--voices", "mysql://x@y/z"]) == 2
