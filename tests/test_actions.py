"""The standard action library, each against the real thing on this machine:
dpkg/apt (already-installed packages and apt's simulation, so CI changes
nothing), useradd, the local PostgreSQL server, real venvs and pip, git
clones of local bare repositories, VS Code files. The VS Code CLI cannot be
installed here: a fake `code` script stands in for it (said where used)."""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

import pytest
import yaml

from dagrun import InputError, TemplateError, compile_template
from dagrun import run_template as _run_template
from dagrun.run.outcome import StepStatus
from tests.helpers import action, script_step, step, template


def run_template(*args, **kwargs):
    """User-defined actions here stand in for steps that fail, flake or say something: what is
    tested is not the sandbox (tests/test_containment.py), so they run unconfined."""
    kwargs.setdefault("sandbox", False)
    return _run_template(*args, **kwargs)


def run(doc, workspace, **kw):
    kw.setdefault("record", False)
    return run_template(doc, workspace, **kw)


FAIL = [action("fail", "tests.helpers:boom")]


# -- system -------------------------------------------------------------------

def test_packages_already_installed_run_nothing(workspace):
    result = run(template(step(10, "install_system_packages", action_config={"packages": ["bash", "coreutils"]})),
                 workspace)
    data = result.steps["install_system_packages"].result
    assert result.success, result.error
    assert data["already_installed"] == ["bash", "coreutils"] and data["installed"] == [] and data["commands"] == []


def test_package_install_command_line_in_simulation(workspace):
    result = run(template(step(10, "install_system_packages",
                               action_config={"packages": ["bash", "cowsay"], "simulate": True})), workspace)
    s = result.steps["install_system_packages"]
    known = subprocess.run(["apt-cache", "show", "cowsay"], capture_output=True).returncode == 0
    if known:  # apt's package lists are present: the simulation succeeds and installs nothing
        assert s.result["commands"] == [["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=300", "-s", "install",
                                         "--no-install-recommends", "--no-remove", "cowsay"]]
        assert result.success and s.result["installed"] == []
        assert "Inst cowsay" in s.stdout
        assert subprocess.run(["dpkg-query", "-W", "cowsay"], capture_output=True).returncode != 0
    else:  # no package lists on this machine: said before apt runs
        assert s.status is StepStatus.failed and "no package named cowsay" in s.error


def test_a_package_name_is_never_a_pattern_nor_a_removal(workspace):
    """(helper-53) apt reads a name it does not know as a pattern (lib.+:
    every lib package) or with an action (less-: remove less), and removes
    packages that conflict with what it installs: a value in `packages`
    could remove the machine's PostgreSQL. Names must be packages apt knows,
    and apt runs with --no-remove."""
    if subprocess.run(["apt-cache", "show", "less"], capture_output=True).returncode != 0:
        pytest.skip("this machine has no apt package lists (apt-get update)")  # CI runs apt-get update first
    for name in ("less-", "lib.+", "postgresql-15-", "bash+x"):
        result = run(template(step(10, "install_system_packages", max_retries=1,
                                   action_config={"packages": ["cowsay", name], "simulate": True})), workspace)
        s = result.steps["install_system_packages"]
        assert s.status is StepStatus.failed and s.error.startswith(f"no package named {name} (a name is never a "
                                                                    "pattern"), (name, s.error)
        assert s.result is None or s.result.get("commands") in (None, [])
    # A virtual package is a name apt knows (helper-55: libz-dev, awk were refused).
    result = run(template(step(10, "install_system_packages", max_retries=1, action_config={
        "packages": ["awk", "libz-dev"], "simulate": True})), workspace)
    assert "no package named" not in (result.steps["install_system_packages"].error or "")
    # A name with a version or an architecture is the name's.
    result = run(template(step(10, "install_system_packages", max_retries=1, action_config={
        "packages": ["cowsay=0", "sl:amd64"], "simulate": True})), workspace)
    assert "Version '0' for 'cowsay' was not found" in result.steps["install_system_packages"].stderr  # apt's say


