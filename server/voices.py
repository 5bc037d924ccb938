"""Voice registry of the server: a VoiceStore on disk plus an in-memory cache, scoped per owner.

With bearer tokens on, a voice belongs to the token's owner that registered it; other owners see
NOT_FOUND.  Every registration records the speaker's consent statement.  A stored voice prepared
for another bundle is re-prepared from its stored reference audio (or refused), never used as is.
"""
from __future__ import annotations

import logging
import threading
import time

from gsv.errors import VoiceError
from gsv.voice import Voice, VoicePreparer, VoiceStore, validate_voice_id

log = logging.getLogger(__name__)


class VoiceNotFound(VoiceError):
    pass


class VoiceExists(VoiceError):
    pass


class VoiceRegistry:
    def __init__(self, store: VoiceStore, preparer: VoicePreparer, bundle_id: str, scoped: bool):
        self.store, self.preparer, self.bundle_id, self.scoped = store, preparer, bundle_id, scoped
        self._cache: dict[str, Voice] = {}
        self._lock = threading.RLock()
        self._registering: set[str] = set()

    def _visible(self, meta_owner: str, owner: str) -> bool:
        return not self.scoped or meta_owner == owner

    def register(self, voice_id: str, audio: bytes, text: str, language: str, aux: list[bytes], owner: str,
                 consent: str, display_name: str = "", overwrite: bool = False) -> Voice:
        validate_voice_id(voice_id)
        if not consent.strip():
            raise VoiceError("consent_statement is required: record the speaker's consent to clone this voice")
        with self._lock:
            if voice_id in self._registering:
                raise VoiceExists(f"voice {voice_id!r} is being registered")
            if self.store.exists(voice_id):
                meta = self.store.metadata(voice_id)
                if not self._visible(meta.get("owner", ""), owner):
                    raise VoiceExists(f"voice id {voice_id!r} is taken")
                if not overwrite:
                    raise VoiceExists(f"voice {voice_id!r} already exists")
            self._registering.add(voice_id)
        try:
            voice = self.preparer.prepare(voice_id, audio, text, language, aux, owner=owner, consent=consent)
            if overwrite and self.store.exists(voice_id):
                voice.version = int(self.store.metadata(voice_id).get("version", 1)) + 1
            voice.created = time.time()
            self.store.save(voice, [audio, *aux], overwrite=overwrite)
            with self._lock:
                self._cache[voice_id] = voice
            return voice
        finally:
            with self._lock:
                self._registering.discard(voice_id)

    def get(self, voice_id: str, owner: str) -> Voice:
        try:
            validate_voice_id(voice_id)
        except VoiceError:
            raise VoiceNotFound(f"unknown voice {voice_id!r}") from None
        with self._lock:
            voice = self._cache.get(voice_id)
        if voice is None:
            if not self.store.exists(voice_id):
                raise VoiceNotFound(f"unknown voice {voice_id!r}")
            voice = self._load(voice_id)
        if not self._visible(voice.owner, owner):
            raise VoiceNotFound(f"unknown voice {voice_id!r}")
        return voice

    def _load(self, voice_id: str) -> Voice:
        meta = self.store.metadata(voice_id)
        if meta.get("bundle_id") != self.bundle_id:
            refs = self.store.references(voice_id)
            if not refs:
                raise VoiceError(f"voice {voice_id!r} was prepared for another model and has no stored reference; "
                                 "register it again")
            log.info("voice %s was prepared for bundle %s; re-preparing for %s", voice_id, meta.get("bundle_id"),
                     self.bundle_id)
            voice = self.preparer.prepare(voice_id, refs[0], meta["ref_text"], meta["language"], refs[1:],
                                          owner=meta.get("owner", ""), consent=meta.get("consent", ""))
            voice.version = int(meta.get("version", 1))
            voice.created = float(meta.get("created", time.time()))
            self.store.save(voice, refs, overwrite=True)
        else:
            voice = self.store.load(voice_id, self.bundle_id)
        with self._lock:
            self._cache[voice_id] = voice
        return voice

    def list(self, owner: str, language: str = "") -> list[dict]:
        out = []
        for vid in self.store.ids():
            try:
                meta = self.store.metadata(vid)
            except VoiceError:
                continue
            if self._visible(meta.get("owner", ""), owner) and (not language or meta.get("language") == language):
                out.append(meta)
        return out

    def delete(self, voice_id: str, owner: str) -> None:
        voice = self.get(voice_id, owner)  # NOT_FOUND for other owners
        with self._lock:
            self.store.delete(voice.voice_id)
            self._cache.pop(voice.voice_id, None)
