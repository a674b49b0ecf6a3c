"""Schema migrations (Alembic) for the store: dagrun's own history.

``upgrade(engine)`` brings a database to the newest revision; it runs when a
run first writes to a database in a process (:func:`~.engine.writable`) and
from ``dagrun db upgrade``. dagrun keeps its own version table, so it never
touches an application's Alembic history in the same database:

- on PostgreSQL, in dagrun's schema (``dagrun.alembic_version``); the
  migrations run with ``search_path`` set to that schema. A store made
  before dagrun had a schema of its own (its tables and an
  ``alembic_version`` holding a dagrun revision in ``public``) is moved
  there first;
- on SQLite, in ``dagrun_alembic_version``; an older store's
  ``alembic_version`` holding a dagrun revision is taken over.

A database whose tables were made before migrations existed (``create_all``,
no version table) is stamped at the first revision, then upgraded.
``ddl(dialect)`` renders the SQL of every migration (``schema/postgres.sql``
is its output for PostgreSQL).
"""

from __future__ import annotations

import functools
import io
import re
from typing import Any

from sqlalchemy import Engine, inspect, text

from ..compile.loader import package_dir
from .engine import DEFAULT_SCHEMA, schema_of

FIRST_REVISION = "0001"
TABLES = ("template_actions", "workspace_templates", "template_action_sequences", "provisioning_runs",
          "workspace_action_executions")


def _config() -> Any:
    from alembic.config import Config  # imported only to migrate: a run on a current store never needs it
    config = Config()
    config.set_main_option("script_location", str(package_dir("schema") / "migrations"))
    return config


def version_table(dialect: str) -> str:
    return "alembic_version" if dialect == "postgresql" else "dagrun_alembic_version"


def revisions() -> set[str]:
    from alembic.script import ScriptDirectory
    return {r.revision for r in ScriptDirectory.from_config(_config()).walk_revisions()}


def upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command
    config = _config()
    schema = schema_of(engine)
    with engine.begin() as connection:
        dialect = connection.dialect.name
        if dialect == "postgresql":  # two processes starting at once migrate one after the other
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7061626)")
            connection.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            _adopt_public_tables(connection, schema)
            connection.exec_driver_sql(f'SET LOCAL search_path TO "{schema}"')
        config.attributes.update(connection=connection, version_table=version_table(dialect),
                                 version_table_schema=schema)
        tables = set(inspect(connection).get_table_names(schema=schema))
        if dialect != "postgresql":
            _adopt_old_version_table(connection, tables)
            tables = set(inspect(connection).get_table_names())
        if version_table(dialect) not in tables and "provisioning_runs" in tables:
            command.stamp(config, FIRST_REVISION)
        command.upgrade(config, revision)


def _adopt_public_tables(connection, schema: str) -> None:  # noqa: ANN001
    """Move a store made before dagrun had its own schema out of ``public``."""
    inspector = inspect(connection)
    if schema == "public" or "provisioning_runs" in inspector.get_table_names(schema=schema):
        return
    public = set(inspector.get_table_names(schema="public"))
    if not set(TABLES) <= public or "alembic_version" not in public:
        return
    versions = [row[0] for row in connection.exec_driver_sql("SELECT version_num FROM public.alembic_version")]
    if not versions or not set(versions) <= revisions():
        return  # that history is an application's, not dagrun's
    for table in TABLES:
        connection.exec_driver_sql(f'ALTER TABLE public."{table}" SET SCHEMA "{schema}"')
    connection.exec_driver_sql(f'ALTER TABLE public.alembic_version SET SCHEMA "{schema}"')


def _adopt_old_version_table(connection, tables: set[str]) -> None:  # noqa: ANN001
    """SQLite stores of earlier versions kept dagrun's revision in ``alembic_version``."""
    if "dagrun_alembic_version" in tables or "alembic_version" not in tables or "provisioning_runs" not in tables:
        return
    versions = [row[0] for row in connection.exec_driver_sql("SELECT version_num FROM alembic_version")]
    if versions and set(versions) <= revisions():
        connection.exec_driver_sql("ALTER TABLE alembic_version RENAME TO dagrun_alembic_version")


_REVISION = re.compile(r"^(down_)?revision\b[^=\n]*=\s*['\"]?(\w+)", re.MULTILINE)


@functools.cache
def head() -> str:
    """The newest revision of the shipped migrations: the one no other
    revises (read from the files, without Alembic)."""
    revised, seen = set(), set()
    for path in (package_dir("schema") / "migrations" / "versions").glob("*.py"):
        for down, name in _REVISION.findall(path.read_text(encoding="utf-8")):
            (revised if down else seen).add(name)
    heads = seen - revised
    if len(heads) != 1:
        raise RuntimeError(f"the shipped migrations have {len(heads)} heads: {sorted(heads)}")
    return heads.pop()


def current(engine: Engine) -> str | None:
    """The store's revision (None when it has no dagrun tables yet)."""
    with engine.connect() as connection:
        dialect = connection.dialect.name
        schema = schema_of(engine)
        if version_table(dialect) not in inspect(connection).get_table_names(schema=schema):
            return None
        table = f'"{schema}".{version_table(dialect)}' if schema else version_table(dialect)
        rows = connection.execute(text(f"SELECT version_num FROM {table}")).all()
        return rows[0][0] if rows else None


def ddl(dialect: str = "postgresql") -> str:
    from alembic import command
    config = _config()
    buffer = io.StringIO()
    config.output_buffer = buffer
    config.set_main_option("sqlalchemy.url", f"{dialect}://")
    config.attributes.update(version_table=version_table(dialect))
    command.upgrade(config, "head", sql=True)
    sql = buffer.getvalue()
    if dialect == "postgresql":  # dagrun's tables live in a schema of their own
        sql = f'CREATE SCHEMA IF NOT EXISTS "{DEFAULT_SCHEMA}";\nSET search_path TO "{DEFAULT_SCHEMA}";\n\n' + sql
    return sql
