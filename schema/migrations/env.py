"""Alembic environment for dagrun's store.

dagrun runs migrations programmatically (``dagrun db upgrade``, and on first
use of a database): the caller passes an open connection in
``config.attributes["connection"]``. ``--sql`` (offline) mode renders DDL for
the URL in ``sqlalchemy.url``.
"""

from alembic import context

from dagrun.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes["connection"]
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
