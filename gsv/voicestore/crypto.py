"""Encryption of voice data at rest: AES-256-GCM with named keys from a key file.

The key file is JSON, readable by the server's user only::

    {"active": "k2", "keys": {"k1": "<base64 of 32 random bytes>", "k2": "<...>"}}

New and re-registered voices are encrypted with the ``active`` key; every voice records the id
of the key that encrypted it, so older keys keep decrypting until ``gsv voice rotate-key --old K1
--new K2`` re-encrypts their voices.  ``gsv voice keygen --voice-key-file F --id K`` adds a new
random key and makes it active.

A blob is ``MAGIC + nonce (12 bytes) + ciphertext + tag``; the associated data binds it to its
voice and part (namespace, voice id, "features" or "reference-<i>"), so a blob copied onto
another voice does not decrypt.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import re
import stat
from pathlib import Path

from gsv.errors import GsvError, VoiceUnavailable

log = logging.getLogger(__name__)

MAGIC = b"GSVAESGCM1"
NONCE_BYTES = 12
KEY_BYTES = 32  # AES-256
KEY_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
PLAIN = "none"  # the --old/--new name of "not encrypted" in rotate-key


def associated_data(owner: str, voice_id: str, part: str) -> bytes:
    return b"\0".join((b"gsv-voice", owner.encode("utf-8"), voice_id.encode("utf-8"), part.encode("utf-8")))


class KeyRing:
    """Named AES-256 keys, one of them active for new writes."""

    def __init__(self, keys: dict[str, bytes], active: str, path: Path | None = None):
        for kid, key in keys.items():
            if not KEY_ID_RE.fullmatch(kid) or kid == PLAIN:
                raise GsvError(f"invalid key id {kid!r} (1-64 letters, digits, '_', '.', '-'; not {PLAIN!r})")
            if len(key) != KEY_BYTES:
                raise GsvError(f"key {kid!r} is {len(key)} bytes; AES-256 keys are {KEY_BYTES} bytes")
        if active not in keys:
            raise GsvError(f"the active key {active!r} is not among the keys ({', '.join(sorted(keys)) or 'none'})")
        self.keys, self.active, self.path = dict(keys), active, path

    # ------------------------------------------------------------------ the key file
    @classmethod
    def load(cls, path: str | Path) -> "KeyRing":
        path = Path(path)
        try:
            data = json.loads(path.read_text("utf-8"))
            mode = path.stat().st_mode
        except OSError as e:
            raise GsvError(f"--voice-key-file {path}: {e.strerror}") from None
        except ValueError as e:
            raise GsvError(f"--voice-key-file {path} is not JSON ({e})") from None
        if not isinstance(data, dict) or not isinstance(data.get("keys"), dict) or not isinstance(data.get("active"), str):
            raise GsvError(f'--voice-key-file {path} must be {{"active": ID, "keys": {{ID: base64 key, ...}}}}')
        keys = {}
        for kid, b64 in data["keys"].items():
            try:
                keys[kid] = base64.b64decode(b64, validate=True)
            except (ValueError, TypeError):
                raise GsvError(f"--voice-key-file {path}: key {kid!r} is not base64") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("voice key file %s is readable by other users: chmod 600 it", path)
        return cls(keys, data["active"], path)

    @classmethod
    def add_key(cls, path: str | Path, key_id: str) -> "KeyRing":
        """Add a new random key to the key file (created, mode 600, if missing) and make it active."""
        path = Path(path)
        ring = cls.load(path) if path.exists() else None
        keys = dict(ring.keys) if ring else {}
        if key_id in keys:
            raise GsvError(f"key {key_id!r} is already in {path}")
        keys[key_id] = os.urandom(KEY_BYTES)
        ring = cls(keys, key_id, path)
        body = json.dumps({"active": key_id, "keys": {k: base64.b64encode(v).decode() for k, v in keys.items()}},
                          indent=2) + "\n"
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return ring

    # ------------------------------------------------------------------ blobs
    def key(self, key_id: str, voice_id: str = "") -> bytes:
        try:
            return self.keys[key_id]
        except KeyError:
            raise VoiceUnavailable(f"voice {voice_id!r} is encrypted with key {key_id!r}, which is not in the key file"
                                   f"{' ' + str(self.path) if self.path else ''}") from None

    def encrypt(self, data: bytes, key_id: str, aad: bytes) -> bytes:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        nonce = os.urandom(NONCE_BYTES)
        return MAGIC + nonce + AESGCM(self.key(key_id)).encrypt(nonce, data, aad)

    def decrypt(self, blob: bytes, key_id: str, aad: bytes, voice_id: str = "") -> bytes:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + NONCE_BYTES + 16:
            raise VoiceUnavailable(f"voice {voice_id!r}: stored data is not an encrypted blob (corrupt)")
        nonce = blob[len(MAGIC):len(MAGIC) + NONCE_BYTES]
        try:
            return AESGCM(self.key(key_id, voice_id)).decrypt(nonce, blob[len(MAGIC) + NONCE_BYTES:], aad)
        except InvalidTag:
            raise VoiceUnavailable(f"voice {voice_id!r}: stored data does not decrypt with key {key_id!r} "
                                   "(corrupt or tampered with)") from None
