from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

import pytest

from dagrun.run.logs import configure


@pytest.fixture(autouse=True, scope="session")
def _quiet_logs():
    configure(json=True, level=logging.ERROR)


@pytest.fixture(autouse=True, scope="session")
def _workspace_roots(tmp_path_factory):
    """As root, workspace homes must be inside allowed folders: the tests'
    homes are in pytest's temporary folder, /tmp (folders other users can
    read) and /home (throwaway users'), so that is the operator's choice here
    (subprocesses inherit it). Tests of the rule itself set their own."""
    from dagrun.workspace import HOME_ROOTS_ENV
    os.environ[HOME_ROOTS_ENV] = os.pathsep.join([str(tmp_path_factory.getbasetemp()), "/home", "/tmp"])
    yield
    os.environ.pop(HOME_ROOTS_ENV, None)


@pytest.fixture(autouse=True, scope="session")
def _checkout_readable_by_test_users():
    """Sandboxed workers import the tests' own handler modules (tests.helpers)
    as a throwaway user, who must be able to enter the checkout: a clone in
    a private folder (mktemp -d is 0700) is opened to others for reading."""
    root = Path(__file__).resolve().parent.parent
    if os.geteuid() == 0 and not root.stat().st_mode & 0o001:
        root.chmod(root.stat().st_mode | 0o055)


@pytest.fixture(autouse=True, scope="session")
def _readable_temp(tmp_path_factory):
    """pytest makes its temporary folders private to root (0700). As root,
    dagrun reads a path a value names outside the home (a wheelhouse, a local
    repository) only if every user could read it, so the tests' fixtures
    live in folders everyone may read, like a system wheelhouse would; the
    tests of that rule make their own private folders."""
    base = tmp_path_factory.getbasetemp()
    for folder in (base.parent, base):
        folder.chmod(0o755)


@pytest.fixture
def tmp_path(tmp_path):
    tmp_path.chmod(0o755)
    return tmp_path


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite:///{tmp_path / 'dagrun.db'}"


@pytest.fixture
def home(tmp_path):
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def workspace(home):
    return {"id": "ws1", "name": "alice", "db_name": "alice_db", "home_dir": str(home)}


PG_ADMIN_URL = os.environ.get("DAGRUN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


class PgAdmin:
    """An autocommit admin connection to the real server that reconnects
    (a test restarts the server)."""

    def __init__(self, url: str):
        import psycopg2
        self._connect = lambda: psycopg2.connect(url, connect_timeout=5)
        self.conn = self._connect()
        self.conn.autocommit = True

    def cursor(self):
        import psycopg2
        try:
            with self.conn.cursor() as cur:
                cur.execute("SELECT 1")
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            self.conn = self._connect()
            self.conn.autocommit = True
        return self.conn.cursor()

    def close(self):
        self.conn.close()


@pytest.fixture(scope="session")
def pg_server():
    """The machine's real PostgreSQL server. In CI it must be there: a
    missing server fails the tests instead of skipping them."""
    import psycopg2
    try:
        admin = PgAdmin(PG_ADMIN_URL)
    except psycopg2.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}")
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL} (set CI=1 to make this fatal)")
    yield admin
    admin.close()


@pytest.fixture
def pg_url(pg_server):
    """A fresh database on the real server, dropped afterwards."""
    from sqlalchemy.engine import make_url
    name = f"dagrun_test_{uuid.uuid4().hex[:12]}"
    with pg_server.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    from dagrun.store.engine import engine_for
    engine_for(url).dispose()  # close the pooled connections before the drop
    with pg_server.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
