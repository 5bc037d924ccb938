"""Voice registry of the server: a voice store backend plus this replica's cache of prepared voices.

The backend (:mod:`gsv.voicestore`) is the folder store (``--voices DIR``, the default) or
PostgreSQL shared by every replica (``--voices postgresql://...``); voices go through a
:class:`gsv.voicestore.vault.VoiceVault`, which encrypts them at rest when a key file is given.

With bearer tokens on, every owner has its own namespace of voice ids: two owners may both have a
voice "narrator", and no answer reveals whether another owner's voice exists — Get/Delete/Synthesize
say NOT_FOUND and RegisterVoice simply creates the caller's own voice.  Without tokens there is one
namespace.  Every registration records the speaker's consent statement and who submitted it; the
store's audit trail records register/overwrite/delete, reads (GetVoice) and loads into a replica.
A stored voice prepared for another bundle is re-prepared from its stored reference audio (or
refused), never used as is.

The cache is this registry's own (one lock).  A shared backend reports changes committed by other
replicas (LISTEN/NOTIFY), which drop the cached voice at once; a load that raced with such a change
is not cached.  While the database is unreachable, cached voices keep synthesizing and everything
else raises :class:`gsv.errors.StoreUnreachable` (UNAVAILABLE).

Every method except :meth:`VoiceRegistry.cached` may block on files, the database or the voice
preparer, so callers on an event loop run them in an executor.
"""
from __future__ import annotations

import logging
import threading

from gsv.errors import VoiceError
from gsv.voice import Voice, VoicePreparer, validate_consent, validate_voice_id
from gsv.voicestore import open_backend
from gsv.voicestore.base import AuditEvent, VoiceBackend
from gsv.voicestore.vault import VoiceVault
from server.errors import StoreUnreachable, VoiceExists, VoiceNotFound, VoiceUnavailable, shown

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"  # who acted, when bearer tokens are off


