"""The PostgreSQL voice store against a real PostgreSQL (one fresh database per test): voice RPCs,
owners, consent and the audit trail; two replicas registering one id; delete propagation across
replicas; a database restart while serving; a cached voice costs no query."""
from __future__ import annotations

import threading
import time

import grpc
import pytest

from clients import TtsClient, TtsError
from gsv.errors import VoiceExists
from tests.cluster.conftest import REF_TEXT, TEXT, reference, sql
from tests.server.harness import start_server

TOKENS = {"tok-a": "ann", "tok-b": "ben"}


def code_of(fn):
    try:
        fn()
    except TtsError as e:
        return e.code, e.details
    return grpc.StatusCode.OK, ""


def cache_on(srv, client, voice_id: str) -> None:
    """Synthesize with the voice on ``srv`` until it stays in srv's cache (the notice of its
    registration may reach srv after srv's first load of it, and then drops it once)."""
    for _ in range(5):
        assert client.stream(TEXT, voice_id, seed=1, max_audio_seconds=0.3).chunks
        if srv.state.registry.cached(voice_id, "") is not None:
            return
        time.sleep(0.2)
    raise AssertionError(f"{voice_id} never stayed in the cache")


def test_register_get_list_delete_with_owners_consent_and_audit(tiny_full_bundle, db_url):
    srv = start_server(tiny_full_bundle.path, db_url, tokens=TOKENS)
    try:
        with TtsClient(srv.target, token="tok-a", retry=None) as a, TtsClient(srv.target, token="tok-b", retry=None) as b:
            v = a.register_voice("alice", reference(), REF_TEXT, "zh", consent="Alice agreed on 2026-12-01",
                                 display_name="Alice")
            assert (v.version, v.model_id, v.display_name) == (1, tiny_full_bundle.bundle_id, "Alice")
            got = a.get_voice("alice")
            assert got.consent_statement == "Alice agreed on 2026-12-01" and got.language == "zh"
            assert [x.voice_id for x in a.list_voices()] == ["alice"] and b.list_voices() == []
            for fn in (lambda: b.get_voice("alice"), lambda: b.delete_voice("alice"),
                       lambda: b.stream("好的。", "alice", max_audio_seconds=0.3)):
                assert code_of(fn)[0] == grpc.StatusCode.NOT_FOUND  # another owner's voice does not exist
            b.register_voice("alice", reference(), "Hello there, friend.", "en", consent="Bob's Alice agreed")
            assert a.get_voice("alice").language == "zh" and b.get_voice("alice").language == "en"
            assert a.stream(TEXT, "alice", seed=1, max_audio_seconds=0.5).chunks
            assert code_of(lambda: a.register_voice("alice", reference(), REF_TEXT, "zh", consent="again"))[0] \
                == grpc.StatusCode.ALREADY_EXISTS
            assert a.register_voice("alice", reference(), REF_TEXT, "zh", consent="renewed", overwrite=True).version == 2
            rows = sql(db_url, "SELECT owner, voice_id, model_id, version, consent, consent_by, created_at < updated_at "
                               "FROM voices ORDER BY owner")
            assert rows == [("ann", "alice", tiny_full_bundle.bundle_id, 2, "renewed", "ann", True),
                            ("ben", "alice", tiny_full_bundle.bundle_id, 1, "Bob's Alice agreed", "ben", False)]
            a.delete_voice("alice")
            assert code_of(lambda: a.get_voice("alice"))[0] == grpc.StatusCode.NOT_FOUND
            assert sql(db_url, "SELECT owner FROM voices") == [("ben",)]
    finally:
        srv.stop()
    trail = sql(db_url, "SELECT event, owner, voice_id, who, consent FROM voice_audit WHERE owner = 'ann' ORDER BY id")
    assert trail == [("register", "ann", "alice", "ann", "Alice agreed on 2026-12-01"), ("read", "ann", "alice", "ann", ""),
                     ("read", "ann", "alice", "ann", ""), ("overwrite", "ann", "alice", "ann", "renewed"),
                     ("delete", "ann", "alice", "ann", "renewed")]
    assert sql(db_url, "SELECT version, name FROM schema_version ORDER BY version") == [(1, "voices"), (2, "audit")]
    import psycopg

    for statement in ("UPDATE voice_audit SET who = 'x'", "DELETE FROM voice_audit", "TRUNCATE voice_audit"):
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            sql(db_url, statement)


def test_two_replicas_inserting_one_id_at_once_exactly_one_wins(db_url):
    """The database decides (one INSERT ... ON CONFLICT DO NOTHING wins), whatever the timing."""
    from gsv.voicestore.base import AuditEvent, VoiceRecord
    from gsv.voicestore.postgres import PostgresBackend

    replicas = [PostgresBackend(db_url, actor=f"replica {i}") for i in range(2)]
    try:
        for n in range(6):
            barrier, outcome = threading.Barrier(2), []

            def put(backend, vid=f"v{n}"):
                record = VoiceRecord(owner="", voice_id=vid, model_id="m", meta={"language": "en"}, features=b"f",
                                     references=[b"r"], consent="ok", consent_by=backend.actor)
                barrier.wait()
                try:
                    backend.put(record, overwrite=False, audit=AuditEvent("register", "", vid, backend.actor, "ok"))
                    outcome.append("won")
                except VoiceExists:
                    outcome.append("ALREADY_EXISTS")

            threads = [threading.Thread(target=put, args=(b,)) for b in replicas]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert sorted(outcome) == ["ALREADY_EXISTS", "won"], outcome
        assert sql(db_url, "SELECT count(*) FROM voices") == [(6,)]
        assert sql(db_url, "SELECT count(*) FROM voice_audit WHERE event = 'register'") == [(6,)]
    finally:
        for b in replicas:
            b.close()


