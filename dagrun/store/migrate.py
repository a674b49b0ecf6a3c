"""Schema migrations (Alembic) for the store.

``upgrade(engine)`` brings a database to the newest revision; it runs on the
first use of a database in a process and from ``dagrun db upgrade``. A
database whose tables were made before migrations existed (``create_all``,
no ``alembic_version``) is stamped at the first revision, then upgraded.
``ddl(dialect)`` renders the SQL of every migration (``schema/postgres.sql``
is its output for PostgreSQL).
"""

from __future__ import annotations

import io

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, inspect

from ..compile.loader import package_dir

FIRST_REVISION = "0001"


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(package_dir("schema") / "migrations"))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    config = _config()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":  # two processes starting at once migrate one after the other
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7061626)")
        config.attributes["connection"] = connection
        tables = set(inspect(connection).get_table_names())
        if "alembic_version" not in tables and "provisioning_runs" in tables:
            command.stamp(config, FIRST_REVISION)
        command.upgrade(config, revision)


def head() -> str:
    """The newest revision of the shipped migrations."""
    from alembic.script import ScriptDirectory
    return ScriptDirectory.from_config(_config()).get_current_head()


def current(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def ddl(dialect: str = "postgresql") -> str:
    config = _config()
    buffer = io.StringIO()
    config.output_buffer = buffer
    config.set_main_option("sqlalchemy.url", f"{dialect}://")
    command.upgrade(config, "head", sql=True)
    return buffer.getvalue()
