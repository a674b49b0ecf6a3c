"""The database: where it is, how to connect, and which schema dagrun's
tables live in.

SQLite by default (a file in dagrun's data folder; zero set-up), any
SQLAlchemy URL by option or ``DAGRUN_DATABASE_URL`` (PostgreSQL in
production). SQLite runs in WAL mode so another process can read a run's
progress while it is being written, and its file is readable by its owner
only.

On PostgreSQL dagrun's tables live in a schema of their own (``dagrun`` by
default; ``DAGRUN_SCHEMA``, the URL option ``?dagrun_schema=name`` or the
``schema=`` keyword choose another), with their own migration history, so
dagrun can share the database of the application that provisions
workspaces: its tables and its ``alembic_version`` are never touched. The
models are written without a schema; the engine maps them into it
(``schema_translate_map``).

Opening an engine never changes the database. Writers call
:func:`writable` (migrate to the newest schema on first use, under a lock);
readers call :func:`readable`, which says to run ``dagrun db upgrade`` when
the schema is older than this dagrun. Every database failure becomes one
:class:`~dagrun.errors.StoreError` naming the database, password masked.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import threading
from pathlib import Path
from typing import Iterator

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from ..errors import InputError, StoreError

DEFAULT_SCHEMA = "dagrun"
SCHEMA_OPTION = "dagrun_schema"
_IDENTIFIER = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,62}\Z")
_schemas: dict[int, str | None] = {}  # id(engine) -> the schema its tables live in


from ..locations import default_database_url  # noqa: E402,F401 - where it always was


def normalize_url(url: str) -> str:
    """Plain ``postgresql://`` URLs use psycopg2, the driver dagrun depends on
    (newer SQLAlchemy releases would otherwise pick psycopg 3)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def with_schema(url: str, schema: str | None) -> str:
    """``url`` naming the PostgreSQL schema dagrun's tables live in (the
    ``database_schema=`` keyword of the API, carried as the URL option)."""
    if not schema:
        return url
    try:
        return make_url(url).update_query_dict({SCHEMA_OPTION: schema}).render_as_string(hide_password=False)
    except ArgumentError as exc:
        raise InputError(f"bad database URL {describe_url(url)!r}: {exc}") from None


def describe_url(url: str) -> str:
    """The URL without its password (in the user part or in the query:
    ``?password=``, ``sslpassword``, ``passfile``), for output."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # not a URL dagrun can read: still never show a password in it
        return re.sub(r"(?i)(password\s*=\s*)\S+|(//[^/:@\s]*:)[^@/\s]*(@)", _hide, url)
    hidden = {k: "***" for k in parsed.query if k.lower() in _SECRET_QUERY_KEYS}
    return parsed.update_query_dict(hidden).render_as_string(hide_password=True) if hidden else \
        parsed.render_as_string(hide_password=True)


def _hide(match: "re.Match[str]") -> str:
    if match.group(1):
        return match.group(1) + "***"
    return f"{match.group(2)}***{match.group(3)}"


_SECRET_QUERY_KEYS = frozenset({"password", "sslpassword", "passfile", "sslkey", "token"})


def schema_of(engine: Engine) -> str | None:
    """The schema dagrun's tables live in (None on SQLite)."""
    return _schemas.get(id(engine))


def engine_for(url: str, *, schema: str | None = None) -> Engine:
    """One engine per URL (and schema) and process. Never changes the database."""
    return _engine(normalize_url(url), schema or os.environ.get("DAGRUN_SCHEMA") or None)


@functools.cache
def _engine(url: str, schema: str | None) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise InputError(f"bad database URL {describe_url(url)!r}: {exc}") from None
    if SCHEMA_OPTION in parsed.query:
        schema = schema or str(parsed.query[SCHEMA_OPTION])
        parsed = parsed.difference_update_query([SCHEMA_OPTION])
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        _private_file(Path(parsed.database))
    options: dict = {}
    if parsed.get_backend_name() == "postgresql":
        from ..libpq import read_only_root_files
        read_only_root_files()  # before libpq first connects
        schema = schema or DEFAULT_SCHEMA
        if not _IDENTIFIER.match(schema):
            raise InputError(f"bad schema name {schema!r} (letters, digits and _)")
        options["executemany_mode"] = "values_plus_batch"  # batched UPDATEs: one round-trip, not one per row
        options["execution_options"] = {"schema_translate_map": {None: schema}}
    else:
        schema = None
    try:
        # No pre-ping: it costs a round-trip per checkout, and the writer retries
        # on a dropped connection anyway (its first use raises, is invalidated).
        engine = create_engine(parsed, **options)
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
    _schemas[id(engine)] = schema
    return engine


_ready: set[int] = set()
_migrating = threading.Lock()  # Alembic's command context is module-global: one migration at a time


def writable(url: str, *, schema: str | None = None) -> Engine:
    """The engine of a store that is about to be written: its schema is
    created or migrated to the newest revision (once per process, even when
    a service's first requests arrive together)."""
    engine = engine_for(url, schema=schema)
    if id(engine) not in _ready:
        from .migrate import current, head, upgrade
        with _migrating, store_errors(url, "cannot open database"):
            if id(engine) not in _ready and current(engine) != head():  # Alembic only when there is work
                upgrade(engine)
            _ready.add(id(engine))
    return engine


def readable(url: str, *, schema: str | None = None) -> Engine:
    """The engine of a store to read: refused with what to do when the
    database holds no dagrun records yet or an older schema. Reading never
    migrates."""
    engine = engine_for(url, schema=schema)
    if id(engine) not in _ready:
        from .migrate import current, head
        with store_errors(url, "cannot read database"):
            revision = current(engine)
        if revision is None:
            raise StoreError(f"{describe_url(url)} holds no dagrun records yet (run a template, or "
                             "dagrun db upgrade to create the tables)")
        if revision != head():
            raise StoreError(f"{describe_url(url)} has dagrun's schema at revision {revision}, older than this "
                             f"dagrun's ({head()}): run dagrun db upgrade")
        _ready.add(id(engine))
    return engine


@contextlib.contextmanager
def store_errors(url: str, what: str = "database error") -> Iterator[None]:
    """Database failures as one StoreError naming the database."""
    try:
        yield
    except StoreError:
        raise
    except SQLAlchemyError as exc:
        reason = str(exc.orig if getattr(exc, "orig", None) is not None else exc).strip().splitlines()
        raise StoreError(f"{what} {describe_url(url)}: {reason[0] if reason else type(exc).__name__}") from None


def _private_file(path: Path) -> None:
    """Create the SQLite file (and its folder) readable by its owner only:
    records hold configs, output and errors. SQLite gives its -wal and -shm
    files the database file's permissions. Folders are made all the way
    down only for dagrun's own data folder: a mistyped path given (as root)
    gets one clear error, not a new tree of folders where it points."""
    from ..locations import data_dir
    try:
        if not path.parent.is_dir() and path.parent != data_dir() and not path.parent.parent.is_dir():
            raise StoreError(f"cannot open database {path}: there is no folder {path.parent.parent}")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            mode = os.fstat(fd).st_mode
        finally:
            os.close(fd)
    except OSError as exc:
        raise StoreError(f"cannot open database {path}: {exc.strerror or exc}") from None
    if mode & 0o077:
        # Not changed: whoever made it so may mean a group to read it. Said, once per process.
        logging.getLogger("dagrun.store").warning(
            "database %s can be read by other users (mode %o): its records hold configs, output and digests "
            "of secrets given again at resume (chmod 600 %s)", path, mode & 0o777, path)
