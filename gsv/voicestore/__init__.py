"""Voice store backends behind one interface (:class:`gsv.voicestore.base.VoiceBackend`).

``--voices DIR`` is the embedded folder store (the default, one process); ``--voices
postgresql://USER@HOST:PORT/DB`` is PostgreSQL, shared by any number of server replicas.  Voices
are encrypted at rest with AES-GCM when a key file is given (:mod:`gsv.voicestore.crypto`); both
backends keep an append-only audit trail.
"""
from __future__ import annotations

from pathlib import Path

DATABASE_SCHEMES = ("postgresql://", "postgres://")


def is_database_url(spec: str | Path) -> bool:
    return isinstance(spec, str) and spec.startswith(DATABASE_SCHEMES)


def open_backend(spec: str | Path, *, scoped: bool = False, actor: str = ""):
    """The backend for ``--voices``: a PostgreSQL URL or a folder (created if missing).

    ``scoped``: owners have their own namespaces (bearer tokens on); the folder store moves voices
    written before namespaces into them."""
    if is_database_url(spec):
        try:
            from gsv.voicestore.postgres import PostgresBackend
        except ImportError as e:
            from gsv.errors import GsvError

            raise GsvError(f"--voices {spec.split('@')[-1]} needs psycopg 3 and psycopg_pool "
                           f"(pip install 'psycopg[binary]' psycopg_pool): {e}") from None
        return PostgresBackend(str(spec), actor=actor)
    if isinstance(spec, str) and "://" in spec:
        from gsv.errors import GsvError

        raise GsvError(f"--voices {spec.split('://')[0]}://...: only folders and postgresql:// URLs are supported")
    from gsv.voicestore.folder import FolderBackend

    return FolderBackend(spec, scoped=scoped, actor=actor)
