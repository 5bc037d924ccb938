"""Fixtures of the scale-out tests: a real PostgreSQL (initdb + pg_ctl, installed from Debian when
missing), one fresh database per test, key files."""
from __future__ import annotations

import itertools
import json

import pytest

from tests.conftest import speechlike, wav_bytes

REF_TEXT = "我们在北京。"
TEXT = "你好，欢迎来到北京。今天天气很好。"
_db_names = itertools.count()


@pytest.fixture(scope="session")
def postgres():
    from gsv.errors import GsvError
    from server.localpg import LocalPostgres

    try:
        pg = LocalPostgres()
        pg.start()
    except GsvError as e:
        pytest.skip(f"PostgreSQL cannot be installed or started here: {e}")
    yield pg
    pg.stop(remove=True)


def new_database(pg) -> str:
    """The URL of a new, empty database on ``pg``."""
    import psycopg

    name = f"t{next(_db_names)}"
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return pg.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture()
def db_url(postgres) -> str:
    return new_database(postgres)


def sql(url: str, query: str, params=None) -> list[tuple]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


@pytest.fixture()
def key_file(tmp_path):
    from gsv.voicestore.crypto import KeyRing

    path = tmp_path / "voice-keys.json"
    KeyRing.add_key(path, "k1")
    return path


def reference() -> bytes:
    x, sr = speechlike()
    return wav_bytes(x, sr)


def keyfile_ids(path) -> list[str]:
    return sorted(json.loads(path.read_text())["keys"])