def test_package_steps_share_the_dpkg_lock(workspace):
    from dagrun import compile_template
    plan = compile_template(template(step(10, "install_system_packages", id="a", action_config={"packages": ["bash"]}),
                                     step(20, "install_system_packages", id="b", action_config={"packages": ["git"]})))
    assert dict(plan.lock_capacity) == {"dpkg": 1}
    assert plan.predecessors["b"] == ()


def test_sudo_actions_are_refused_unless_allowed(workspace, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # pretend not to be root: the check runs before anything
    doc = template(step(10, "install_system_packages", action_config={"packages": ["bash"]}))
    with pytest.raises(InputError, match="steps install_system_packages need root"):
        run(doc, workspace)


def test_disk_space_is_checked_before_the_step_runs(workspace):
    acts = [action("huge", disk_space_required_mb=10 ** 12)]
    result = run(template(step(10, "huge")), workspace, actions=acts)
    assert result.steps["huge"].status is StepStatus.failed
    assert "needs 1000000000000 MB free" in result.steps["huge"].error


@pytest.mark.skipif(os.geteuid() != 0, reason="useradd needs root (CI runs as root)")
def test_create_linux_user_with_key_and_rollback(workspace):
    name = f"dgr{uuid.uuid4().hex[:8]}"
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI test@dagrun"
    try:
        doc = template(step(10, "create_linux_user", action_config={"username": name, "ssh_public_key": key}))
        result = run(doc, workspace)
        assert result.success, result.error
        user = pwd.getpwnam(name)
        keys = Path(user.pw_dir) / ".ssh" / "authorized_keys"
        assert keys.read_text() == key + "\n" and oct(keys.stat().st_mode)[-3:] == "600"
        assert keys.stat().st_uid == user.pw_uid
        # a second run finds the user: nothing created, so a failure afterwards removes nothing
        doc2 = template(step(10, "create_linux_user", action_config={"username": name}), step(20, "fail", requires=[10]))
        assert run(doc2, workspace, actions=FAIL).status.value == "failed"
        assert pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", "--remove", name], capture_output=True)
    other = f"dgr{uuid.uuid4().hex[:8]}"
    doc = template(step(10, "create_linux_user", action_config={"username": other}), step(20, "fail", requires=[10]))
    result = run(doc, workspace, actions=FAIL)
    assert result.steps["create_linux_user"].status is StepStatus.rolled_back
    with pytest.raises(KeyError):
        pwd.getpwnam(other)


# -- database -----------------------------------------------------------------

def _exists(conn, query, name):
    with conn.cursor() as cur:
        cur.execute(query, (name,))
        return cur.fetchone() is not None


ROLE = "SELECT 1 FROM pg_roles WHERE rolname = %s"
DB = "SELECT 1 FROM pg_database WHERE datname = %s"


@pytest.fixture
def pg_names(pg_server):
    names = {"role": f"dagrun_role_{uuid.uuid4().hex[:8]}", "db": f"dagrun_db_{uuid.uuid4().hex[:8]}",
             "odd_role": f'odd "role"; DROP ROLE x; -- {uuid.uuid4().hex[:6]}'}
    yield names
    with pg_server.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{names["db"]}" WITH (FORCE)')
        for role in (names["role"], names["odd_role"]):
            cur.execute('DROP ROLE IF EXISTS "{}"'.format(role.replace('"', '""')))


def _pg_template(names, owner_key="role", fail=False):
    steps = [step(10, "create_postgresql_user", action_config={"username": names[owner_key], "password": "s3cret"}),
             step(20, "create_postgresql_database",
                  action_config={"database_name": names["db"], "owner": names[owner_key]})]
    if fail:
        steps.append(step(30, "fail", requires=[20]))
    return template(*steps)


def test_postgres_role_and_database_are_created_and_validated(workspace, pg_server, pg_names):
    result = run(_pg_template(pg_names), workspace)
    assert result.success, result.error
    assert _exists(pg_server, ROLE, pg_names["role"]) and _exists(pg_server, DB, pg_names["db"])
    assert result.steps["create_postgresql_database"].result == {"database": pg_names["db"], "owner": pg_names["role"],
                                                                 "created": True}
    with pg_server.cursor() as cur:
        cur.execute("SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = %s", (pg_names["db"],))
        assert cur.fetchone()[0] == "UTF8"
    again = run(_pg_template(pg_names), workspace)  # idempotent: nothing created the second time
    assert again.success and again.steps["create_postgresql_user"].result["created"] is False


def test_a_role_password_reaches_postgresql_only_hashed(workspace, pg_server, pg_names, monkeypatch):
    """(helper-68) CREATE ROLE ... PASSWORD 'clear' went to the server as
    text: a server logging statements (or a failing one, which a role name
    can provoke) wrote the password to its log. Every statement the handler
    sends is recorded here, as the server receives it."""
    import psycopg2
    import psycopg2.extras
    sent = []

    class Recording(psycopg2.extras.LoggingConnection):
        def filter(self, msg, curs):
            sent.append(msg.decode() if isinstance(msg, bytes) else msg)
            return msg

    real = psycopg2.connect

    def connect(*args, **kwargs):
        conn = real(*args, connection_factory=Recording, **kwargs)
        conn.initialize(logging.getLogger("dagrun.test.sent"))
        return conn

    monkeypatch.setattr(psycopg2, "connect", connect)
    result = run(_pg_template(pg_names), workspace)
    assert result.success, result.error
    create = [statement for statement in sent if statement.startswith("CREATE ROLE")]
    assert len(create) == 1 and "s3cret" not in create[0] and "PASSWORD 'SCRAM-SHA-256$" in create[0], create
    monkeypatch.setattr(psycopg2, "connect", real)
    with pg_server.cursor() as cur:  # the server keeps the hash it was given, which the password matches
        cur.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (pg_names["role"],))
        assert cur.fetchone()[0] in create[0]


