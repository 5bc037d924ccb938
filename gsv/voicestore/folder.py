"""The embedded voice store: one folder per voice (:class:`gsv.voice.VoiceStore`), the default.

With owner namespaces (bearer tokens on), each owner's voices live in
``ROOT/_owners/<hash of the owner>/``; without, in ROOT itself.  Voices written before namespaces
(one folder for everyone) move to their owner's folder when a server with namespaces starts.  The
audit trail is ``ROOT/_audit.jsonl``, one JSON object per line, only ever appended to.

One process owns a voices folder: there is nothing to watch, and writes are serialised by one lock.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from gsv.errors import VoiceError, VoiceExists, VoiceNotFound
from gsv.voice import VoiceStore, validate_voice_id
from gsv.voicestore.base import AuditEvent, VoiceBackend, VoiceRecord

log = logging.getLogger(__name__)

OWNERS_DIR = "_owners"  # not a valid voice id, so it never collides with a voice folder
AUDIT_FILE = "_audit.jsonl"
# voice.json keys that are record fields rather than free description
RECORD_KEYS = ("voice_id", "bundle_id", "version", "created", "updated", "consent", "consent_by", "key_id",
               "references")


def record_of(owner: str, meta: dict[str, Any]) -> VoiceRecord:
    return VoiceRecord(owner=owner, voice_id=meta["voice_id"], model_id=str(meta.get("bundle_id", "")),
                       meta={k: v for k, v in meta.items() if k not in RECORD_KEYS}, key_id=meta.get("key_id", ""),
                       consent=meta.get("consent", ""), consent_by=meta.get("consent_by", ""),
                       version=int(meta.get("version", 1)), created=float(meta.get("created", 0.0)),
                       updated=float(meta.get("updated", meta.get("created", 0.0))))


def json_of(record: VoiceRecord) -> dict[str, Any]:
    meta = record.describe()
    if not record.key_id:
        meta.pop("key_id")  # plain voices keep the voice.json of earlier versions
    return meta


class FolderBackend(VoiceBackend):
    def __init__(self, root: str | Path, scoped: bool, actor: str = ""):
        self.root, self.scoped, self.actor = Path(root), scoped, actor
        self.location = str(self.root)
        self._lock = threading.RLock()  # serialises writes; guards the namespace table
        self._stores: dict[str, VoiceStore] = {}
        self._unscoped = VoiceStore(self.root)  # recovers interrupted writes at start
        if scoped:
            self._move_owned_voices()

    # ------------------------------------------------------------------ namespaces
    def store(self, owner: str) -> VoiceStore:
        if not owner:
            return self._unscoped
        with self._lock:
            store = self._stores.get(owner)
            if store is None:
                digest = hashlib.sha256(owner.encode("utf-8")).hexdigest()[:24]
                store = self._stores[owner] = VoiceStore(self.root / OWNERS_DIR / digest)
            return store

    def _move_owned_voices(self) -> None:
        """Voices written before namespaces (one folder for everyone) move to their owner's folder."""
        for vid in self._unscoped.ids():
            try:
                owner = self._unscoped.metadata(vid).get("owner", "")
            except VoiceError:
                continue
            if not owner:
                continue
            dest = self.store(owner).path(vid)
            if not dest.exists():
                os.replace(self._unscoped.path(vid), dest)
                log.info("voice %s moved to the namespace of its owner", vid)

    # ------------------------------------------------------------------ reads
    def exists(self, owner: str, voice_id: str) -> bool:
        return self.store(owner).exists(voice_id)

    def _meta(self, store: VoiceStore, voice_id: str) -> dict[str, Any]:
        if not store.exists(voice_id):
            raise VoiceNotFound(f"unknown voice {voice_id!r}")
        return store.metadata(voice_id)

    def get(self, owner: str, voice_id: str, *, features: bool = True, references: bool = False) -> VoiceRecord:
        validate_voice_id(voice_id)
        store = self.store(owner)
        record = record_of(owner, self._meta(store, voice_id))
        if features:
            record.features = store.read_features(voice_id)
        if references:
            try:
                record.references = store.references(voice_id)
            except OSError as e:
                raise VoiceError(f"voice {voice_id!r} is corrupt ({e.strerror})") from None
        return record

    def list(self, owner: str) -> list[VoiceRecord]:
        store, out = self.store(owner), []
        for vid in store.ids():
            try:
                out.append(record_of(owner, store.metadata(vid)))
            except (VoiceError, KeyError, ValueError, TypeError):
                continue  # a corrupt voice is not listed (Get says why)
        return out

    def keyed(self, key_id: str) -> list[tuple[str, str]]:
        out = []
        stores = [("", self._unscoped)]
        owners_dir = self.root / OWNERS_DIR
        if owners_dir.is_dir():
            # namespaces are folders named by a hash: the owner comes from each voice.json
            stores += [(None, VoiceStore(p)) for p in sorted(owners_dir.iterdir()) if p.is_dir()]
        for ns, store in stores:
            for vid in store.ids():
                try:
                    meta = store.metadata(vid)
                except VoiceError:
                    continue
                if meta.get("key_id", "") == key_id:
                    out.append((meta.get("owner", "") if ns is None else ns, vid))
        return out

    def versions(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        out = {}
        for owner, vid in keys:
            try:
                out[(owner, vid)] = int(self.store(owner).metadata(vid).get("version", 1))
            except VoiceError:
                pass
        return out

    # ------------------------------------------------------------------ writes
    def put(self, record: VoiceRecord, *, overwrite: bool, audit: AuditEvent) -> VoiceRecord:
        validate_voice_id(record.voice_id)
        store = self.store(record.owner)
        with self._lock:
            now = time.time()
            if store.exists(record.voice_id):
                if not overwrite:
                    raise VoiceExists(f"voice {record.voice_id!r} already exists")
                old = record_of(record.owner, store.metadata(record.voice_id))
                record.version, record.created = old.version + 1, old.created
                audit = dataclasses.replace(audit, event="overwrite")
            else:
                record.version, record.created = 1, now
            record.updated = now
            store.write(record.voice_id, json_of(record), record.features, record.references or [], overwrite=True)
            self.audit(audit)
        return record

    def replace_blobs(self, record: VoiceRecord, *, audit: AuditEvent | None = None) -> bool:
        store = self.store(record.owner)
        with self._lock:
            try:
                current = record_of(record.owner, store.metadata(record.voice_id))
            except VoiceError:
                return False
            if current.version != record.version:
                return False
            record.updated = time.time()
            store.write(record.voice_id, json_of(record), record.features, record.references or [], overwrite=True)
            if audit is not None:
                self.audit(audit)
        return True

    def delete(self, owner: str, voice_id: str, *, audit: AuditEvent) -> None:
        validate_voice_id(voice_id)
        store = self.store(owner)
        with self._lock:
            if not store.exists(voice_id):
                raise VoiceNotFound(f"unknown voice {voice_id!r}")
            try:
                consent = store.metadata(voice_id).get("consent", "")
            except VoiceError:
                consent = ""
            store.delete(voice_id)  # the folder holds every copy: features, references, metadata
            self.audit(dataclasses.replace(audit, consent=consent))

    # ------------------------------------------------------------------ audit trail
    def audit(self, event: AuditEvent) -> None:
        line = json.dumps({"at": time.time(), "event": event.event, "owner": event.owner, "voice_id": event.voice_id,
                           "who": event.who, "actor": self.actor, "consent": event.consent,
                           "detail": event.detail}, ensure_ascii=False) + "\n"
        # O_APPEND: every line lands whole at the end, never over an earlier one
        fd = os.open(self.root / AUDIT_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def audit_trail(self, owner: str | None = None, voice_id: str | None = None) -> list[dict[str, Any]]:
        path = self.root / AUDIT_FILE
        if not path.is_file():
            return []
        out = []
        for line in path.read_text("utf-8").splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash
            if (owner is None or ev.get("owner") == owner) and (voice_id is None or ev.get("voice_id") == voice_id):
                out.append(ev)
        return out
