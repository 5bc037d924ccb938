"""Voice registry of the server: VoiceStores on disk plus an in-memory cache, scoped per owner.

With bearer tokens on, every owner has its own namespace of voice ids (a folder
``VOICES/_owners/<hash of the owner>/``): two owners may both have a voice "narrator", and no
answer reveals whether another owner's voice exists — Get/Delete/Synthesize say NOT_FOUND and
RegisterVoice simply creates the caller's own voice.  Without tokens there is one namespace (the
voices folder itself).  Every registration records the speaker's consent statement.  A stored
voice prepared for another bundle is re-prepared from its stored reference audio (or refused),
never used as is.

Every method except :meth:`VoiceRegistry.cached` may read or write files (or run the voice
preparer), so callers on an event loop run them in an executor.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
import time

from gsv.errors import VoiceError
from gsv.voice import Voice, VoicePreparer, VoiceStore, validate_consent, validate_voice_id
from server.errors import VoiceExists, VoiceNotFound, VoiceUnavailable, shown

log = logging.getLogger(__name__)

OWNERS_DIR = "_owners"  # not a valid voice id, so it never collides with a voice folder


class VoiceRegistry:
    def __init__(self, root, preparer: VoicePreparer, bundle_id: str, scoped: bool):
        from pathlib import Path

        self.root, self.preparer, self.bundle_id, self.scoped = Path(root), preparer, bundle_id, scoped
        self._lock = threading.RLock()  # guards the three dicts/sets below
        self._stores: dict[str, VoiceStore] = {}
        self._cache: dict[tuple[str, str], Voice] = {}
        self._registering: set[tuple[str, str]] = set()
        self._unscoped = VoiceStore(self.root)  # recovers interrupted writes at start
        if scoped:
            self._move_owned_voices()

    # ------------------------------------------------------------------ namespaces
    def _key(self, owner: str) -> str:
        return owner if self.scoped else ""

    def store(self, owner: str) -> VoiceStore:
        key = self._key(owner)
        if not self.scoped:
            return self._unscoped
        with self._lock:
            store = self._stores.get(key)
            if store is None:
                digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]
                store = self._stores[key] = VoiceStore(self.root / OWNERS_DIR / digest)
            return store

    def _move_owned_voices(self) -> None:
        """Voices written before namespaces (one folder for everyone) move to their owner's folder."""
        for vid in self._unscoped.ids():
            try:
                owner = self._unscoped.metadata(vid).get("owner", "")
            except VoiceError:
                continue
            dest = self.store(owner).path(vid)
            if not dest.exists():
                os.replace(self._unscoped.path(vid), dest)
                log.info("voice %s moved to the namespace of its owner", vid)

    # ------------------------------------------------------------------ reads
    def cached(self, voice_id: str, owner: str) -> Voice | None:
        """The voice if it is in memory (never touches the disk; safe on an event loop)."""
        with self._lock:
            return self._cache.get((self._key(owner), voice_id))

    def get(self, voice_id: str, owner: str) -> Voice:
        validate_voice_id(voice_id)
        voice = self.cached(voice_id, owner)
        if voice is not None:
            return voice
        store = self.store(owner)
        if not store.exists(voice_id):
            raise VoiceNotFound(f"unknown voice {shown(voice_id)}")
        return self._load(store, voice_id, owner)

    def describe(self, voice_id: str, owner: str) -> dict:
        """The stored metadata of a voice (voice.json)."""
        validate_voice_id(voice_id)
        store = self.store(owner)
        if not store.exists(voice_id):
            raise VoiceNotFound(f"unknown voice {shown(voice_id)}")
        return store.metadata(voice_id)

    def list(self, owner: str, language: str = "") -> list[dict]:
        store, out = self.store(owner), []
        for vid in store.ids():
            try:
                meta = store.metadata(vid)
            except VoiceError:
                continue
            if not language or meta.get("language") == language:
                out.append(meta)
        return out

    def _load(self, store: VoiceStore, voice_id: str, owner: str) -> Voice:
        meta = store.metadata(voice_id)
        if meta.get("bundle_id") != self.bundle_id:
            refs = store.references(voice_id)
            if not refs:
                raise VoiceUnavailable(f"voice {shown(voice_id)} was prepared for another model and has no stored "
                                       "reference; register it again")
            log.info("voice %s was prepared for bundle %s; re-preparing for %s", voice_id, meta.get("bundle_id"),
                     self.bundle_id)
            voice = self.preparer.prepare(voice_id, refs[0], meta["ref_text"], meta["language"], refs[1:],
                                          owner=meta.get("owner", ""), consent=meta.get("consent", ""))
            voice = dataclasses.replace(voice, version=int(meta.get("version", 1)),
                                        created=float(meta.get("created", time.time())))
            store.save(voice, refs, overwrite=True, extra={"display_name": meta.get("display_name", "")})
        else:
            try:
                voice = store.load(voice_id, self.bundle_id)
            except VoiceError as e:
                raise VoiceUnavailable(str(e)) from None
        with self._lock:
            self._cache[(self._key(owner), voice_id)] = voice
        return voice

    # ------------------------------------------------------------------ writes
    def register(self, voice_id: str, audio: bytes, text: str, language: str, aux: list[bytes], owner: str,
                 consent: str, display_name: str = "", overwrite: bool = False) -> dict:
        """Prepare and store a voice; returns its stored metadata."""
        validate_voice_id(voice_id)
        validate_consent(consent)
        store, key = self.store(owner), (self._key(owner), voice_id)
        with self._lock:
            if key in self._registering:
                raise VoiceExists(f"voice {shown(voice_id)} is being registered")
            if store.exists(voice_id) and not overwrite:
                raise VoiceExists(f"voice {shown(voice_id)} already exists")
            self._registering.add(key)
        try:
            voice = self.preparer.prepare(voice_id, audio, text, language, aux, owner=owner, consent=consent)
            version = int(store.metadata(voice_id).get("version", 1)) + 1 if store.exists(voice_id) else 1
            voice = dataclasses.replace(voice, version=version, created=time.time())
            store.save(voice, [audio, *aux], overwrite=overwrite, extra={"display_name": display_name})
            with self._lock:
                self._cache[key] = voice
            return store.metadata(voice_id)
        finally:
            with self._lock:
                self._registering.discard(key)

    def delete(self, voice_id: str, owner: str) -> None:
        validate_voice_id(voice_id)
        store = self.store(owner)
        with self._lock:
            if not store.exists(voice_id):
                raise VoiceNotFound(f"unknown voice {shown(voice_id)}")
            store.delete(voice_id)
            self._cache.pop((self._key(owner), voice_id), None)
