"""The one interface every voice store backend implements, and the records it stores.

A backend stores :class:`VoiceRecord` rows addressed by (namespace, voice id) and an append-only
audit trail; it knows nothing of tensors or encryption (:mod:`gsv.voicestore.vault` turns voices
into records and back).  Every write is one transaction: a record and its audit event are stored
together or not at all, and of two concurrent registrations of one id exactly one wins (the other
gets :class:`gsv.errors.VoiceExists`).

Backends raise :class:`gsv.errors.VoiceNotFound` / :class:`gsv.errors.VoiceExists` for the
caller's mistakes and :class:`gsv.errors.StoreUnreachable` when their storage cannot be reached.
Every method may block (disk or network): servers call them off their event loop.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable

# The voice.json-shaped description of a voice (what GetVoice/ListVoices show), minus the blobs.
Description = dict[str, Any]
# Called when another process changed or deleted a voice: (namespace, voice id); (None, None)
# means "anything may have changed" (after a reconnect).
ChangeCallback = Callable[[str | None, str | None], None]


@dataclass
class VoiceRecord:
    """One stored voice.  ``features`` and ``references`` are opaque bytes (encrypted with key
    ``key_id`` when it is not empty); None when a read did not ask for them."""

    owner: str  # namespace: the owner name with bearer tokens on, "" without
    voice_id: str
    model_id: str  # the bundle the features were prepared for
    meta: Description  # language, ref_text, prompt_phones, display_name, consent, ...
    features: bytes | None = None
    references: list[bytes] | None = None
    key_id: str = ""
    consent: str = ""
    consent_by: str = ""  # who submitted the consent statement (the authenticated caller)
    version: int = 1
    created: float = 0.0
    updated: float = 0.0

    def describe(self) -> Description:
        """The description clients see (the voice.json shape of the folder store)."""
        return dict(self.meta) | {"voice_id": self.voice_id, "bundle_id": self.model_id, "version": self.version,
                                  "created": self.created, "updated": self.updated, "consent": self.consent,
                                  "consent_by": self.consent_by, "key_id": self.key_id}


@dataclass(frozen=True)
class AuditEvent:
    """One line of the audit trail: ``event`` is register | overwrite | delete | read | load | rotate-key."""

    event: str
    owner: str  # namespace of the voice
    voice_id: str
    who: str  # the caller on whose behalf it happened ("anonymous" without auth)
    consent: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


class VoiceBackend(abc.ABC):
    """Storage of voice records for one deployment (a folder, or a database shared by replicas)."""

    #: where the voices are, for logs and messages (no password)
    location: str = ""

    @abc.abstractmethod
    def exists(self, owner: str, voice_id: str) -> bool: ...

    @abc.abstractmethod
    def get(self, owner: str, voice_id: str, *, features: bool = True, references: bool = False) -> VoiceRecord:
        """One record (VoiceNotFound if absent); blobs only when asked for."""

    @abc.abstractmethod
    def list(self, owner: str) -> list[VoiceRecord]:
        """Every record of a namespace, without blobs, sorted by voice id."""

    @abc.abstractmethod
    def put(self, record: VoiceRecord, *, overwrite: bool, audit: AuditEvent) -> VoiceRecord:
        """Store a new voice (version 1) or, with ``overwrite``, replace one (version + 1; creation
        time kept) in one transaction with its audit event.  Returns the record as stored."""

    @abc.abstractmethod
    def replace_blobs(self, record: VoiceRecord, *, audit: AuditEvent | None = None) -> bool:
        """Rewrite a voice's model id, features, references and key id, keeping its version, if the
        stored version is still ``record.version`` (False otherwise: it changed meanwhile)."""

    @abc.abstractmethod
    def delete(self, owner: str, voice_id: str, *, audit: AuditEvent) -> None:
        """Remove the voice and every stored copy of its data (VoiceNotFound if absent)."""

    @abc.abstractmethod
    def keyed(self, key_id: str) -> list[tuple[str, str]]:
        """(namespace, voice id) of every voice whose blobs are encrypted with ``key_id`` ("" = plain)."""

    @abc.abstractmethod
    def versions(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """The stored version of each existing (namespace, voice id) among ``keys``."""

    @abc.abstractmethod
    def audit(self, event: AuditEvent) -> None:
        """Append one event to the audit trail."""

    @abc.abstractmethod
    def audit_trail(self, owner: str | None = None, voice_id: str | None = None) -> list[dict[str, Any]]:
        """The audit trail, oldest first (optionally one namespace / one voice)."""

    def watch(self, on_change: ChangeCallback) -> None:
        """Call ``on_change`` whenever another process changes or deletes a voice.  A backend that
        only this process writes (a folder) never calls it."""

    @property
    def shared(self) -> bool:
        """True when other processes (replicas) may change the voices at any time."""
        return False

    @property
    def up(self) -> bool:
        """False while the storage is known to be unreachable."""
        return True

    @property
    def queries(self) -> int:
        """Statements sent to a database by request handling so far (0 for a folder)."""
        return 0

    def close(self) -> None:
        pass
