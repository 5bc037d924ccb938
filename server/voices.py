"""Voice registry of the server: VoiceStores on disk plus an in-memory cache, scoped per owner.

With bearer tokens on, every owner has its own namespace of voice ids (a folder
``VOICES/_owners/<hash of the owner>/``): two owners may both have a voice "narrator", and no
answer reveals whether another owner's voice exists — Get/Delete/Synthesize say NOT_FOUND and
RegisterVoice simply creates the caller's own voice.  Without tokens there is one namespace (the
voices folder itself).  Every registration records the speaker's consent statement.

A voice is registered (prepared) once, for one model, and used with any model of its family
(:attr:`gsv.voice.Voice.family`): what depends on the model it is used with is computed from the
voice's stored reference audio the first time, then cached in memory and beside the voice on disk
(:meth:`gsv.voice.VoiceStore.save_model_parts`) — the timbre (ge, and the speaker-verification
embeddings of Pro models) always, the prompt tokens only when the two models' prompt spaces differ
(fine-tunes of one base share them: :meth:`gsv.checkpoint.bundle.Bundle.prompt_space`).  A voice of
another family (another phone table) is refused (INVALID_ARGUMENT); one that needs its reference
audio and has none is FAILED_PRECONDITION.  Blends (:mod:`gsv.blend`) are voices too.

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
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from gsv.blend import blend_voices, normalise_weights, recipe, rederive
from gsv.errors import VoiceError
from gsv.voice import Voice, VoicePreparer, VoiceStore, validate_consent, validate_voice_id
from server.errors import VoiceExists, VoiceIncompatible, VoiceNotFound, VoiceUnavailable, shown

log = logging.getLogger(__name__)

OWNERS_DIR = "_owners"  # not a valid voice id, so it never collides with a voice folder
MAX_DERIVED = 4096  # voices kept in memory as re-derived for other models (least recently used dropped)


@dataclass(frozen=True)
class VoiceTarget:
    """What a voice needs from the model it is used with (a :class:`server.models.Model` is one too)."""

    bundle_id: str
    family: str
    prompt_space: str
    preparer: Callable[[], VoicePreparer]  # the model's voice preparer (built on first use)


class VoiceRegistry:
    def __init__(self, root, preparer: VoicePreparer | None, bundle_id: str, scoped: bool, default=None):
        """``default``: the target of calls that name none (the server's default model); else the
        ``preparer``'s own bundle."""
        from pathlib import Path

        self.root, self.bundle_id, self.scoped = Path(root), bundle_id, scoped
        self.default = default or VoiceTarget(bundle_id, preparer.bundle.symbol_version if preparer else "v2",
                                              preparer.bundle.prompt_space() if preparer else "", lambda: preparer)
        self._lock = threading.RLock()  # guards the dicts/sets below
        self._stores: dict[str, VoiceStore] = {}
        self._cache: dict[tuple[str, str], Voice] = {}  # voices as stored (prepared for their own model)
        self._derived: OrderedDict[tuple, Voice] = OrderedDict()  # (namespace, id, version, bundle) -> voice
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

    @property
    def preparer(self) -> VoicePreparer:
        """The default model's voice preparer (registrations that name no model)."""
        return self.default.preparer()

    # ------------------------------------------------------------------ reads
    def cached(self, voice_id: str, owner: str, target=None) -> Voice | None:
        """The voice for ``target`` (default: the default model) if it is in memory (never touches
        the disk or computes anything; safe on an event loop)."""
        target = target or self.default
        with self._lock:
            voice = self._cache.get((self._key(owner), voice_id))
            if voice is None or voice.bundle_id == target.bundle_id:
                return voice
            key = (self._key(owner), voice_id, voice.version, voice.created, target.bundle_id)
            derived = self._derived.get(key)
            if derived is not None:
                self._derived.move_to_end(key)
            return derived

    def get(self, voice_id: str, owner: str, target=None) -> Voice:
        """The voice, ready for ``target``'s model (default: the default model)."""
        validate_voice_id(voice_id)
        voice = self.cached(voice_id, owner, target)
        if voice is not None:
            return voice
        with self._lock:
            base = self._cache.get((self._key(owner), voice_id))
        store = self.store(owner)
        if base is None:
            if not store.exists(voice_id):
                raise VoiceNotFound(f"unknown voice {shown(voice_id)}")
            base = self._load(store, voice_id, owner)
        return self._for_target(store, base, owner, target or self.default)

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
        """The voice as stored (prepared for the model it was registered with), cached."""
        try:
            voice = store.load(voice_id)
        except VoiceError as e:
            raise VoiceUnavailable(str(e)) from None
        with self._lock:
            self._cache[(self._key(owner), voice_id)] = voice
        return voice

    def _for_target(self, store: VoiceStore, base: Voice, owner: str, target) -> Voice:
        """``base`` carried to ``target``'s model: its parts stored for it, else re-derived from the
        voice's reference audio (and stored), see the module doc."""
        if base.bundle_id == target.bundle_id:
            return base
        if base.family != target.family:
            raise VoiceIncompatible(f"voice {shown(base.voice_id)} belongs to {base.family} models (its phone set); "
                                    f"this model is of the {target.family} family: register the voice for it")
        voice = store.model_parts(base, target.bundle_id)
        if voice is None:
            refs = store.references(base.voice_id)
            if not refs:
                raise VoiceUnavailable(f"voice {shown(base.voice_id)} was prepared for another model and has no stored "
                                       "reference; register it again")
            log.info("voice %s (prepared for bundle %s): deriving it for bundle %s", base.voice_id, base.bundle_id,
                     target.bundle_id)
            keep = bool(base.prompt_space) and base.prompt_space == target.prompt_space
            voice = rederive(target.preparer(), base, store.metadata(base.voice_id), refs, keep_prompt=keep)
            try:
                store.save_model_parts(voice, base)
            except OSError as e:  # the voice was deleted or replaced meanwhile: the parts are not kept
                log.info("voice %s: parts for bundle %s not stored (%s)", base.voice_id, target.bundle_id, e)
        key = (self._key(owner), base.voice_id, base.version, base.created, target.bundle_id)
        with self._lock:
            self._derived[key] = voice
            while len(self._derived) > MAX_DERIVED:
                self._derived.popitem(last=False)
        return voice

    def _forget(self, owner: str, voice_id: str) -> None:
        """Drop a voice and everything derived from it from memory (call with ``_lock`` held)."""
        ns = self._key(owner)
        self._cache.pop((ns, voice_id), None)
        for key in [k for k in self._derived if k[0] == ns and k[1] == voice_id]:
            del self._derived[key]

    # ------------------------------------------------------------------ writes
    def register(self, voice_id: str, audio: bytes, text: str, language: str, aux: list[bytes], owner: str,
                 consent: str, display_name: str = "", overwrite: bool = False, target=None,
                 reference_free: bool = False) -> dict:
        """Prepare (for ``target``'s model; default: the default model) and store a voice; returns its
        stored metadata.  ``reference_free``: keep no prompt (the reference sets only the timbre)."""
        validate_consent(consent)

        def make(store: VoiceStore):
            voice = (target or self.default).preparer().prepare(voice_id, audio, text, language, aux, owner=owner,
                                                                 consent=consent)
            if reference_free:
                voice = dataclasses.replace(voice, prompt_phones=[], prompt_bert=voice.prompt_bert[:, :0],
                                            prompt_tokens=voice.prompt_tokens[:0], ref_text="", norm_text="")
            return voice, [audio, *aux], {}

        return self._write(voice_id, owner, overwrite, display_name, make)

    def blend(self, voice_id: str, sources: list[tuple[str, float]], owner: str, consent: str = "",
              display_name: str = "", overwrite: bool = False, target=None, reference_free: bool = False) -> dict:
        """Store a blend of the caller's voices ``sources`` ((voice id, weight), 2-4 of them; see
        :mod:`gsv.blend`) prepared for ``target``'s model (default: the default model).  Sources are
        looked up in the caller's namespace only: another owner's voice is NOT_FOUND."""
        for source_id, _ in sources:
            validate_voice_id(source_id)
        normalise_weights([w for _, w in sources])  # bad counts or weights are refused before any lookup
        if len({vid for vid, _ in sources}) != len(sources):
            raise VoiceError("a blend names each source voice once")
        target = target or self.default

        def make(store: VoiceStore):
            voices, refs = [], []
            for source_id, weight in sources:
                voice = self.get(source_id, owner, target)
                files = store.references(source_id)
                voices.append((voice, weight, len(files)))
                refs += files
            statement = consent.strip() or "blend of " + "; ".join(
                f"{v.voice_id} (consent: {shown(v.consent, 200)})" for v, _, _ in voices)
            voice = blend_voices(voice_id, [(v, w) for v, w, _ in voices], reference_free=reference_free, owner=owner,
                                 consent=statement)
            return voice, refs, {"blend": recipe(voices, reference_free)}

        return self._write(voice_id, owner, overwrite, display_name, make)

    def _write(self, voice_id: str, owner: str, overwrite: bool, display_name: str, make) -> dict:
        """Create or replace a voice made by ``make(store) -> (voice, reference files, extra metadata)``."""
        validate_voice_id(voice_id)
        store, key = self.store(owner), (self._key(owner), voice_id)
        with self._lock:
            if key in self._registering:
                raise VoiceExists(f"voice {shown(voice_id)} is being registered")
            if store.exists(voice_id) and not overwrite:
                raise VoiceExists(f"voice {shown(voice_id)} already exists")
            self._registering.add(key)
        try:
            voice, refs, extra = make(store)
            version = int(store.metadata(voice_id).get("version", 1)) + 1 if store.exists(voice_id) else 1
            voice = dataclasses.replace(voice, version=version, created=time.time())
            store.save(voice, refs, overwrite=overwrite, extra={"display_name": display_name, **extra})
            with self._lock:
                self._forget(owner, voice_id)
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
            self._forget(owner, voice_id)