def test_a_workspace_never_takes_another_workspaces_role_or_database(workspace, tmp_path, pg_server, pg_names,
                                                                       monkeypatch):
    """(helper-45) A second workspace naming the first one's role and
    database (a web form's db_name) took them over as "unchanged". A role is
    marked for the workspace that made it (in the transaction that made it);
    an existing role is used only by its workspace, or when the operator lets
    every workspace use it; a database only through its owner."""
    first = run(_pg_template(pg_names), workspace)
    assert first.success, first.error
    with pg_server.cursor() as cur:
        cur.execute("SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s", (pg_names["role"],))
        assert cur.fetchone()[0] == "dagrun-workspace=ws1"
    other = {"id": "mallory", "home_dir": str(tmp_path / "m")}
    taken = run(_pg_template(pg_names), other)
    assert not taken.success
    assert taken.steps["create_postgresql_user"].error == \
        f"role {pg_names['role']} is another workspace's: choose another name"  # whose: not told
    own_role = {**pg_names, "role": pg_names["role"] + "_m"}  # its own role, the first one's database
    try:
        taken = run(_pg_template(own_role), other)
        assert not taken.success and taken.steps["create_postgresql_database"].error == \
            f"database {pg_names['db']} exists and is owned by another role than {own_role['role']}: " \
            "choose another name"
        # its own database, owned by the first one's role
        taken = run(template(step(20, "create_postgresql_database", action_config={
            "database_name": pg_names["db"] + "_m", "owner": pg_names["role"]}),
            step(10, "create_postgresql_user", action_config={"username": own_role["role"]})), other)
        assert not taken.success and "its owner: role" in taken.steps["create_postgresql_database"].error
        # a role dagrun did not make (the server's own, an operator's): only when the operator says so
        with pg_server.cursor() as cur:
            cur.execute('CREATE ROLE "{}"'.format(pg_names["odd_role"].replace('"', '""')))
        odd = run(_pg_template(pg_names, owner_key="odd_role"), workspace)
        assert not odd.success and "was not made by dagrun for workspace ws1" in odd.steps[
            "create_postgresql_user"].error and "DAGRUN_ADOPT_ROLES=" in odd.steps["create_postgresql_user"].error
        assert not run(_pg_template({**pg_names, "odd_role": "postgres"}, owner_key="odd_role"), workspace).success
        monkeypatch.setenv("DAGRUN_ADOPT_ROLES", "*")  # any role but a superuser
        assert not run(_pg_template({**pg_names, "odd_role": "postgres"}, owner_key="odd_role"), workspace).success
        with pg_server.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{pg_names["db"]}" WITH (FORCE)')
        adopted = run(_pg_template(pg_names, owner_key="odd_role"), workspace)
        assert adopted.success, adopted.error
    finally:
        with pg_server.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{pg_names["db"]}_m" WITH (FORCE)')
            cur.execute(f'DROP ROLE IF EXISTS "{own_role["role"]}"')


