"""The store's schema: Alembic migrations of dagrun's own, in a PostgreSQL
schema of their own, beside an application's tables and history; stores of
earlier versions are adopted; reading never migrates."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg2
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from dagrun import run_template
from dagrun.compile.loader import package_dir
from dagrun.errors import StoreError
from dagrun.store import migrate
from dagrun.store.engine import engine_for, readable, writable
from dagrun.store.models import Base
from tests.helpers import script_step, template


def _diff(engine):
    with engine.connect() as conn:
        opts = {"version_table": migrate.version_table(conn.dialect.name)}
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET search_path TO dagrun")
        return compare_metadata(MigrationContext.configure(conn, opts=opts), Base.metadata)


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_fresh_database_matches_the_models(store, request):
    url = request.getfixturevalue("db_url" if store == "sqlite" else "pg_url")
    engine = writable(url)
    assert migrate.current(engine) == migrate.head()
    assert _diff(engine) == []


def test_a_database_from_before_migrations_is_adopted(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = create_engine(url)
    migrate.upgrade(old, "0001")  # the schema create_all made before migrations existed
    with old.begin() as conn:
        conn.exec_driver_sql("DROP TABLE dagrun_alembic_version")
    old.dispose()
    engine = writable(url)
    assert migrate.current(engine) == migrate.head()
    columns = {c["name"] for c in inspect(engine).get_columns("provisioning_runs")}
    assert {"workspace", "variables", "owner", "max_workers", "fleet_id"} <= columns


def test_an_older_sqlite_store_keeps_its_history(tmp_path):
    """dagrun 0.1 kept its revision in alembic_version: taken over, then upgraded."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = create_engine(url)
    migrate.upgrade(old, "0002")
    with old.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE dagrun_alembic_version RENAME TO alembic_version")
    old.dispose()
    engine = writable(url)
    tables = set(inspect(engine).get_table_names())
    assert "alembic_version" not in tables and migrate.current(engine) == migrate.head()


def test_dagrun_shares_an_application_database(pg_url, pg_server, tmp_path, workspace):
    """A Flask-Migrate managed database: its own alembic_version at a foreign
    revision and its own workspace_templates table. dagrun's tables go to the
    dagrun schema with dagrun's own history; the application's stay as they were."""
    app = psycopg2.connect(pg_url)
    app.autocommit = True
    with app.cursor() as cur:
        cur.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        cur.execute("INSERT INTO alembic_version VALUES ('4f2a9c1b7e3d')")
        cur.execute("CREATE TABLE workspace_templates (id SERIAL PRIMARY KEY, title TEXT)")
        cur.execute("INSERT INTO workspace_templates (title) VALUES ('the app''s own')")
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "dagrun", "db", "upgrade", "--db", pg_url], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert f"at revision {migrate.head()}" in out.stdout
    result = run_template(template(script_step(10, "echo hi", id="s")), workspace, database_url=pg_url)
    assert result.success, result.error
    with app.cursor() as cur:
        cur.execute("SELECT version_num FROM public.alembic_version")
        assert cur.fetchall() == [("4f2a9c1b7e3d",)]
        cur.execute("SELECT title FROM public.workspace_templates")
        assert cur.fetchall() == [("the app's own",)]
        cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'dagrun' ORDER BY 1")
        assert [r[0] for r in cur.fetchall()] == sorted(["alembic_version", *migrate.TABLES])
        cur.execute("SELECT count(*) FROM dagrun.workspace_action_executions")
        assert cur.fetchone() == (1,)
    app.close()


def test_a_schema_of_ones_own_choosing(pg_url, pg_server, workspace, monkeypatch):
    url = pg_url + "?dagrun_schema=provisioning"
    assert run_template(template(script_step(10, "true")), workspace, database_url=url).success
    assert run_template(template(script_step(10, "true")), {**workspace, "id": "k"}, database_url=pg_url,
                        database_schema="by_keyword").success
    monkeypatch.setenv("DAGRUN_SCHEMA", "from_env")
    assert run_template(template(script_step(10, "true")), {**workspace, "id": "e"}, database_url=pg_url).success
    app = psycopg2.connect(pg_url)
    with app.cursor() as cur:
        for schema in ("provisioning", "by_keyword", "from_env"):
            cur.execute(f"SELECT workspace_id FROM {schema}.provisioning_runs")
            assert len(cur.fetchall()) == 1, schema
    app.close()


def test_a_store_made_before_dagrun_had_a_schema_is_moved_into_it(pg_url):
    legacy = engine_for(pg_url, schema="public")  # the 0.1 layout: dagrun's tables and history in public
    migrate.upgrade(legacy, "0002")
    with legacy.begin() as conn:
        conn.exec_driver_sql("INSERT INTO public.provisioning_runs (id, workspace_id, template_name, "
                             "template_version, status, total_steps, completed_steps, failed_steps, skipped_steps) "
                             "VALUES ('r1', 'w', 't', '1', 'failed', 1, 0, 1, 0)")
    legacy.dispose()
    engine = writable(pg_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT id FROM dagrun.provisioning_runs").all() == [("r1",)]
        assert "provisioning_runs" not in inspect(conn).get_table_names(schema="public")
    assert migrate.current(engine) == migrate.head()


def test_reading_never_migrates(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    with pytest.raises(StoreError, match="holds no dagrun records yet"):
        readable(url)
    old = create_engine(url)
    migrate.upgrade(old, "0002")
    old.dispose()
    with pytest.raises(StoreError, match="revision 0002, older than this dagrun's .*: run dagrun db upgrade"):
        readable(url)
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "dagrun", "runs", "--db", url], capture_output=True, text=True,
                         env=env)
    assert out.returncode == 3 and "run dagrun db upgrade" in out.stderr and "Traceback" not in out.stderr
    assert migrate.current(create_engine(url)) == "0002"  # untouched


def test_an_unreachable_database_is_one_line_with_its_password_masked(tmp_path):
    url = "postgresql://dagrun:hunter2@127.0.0.1:1/nowhere"
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path)}
    for command in (["runs"], ["db", "upgrade"], ["run", "demo"]):
        out = subprocess.run([sys.executable, "-m", "dagrun", *command, "--db", url], capture_output=True, text=True,
                             env=env, cwd=tmp_path)
        assert out.returncode == 3, out.stderr
        assert "hunter2" not in out.stderr and "dagrun:***@127.0.0.1:1/nowhere" in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1


def test_shipped_postgres_ddl_is_up_to_date():
    shipped = (package_dir("schema") / "postgres.sql").read_text().split("\n", 1)[1]
    assert shipped == migrate.ddl("postgresql")


def test_the_head_revision_read_from_the_files_is_alembics():
    from alembic.script import ScriptDirectory

    from dagrun.store.migrate import _config, head, revisions
    assert head() == ScriptDirectory.from_config(_config()).get_current_head() == max(revisions())