class VoiceRegistry:
    def __init__(self, voices, preparer: VoicePreparer | None, bundle_id: str, scoped: bool, *, keyring=None,
                 actor: str = "gsv-serve"):
        self.backend: VoiceBackend = (voices if isinstance(voices, VoiceBackend)
                                      else open_backend(voices, scoped=scoped, actor=actor))
        self.vault = VoiceVault(self.backend, keyring)
        self.preparer, self.bundle_id, self.scoped = preparer, bundle_id, scoped
        self._lock = threading.RLock()  # guards the cache, the registering set and the counters below
        self._cache: dict[tuple[str, str], Voice] = {}
        self._registering: set[tuple[str, str]] = set()
        self._epoch = 0  # bumped by every change; a load that saw the epoch move is not cached
        self.invalidations = 0
        self.backend.watch(self._changed)

    # ------------------------------------------------------------------ namespaces
    def _key(self, owner: str) -> str:
        return owner if self.scoped else ""

    @staticmethod
    def _who(owner: str) -> str:
        return owner or ANONYMOUS

    # ------------------------------------------------------------------ cache
    def cached(self, voice_id: str, owner: str) -> Voice | None:
        """The voice if it is in memory (never touches the store; safe on an event loop)."""
        with self._lock:
            return self._cache.get((self._key(owner), voice_id))

    @property
    def cache_size(self) -> int:
        with self._lock:
            return len(self._cache)

    def _changed(self, namespace: str | None, voice_id: str | None) -> None:
        """Another replica changed a voice (or, with None, anything may have changed)."""
        with self._lock:
            self._epoch += 1
            if namespace is not None:
                if self._cache.pop((namespace, voice_id), None) is not None:
                    self.invalidations += 1
                return
            cached = {k: v.version for k, v in self._cache.items()}
        try:
            stored = self.backend.versions(list(cached))
        except StoreUnreachable:
            return  # checked again at the next reconnect
        with self._lock:
            for key, version in cached.items():
                if stored.get(key) != version and self._cache.pop(key, None) is not None:
                    self.invalidations += 1

    # ------------------------------------------------------------------ reads
    def get(self, voice_id: str, owner: str) -> Voice:
        validate_voice_id(voice_id)
        voice = self.cached(voice_id, owner)
        return voice if voice is not None else self._load(voice_id, owner)

    def describe(self, voice_id: str, owner: str) -> dict:
        """The stored description of a voice (the folder store's voice.json)."""
        validate_voice_id(voice_id)
        ns = self._key(owner)
        record = self._record(ns, voice_id, features=False)
        self.backend.audit(AuditEvent("read", ns, voice_id, self._who(owner)))
        return record.describe()

    def list(self, owner: str, language: str = "") -> list[dict]:
        return [r.describe() for r in self.backend.list(self._key(owner))
                if not language or r.meta.get("language") == language]

    def _record(self, ns: str, voice_id: str, **blobs):
        try:
            return self.backend.get(ns, voice_id, **blobs)
        except VoiceNotFound:
            raise VoiceNotFound(f"unknown voice {shown(voice_id)}") from None

    def _load(self, voice_id: str, owner: str) -> Voice:
        ns = self._key(owner)
        with self._lock:
            epoch = self._epoch
        record = self._record(ns, voice_id, features=True)
        if record.model_id != self.bundle_id:
            voice = self._reprepare(ns, voice_id)
        else:
            try:
                voice = self.vault.open(record)
            except VoiceUnavailable:
                raise
            except VoiceError as e:
                raise VoiceUnavailable(str(e)) from None
        self.backend.audit(AuditEvent("load", ns, voice_id, self._who(owner), detail={"version": voice.version}))
        with self._lock:
            if self._epoch == epoch:  # nothing changed while it was read: safe to keep
                self._cache[(ns, voice_id)] = voice
        return voice

    def _reprepare(self, ns: str, voice_id: str) -> Voice:
        record = self._record(ns, voice_id, features=False, references=True)
        refs = self.vault.references(record)
        if not refs or self.preparer is None:
            raise VoiceUnavailable(f"voice {shown(voice_id)} was prepared for another model and has no stored "
                                   "reference; register it again")
        log.info("voice %s was prepared for bundle %s; re-preparing for %s", voice_id, record.model_id, self.bundle_id)
        meta = record.describe()
        voice = self.preparer.prepare(voice_id, refs[0], meta["ref_text"], meta["language"], refs[1:],
                                      owner=meta.get("owner", ""), consent=record.consent)
        voice.version, voice.created = record.version, record.created
        self.backend.replace_blobs(self.vault.reprepared(record, voice, refs))  # (lost a race: fine, still valid)
        return voice

    # ------------------------------------------------------------------ writes
    def register(self, voice_id: str, audio: bytes, text: str, language: str, aux: list[bytes], owner: str,
                 consent: str, display_name: str = "", overwrite: bool = False) -> dict:
        """Prepare and store a voice; returns its stored description."""
        validate_voice_id(voice_id)
        validate_consent(consent)
        ns = self._key(owner)
        key = (ns, voice_id)
        with self._lock:
            if key in self._registering:
                raise VoiceExists(f"voice {shown(voice_id)} is being registered")
            self._registering.add(key)
        try:
            if not overwrite and self.backend.exists(ns, voice_id):
                raise VoiceExists(f"voice {shown(voice_id)} already exists")
            voice = self.preparer.prepare(voice_id, audio, text, language, aux, owner=owner, consent=consent)
            record = self.vault.seal(ns, voice, [audio, *aux], display_name=display_name, consent_by=self._who(owner))
            audit = AuditEvent("register", ns, voice_id, self._who(owner), consent,
                               {"model_id": self.bundle_id, "encrypted": bool(record.key_id)})
            try:
                stored = self.backend.put(record, overwrite=overwrite, audit=audit)
            except VoiceExists:
                raise VoiceExists(f"voice {shown(voice_id)} already exists") from None
            voice.version, voice.created = stored.version, stored.created
            with self._lock:
                self._epoch += 1
                self._cache[key] = voice
            return stored.describe()
        finally:
            with self._lock:
                self._registering.discard(key)

    def delete(self, voice_id: str, owner: str) -> None:
        """Delete the voice everywhere: its stored copy (row or folder), this cache, and (through the
        store's notifications) every other replica's cache."""
        validate_voice_id(voice_id)
        ns = self._key(owner)
        try:
            self.backend.delete(ns, voice_id, audit=AuditEvent("delete", ns, voice_id, self._who(owner)))
        except VoiceNotFound:
            self._drop(ns, voice_id)  # deleted by another replica (its notice may still be on its way)
            raise VoiceNotFound(f"unknown voice {shown(voice_id)}") from None
        self._drop(ns, voice_id)

    def _drop(self, ns: str, voice_id: str) -> None:
        with self._lock:
            self._epoch += 1
            self._cache.pop((ns, voice_id), None)

    def close(self) -> None:
        self.backend.close()
