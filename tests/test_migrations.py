"""Alembic migrations: fresh databases reach the models' schema on SQLite
and the real PostgreSQL, pre-migration databases are adopted, and the
shipped DDL is what the migrations produce."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from dagrun.store import migrate
from dagrun.compile.loader import package_dir
from dagrun.store.models import Base
from dagrun.store.engine import engine_for


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_fresh_database_matches_the_models(store, request):
    url = request.getfixturevalue("db_url" if store == "sqlite" else "pg_url")
    engine = engine_for(url)
    assert migrate.current(engine) == migrate.head()
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_a_database_from_before_migrations_is_adopted(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = create_engine(url)
    migrate.upgrade(old, "0001")  # the schema create_all made before migrations existed
    with old.begin() as conn:
        conn.exec_driver_sql("DROP TABLE alembic_version")
    old.dispose()
    engine = engine_for(url)
    assert migrate.current(engine) == migrate.head()
    columns = {c["name"] for c in inspect(engine).get_columns("provisioning_runs")}
    assert {"workspace", "variables", "owner", "max_workers"} <= columns


def test_shipped_postgres_ddl_is_up_to_date():
    shipped = (package_dir("schema") / "postgres.sql").read_text().split("\n", 1)[1]
    assert shipped == migrate.ddl("postgresql")
