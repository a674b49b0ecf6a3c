"""The database: where it is, how to connect, and the schema on first use.

SQLite by default (a file under ``$XDG_DATA_HOME/dagrun``; zero set-up), any
SQLAlchemy URL by option or ``DAGRUN_DATABASE_URL`` (Postgres in
production). SQLite runs in WAL mode so another process can read a run's
progress while it is being written.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from ..errors import InputError, StoreError


def default_database_url() -> str:
    url = os.environ.get("DAGRUN_DATABASE_URL")
    if url:
        return url
    from ..locations import data_dir
    return f"sqlite:///{data_dir() / 'dagrun.db'}"


def normalize_url(url: str) -> str:
    """Plain ``postgresql://`` URLs use psycopg2, the driver dagrun depends on
    (newer SQLAlchemy releases would otherwise pick psycopg 3)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def describe_url(url: str) -> str:
    """The URL without its password, for output."""
    try:
        from sqlalchemy.engine import make_url
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def engine_for(url: str) -> Engine:
    """One engine per URL and process; the schema is migrated to the newest
    revision on first use."""
    return _engine(normalize_url(url))


@functools.cache
def _engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):].split("?", 1)[0]
        if path and path != ":memory:":
            _private_file(Path(path))
    try:
        options = {}
        if url.startswith("postgresql+psycopg2"):
            options["executemany_mode"] = "values_plus_batch"  # batched UPDATEs: one round-trip, not one per row
        # No pre-ping: it costs a round-trip per checkout, and the writer retries
        # on a dropped connection anyway (its first use raises, is invalidated).
        engine = create_engine(url, **options)
    except (ArgumentError, ImportError) as exc:
        raise InputError(f"bad database URL {describe_url(url)!r}: {exc}") from None
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn, _record):  # noqa: ANN001
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")  # durable across crashes of the process in WAL mode
            cur.execute("PRAGMA busy_timeout=10000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
    try:
        from .migrate import upgrade
        upgrade(engine)
    except SQLAlchemyError as exc:
        _engine.cache_clear()
        raise StoreError(f"cannot open database {describe_url(url)}: {exc.__class__.__name__}: "
                         f"{str(exc).splitlines()[0]}") from None
    return engine


def _private_file(path: Path) -> None:
    """Create the SQLite file (and its folder) readable by its owner only:
    records hold configs, output and errors. SQLite gives its -wal and -shm
    files the database file's permissions."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    except OSError as exc:
        raise StoreError(f"cannot open database {path}: {exc.strerror or exc}") from None
