"""Voice registry of the server: a voice store backend plus this replica's cache of prepared voices.

The backend (:mod:`gsv.voicestore`) is the folder store (``--voices DIR``, the default) or
PostgreSQL shared by every replica (``--voices postgresql://...``); voices go through a
:class:`gsv.voicestore.vault.VoiceVault`, which encrypts them at rest when a key file is given.

With bearer tokens on, every owner has its own namespace of voice ids: two owners may both have a
voice "narrator", and no answer reveals whether another owner's voice exists — Get/Delete/Synthesize
say NOT_FOUND and RegisterVoice simply creates the caller's own voice.  Without tokens there is one
namespace.  Every registration records the speaker's consent statement and who submitted it; the
store's audit trail records register/overwrite/delete, reads (GetVoice) and loads into a replica.

A voice is registered (prepared) once, for one model, and used with any model of its family
(:attr:`gsv.voice.Voice.family`): what depends on the model it is used with is computed from the
voice's stored reference audio the first time (:func:`gsv.blend.rederive`) — the timbre (ge, and
the speaker-verification embeddings of Pro models) always, the prompt tokens only when the two
models' prompt spaces differ (fine-tunes of one base share them:
:meth:`gsv.checkpoint.bundle.Bundle.prompt_space`).  For the server's default model the result
replaces the stored features (the voice moves to it, as a one-model server always did); for the
other models it is cached in memory.  A voice of another family is refused (INVALID_ARGUMENT); one
that needs its reference audio and has none is FAILED_PRECONDITION.  Blends (:mod:`gsv.blend`) are
voices too: they keep their sources' reference audio, grouped per source.

The cache is this registry's own (one lock).  A shared backend reports changes committed by other
replicas (LISTEN/NOTIFY), which drop the cached voice at once; a load that raced with such a change
is not cached.  While the database is unreachable, cached voices keep synthesizing and everything
else raises :class:`gsv.errors.StoreUnreachable` (UNAVAILABLE).

Every method except :meth:`VoiceRegistry.cached` may block on files, the database or the voice
preparer, so callers on an event loop run them in an executor.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from gsv.blend import blend_voices, normalise_weights, recipe, rederive
from gsv.errors import VoiceError
from gsv.voice import Voice, VoicePreparer, validate_consent, validate_voice_id
from gsv.voicestore import open_backend
from gsv.voicestore.base import AuditEvent, VoiceBackend
from gsv.voicestore.vault import VoiceVault
from server.errors import (StoreUnreachable, VoiceExists, VoiceIncompatible, VoiceNotFound, VoiceUnavailable,
                           shown)

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"  # who acted, when bearer tokens are off
MAX_DERIVED = 4096  # voices kept in memory as carried to other models (least recently used dropped)


@dataclass(frozen=True)
class VoiceTarget:
    """What a voice needs from the model it is used with (a :class:`server.models.Model` is one too)."""

    bundle_id: str
    family: str
    prompt_space: str
    preparer: Callable[[], VoicePreparer | None]  # the model's voice preparer (built on first use)


class VoiceRegistry:
    def __init__(self, voices, preparer: VoicePreparer | None, bundle_id: str, scoped: bool, *, keyring=None,
                 actor: str = "gsv-serve", default=None):
        """``default``: the model of calls that name none (the server's default model); else the
        ``preparer``'s own bundle."""
        self.backend: VoiceBackend = (voices if isinstance(voices, VoiceBackend)
                                      else open_backend(voices, scoped=scoped, actor=actor))
        self.vault = VoiceVault(self.backend, keyring)
        self.preparer, self.bundle_id, self.scoped = preparer, bundle_id, scoped
        self.default = default or VoiceTarget(bundle_id, preparer.bundle.symbol_version if preparer else "v2",
                                              preparer.bundle.prompt_space() if preparer else "", lambda: preparer)
        self._lock = threading.RLock()  # guards the caches, the registering set and the counters below
        self._cache: dict[tuple[str, str], Voice] = {}  # voices as stored
        self._derived: OrderedDict[tuple, Voice] = OrderedDict()  # (ns, id, version, created, bundle) -> voice
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
    def cached(self, voice_id: str, owner: str, target=None) -> Voice | None:
        """The voice ready for ``target``'s model (default: the default model) if it is in memory (never
        touches the store or computes anything; safe on an event loop)."""
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
    def get(self, voice_id: str, owner: str, target=None) -> Voice:
        """The voice, ready for ``target``'s model (default: the default model)."""
        validate_voice_id(voice_id)
        voice = self.cached(voice_id, owner, target)
        if voice is not None:
            return voice
        with self._lock:
            base = self._cache.get((self._key(owner), voice_id))
        if base is None:
            base = self._load(voice_id, owner)
        return self._for_target(base, owner, target or self.default)

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
        """The voice as stored (prepared for the model it was registered with or moved to), cached."""
        ns = self._key(owner)
        with self._lock:
            epoch = self._epoch
        record = self._record(ns, voice_id, features=True)
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

    def _for_target(self, base: Voice, owner: str, target) -> Voice:
        """``base`` carried to ``target``'s model, from the voice's reference audio (see the module doc)."""
        if base.bundle_id == target.bundle_id:
            return base
        if base.family != target.family:
            raise VoiceIncompatible(f"voice {shown(base.voice_id)} belongs to {base.family} models (its phone set); "
                                    f"this model is of the {target.family} family: register the voice for it")
        ns = self._key(owner)
        record = self._record(ns, base.voice_id, features=False, references=True)
        refs = self.vault.references(record)
        preparer = target.preparer()
        if not refs or preparer is None:
            raise VoiceUnavailable(f"voice {shown(base.voice_id)} was prepared for another model and has no stored "
                                   "reference; register it again")
        log.info("voice %s (prepared for bundle %s): deriving it for bundle %s", base.voice_id, base.bundle_id,
                 target.bundle_id)
        keep = bool(base.prompt_space) and base.prompt_space == target.prompt_space
        voice = rederive(preparer, base, record.describe(), refs, keep_prompt=keep)
        if target.bundle_id == self.default.bundle_id:  # the voice moves to the default model (stored)
            stored = self.vault.reprepared(record, voice, refs)
            if record.version == base.version and self.backend.replace_blobs(stored):
                with self._lock:
                    self._epoch += 1
                    self._cache[(ns, base.voice_id)] = voice
            return voice  # (lost a race with a change: still a valid voice for this request)
        key = (ns, base.voice_id, base.version, base.created, target.bundle_id)
        with self._lock:
            self._derived[key] = voice
            while len(self._derived) > MAX_DERIVED:
                self._derived.popitem(last=False)
        return voice

    # ------------------------------------------------------------------ writes
    def register(self, voice_id: str, audio: bytes, text: str, language: str, aux: list[bytes], owner: str,
                 consent: str, display_name: str = "", overwrite: bool = False, target=None,
                 reference_free: bool = False) -> dict:
        """Prepare (for ``target``'s model; default: the default model) and store a voice; returns its
        stored description.  ``reference_free``: keep no prompt (the reference sets only the timbre)."""
        validate_consent(consent)
        target = target or self.default

        def make():
            voice = target.preparer().prepare(voice_id, audio, text, language, aux, owner=owner, consent=consent)
            if reference_free:
                voice = dataclasses.replace(voice, prompt_phones=[], prompt_bert=voice.prompt_bert[:, :0],
                                            prompt_tokens=voice.prompt_tokens[:0], ref_text="", norm_text="")
            return voice, [audio, *aux], {}

        return self._write(voice_id, owner, consent, display_name, overwrite, target, make)

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
        ns = self._key(owner)

        def make():
            voices, refs = [], []
            for source_id, weight in sources:
                voice = self.get(source_id, owner, target)
                files = self.vault.references(self._record(ns, source_id, features=False, references=True))
                voices.append((voice, weight, len(files)))
                refs += files
            statement = consent.strip() or "blend of " + "; ".join(
                f"{v.voice_id} (consent: {shown(v.consent, 200)})" for v, _, _ in voices)
            voice = blend_voices(voice_id, [(v, w) for v, w, _ in voices], reference_free=reference_free, owner=owner,
                                 consent=statement)
            return voice, refs, {"blend": recipe(voices, reference_free)}

        return self._write(voice_id, owner, consent, display_name, overwrite, target, make)

    def _write(self, voice_id: str, owner: str, consent: str, display_name: str, overwrite: bool, target,
               make) -> dict:
        """Create or replace a voice made by ``make() -> (voice, reference files, extra description)``."""
        validate_voice_id(voice_id)
        ns = self._key(owner)
        key = (ns, voice_id)
        with self._lock:
            if key in self._registering:
                raise VoiceExists(f"voice {shown(voice_id)} is being registered")
            self._registering.add(key)
        try:
            if not overwrite and self.backend.exists(ns, voice_id):
                raise VoiceExists(f"voice {shown(voice_id)} already exists")
            voice, refs, extra = make()
            record = self.vault.seal(ns, voice, refs, display_name=display_name, consent_by=self._who(owner))
            record.meta.update(extra)
            audit = AuditEvent("register", ns, voice_id, self._who(owner), voice.consent or consent,
                               {"model_id": target.bundle_id, "encrypted": bool(record.key_id)} | extra)
            try:
                stored = self.backend.put(record, overwrite=overwrite, audit=audit)
            except VoiceExists:
                raise VoiceExists(f"voice {shown(voice_id)} already exists") from None
            voice.version, voice.created = stored.version, stored.created
            with self._lock:
                self._epoch += 1
                self._forget(ns, voice_id)
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
            self._forget(ns, voice_id)

    def _forget(self, ns: str, voice_id: str) -> None:
        """Drop a voice and what was derived from it from memory (call with ``_lock`` held)."""
        self._cache.pop((ns, voice_id), None)
        for key in [k for k in self._derived if k[0] == ns and k[1] == voice_id]:
            del self._derived[key]

    def close(self) -> None:
        self.backend.close()