def test_a_workspaces_database_survives_another_runs_rollback_and_tenant_databases(workspace, tmp_path, pg_server,
                                                                                     pg_names, monkeypatch):
    """(helper-46) A's rollback dropped the database B had made since under
    the same name (A's own was dropped meanwhile); a tenant's database whose
    search_path put its own shobj_description before the catalog's made the
    superuser session adopt another's role (and run the tenant's code); "*"
    adopted roles made for other workspaces and privileged ones; the
    template field copied another workspace's database."""
    import psycopg2

    def sql(query, *params):
        with pg_server.cursor() as cur:
            cur.execute(query, params)
    a_role, b_role, m_role, evil = (pg_names["role"], pg_names["role"] + "_b", pg_names["role"] + "_m",
                                    pg_names["db"] + "_evil")
    admin_url = "postgresql://postgres@127.0.0.1:5432/postgres"
    gate = tmp_path / "gate"
    other = {"id": "tenant-b", "home_dir": str(tmp_path / "b")}
    try:
        # A makes the database, then waits; it is dropped meanwhile and B makes its own under that name
        doc = template(*_pg_template(pg_names)["actions"], script_step(30, f"while [ ! -e {gate} ]; do sleep 0.05; "
                                                                           "done; exit 1", id="later", requires=[20]))
        from dagrun import start_run
        handle = start_run(doc, workspace, record=False)
        deadline = time.monotonic() + 30
        while not _exists(pg_server, DB, pg_names["db"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        sql(f'DROP DATABASE "{pg_names["db"]}" WITH (FORCE)')
        made = run(template(step(10, "create_postgresql_user", action_config={"username": b_role}),
                            step(20, "create_postgresql_database", action_config={
                                "database_name": pg_names["db"], "owner": b_role})), other)
        assert made.success, made.error
        gate.touch()
        result = handle.wait(60)
        assert not result.success  # and rolled back: A's rollback keeps what is B's now
        with pg_server.cursor() as cur:
            cur.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (pg_names["db"],))
            assert cur.fetchone() == (b_role,)
        sql(f'CREATE ROLE "{a_role}" LOGIN')  # (A's was rolled back) a role another workspace's
        sql(f'COMMENT ON ROLE "{a_role}" IS %s', "dagrun-workspace=tenant-c")
        # B's own database, whose search_path puts B's functions first
        sql(f'CREATE DATABASE "{evil}" OWNER "{b_role}"')
        with psycopg2.connect(f"postgresql://postgres@127.0.0.1:5432/{evil}") as conn, conn.cursor() as cur:
            cur.execute("CREATE SCHEMA trap; CREATE FUNCTION trap.shobj_description(oid, name) RETURNS text "
                        "LANGUAGE sql AS $$ SELECT 'dagrun-workspace=tenant-b' $$")
        conn.close()
        sql(f'ALTER DATABASE "{evil}" SET search_path = trap, pg_catalog')
        taken = run(template(step(10, "create_postgresql_user", action_config={
            "username": a_role, "connection_url": f"postgresql://postgres@127.0.0.1:5432/{evil}"})), other)
        assert not taken.success and "is another workspace's" in taken.steps["create_postgresql_user"].error
        # "*": neither a role made for another workspace, nor a privileged one, nor a member of one
        monkeypatch.setenv("DAGRUN_ADOPT_ROLES", "*")
        marked = run(template(step(10, "create_postgresql_user", action_config={"username": a_role})), other)
        assert not marked.success and "is another workspace's" in marked.steps["create_postgresql_user"].error
        sql(f'CREATE ROLE "{m_role}" LOGIN')
        sql(f'GRANT pg_read_server_files TO "{m_role}"')
        member = run(template(step(10, "create_postgresql_user", action_config={"username": m_role})), other)
        assert not member.success and "was not made by dagrun" in member.steps["create_postgresql_user"].error
        # a copy of another workspace's database is not B's to make
        copied = run(template(step(10, "create_postgresql_user", action_config={"username": b_role}),
                              step(20, "create_postgresql_database", action_config={
                                  "database_name": evil + "_copy", "owner": b_role, "template": "postgres"})),
                     other)
        assert not copied.success and "is not one this workspace may copy" in copied.steps[
            "create_postgresql_database"].error
    finally:
        gate.touch()
        for database in (evil, evil + "_copy"):
            sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        sql(f'DROP DATABASE IF EXISTS "{pg_names["db"]}" WITH (FORCE)')
        sql(f'DROP ROLE IF EXISTS "{b_role}"')
        sql(f'DROP ROLE IF EXISTS "{m_role}"')


def test_a_workspaces_database_is_closed_to_every_other_role(workspace, tmp_path, pg_server, pg_names):
    """(helper-62) PostgreSQL lets every role connect to a new database and
    make temporary tables there: another tenant's role listed this one's
    tables and read its functions' source. A database dagrun makes, or finds
    its owner's still open to every role (an older dagrun's), is its owner's."""
    import psycopg2
    other_role, other_db = pg_names["role"] + "_o", pg_names["db"] + "_o"

    def connects(role, database):
        try:
            psycopg2.connect(f"postgresql://{role}@127.0.0.1:5432/{database}").close()
            return True
        except psycopg2.OperationalError as exc:
            assert "permission denied for database" in str(exc), exc
            return False
    try:
        assert run(_pg_template(pg_names), workspace).success
        other = run(_pg_template({"role": other_role, "db": other_db}), {"id": "other", "home_dir": str(
            tmp_path / "o")})
        assert other.success, other.error
        assert connects(pg_names["role"], pg_names["db"]) and connects(other_role, other_db)  # its owner's
        assert not connects(other_role, pg_names["db"]) and not connects(pg_names["role"], other_db)
        with pg_server.cursor() as cur:
            cur.execute(f'GRANT CONNECT, TEMPORARY ON DATABASE "{pg_names["db"]}" TO PUBLIC')  # as before
        again = run(_pg_template(pg_names), workspace)
        assert again.success and again.steps["create_postgresql_database"].result == {
            "database": pg_names["db"], "created": False, "made_private": True}
        assert not connects(other_role, pg_names["db"])
        assert run(_pg_template(pg_names), workspace).steps["create_postgresql_database"].result == {
            "database": pg_names["db"], "created": False}  # unchanged now
    finally:
        with pg_server.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{other_db}" WITH (FORCE)')
            cur.execute(f'DROP ROLE IF EXISTS "{other_role}"')


def test_postgres_identifiers_are_quoted(workspace, pg_server, pg_names):
    result = run(_pg_template(pg_names, owner_key="odd_role"), workspace)
    assert result.success, result.error
    assert _exists(pg_server, ROLE, pg_names["odd_role"])  # the whole string is one identifier


def test_postgres_rollback_drops_what_it_created(workspace, pg_server, pg_names):
    result = run(_pg_template(pg_names, fail=True), workspace, actions=FAIL)
    assert result.status.value == "failed"
    assert result.steps["create_postgresql_database"].status is StepStatus.rolled_back
    assert result.steps["create_postgresql_user"].status is StepStatus.rolled_back
    assert not _exists(pg_server, DB, pg_names["db"]) and not _exists(pg_server, ROLE, pg_names["role"])


def test_database_needs_the_user_action(workspace):
    from dagrun import TemplateError
    with pytest.raises(TemplateError, match="requires action 'create_postgresql_user'"):
        run(template(step(20, "create_postgresql_database", action_config={"database_name": "x", "owner": "y"})),
            workspace)


# -- environment --------------------------------------------------------------

def make_wheel(directory: Path, name: str = "dagrun_probe", version: str = "1.0") -> Path:
    """A real (tiny) wheel, written by hand: pip installs it offline."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-{version}-py3-none-any.whl"
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": f"VALUE = {version!r}\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: dagrun-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{p},,\n" for p in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for p, text in files.items():
            zf.writestr(p, text)
        zf.writestr(f"{dist}/RECORD", record)
    return path


def test_venv_and_pip_install_from_a_local_wheel(workspace, home, tmp_path):
    make_wheel(tmp_path / "wheels")
    # (as root, not one in the home: its content is the workspace's; test_containment says why)
    requirements = (tmp_path if os.geteuid() == 0 else home) / "requirements.txt"
    requirements.write_text("dagrun_probe==1.0\n")
    doc = template(step(10, "create_python_venv", action_config={"venv_path": "~/env"}),
                   step(20, "install_pip_requirements", action_config={
                       "venv_path": "~/env", "requirements_file": str(requirements),
                       "find_links": [str(tmp_path / "wheels")], "no_index": True}))
    result = run(doc, workspace)
    assert result.success, result.error
    out = subprocess.run([str(home / "env/bin/python"), "-c", "import dagrun_probe; print(dagrun_probe.VALUE)"],
                         capture_output=True, text=True)
    assert out.stdout == "1.0\n"
    assert result.steps["create_python_venv"].result["created"] is True


def test_venv_rollback_removes_only_a_venv_it_created(workspace, home):
    doc = template(step(10, "create_python_venv", action_config={"venv_path": "~/env", "with_pip": False}),
                   step(20, "fail", requires=[10]))
    result = run(doc, workspace, actions=FAIL)
    assert result.steps["create_python_venv"].status is StepStatus.rolled_back
    assert not (home / "env").exists()


def test_pip_needs_the_venv_action_and_a_missing_file_is_permanent(workspace, home):
    doc = template(step(10, "create_python_venv", action_config={"venv_path": "~/env", "with_pip": False}),
                   step(20, "install_pip_requirements", action_config={"venv_path": "~/env",
                                                                       "requirements_file": "~/nope.txt"},
                        max_retries=3))
    result = run(doc, workspace)
    assert result.steps["install_pip_requirements"].attempts == 1
    assert result.steps["install_pip_requirements"].error.endswith("nope.txt does not exist")


# -- repository ---------------------------------------------------------------

@pytest.fixture
def bare_repo(tmp_path):
    """A local bare repository with branches main (3 commits) and dev."""
    work, bare = tmp_path / "work", tmp_path / "origin.git"
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x"}
    git = lambda *a, cwd=work: subprocess.run(["git", *a], cwd=cwd, env=env, check=True, capture_output=True)  # noqa: E731
    work.mkdir()
    git("init", "-q", "-b", "main")
    for i in range(3):
        (work / "f.txt").write_text(str(i))
        git("add", "f.txt")
        git("commit", "-q", "-m", f"c{i}")
    git("checkout", "-q", "-b", "dev")
    (work / "dev.txt").write_text("dev")
    git("add", "dev.txt")
    git("commit", "-q", "-m", "dev")
    git("clone", "-q", "--bare", str(work), str(bare), cwd=tmp_path)
    return bare


def test_clone_branch_and_shallow(workspace, home, bare_repo):
    doc = template(step(10, "clone_git_repository", id="dev", action_config={
                       "url": str(bare_repo), "branch": "dev", "target_dir": "~/src/dev"}),
                   step(20, "clone_git_repository", id="shallow", action_config={
                       "url": f"file://{bare_repo}", "branch": "main", "target_dir": "~/src/shallow",
                       "shallow": True}))
    result = run(doc, workspace)
    assert result.success, result.error
    assert (home / "src/dev/dev.txt").read_text() == "dev"
    count = subprocess.run(["git", "-C", str(home / "src/shallow"), "rev-list", "--count", "HEAD"],
                           capture_output=True, text=True)
    assert count.stdout.strip() == "1"
    assert not (home / "src/shallow/dev.txt").exists()
    again = run(doc, workspace)  # an existing checkout of the same URL counts as done
    assert again.success and again.steps["dev"].result["created"] is False


def test_clone_rollback_removes_only_what_it_created(workspace, home, bare_repo):
    (home / "kept").mkdir()
    subprocess.run(["git", "clone", "-q", "-b", "main", str(bare_repo), str(home / "kept")], check=True)
    doc = template(step(10, "clone_git_repository", id="new", action_config={"url": str(bare_repo),
                                                                             "target_dir": "~/new"}),
                   step(20, "clone_git_repository", id="kept", action_config={"url": str(bare_repo),
                                                                              "target_dir": "~/kept"}),
                   step(30, "fail", requires=["new", "kept"]))
    result = run(doc, workspace, actions=FAIL)
    assert result.steps["new"].status is StepStatus.rolled_back and not (home / "new").exists()
    assert result.steps["kept"].status is StepStatus.completed and (home / "kept/.git").is_dir()


def test_clone_of_a_missing_branch_fails_at_once(workspace, bare_repo):
    result = run(template(step(10, "clone_git_repository", action_config={"url": str(bare_repo), "branch": "nope",
                                                                          "target_dir": "~/x"})), workspace)
    s = result.steps["clone_git_repository"]
    assert s.status is StepStatus.failed and s.attempts == 1 and "branch 'nope' does not exist" in s.error


def test_private_clone_is_skipped_without_an_ssh_key(workspace, bare_repo):
    result = run(template(step(10, "clone_git_repository", action_config={"url": str(bare_repo), "private": True})),
                 workspace)
    assert result.steps["clone_git_repository"].status is StepStatus.skipped


# -- VS Code ------------------------------------------------------------------

def test_launch_and_workspace_files(workspace, home):
    doc = template(step(10, "create_launch_json", action_config={"configurations": [
                       {"name": "Run", "type": "debugpy", "request": "launch", "program": "{{ path('~/app.py') }}"}]}),
                   step(20, "create_workspace_file", action_config={"folders": [{"path": "src"}],
                                                                     "extensions": ["ms-python.python"]}))
    result = run(doc, workspace)
    assert result.success, result.error
    launch = json.loads((home / ".vscode/launch.json").read_text())
    assert launch == {"version": "0.2.0", "configurations": [
        {"name": "Run", "type": "debugpy", "request": "launch", "program": f"{home}/app.py"}]}
    ws = json.loads((home / "workspace.code-workspace").read_text())
    assert ws == {"folders": [{"path": "src"}], "settings": {}, "extensions": {"recommendations": ["ms-python.python"]}}


FAKE_CODE = """#!/bin/sh
# FAKE VS Code CLI: the real one cannot be installed on this machine.
# It keeps the installed extensions in a file and logs every call.
echo "$@" >> "$(dirname "$0")/calls.log"
state="$(dirname "$0")/extensions"
touch "$state"
case "$1" in
  --list-extensions) cat "$state" ;;
  --install-extension) echo "$2" >> "$state"; echo "Extension '$2' was successfully installed." ;;
  --uninstall-extension) grep -v -x "$2" "$state" > "$state.new"; mv "$state.new" "$state" ;;
