"""End to end: the shipped Python Base / Django templates provision a
workspace in a temporary folder and a real PostgreSQL database, then the
same run with an injected failure rolls everything back. And the shipped
legacy config migrates to a template that validates, plans and runs.

Django itself is downloaded once per session from the package index (the
real thing, installed offline from that wheelhouse afterwards); apt runs in
simulation so the machine is not changed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from dagrun import compile_template, run_template
from dagrun.compile.loader import package_dir
from dagrun.run.outcome import StepStatus
from tests.helpers import action

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory):
    path = tmp_path_factory.mktemp("wheelhouse")
    path.chmod(0o755)  # a wheelhouse every user may read (what root reads on a value's behalf)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(path),
                    "django"], check=True, timeout=300)
    return path


def django_child(wheelhouse, names, *, fail: bool):
    steps = [
        {"sequence_order": 10, "action_config": {"simulate": True}},  # override python-base's apt step
        {"sequence_order": 30, "action_config": {"packages": ["django"], "find_links": [str(wheelhouse)],
                                                  "no_index": True}},
        {"sequence_order": 35, "id": "db_user", "action_name": "create_postgresql_user",
         "action_config": {"username": names["role"]}},
        {"sequence_order": 36, "id": "db", "action_name": "create_postgresql_database",
         "action_config": {"database_name": names["db"], "owner": names["role"]}},
        {"sequence_order": 50, "id": "settings", "phase": "post_setup", "action_name": "create_vscode_settings",
         "action_config": {"settings": {"python.defaultInterpreterPath": "{{ path('~/venv/bin/python') }}"}}},
    ]
    if fail:
        steps.append({"sequence_order": 60, "id": "boom", "phase": "validation", "action_name": "fail"})
    return {"name": "django-e2e", "version": "1", "extends": "django", "actions": steps}


def _exists(conn, query, name):
    with conn.cursor() as cur:
        cur.execute(query, (name,))
        return cur.fetchone() is not None


@pytest.fixture
def names(pg_server):
    names = {"role": f"dagrun_e2e_{uuid.uuid4().hex[:8]}", "db": f"dagrun_e2e_{uuid.uuid4().hex[:8]}"}
    yield names
    with pg_server.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{names["db"]}" WITH (FORCE)')
        cur.execute(f'DROP ROLE IF EXISTS "{names["role"]}"')


def test_django_workspace_is_provisioned(tmp_path, wheelhouse, names, pg_server, db_url):
    home = tmp_path / "home"
    result = run_template(django_child(wheelhouse, names, fail=False), {"id": "e2e", "home_dir": str(home)},
                          database_url=db_url)
    assert result.success, result.error
    assert [s.status for s in result.steps.values()] == [StepStatus.completed] * 7
    assert (home / "myproject/manage.py").is_file()
    check = subprocess.run([str(home / "venv/bin/python"), "manage.py", "check"], cwd=home / "myproject",
                           capture_output=True, text=True)
    assert "System check identified no issues" in check.stdout
    assert _exists(pg_server, "SELECT 1 FROM pg_database WHERE datname = %s", names["db"])
    settings = json.loads((home / ".vscode/settings.json").read_text())
    assert settings["python.defaultInterpreterPath"] == f"{home}/venv/bin/python"


def test_injected_failure_rolls_everything_back(tmp_path, wheelhouse, names, pg_server, db_url):
    home = tmp_path / "home"
    home.mkdir()
    result = run_template(django_child(wheelhouse, names, fail=True), {"id": "e2e", "home_dir": str(home)},
                          database_url=db_url, actions=[action("fail", "tests.helpers:boom")],
                          sandbox=False)  # a user action that fails on purpose: about rollback, not the sandbox
    assert result.status.value == "failed"
    assert result.failed_action == "fail"
    rolled = {s for s, r in result.steps.items() if r.status is StepStatus.rolled_back}
    assert rolled == {"venv", "project", "db_user", "db", "settings"}
    # What the steps made is gone (tools run with HOME there may leave caches of their own).
    assert not (home / "venv").exists() and not (home / "myproject").exists()
    assert list((home / ".vscode").iterdir()) == []
    assert not _exists(pg_server, "SELECT 1 FROM pg_database WHERE datname = %s", names["db"])
    assert not _exists(pg_server, "SELECT 1 FROM pg_roles WHERE rolname = %s", names["role"])


def test_legacy_config_migrates_validates_plans_and_runs_its_safe_part(tmp_path):
    legacy = package_dir("seeds") / "legacy" / "odoo-18-legacy.json"
    out = tmp_path / "odoo.template.yaml"
    cli = subprocess.run([sys.executable, "-m", "dagrun", "migrate-legacy", str(legacy), "-o", str(out)],
                         capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    converted = yaml.safe_load(out.read_text())
    assert [s["action_name"] for s in converted["actions"]] == [
        "install_system_packages", "write_file", "create_postgresql_user", "create_postgresql_database",
        "create_python_venv", "clone_git_repository", "clone_git_repository", "install_pip_requirements",
        "install_vscode_extensions", "create_vscode_settings", "create_launch_json", "create_workspace_file",
        "execute_custom_script"]
    for command in (["validate", str(out)], ["plan", str(out)]):
        assert subprocess.run([sys.executable, "-m", "dagrun", *command], capture_output=True).returncode == 0
    # The safe part: drop what needs root, the network or a server, keep the rest.
    unsafe = ["system_packages", "db_user", "database", "repo_1", "repo_2", "requirements", "extensions"]
    child = {"name": "safe", "extends": converted["name"],
             "actions": [{"sequence_order": s["sequence_order"], "id": s["id"], "remove": True}
                         for s in converted["actions"] if s["id"] in unsafe]}
    home = tmp_path / "home"
    home.mkdir()
    result = run_template(child, {"id": "legacy", "home_dir": str(home), "db_name": "odoo_db",
                                  "ssh_public_key": "ssh-ed25519 AAAA legacy@test"},
                          templates=[converted], record=False)
    assert result.success, result.error
    assert set(result.steps) == {"ssh_access", "venv", "vscode_settings", "launch_json", "workspace_file",
                                 "post_create"}
    assert "db_name = odoo_db" in (home / "odoo-dev-tools/odoo.conf").read_text()
    assert json.loads((home / ".vscode/launch.json").read_text())["configurations"][0]["name"] == "Odoo"
    assert (home / "odoo.code-workspace").is_file()
    assert (home / ".ssh/authorized_keys").read_text() == "ssh-ed25519 AAAA legacy@test\n"


def test_legacy_config_runs_directly(tmp_path):
    legacy = {"settings": {"editor.tabSize": 4}, "post_create_script": "echo made > ~/made.txt"}
    home = tmp_path / "home"
    home.mkdir()
    result = run_template(legacy, {"id": 1, "home_dir": str(home)}, record=False)
    assert result.success and (home / "made.txt").read_text() == "made\n"
    assert json.loads((home / ".vscode/settings.json").read_text()) == {"editor.tabSize": 4}


def test_seed_templates_compile_and_odoo_runs_independent_steps_in_parallel():
    plan = compile_template("odoo-18")
    from dagrun.render import levels
    lv = levels(plan)
    assert lv[1] == ["database", "venv", "odoo_community", "odoo_enterprise"]
    assert set(plan.predecessors["requirements"]) == {"venv", "odoo_community"}
    assert compile_template("django").order == ("system_packages", "venv", "requirements", "project")