def test_concurrent_register_through_two_replicas_gives_one_voice(tiny_full_bundle, db_url):
    a = start_server(tiny_full_bundle.path, db_url)
    b = start_server(tiny_full_bundle.path, db_url)
    try:
        barrier, codes = threading.Barrier(2), []

        def register(srv):
            with TtsClient(srv.target, retry=None) as c:
                barrier.wait()
                codes.append(code_of(lambda: c.register_voice("same", reference(), REF_TEXT, "zh", consent="ok"))[0])

        threads = [threading.Thread(target=register, args=(s,)) for s in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(c.name for c in codes) == ["ALREADY_EXISTS", "OK"]
        assert sql(db_url, "SELECT voice_id, version FROM voices") == [("same", 1)]
    finally:
        a.stop()
        b.stop()


def test_delete_on_one_replica_stops_synthesis_on_the_others_within_a_second(tiny_full_bundle, db_url):
    a = start_server(tiny_full_bundle.path, db_url)
    b = start_server(tiny_full_bundle.path, db_url)
    try:
        with TtsClient(a.target, retry=None) as ca, TtsClient(b.target, retry=None) as cb:
            ca.register_voice("dv", reference(), REF_TEXT, "zh", consent="ok")
            cache_on(b, cb, "dv")
            invalidations = b.state.registry.invalidations
            t0 = time.monotonic()
            ca.delete_voice("dv")
            while b.state.registry.cached("dv", "") is not None and time.monotonic() - t0 < 5:
                time.sleep(0.005)
            elapsed = time.monotonic() - t0
            assert elapsed < 1.0, f"b still had the deleted voice after {elapsed:.2f} s"
            assert code_of(lambda: cb.stream(TEXT, "dv", max_audio_seconds=0.3))[0] == grpc.StatusCode.NOT_FOUND
            assert b.state.registry.invalidations == invalidations + 1
    finally:
        a.stop()
        b.stop()


def metric(srv, name: str) -> float:
    return srv.state.metrics.registry.get_sample_value(name) or 0.0


def test_database_restart_while_serving(tiny_full_bundle):
    """Cached voices keep synthesizing, voice RPCs say UNAVAILABLE (clearly), and everything comes
    back by itself when the database does — including change notifications."""
    from server.localpg import LocalPostgres

    pg = LocalPostgres()
    pg.start()
    srv = other = None
    try:
        srv = start_server(tiny_full_bundle.path, pg.url)
        other = start_server(tiny_full_bundle.path, pg.url)
        with TtsClient(srv.target, retry=None) as c, TtsClient(other.target, retry=None) as o:
            c.register_voice("alice", reference(), REF_TEXT, "zh", consent="ok")
            o.register_voice("gone", reference(), REF_TEXT, "zh", consent="ok")
            cache_on(srv, c, "gone")
            pg.stop()
            assert c.stream(TEXT, "alice", seed=2, max_audio_seconds=1.0).chunks  # cached: goes on
            for fn in (lambda: c.get_voice("alice"), lambda: c.list_voices(),
                       lambda: c.register_voice("new", reference(), REF_TEXT, "zh", consent="ok"),
                       lambda: c.stream(TEXT, "uncached", max_audio_seconds=0.3)):
                code, details = code_of(fn)
                assert code == grpc.StatusCode.UNAVAILABLE and "voice database" in details, (code, details)
            deadline = time.monotonic() + 10
            while metric(srv, "tts_voice_store_up") != 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert metric(srv, "tts_voice_store_up") == 0
            pg.start()
            deadline, code = time.monotonic() + 60, None
            while time.monotonic() < deadline:
                code, _ = code_of(lambda: c.get_voice("alice"))
                if code == grpc.StatusCode.OK:
                    break
                time.sleep(0.2)
            assert code == grpc.StatusCode.OK
            c.register_voice("new", reference(), REF_TEXT, "zh", consent="ok")
            while metric(srv, "tts_voice_store_up") != 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            o.delete_voice("gone")  # the listener is back: the delete reaches srv's cache
            t0 = time.monotonic()
            while srv.state.registry.cached("gone", "") is not None and time.monotonic() - t0 < 5:
                time.sleep(0.01)
            assert srv.state.registry.cached("gone", "") is None
    finally:
        for s in (srv, other):
            if s is not None:
                s.stop()
        pg.stop(remove=True)


def test_a_cached_voice_costs_no_database_round_trip(tiny_full_bundle, db_url):
    a = start_server(tiny_full_bundle.path, db_url)
    b = start_server(tiny_full_bundle.path, db_url)
    try:
        with TtsClient(a.target) as ca, TtsClient(b.target) as cb:
            ca.register_voice("hot", reference(), REF_TEXT, "zh", consent="ok")
            before = a.state.registry.backend.queries
            for seed in range(4):
                assert ca.stream(TEXT, "hot", seed=seed, max_audio_seconds=0.3).chunks
                ca.synthesize(TEXT, "hot", seed=seed, max_audio_seconds=0.3)
            assert a.state.registry.backend.queries == before  # 8 requests, no statement
            assert metric(a, "tts_voice_store_queries_total") == before
            miss = b.state.registry.backend.queries
            cache_on(b, cb, "hot")  # b's first use reads the database
            assert b.state.registry.backend.queries > miss
            warm = b.state.registry.backend.queries
            assert cb.stream(TEXT, "hot", seed=9, max_audio_seconds=0.3).chunks
            assert b.state.registry.backend.queries == warm
    finally:
        a.stop()
        b.stop()