esac
"""


def test_vscode_extensions_with_a_fake_cli(workspace, tmp_path):
    # As root, dagrun runs a cli only root could have installed (not below the world-writable /tmp).
    bin_dir = Path(tempfile.mkdtemp(prefix="dagrun-fake-code-", dir="/root")) if os.geteuid() == 0 else tmp_path
    request_cleanup = bin_dir != tmp_path
    (bin_dir / "code").write_text(FAKE_CODE)
    (bin_dir / "code").chmod(0o755)
    (bin_dir / "extensions").write_text("ms-python.python\n")
    os.environ["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    try:
        doc = template(step(10, "install_vscode_extensions",
                            action_config={"extensions": ["ms-python.python", "ms-python.debugpy"]}),
                       step(20, "fail", requires=[10]))
        result = run(doc, workspace, actions=FAIL)
        calls = (bin_dir / "calls.log").read_text().splitlines()
        assert "--install-extension ms-python.debugpy --force" in calls
        assert "--install-extension ms-python.python --force" not in calls  # already there
        assert "--uninstall-extension ms-python.debugpy" in calls  # rollback undoes only its own
        assert result.steps["install_vscode_extensions"].status is StepStatus.rolled_back
        assert (bin_dir / "extensions").read_text() == "ms-python.python\n"
    finally:
        os.environ["PATH"] = os.environ["PATH"].split(":", 1)[1]
        if request_cleanup:
            shutil.rmtree(bin_dir)


def test_vscode_extensions_without_any_cli_is_a_clear_error(workspace, tmp_path):
    env_path = os.environ["PATH"]
    os.environ["PATH"] = "/usr/bin:/bin"
    try:
        assert shutil.which("code") is None
        result = run(template(step(10, "install_vscode_extensions", action_config={"extensions": ["a.b"]})), workspace)
    finally:
        os.environ["PATH"] = env_path
    s = result.steps["install_vscode_extensions"]
    assert s.attempts == 1 and s.error.startswith("neither code nor code-server is installed")


@pytest.mark.parametrize("extension", ["x.vsix", "evil.VSIX", "a.b.vsix@1", "pub.evil@1.vsix", "a.b@1.0.VSIX"])
def test_an_extension_is_an_id_never_a_vsix_file(extension):
    """(helper-53) `code --install-extension x.vsix` installs a file from
    where it starts: a value is an extension's id only."""
    from dagrun import TemplateError, compile_template
    with pytest.raises(TemplateError, match="an extension's id, publisher.name or publisher.name@version "
                                            r"\(not a .vsix file\)"):
        compile_template(template(step(10, "install_vscode_extensions", action_config={"extensions": [extension]})))


