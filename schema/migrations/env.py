"""Alembic environment for dagrun's store.

dagrun runs migrations programmatically (``dagrun db upgrade``, and when a
run first writes to a database): the caller passes an open connection in
``config.attributes["connection"]``, and dagrun's own version table (and, on
PostgreSQL, its schema) in ``version_table`` / ``version_table_schema``, so an
application's Alembic history in the same database is never touched.
``--sql`` (offline) mode renders DDL for the URL in ``sqlalchemy.url``.
"""

from alembic import context

from dagrun.store.models import Base

config = context.config
target_metadata = Base.metadata
version_options = {"version_table": config.attributes.get("version_table", "dagrun_alembic_version"),
                   "version_table_schema": config.attributes.get("version_table_schema")}


def run_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True, **version_options)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes["connection"]
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite", **version_options)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
