"""Voices <-> stored records: serialisation of the prepared features and encryption at rest.

The one place that knows both a :class:`gsv.voice.Voice` and a :class:`VoiceRecord`: every
backend stores what :meth:`VoiceVault.seal` makes, and every reader goes through
:meth:`VoiceVault.open`, so a voice is encrypted or decrypted the same way whatever the backend.
"""
from __future__ import annotations

import logging

from gsv.errors import GsvError, VoiceNotFound, VoiceUnavailable
from gsv.voice import Voice, features_bytes, voice_from_parts
from gsv.voicestore.base import AuditEvent, VoiceBackend, VoiceRecord
from gsv.voicestore.crypto import PLAIN, KeyRing, associated_data

log = logging.getLogger(__name__)

# voice.metadata() keys the record keeps as its own fields
_RECORD_FIELDS = ("voice_id", "bundle_id", "version", "created", "consent")


class VoiceVault:
    def __init__(self, backend: VoiceBackend, keyring: KeyRing | None = None):
        self.backend, self.keyring = backend, keyring

    @property
    def encrypted(self) -> bool:
        """True when new voices are encrypted at rest."""
        return self.keyring is not None

    # ------------------------------------------------------------------ blobs
    def _seal_blob(self, data: bytes, key_id: str, owner: str, voice_id: str, part: str) -> bytes:
        if not key_id:
            return data
        return self.keyring.encrypt(data, key_id, associated_data(owner, voice_id, part))

    def _open_blob(self, blob: bytes, record: VoiceRecord, part: str) -> bytes:
        if not record.key_id:
            return blob
        if self.keyring is None:
            raise VoiceUnavailable(f"voice {record.voice_id!r} is encrypted (key {record.key_id!r}); this process "
                                   "was started without --voice-key-file")
        return self.keyring.decrypt(blob, record.key_id, associated_data(record.owner, record.voice_id, part),
                                    record.voice_id)

    # ------------------------------------------------------------------ voices
    def seal(self, owner: str, voice: Voice, references: list[bytes], *, display_name: str = "",
             consent_by: str = "") -> VoiceRecord:
        """A record of a freshly prepared voice, encrypted with the active key (if any)."""
        key_id = self.keyring.active if self.keyring else ""
        meta = {k: v for k, v in voice.metadata().items() if k not in _RECORD_FIELDS} | {"display_name": display_name}
        record = VoiceRecord(owner=owner, voice_id=voice.voice_id, model_id=voice.bundle_id, meta=meta,
                             key_id=key_id, consent=voice.consent, consent_by=consent_by, version=voice.version,
                             created=voice.created)
        self._fill(record, features_bytes(voice), references)
        return record

    def _fill(self, record: VoiceRecord, features: bytes, references: list[bytes]) -> None:
        o, v, k = record.owner, record.voice_id, record.key_id
        record.features = self._seal_blob(features, k, o, v, "features")
        record.references = [self._seal_blob(r, k, o, v, f"reference-{i}") for i, r in enumerate(references)]

    def open(self, record: VoiceRecord) -> Voice:
        """The voice of a record read with its features."""
        voice = voice_from_parts(record.describe(), self._open_blob(record.features, record, "features"))
        voice.version, voice.created = record.version, record.created
        return voice

    def references(self, record: VoiceRecord) -> list[bytes]:
        """The reference audio of a record read with its references (main first)."""
        return [self._open_blob(r, record, f"reference-{i}") for i, r in enumerate(record.references or [])]

    def reprepared(self, record: VoiceRecord, voice: Voice, references: list[bytes]) -> VoiceRecord:
        """``record`` with the features of ``voice`` (re-prepared for another model), same version."""
        new = VoiceRecord(owner=record.owner, voice_id=record.voice_id, model_id=voice.bundle_id,
                          meta=dict(record.meta) | {k: v for k, v in voice.metadata().items()
                                                    if k not in _RECORD_FIELDS and k != "owner"},
                          key_id=record.key_id, consent=record.consent, consent_by=record.consent_by,
                          version=record.version, created=record.created)
        self._fill(new, features_bytes(voice), references)
        return new

    # ------------------------------------------------------------------ keys
    def rotate_key(self, old: str, new: str, who: str) -> int:
        """Re-encrypt every voice encrypted with key ``old`` under key ``new`` ("none" = not
        encrypted, on either side); returns how many voices were rewritten."""
        old_id, new_id = ("" if old == PLAIN else old), ("" if new == PLAIN else new)
        if old_id == new_id:
            raise GsvError("--old and --new name the same key")
        for kid in (old_id, new_id):
            if kid and (self.keyring is None or kid not in self.keyring.keys):
                raise GsvError(f"key {kid!r} is not in the key file")
        done = 0
        for owner, voice_id in self.backend.keyed(old_id):
            for _ in range(5):  # a voice re-registered meanwhile is read again
                try:
                    record = self.backend.get(owner, voice_id, features=True, references=True)
                except VoiceNotFound:  # deleted meanwhile
                    break
                if record.key_id != old_id:
                    break
                features = self._open_blob(record.features, record, "features")
                refs = self.references(record)
                record.key_id = new_id
                self._fill(record, features, refs)
                audit = AuditEvent("rotate-key", owner, voice_id, who, detail={"old": old, "new": new})
                if self.backend.replace_blobs(record, audit=audit):
                    done += 1
                    break
        log.info("re-encrypted %d voices from key %s to key %s", done, old, new)
        return done