def test_template_copy_action(workspace, home, tmp_path):
    """The template file sits beside the template document (author text, read at compile time)."""
    (tmp_path / "tpl.conf.j2").write_text("user={{ workspace.name }}\nport={{ vars.port }}\n")
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(template(step(10, "template_copy", action_config={
        "source": "tpl.conf.j2", "target_path": "~/etc/app.conf", "mode": "600"}), vars={"port": 8069})))
    result = run(str(tmp_path / "t.yaml"), workspace)
    assert result.success, result.error
    assert (home / "etc/app.conf").read_text() == "user=alice\nport=8069\n"
    assert oct((home / "etc/app.conf").stat().st_mode)[-3:] == "600"


def test_template_copy_never_renders_a_file_from_the_workspace(workspace, home, tmp_path):
    (home / "evil.j2").write_text("{{ env }}")
    folder = tmp_path / "templates"
    folder.mkdir()
    for source in ("~/evil.j2", str(home / "evil.j2"), "../home/evil.j2", "{{ workspace.x }}"):
        (folder / "t.yaml").write_text(yaml.safe_dump(template(step(10, "template_copy", action_config={
            "source": source, "target_path": "~/out"}))))
        with pytest.raises(TemplateError, match="field 'action_config.source'"):
            run(str(folder / "t.yaml"), workspace)
    with pytest.raises(TemplateError, match="a template given as data has no folder"):
        run(template(step(10, "template_copy", action_config={"source": "x.j2", "target_path": "~/out"})), workspace)


def test_every_shipped_config_schema_is_a_valid_json_schema():
    # Loading the standard library skips this check (a third of start-up): it is made here.
    import jsonschema

    from dagrun.compile.loader import standard_library
    for action in standard_library().values():
        schema = dict(action.config_schema)
        jsonschema.validators.validator_for(schema).check_schema(schema)
    bad = {"name": "bad", "action_type": "shell", "execution_handler": "true",
           "config_schema": {"type": "object", "properties": {"x": {"type": "no-such-type"}}}}
    with pytest.raises(TemplateError, match="invalid JSON Schema"):
        compile_template(template(step(10, "bad")), actions=[bad])
