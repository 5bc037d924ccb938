"""The shared voice store: PostgreSQL through psycopg 3 and a connection pool.

Every replica of a deployment opens the same database (``--voices postgresql://USER@HOST:PORT/DB``).
At start the schema is created or brought up to date by the versioned SQL files in
``gsv/voicestore/migrations/`` (``NNNN_name.sql``, applied in order, each recorded in the
``schema_version`` table, under an advisory lock so replicas starting together do not race).

* Register and delete are single transactions (the row, its audit event and a ``NOTIFY`` commit
  together); the primary key (owner, voice_id) decides between two replicas registering one id at
  once: exactly one INSERT wins, the other is told ALREADY_EXISTS.
* Each replica keeps its own cache of prepared voices (in :class:`server.voices.VoiceRegistry`);
  a listener thread holds one extra connection in ``LISTEN gsv_voices`` and reports every change
  another replica commits (within milliseconds), and after a reconnect asks the registry to check
  what it missed.
* When the database cannot be reached, calls raise :class:`gsv.errors.StoreUnreachable` after at
  most the pool timeout; the pool and the listener reconnect by themselves.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import threading
import time
import uuid
from importlib import resources
from typing import Any

from gsv.errors import GsvError, StoreUnreachable, VoiceExists, VoiceNotFound
from gsv.voice import validate_voice_id
from gsv.voicestore.base import AuditEvent, ChangeCallback, VoiceBackend, VoiceRecord

log = logging.getLogger(__name__)

CHANNEL = "gsv_voices"
MIGRATION_LOCK = 0x67737600766F6963  # advisory lock id held while migrating
MIGRATION_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
POOL_TIMEOUT = 2.0  # seconds a call waits for a connection before the database counts as unreachable
DOWN_TIMEOUT = 0.5  # the same while the listener knows the database is down
CONNECT_TIMEOUT = 3  # libpq connect_timeout (seconds)
LISTEN_POLL = 0.5  # the listener checks for shutdown this often
HEARTBEAT = 5.0  # an idle listener connection is checked this often (a dead peer sends nothing)
MAX_NOTIFY_BYTES = 7900  # PostgreSQL's payload limit is 8000 bytes

_COLUMNS = ("model_id, language, meta, key_id, consent, consent_by, version, "
            "extract(epoch from created_at)::float8, extract(epoch from updated_at)::float8")


def redacted(url: str) -> str:
    """The URL without its password (for logs and messages)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped with this package, in order."""
    out = []
    for entry in resources.files("gsv.voicestore.migrations").iterdir():
        m = MIGRATION_FILE.fullmatch(entry.name)
        if m:
            out.append((int(m.group(1)), m.group(2), entry.read_text("utf-8")))
    out.sort()
    if [v for v, _, _ in out] != list(range(1, len(out) + 1)):
        raise GsvError(f"voice store migrations are not numbered 1..{len(out)}: {[v for v, _, _ in out]}")
    return out


class PostgresBackend(VoiceBackend):
    def __init__(self, url: str, *, actor: str = "", pool_size: int = 4, timeout: float = POOL_TIMEOUT,
                 connect_timeout: float = 10.0):
        import psycopg  # noqa: F401 - a clear ImportError before anything starts
        from psycopg_pool import ConnectionPool, PoolTimeout

        self.url, self.location, self.actor = url, redacted(url), actor
        self.origin = uuid.uuid4().hex[:16]  # this process: its own notifications are skipped
        self._lock = threading.Lock()  # guards the counters, the up flag and the callbacks below
        self._queries = 0
        self._up = True
        self._callbacks: list[ChangeCallback] = []
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        self._pool = ConnectionPool(url, min_size=1, max_size=pool_size, timeout=timeout, open=False,
                                    kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT,
                                            "application_name": "gsv-voices"},
                                    check=ConnectionPool.check_connection, reconnect_timeout=30.0, name="gsv-voices")
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except PoolTimeout:
            self._pool.close(timeout=1.0)
            raise StoreUnreachable(f"cannot connect to the voice database {self.location} within "
                                   f"{connect_timeout:g} s") from None
        try:
            self.migrate()
        except BaseException:
            self._pool.close(timeout=1.0)
            raise

    # ------------------------------------------------------------------ plumbing
    @contextlib.contextmanager
    def _conn(self, write: bool = False):
        """A pooled connection (autocommit; ``write``: one transaction); unreachable -> StoreUnreachable."""
        import psycopg
        from psycopg_pool import PoolClosed, PoolTimeout

        try:
            # while the listener knows the database is down, fail fast instead of waiting the full timeout
            with self._pool.connection(timeout=None if self.up else DOWN_TIMEOUT) as conn:
                if write:
                    with conn.transaction():
                        yield conn
                else:
                    yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, PoolClosed) as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise StoreUnreachable(f"the voice database {self.location} is unreachable ({reason}); voices already "
                                   "in memory keep working") from None

    def _q(self, conn, sql: str, params=None):
        with self._lock:
            self._queries += 1
        return conn.execute(sql, params)

    @property
    def queries(self) -> int:
        with self._lock:
            return self._queries

    @property
    def up(self) -> bool:
        with self._lock:
            return self._up

    @property
    def shared(self) -> bool:
        return True

    def _notify(self, conn, op: str, owner: str, voice_id: str) -> None:
        payload = json.dumps({"o": self.origin, "op": op, "owner": owner, "voice_id": voice_id})
        if len(payload.encode("utf-8")) > MAX_NOTIFY_BYTES:
            payload = json.dumps({"o": self.origin, "op": op, "all": True})
        self._q(conn, "SELECT pg_notify(%s, %s)", (CHANNEL, payload))

    def _audit(self, conn, event: AuditEvent) -> None:
        from psycopg.types.json import Jsonb

        self._q(conn, "INSERT INTO voice_audit (event, owner, voice_id, who, actor, consent, detail) "
                      "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (event.event, event.owner, event.voice_id, event.who, self.actor, event.consent, Jsonb(event.detail)))

    # ------------------------------------------------------------------ schema
    def migrate(self) -> int:
        """Apply the migrations this database has not seen; returns its schema version."""
        known = migrations()
        with self._conn(write=True) as conn:
            self._q(conn, "SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            self._q(conn, "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, name text NOT NULL, "
                          "applied_at timestamptz NOT NULL DEFAULT now())")
            applied = {row[0] for row in self._q(conn, "SELECT version FROM schema_version").fetchall()}
            newest = max(applied, default=0)
            if newest > len(known):
                raise GsvError(f"the voice database {self.location} has schema version {newest}, newer than this "
                               f"gsv knows ({len(known)}): upgrade gsv")
            for version, name, sql in known:
                if version not in applied:
                    log.info("voice database %s: applying migration %04d_%s", self.location, version, name)
                    self._q(conn, sql)
                    self._q(conn, "INSERT INTO schema_version (version, name) VALUES (%s, %s)", (version, name))
        return len(known)

    # ------------------------------------------------------------------ reads
    @staticmethod
    def _record(owner: str, voice_id: str, row, features: bool, references: bool) -> VoiceRecord:
        model_id, language, meta, key_id, consent, consent_by, version, created, updated = row[:9]
        rest = list(row[9:])
        return VoiceRecord(owner=owner, voice_id=voice_id, model_id=model_id, meta=dict(meta) | {"language": language},
                           features=bytes(rest.pop(0)) if features else None,
                           references=[bytes(r) for r in rest.pop(0)] if references else None,
                           key_id=key_id, consent=consent, consent_by=consent_by, version=version, created=created,
                           updated=updated)

    def exists(self, owner: str, voice_id: str) -> bool:
        with self._conn() as conn:
            return self._q(conn, "SELECT 1 FROM voices WHERE owner = %s AND voice_id = %s",
                           (owner, voice_id)).fetchone() is not None

    def get(self, owner: str, voice_id: str, *, features: bool = True, references: bool = False) -> VoiceRecord:
        validate_voice_id(voice_id)
        cols = _COLUMNS + (", features" if features else "") + (", reference_audio" if references else "")
        with self._conn() as conn:
            row = self._q(conn, f"SELECT {cols} FROM voices WHERE owner = %s AND voice_id = %s",
                          (owner, voice_id)).fetchone()
        if row is None:
            raise VoiceNotFound(f"unknown voice {voice_id!r}")
        return self._record(owner, voice_id, row, features, references)

    def list(self, owner: str) -> list[VoiceRecord]:
        with self._conn() as conn:
            rows = self._q(conn, f"SELECT voice_id, {_COLUMNS} FROM voices WHERE owner = %s ORDER BY voice_id",
                           (owner,)).fetchall()
        return [self._record(owner, row[0], row[1:], False, False) for row in rows]

    def keyed(self, key_id: str) -> list[tuple[str, str]]:
        with self._conn() as conn:
            rows = self._q(conn, "SELECT owner, voice_id FROM voices WHERE key_id = %s ORDER BY owner, voice_id",
                           (key_id,)).fetchall()
        return [(o, v) for o, v in rows]

    def versions(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        if not keys:
            return {}
        with self._conn() as conn:
            rows = self._q(conn, "SELECT v.owner, v.voice_id, v.version FROM voices v "
                                 "JOIN unnest(%s::text[], %s::text[]) AS k(owner, voice_id) "
                                 "ON v.owner = k.owner AND v.voice_id = k.voice_id",
                           ([o for o, _ in keys], [v for _, v in keys])).fetchall()
        return {(o, v): n for o, v, n in rows}

    # ------------------------------------------------------------------ writes
    def put(self, record: VoiceRecord, *, overwrite: bool, audit: AuditEvent) -> VoiceRecord:
        from psycopg.types.json import Jsonb

        validate_voice_id(record.voice_id)
        meta = {k: v for k, v in record.meta.items() if k != "language"}
        params = {"owner": record.owner, "voice_id": record.voice_id, "model_id": record.model_id,
                  "language": record.meta.get("language", ""), "meta": Jsonb(meta), "features": record.features,
                  "refs": list(record.references or []), "key_id": record.key_id, "consent": record.consent,
                  "consent_by": record.consent_by}
        on_conflict = ("DO UPDATE SET model_id = EXCLUDED.model_id, language = EXCLUDED.language, meta = EXCLUDED.meta, "
                       "features = EXCLUDED.features, reference_audio = EXCLUDED.reference_audio, "
                       "key_id = EXCLUDED.key_id, consent = EXCLUDED.consent, consent_by = EXCLUDED.consent_by, "
                       "version = voices.version + 1, updated_at = now()") if overwrite else "DO NOTHING"
        sql = ("INSERT INTO voices (owner, voice_id, model_id, language, meta, features, reference_audio, key_id, "
               "consent, consent_by) VALUES (%(owner)s, %(voice_id)s, %(model_id)s, %(language)s, %(meta)s, "
               "%(features)s, %(refs)s::bytea[], %(key_id)s, %(consent)s, %(consent_by)s) "
               f"ON CONFLICT (owner, voice_id) {on_conflict} RETURNING version, "
               "extract(epoch from created_at)::float8, extract(epoch from updated_at)::float8")
        with self._conn(write=True) as conn:
            row = self._q(conn, sql, params).fetchone()
            if row is None:  # another registration of this id committed first
                raise VoiceExists(f"voice {record.voice_id!r} already exists")
            record.version, record.created, record.updated = row
            event = audit if record.version == 1 else dataclasses.replace(audit, event="overwrite")
            self._audit(conn, event)
            self._notify(conn, "register", record.owner, record.voice_id)
        return record

    def replace_blobs(self, record: VoiceRecord, *, audit: AuditEvent | None = None) -> bool:
        from psycopg.types.json import Jsonb

        meta = {k: v for k, v in record.meta.items() if k != "language"}
        with self._conn(write=True) as conn:
            row = self._q(conn, "UPDATE voices SET model_id = %s, meta = %s, features = %s, reference_audio = %s::bytea[], "
                                "key_id = %s, updated_at = now() WHERE owner = %s AND voice_id = %s AND version = %s "
                                "RETURNING extract(epoch from updated_at)::float8",
                          (record.model_id, Jsonb(meta), record.features, list(record.references or []),
                           record.key_id, record.owner, record.voice_id, record.version)).fetchone()
            if row is None:
                return False
            record.updated = row[0]
            if audit is not None:
                self._audit(conn, audit)
            self._notify(conn, "update", record.owner, record.voice_id)
        return True

    def delete(self, owner: str, voice_id: str, *, audit: AuditEvent) -> None:
        validate_voice_id(voice_id)
        with self._conn(write=True) as conn:
            row = self._q(conn, "DELETE FROM voices WHERE owner = %s AND voice_id = %s RETURNING consent",
                          (owner, voice_id)).fetchone()
            if row is None:
                raise VoiceNotFound(f"unknown voice {voice_id!r}")
            self._audit(conn, dataclasses.replace(audit, consent=row[0]))
            self._notify(conn, "delete", owner, voice_id)

    # ------------------------------------------------------------------ audit trail
    def audit(self, event: AuditEvent) -> None:
        with self._conn() as conn:
            self._audit(conn, event)

    def audit_trail(self, owner: str | None = None, voice_id: str | None = None) -> list[dict[str, Any]]:
        with self._conn() as conn:
            rows = self._q(conn, "SELECT extract(epoch from at)::float8, event, owner, voice_id, who, actor, consent, "
                                 "detail FROM voice_audit WHERE (%s::text IS NULL OR owner = %s) "
                                 "AND (%s::text IS NULL OR voice_id = %s) ORDER BY id",
                           (owner, owner, voice_id, voice_id)).fetchall()
        keys = ("at", "event", "owner", "voice_id", "who", "actor", "consent", "detail")
        return [dict(zip(keys, row)) for row in rows]

    # ------------------------------------------------------------------ change notifications
    def watch(self, on_change: ChangeCallback) -> None:
        with self._lock:
            self._callbacks.append(on_change)
            start = self._listener is None
            if start:
                self._listener = threading.Thread(target=self._listen, name="gsv-voices-listen", daemon=True)
        if start:
            self._listener.start()

    def _set_up(self, up: bool) -> None:
        with self._lock:
            changed, self._up = self._up != up, up
        if changed:
            (log.info if up else log.warning)("voice database %s %s", self.location,
                                              "reachable again" if up else "unreachable")
        if changed and up:
            # the pool's own reconnection attempts back off exponentially: start fresh ones now
            try:
                self._pool.drain()
            except Exception:  # noqa: BLE001 - the pool recovers by itself anyway, only later
                log.debug("voice pool drain failed", exc_info=True)

    def _emit(self, owner: str | None, voice_id: str | None) -> None:
        with self._lock:
            callbacks = list(self._callbacks)
        for cb in callbacks:
            try:
                cb(owner, voice_id)
            except Exception:  # noqa: BLE001 - a broken callback must not stop the listener
                log.exception("voice change callback failed")

    def _listen(self) -> None:
        import psycopg

        delay = 0.2
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                                     application_name="gsv-voices-listen") as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._set_up(True)
                    delay = 0.2
                    self._emit(None, None)  # changes made while not listening: the registry checks its cache
                    quiet_since = time.monotonic()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=LISTEN_POLL):
                            quiet_since = time.monotonic()
                            self._dispatch(note.payload)
                        if time.monotonic() - quiet_since > HEARTBEAT:
                            conn.execute("SELECT 1")  # raises when the server went away silently
                            quiet_since = time.monotonic()
            except psycopg.Error as e:
                if not self._stop.is_set():
                    self._set_up(False)
                    log.debug("voice listener: %s", e)
            self._stop.wait(delay)
            delay = min(2 * delay, 2.0)

    def _dispatch(self, payload: str) -> None:
        try:
            note = json.loads(payload)
        except ValueError:
            return
        if note.get("o") == self.origin:
            return  # this process made the change and updated its cache already
        if note.get("all"):
            self._emit(None, None)
        else:
            self._emit(str(note.get("owner", "")), str(note.get("voice_id", "")))

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.join(LISTEN_POLL + 2)
        self._pool.close(timeout=2.0)

