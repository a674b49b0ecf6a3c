"""Steps reach only what they own: run as the workspace user, paths kept in
the home, no symlink followed, rollback of exactly what a step made, a
bubblewrap sandbox for user-defined actions, limits, and process trees that
end with their step.

These run as root (CI does): a real throwaway user is made with useradd and
removed afterwards; the sandbox is Debian's bubblewrap.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

from dagrun import InputError, TemplateError, compile_template, run_template
from dagrun.run.outcome import StepStatus
from tests.helpers import action, pid_alive, script_step, shell_action, step, template

root_only = pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"),
                               reason="running steps as another user needs root (CI runs as root)")


@pytest.fixture
def user():
    """A real throwaway Linux user with a home, removed after the test."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root") if os.environ.get("CI") else pytest.skip("needs root")
    name = f"dgt{uuid.uuid4().hex[:8]}"
    # marked as an account any workspace may use (what create_linux_user marks for its own workspace)
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", "--comment", "dagrun-workspace=*", name], check=True)
    entry = pwd.getpwnam(name)
    yield entry
    subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
    subprocess.run(["userdel", "--remove", name], capture_output=True)


@pytest.fixture
def shared(tmp_path):
    """A folder other users can read (pytest's own tmp is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="dagrun-shared-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def roots_public():
    """A folder every user can read and only root could have filled (it and
    every folder above it root's, writable by nobody else): where root may
    install from."""
    path = Path(tempfile.mkdtemp(prefix="dagrun-roots-", dir="/srv" if os.path.isdir("/srv") else "/opt"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_user(user: pwd.struct_passwd, **fields) -> dict:
    """A workspace whose steps run as ``user``, in its home."""
    return {"id": fields.pop("id", "s"), "linux_username": user.pw_name, "home_dir": user.pw_dir, **fields}


def bare_repo(where: Path, owner: pwd.struct_passwd | None = None) -> str:
    """A local bare repository (owned by ``owner``: git refuses a repository
    another user owns, "dubious ownership")."""
    work = where / "src"
    work.mkdir()
    env = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null"}
    for command in (["git", "init", "-q", "-b", "main"], ["git", "-c", "user.name=t", "-c", "user.email=t@t",
                                                          "commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run(command, cwd=work, check=True, env=env)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(where / "repo.git")], check=True, env=env)
    for path in where.rglob("*"):
        path.chmod(path.stat().st_mode | 0o755 if path.is_dir() else path.stat().st_mode | 0o644)
        if owner is not None:
            os.chown(path, owner.pw_uid, owner.pw_gid)
    return str(where / "repo.git")


# -- run as the workspace user -------------------------------------------------------

@root_only
def test_steps_run_as_the_workspace_user_and_own_what_they_make(user, shared):
    doc = template(
        script_step(10, "id -u > ~/uid; id -G > ~/groups; echo $HOME $USER", id="who"),
        step(20, "write_file", id="file", action_config={"target_path": "~/sub/f.txt", "content": "x"}),
        step(30, "create_python_venv", id="venv", action_config={"venv_path": "~/venv", "with_pip": False}),
        step(40, "clone_git_repository", id="clone", action_config={"url": bare_repo(shared, user),
                                                                     "target_dir": "~/repo"}),
        script_step(50, "id -u", id="as_root", run_as="root"))
    ws = {"id": "u", "linux_username": user.pw_name}
    result = run_template(doc, ws, record=False)
    assert result.success, result.error
    home = Path(user.pw_dir)
    assert (home / "uid").read_text() == f"{user.pw_uid}\n"
    assert result.steps["who"].stdout == f"{home} {user.pw_name}\n"  # the home is the user's
    for made in ("uid", "sub", "sub/f.txt", "venv", "venv/bin/python", "repo", "repo/.git/HEAD"):
        assert (home / made).lstat().st_uid == user.pw_uid, made
    assert result.steps["as_root"].stdout == "0\n"  # run_as: root opts out, and says so in the plan
    plan = compile_template(doc)
    assert plan.steps["as_root"].run_as == "root" and plan.steps["who"].run_as == "workspace"


@root_only
def test_a_missing_workspace_user_is_named(tmp_path):
    result = run_template(template(script_step(10, "true", id="s")),
                          {"id": "u", "linux_username": "nobody_here_x", "home_dir": str(tmp_path / "h")}, record=False)
    assert result.steps["s"].attempts == 1
    assert result.steps["s"].error.startswith("the workspace user 'nobody_here_x' does not exist: create it first")


@root_only
def test_a_template_creates_its_user_then_works_as_it(shared):
    name = f"dgt{uuid.uuid4().hex[:8]}"
    try:
        doc = template(step(10, "create_linux_user", id="user", phase="pre_setup",
                            action_config={"username": name, "ssh_public_key": "ssh-ed25519 AAAAC3Nz me@host"}),
                       script_step(20, "id -un > ~/me", id="me"))
        result = run_template(doc, {"id": "w", "linux_username": name}, record=False)
        assert result.success, result.error
        entry = pwd.getpwnam(name)
        assert Path(entry.pw_dir, "me").read_text() == f"{name}\n"
        keys = Path(entry.pw_dir, ".ssh", "authorized_keys")
        assert keys.read_text() == "ssh-ed25519 AAAAC3Nz me@host\n"
        assert stat.S_IMODE(keys.stat().st_mode) == 0o600 and keys.stat().st_uid == entry.pw_uid
        assert stat.S_IMODE(keys.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(os.stat(entry.pw_dir).st_mode) == 0o750  # no other tenant reads it
    finally:
        subprocess.run(["userdel", "--remove", name], capture_output=True)


# -- privileged tools and workspace configuration ------------------------------------

@root_only
@pytest.mark.parametrize("as_user", [True, False])
def test_a_workspace_gitconfig_hook_never_runs(as_user, user, shared):
    """~/.gitconfig of the workspace points hooks at its own script: git never runs it
    (hooks are off for clones), and as root it does not even read that file."""
    home = Path(user.pw_dir) if as_user else shared / "root-home"  # without a user, a home root owns
    hooks = home / "hooks"
    hooks.mkdir(parents=True)
    marker = shared / "hook-ran"
    (hooks / "post-checkout").write_text(f"#!/bin/sh\nid -u >> {marker}\n")
    (hooks / "post-checkout").chmod(0o755)
    (home / ".gitconfig").write_text(f"[core]\n\thooksPath = {hooks}\n")
    ws = {"id": "g", "home_dir": str(home), **({"linux_username": user.pw_name} if as_user else {})}
    doc = template(step(10, "clone_git_repository", id="c", action_config={
        "url": bare_repo(shared, user if as_user else None), "target_dir": "~/r"}))
    result = run_template(doc, ws, record=False)
    assert result.success, result.error
    assert not marker.exists()


@root_only
def test_a_quote_and_command_substitution_in_the_home_and_key_path_run_nothing(shared):
    # A home holding them is refused before anything runs: scripts read $HOME unquoted, or inside sh -c
    # "..." (found by helper-26); a key path holding them is data.
    with pytest.raises(InputError, match="may hold only letters, digits"):
        run_template(template(script_step(10, "true")), {"id": "k", "home_dir": str(shared / "it's $(touch MARK)")},
                     record=False)
    home = shared / "home"
    key = home / "it's $(touch MARK) `touch MARK2`"
    key.mkdir(parents=True)
    (key / "id_ed25519").write_text("not a real key\n")
    doc = template(step(10, "clone_git_repository", id="c", max_retries=1, action_config={
        "url": "ssh://git@127.0.0.1:1/repo.git", "private": True, "target_dir": "~/r",
        "ssh_key_path": f"~/{key.name}/id_ed25519"}))
    result = run_template(doc, {"id": "k", "home_dir": str(home), "ssh_public_key": "ssh-ed25519 AAAA x"},
                          record=False)
    assert result.steps["c"].status is StepStatus.failed  # nothing listens there; what matters is below
    assert not any(p.name.startswith("MARK") for p in shared.rglob("*"))
    assert not Path("MARK").exists()


# -- paths -----------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["~/../escape.txt", "/tmp/dagrun-escape-{}.txt", "~/.vscode/settings.json"])
def test_file_actions_never_write_outside_the_home(target, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (home / ".vscode").symlink_to(elsewhere)  # a planted symlinked folder
    target = target.format(uuid.uuid4().hex)
    for doc in (template(step(10, "write_file", id="w", action_config={"target_path": target, "content": "x"})),
                template(step(10, "create_vscode_settings", id="w", action_config={"settings": {"a": 1},
                                                                                  "target_path": target}))):
        result = run_template(doc, {"id": "p", "home_dir": str(home)}, record=False)
        assert result.steps["w"].status is StepStatus.failed
        assert "outside the workspace home" in result.steps["w"].error
        assert str(elsewhere) not in result.steps["w"].error  # (helper-62: where a link leads, root resolved)
        assert result.steps["w"].attempts == 1
    assert list(elsewhere.iterdir()) == [] and not (tmp_path / "escape.txt").exists()
    assert not Path(target).exists() or target.startswith("~")


def test_a_symlinked_file_is_not_written_through(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (home / "settings.json").symlink_to(victim)
    doc = template(step(10, "write_file", id="w", action_config={"target_path": "~/settings.json", "content": "x"}))
    result = run_template(doc, {"id": "p", "home_dir": str(home)}, record=False)
    assert result.steps["w"].status is StepStatus.failed
    assert victim.read_text() == "precious"


def test_workspace_ids_become_paths_only_through_a_slug(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path / "caller-home"))
    doc = template(script_step(10, "pwd", id="s"))
    for ws_id in ("../../x", "/root", "a/b"):
        result = run_template(doc, {"id": ws_id}, record=False)
        home = Path(result.steps["s"].stdout.strip())
        assert home.parent == tmp_path / "data" / "dagrun" / "workspaces", home
        assert "/" not in home.name and ".." not in home.name
    with pytest.raises(InputError, match="home_dir must be an absolute path"):
        run_template(doc, {"id": "x", "home_dir": "relative/home"}, record=False)
    assert not (tmp_path / "caller-home").exists()  # never the caller's own home


# -- create_linux_user ----------------------------------------------------------------

@root_only
def test_create_linux_user_refuses_system_accounts_existing_users_and_homes(user, tmp_path):
    for config, message in (({"username": "root"}, "root is a system account"),
                            ({"username": "daemon"}, "daemon is a system account"),
                            ({"username": user.pw_name}, f"user {user.pw_name} already exists and this step did not "
                                                         "create it")):
        result = run_template(template(step(10, "create_linux_user", id="u", action_config=config)),
                              {"id": "x", "home_dir": str(tmp_path)}, record=False)
        assert result.steps["u"].error.startswith(message), result.steps["u"].error
        assert result.steps["u"].attempts == 1
    # a home planted before the user exists is not taken over
    name = f"dgt{uuid.uuid4().hex[:8]}"
    planted = Path("/home") / name
    root_dir = tmp_path / "root-owned"
    root_dir.mkdir()
    planted.mkdir()
    (planted / ".ssh").symlink_to(root_dir)
    try:
        for adopt in (False, True):  # (helper-53 F8) adopt_existing adopts an account, not another's folder
            result = run_template(template(step(10, "create_linux_user", id="u", max_retries=1, action_config={
                "username": name, "ssh_public_key": "ssh-ed25519 AAAA x", "adopt_existing": adopt})),
                {"id": "x", "home_dir": str(tmp_path)}, record=False)
            assert result.steps["u"].error.startswith(f"/home/{name} already exists: a new user does not take over")
            assert list(root_dir.iterdir()) == [] and root_dir.stat().st_uid == 0
            assert subprocess.run(["id", name], capture_output=True).returncode != 0  # no account made
    finally:
        shutil.rmtree(planted)
        subprocess.run(["userdel", "--remove", name], capture_output=True)


@root_only
def test_adopting_a_user_never_follows_a_planted_ssh_symlink(user, tmp_path):
    root_dir = tmp_path / "root-owned"
    root_dir.mkdir()
    (root_dir / "authorized_keys").write_text("root's keys\n")
    (Path(user.pw_dir) / ".ssh").symlink_to(root_dir)
    result = run_template(template(step(10, "create_linux_user", id="u", action_config={
        "username": user.pw_name, "adopt_existing": True, "ssh_public_key": "ssh-ed25519 AAAA attacker"})),
        {"id": "x", "home_dir": str(tmp_path)}, record=False)
    assert result.steps["u"].status is StepStatus.failed
    assert "outside the workspace home" in result.steps["u"].error  # it leads through the planted symlink
    assert (root_dir / "authorized_keys").read_text() == "root's keys\n"
    assert (root_dir / "authorized_keys").stat().st_uid == 0


# -- rollback --------------------------------------------------------------------------

FAIL = [action("fail", "tests.helpers:boom")]


def test_rollback_never_removes_a_folder_or_files_that_were_there(tmp_path, shared):
    home = tmp_path / "home"
    (home / "venv").mkdir(parents=True)
    (home / "venv" / "notes.txt").write_text("mine")
    (home / "checkout").mkdir()  # an empty folder the clone fills
    doc = template(step(10, "create_python_venv", id="venv", action_config={"venv_path": "~/venv", "with_pip": False}),
                   step(20, "clone_git_repository", id="clone", action_config={"url": bare_repo(shared),
                                                                                "target_dir": "~/checkout"}),
                   step(30, "fail", id="boom", requires=["venv", "clone"]))
    result = run_template(doc, {"id": "r", "home_dir": str(home)}, actions=FAIL, record=False, sandbox=False)
    assert result.steps["venv"].status is StepStatus.rolled_back
    assert result.steps["clone"].status is StepStatus.rolled_back
    assert sorted(p.name for p in (home / "venv").iterdir()) == ["notes.txt"]  # only what the venv added is gone
    assert (home / "checkout").is_dir() and list((home / "checkout").iterdir()) == []


# -- the sandbox ---------------------------------------------------------------------

PROBE = """
if (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then echo net=yes; else echo net=no; fi
if touch /etc/dagrun-sandbox-probe 2>/dev/null; then echo etc=writable; rm -f /etc/dagrun-sandbox-probe; else echo etc=read-only; fi
if cat /etc/shadow >/dev/null 2>&1; then echo shadow=readable; else echo shadow=hidden; fi
if ls /root >/dev/null 2>&1 && [ -n "$(ls -A /root 2>/dev/null)" ]; then echo root=visible; else echo root=hidden; fi
touch ~/written && echo home=writable
echo $$ > ~/pid
"""


@root_only
@pytest.mark.parametrize("network", [False, True])
def test_a_user_defined_action_runs_in_the_sandbox(network, user, pg_server):
    home = Path(user.pw_dir)
    acts = [shell_action("probe", PROBE, requires_network=network)]
    result = run_template(template(step(10, "probe", id="p")), as_user(user), actions=acts, record=False,
                          allow_network=["probe"])
    assert result.success, result.error
    out = dict(line.split("=") for line in result.steps["p"].stdout.split())
    assert out == {"net": "yes" if network else "no", "etc": "read-only", "shadow": "hidden", "root": "hidden",
                   "home": "writable"}
    assert (home / "pid").read_text() != "" and int((home / "pid").read_text()) < 10  # a PID namespace of its own
    assert compile_template(template(step(10, "probe")), actions=acts).steps["probe"].sandbox


@root_only
def test_a_sandboxed_python_handler_runs_in_a_worker_process(user):
    acts = [action("pyprobe", "tests.helpers:describe_process")]
    result = run_template(template(step(10, "pyprobe", id="p")), as_user(user), actions=acts, record=False)
    assert result.success, result.error
    facts = result.steps["p"].result
    assert facts["pid"] != os.getpid() and facts["etc_writable"] is False and facts["shadow_readable"] is False


def test_the_library_is_not_sandboxed_and_execute_custom_script_opts_in(tmp_path):
    plan = compile_template(template(script_step(10, "true", id="plain"), script_step(20, "true", id="boxed",
                                                                                      sandbox=True)))
    assert (plan.steps["plain"].sandbox, plan.steps["boxed"].sandbox) == (False, True)


def test_without_bubblewrap_sandboxed_steps_are_refused_before_anything_runs(tmp_path, monkeypatch):
    from dagrun.run import isolation
    monkeypatch.setattr(isolation, "bwrap", lambda: None)
    home = tmp_path / "home"
    home.mkdir()
    doc = template(script_step(10, "touch ~/ran", id="first"), step(20, "probe", id="p"))
    with pytest.raises(InputError, match="steps p run in a sandbox, but bubblewrap \\(bwrap\\) is not installed"):
        run_template(doc, {"id": "s", "home_dir": str(home)}, actions=[shell_action("probe", "true")], record=False)
    assert not (home / "ran").exists()
    result = run_template(doc, {"id": "s", "home_dir": str(home)}, actions=[shell_action("probe", "true")],
                          record=False, sandbox=False)
    assert result.success


# -- limits ---------------------------------------------------------------------------

@root_only
@pytest.mark.parametrize("limits,script", [
    ({"file_size_mb": 1}, "head -c 3000000 /dev/zero > ~/big"),
    # (python, not bash: bash retries a failed fork with back-off, and finishes once the children do)
    ({"processes": 5}, "python3 -c 'import os, time\nfor _ in range(20):\n    os.fork() or (time.sleep(5), os._exit(0))'"),
    ({"memory_mb": 64}, "python3 -c 'x = bytearray(512 * 1024 * 1024)'"),
])
def test_limits_stop_a_step_that_goes_beyond_them(limits, script, user):
    acts = [shell_action("greedy", script, limits=limits)]
    result = run_template(template(step(10, "greedy", id="g")), as_user(user), actions=acts, record=False)
    assert result.steps["g"].status is StepStatus.failed, result.steps["g"].stdout


@root_only
def test_disk_use_is_checked_after_a_sandboxed_step(user):
    acts = [shell_action("filler", "head -c 3000000 /dev/urandom > ~/fill", disk_space_required_mb=1)]
    result = run_template(template(step(10, "filler", id="f")), as_user(user), actions=acts, record=False)
    assert result.steps["f"].error.startswith("the step used 2 MB of the workspace home, more than the 1 MB")


# -- processes ---------------------------------------------------------------------------

def test_a_daemon_started_with_setsid_ends_with_its_step(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    pidfile = tmp_path / "daemon.pid"
    doc = template(script_step(10, f"setsid sleep 300 > /dev/null 2>&1 < /dev/null &\necho $! > {pidfile}\n"
                                   "setsid sleep 301 &\necho started", id="s", timeout_seconds=60))
    result = run_template(doc, {"id": "p", "home_dir": str(home)}, record=False)
    s = result.steps["s"]
    assert (s.status, s.stdout, s.error) == (StepStatus.completed, "started\n", None)  # not "timed out"
    assert not pid_alive(int(pidfile.read_text()))


def test_ctrl_c_stops_a_sleeping_python_handler_at_once(tmp_path):
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(template(step(10, "sleep", id="nap", action_config={"seconds": 600}))))
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg")}
    proc = subprocess.Popen([sys.executable, "-m", "dagrun", "run", "t.yaml"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(200):  # wait for the step to start
        time.sleep(0.05)
        db = tmp_path / "xdg" / "dagrun" / "dagrun.db"
        if db.exists() and b"nap" in db.read_bytes() + (db.with_name("dagrun.db-wal").read_bytes()
                                                        if db.with_name("dagrun.db-wal").exists() else b""):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)  # a hang guard: without the cancel token this waits 600 s
    assert proc.returncode == 130, out + err
    assert "cancelled" in out


# -- regressions from an attack on the first version (each escaped) ---------------------

def test_user_defined_actions_never_run_as_root(tmp_path):
    acts = [shell_action("su_do", "id", requires_sudo=True), shell_action("plain", "id")]
    with pytest.raises(TemplateError, match="action 'su_do' is user-defined: it cannot be requires_sudo"):
        compile_template(template(step(10, "su_do")), actions=acts)
    with pytest.raises(TemplateError, match="action 'plain' is user-defined: its steps cannot run as root"):
        compile_template(template(step(10, "plain", run_as="root")), actions=acts)
    # the operator's own actions are trusted like the library
    plan = compile_template(template(step(10, "su_do")), trusted_actions=[acts[0]])
    assert plan.steps["su_do"].run_as == "root" and not plan.steps["su_do"].sandbox


def test_user_defined_handlers_read_only_what_their_step_gives_them(tmp_path):
    acts = [shell_action("peek", "echo {{ vars.token }}"), shell_action("peek2", "echo {{ workspace.api_key }}")]
    for name in ("peek", "peek2"):
        with pytest.raises(TemplateError, match="is user-defined: its execution_handler reads only its config"):
            compile_template(template(step(10, name)), actions=acts)


@root_only
def test_a_user_python_module_is_imported_only_in_its_sandbox(user, shared):
    home = Path(user.pw_dir)
    marker = home / "imported"  # the home is all the sandbox may write
    tmp_path = shared  # a module folder the user can read
    (tmp_path / "evil_mod_x.py").write_text(f"import os\nopen({str(marker)!r}, 'a').write(str(os.getpid()) + '\\n')\n"
                                            "def run(ctx):\n    return {'vars': dict(ctx.variables)}\n")
    sys.path.insert(0, str(tmp_path))
    try:
        acts = [action("evil", "evil_mod_x:run")]
        doc = template(step(10, "evil", id="e"), vars={"token": "s3cret"})
        compile_template(doc, actions=acts)
        assert not marker.exists()  # compiling did not run it
        result = run_template(doc, as_user(user, id="m"), actions=acts, record=False, secrets={"token": "s3cret"})
        assert result.success, result.error
        assert str(os.getpid()) not in marker.read_text().split()  # imported in its worker, not here
        assert result.steps["e"].result == {"vars": {}}  # and given no variables
    finally:
        sys.path.remove(str(tmp_path))


def test_a_handler_file_outside_the_actions_folder_is_refused(tmp_path):
    (tmp_path / "acts").mkdir()
    (tmp_path / "acts" / "leak.yaml").write_text(yaml.safe_dump(
        {"name": "leak", "action_type": "template_copy", "execution_handler": "../secret.txt"}))
    (tmp_path / "secret.txt").write_text("root only")
    with pytest.raises(TemplateError, match="is outside the folder of"):
        compile_template(template(step(10, "leak", action_config={"target_path": "~/x"})),
                         actions=[tmp_path / "acts"])


def test_a_result_file_swapped_for_a_symlink_is_not_read(tmp_path):
    secret = tmp_path / "root-only.env"
    secret.write_text("DB_PASSWORD=root-only\n")
    secret.chmod(0o600)
    home = tmp_path / "home"
    home.mkdir()
    result = run_template(template(script_step(10, f'ln -sf {secret} "$DAGRUN_OUTPUT"', id="s")),
                          {"id": "o", "home_dir": str(home)}, record=False)
    assert result.success and result.steps["s"].result == {}


@root_only
@pytest.mark.parametrize("name", ["root", "daemon", "nobody"])
def test_system_accounts_are_never_the_workspace_user(name, tmp_path):
    with pytest.raises(InputError, match=f"the workspace user {name!r} is a system account"):
        run_template(template(script_step(10, "id", id="s")), {"id": "r", "linux_username": name}, record=False)


def test_a_linux_username_must_be_a_user_name():
    with pytest.raises(InputError, match="is not a Linux user name"):
        run_template(template(script_step(10, "true")), {"id": "r", "linux_username": "a\0b"}, record=False)


@root_only
def test_a_home_the_workspace_user_could_swap_is_refused(user, tmp_path):
    """Refused before anything runs: a home inside a folder its user owns
    (it could become a link to /root), a symlink to a home elsewhere."""
    nested = Path(user.pw_dir) / "ws"
    with pytest.raises(InputError, match=f"belongs to uid {user.pw_uid}, not root"):
        run_template(template(script_step(10, "true", id="s")),
                     {"id": "h", "linux_username": user.pw_name, "home_dir": str(nested)}, record=False)
    link = tmp_path / "link-home"
    link.symlink_to("/root")
    with pytest.raises(InputError, match=r"\(after symlinks, /root\) is the file system's root or a folder at its top"):
        run_template(template(script_step(10, "true", id="s")),
                     {"id": "h", "linux_username": user.pw_name, "home_dir": str(link)}, record=False)
    link.unlink()
    link.symlink_to(user.pw_dir)  # a link to its own home: the run works in the real folder, not through the link
    result = run_template(template(script_step(10, "pwd -P > where; pwd >> where", id="s")),
                          {"id": "h", "linux_username": user.pw_name, "home_dir": str(link)}, record=False)
    assert result.success, result.error
    assert (Path(user.pw_dir) / "where").read_text().split() == [user.pw_dir, user.pw_dir]


@root_only
def test_rollback_never_follows_a_folder_swapped_for_a_symlink(user, tmp_path):
    victim = tmp_path / "victim"
    for name in ("bin", "lib", "pyvenv.cfg"):
        (victim / name).mkdir(parents=True) if name != "pyvenv.cfg" else (victim / name).write_text("x")
    home = Path(user.pw_dir)
    (home / "venv").mkdir()
    os.chown(home / "venv", user.pw_uid, user.pw_gid)
    doc = template(step(10, "create_python_venv", id="venv", action_config={"venv_path": "~/venv", "with_pip": False}),
                   script_step(20, f"mv ~/venv ~/venv.old && ln -s {victim} ~/venv && exit 1", id="swap",
                               requires=["venv"]))
    result = run_template(doc, {"id": "w", "linux_username": user.pw_name}, record=False)
    assert result.steps["swap"].status is StepStatus.failed
    assert sorted(p.name for p in victim.iterdir()) == ["bin", "lib", "pyvenv.cfg"]


@root_only
def test_a_user_api_call_is_sandboxed_and_speaks_http_only(user):
    import http.server
    import threading
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        for network, expected in ((False, StepStatus.failed), (True, StepStatus.completed)):
            acts = [{"name": "call", "action_type": "api_call", "execution_handler": f"GET {url}", "max_retries": 1,
                     "requires_network": network}]
            result = run_template(template(step(10, "call", id="c")), as_user(user), actions=acts, record=False,
                                  allow_network=["call"])
            assert result.steps["c"].status is expected, result.steps["c"].error
        acts = [{"name": "file", "action_type": "api_call", "execution_handler": "GET file:///etc/shadow",
                 "max_retries": 1, "requires_network": True}]
        result = run_template(template(step(10, "file", id="f")), as_user(user), actions=acts, record=False,
                              allow_network=["file"])
        assert "speaks http and https only" in result.steps["f"].error
    finally:
        server.shutdown()


def test_an_abandoned_attempt_leaves_nothing_running(tmp_path, monkeypatch):
    import dagrun.run.runner
    monkeypatch.setattr(dagrun.run.runner, "DEADLINE_GRACE_SECONDS", 0.2)
    home = tmp_path / "home"
    home.mkdir()
    pidfile = tmp_path / "pid"
    acts = [action("stubborn", "tests.helpers:ignore_cancel_then_run", timeout_seconds=1,
                   config_schema={"properties": {"pidfile": {}}})]
    result = run_template(template(step(10, "stubborn", id="s", action_config={"pidfile": str(pidfile)})),
                          {"id": "a", "home_dir": str(home)}, actions=acts, record=False, sandbox=False)
    assert "abandoned" in result.steps["s"].error
    for _ in range(100):  # the kill is asynchronous
        if pidfile.exists() and not pid_alive(int(pidfile.read_text())):
            break
        time.sleep(0.05)
    assert pidfile.exists() and not pid_alive(int(pidfile.read_text()))


@root_only
def test_the_sandbox_shows_only_what_programs_need_of_the_system(user):
    acts = [shell_action("look", "ls /etc; echo ---; ls /var/lib 2>&1 || true; echo ---; ls /opt 2>&1 || true")]
    result = run_template(template(step(10, "look", id="l")), as_user(user), actions=acts, record=False)
    etc, var_lib, opt = result.steps["l"].stdout.split("---\n")
    assert "passwd" in etc.split() and "shadow" not in etc.split() and "ssh" not in etc.split()
    assert "No such file" in var_lib and "No such file" in opt


def test_workspace_folders_never_collide():
    from dagrun.workspace import slug
    assert slug("team/alice") != slug(slug("team/alice"))
    assert slug("alice") == "alice" and "/" not in slug("../../x")
    # (helper-54 L5) the hash marks accounts and roles too: 128 bits, not 40 a GPU can match
    assert re.fullmatch(r"team_alice-[0-9a-f]{32}", slug("team/alice"))
    for looks_hashed in ("x-0123456789", "x-" + "a" * 32):  # an id that looks like a slug of either length
        assert slug(looks_hashed) != looks_hashed


# -- after the third attack: homes, users, scratch files, network, action text ----------

@root_only
def test_a_steps_script_and_result_file_are_out_of_its_users_reach_to_swap(user):
    """They live in dagrun's runtime folder, not the home: the user can write its result file but can
    neither rename nor replace the folder (a swap for a symlink made root write through it)."""
    doc = template(step(10, "probe", id="p"))
    probe = shell_action("probe", 'd=$(dirname "$DAGRUN_OUTPUT"); echo "dir=$d"; '
                                  'mv "$d" "$d.x" 2>/dev/null && echo renamed || echo kept; '
                                  'ln -sf /etc/passwd "$DAGRUN_OUTPUT" 2>/dev/null && echo replaced || echo intact; '
                                  'echo "k=v" >> "$DAGRUN_OUTPUT"')
    for sandbox in (True, False):
        result = run_template(doc, as_user(user), actions=[probe], record=False, sandbox=sandbox)
        out = result.steps["p"].stdout
        assert "kept" in out and "intact" in out, out
        assert result.steps["p"].result == {"k": "v"}
        assert not out.split("dir=")[1].startswith(user.pw_dir)
        assert not [p for p in os.listdir(user.pw_dir) if p.startswith(".dagrun")]


@root_only
def test_as_root_a_home_outside_the_allowed_folders_is_refused(tmp_path, monkeypatch):
    from dagrun.workspace import HOME_ROOTS_ENV
    monkeypatch.setenv(HOME_ROOTS_ENV, str(tmp_path / "workspaces"))
    for home in ("/root", "/", "/etc/systemd/system/x.service.d", str(tmp_path / "workspaces"),
                 str(tmp_path / "workspaces" / ".." / "elsewhere")):
        with pytest.raises(InputError, match="is outside the folders workspaces may live in|system folder|at its top"):
            run_template("demo", {"id": "w", "home_dir": home, "ssh_public_key": "ssh-ed25519 AAAA x"}, record=False)
    (tmp_path / "workspaces").mkdir()
    (tmp_path / "workspaces" / "link").symlink_to("/root")
    with pytest.raises(InputError, match=r"\(after symlinks, /root\) is the file system's root or a folder at its top"):
        run_template(template(script_step(10, "true")), {"id": "w", "home_dir": str(tmp_path / "workspaces/link")},
                     record=False)
    result = run_template(template(script_step(10, "true", id="s")),
                          {"id": "w", "home_dir": str(tmp_path / "workspaces" / "w")}, record=False)
    assert result.success, result.error


@root_only
def test_no_home_is_a_system_folder_even_where_the_operator_allows_it(tmp_path):
    """The CLI allows the home its operator types (the folder above it): a
    mistyped /etc still gets no workspace written into it."""
    for home, why in (("/etc", "a system folder"), ("/usr/local/x", "in /usr, a system folder"),
                      ("/var/lib/postgresql", "in /var/lib"), ("/srv", "a folder at its top"), ("/", "root"),
                      ("/root", "a folder at its top")):  # (root's own home too: its ~/.ssh)
        with pytest.raises(InputError, match=f"the workspace home_dir {home} is .*{why}"):
            run_template(template(script_step(10, "true")), {"id": "w", "home_dir": home}, record=False,
                         home_roots=[os.path.dirname(home)])
    # a home the kernel will not resolve is one clear error too (it was a PermissionError: a 500 over HTTP)
    with pytest.raises(InputError, match="/proc/1/root"):
        run_template(template(script_step(10, "true")), {"id": "w", "home_dir": "/proc/1/root/x"}, record=False)
    from dagrun.workspace import with_home  # a root written "//" (POSIX keeps it) no longer loops forever
    with pytest.raises(InputError, match="writable by others"):
        with_home({"id": "w", "home_dir": "/tmp/x/y"}, roots=("//",))
    out = subprocess.run([sys.executable, "-m", "dagrun", "run", "demo", "--ws", "id=p2", "--ws", "home_dir=/etc",
                          "--db", f"sqlite:///{tmp_path}/x.db"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and "the workspace home_dir /etc is a system folder" in out.stderr, out.stderr
    assert not os.path.exists("/etc/hello") and not os.path.exists("/etc/.config/dagrun-demo")


@root_only
def test_the_folders_above_the_home_are_checked_again_before_each_attempt(tmp_path, monkeypatch):
    """A step may change what is above the home: the next attempt, as root,
    looks again (a folder made writable by others, the home made a link)."""
    from dagrun.workspace import HOME_ROOTS_ENV
    monkeypatch.setenv(HOME_ROOTS_ENV, str(tmp_path / "ws"))
    home = tmp_path / "ws" / "mid" / "w"
    opened = template(script_step(10, "chmod 777 ..", id="open"), script_step(20, "true", id="after", requires=["open"]))
    result = run_template(opened, {"id": "w", "home_dir": str(home)}, record=False)
    assert result.steps["open"].status is StepStatus.completed
    assert result.steps["after"].status is StepStatus.failed
    assert f"{home.parent} (above the workspace home {home}) is writable by others" in result.steps["after"].error
    (home.parent).chmod(0o755)
    linked = template(script_step(10, "cd .. && mv w w.old && ln -s /root w", id="link"),
                      script_step(20, "touch planted", id="after", requires=["link"]))
    result = run_template(linked, {"id": "w", "home_dir": str(home)}, record=False)
    assert result.steps["after"].status is StepStatus.failed
    assert f"the workspace home {home} is a symlink or not a folder" in result.steps["after"].error
    assert not Path("/root/planted").exists()


@root_only
def test_steps_that_work_in_no_home_neither_check_nor_make_it(tmp_path, monkeypatch):
    """The library's noop, sleep and PostgreSQL actions touch no file of the
    home: their attempts skip the check of the folders above it (one system
    call, which with eight busy workers costs more than the rest of a short
    step) and do not make the home. A step that works in the home still
    checks, after them as before them."""
    from dagrun.workspace import HOME_ROOTS_ENV
    monkeypatch.setenv(HOME_ROOTS_ENV, str(tmp_path / "ws"))
    home = tmp_path / "ws" / "mid" / "w"
    opened = template(script_step(10, "chmod 777 ..", id="open"),
                      step(20, "noop", id="idle", requires=["open"]),
                      step(30, "sleep", id="nap", action_config={"seconds": 0}, requires=["open"]),
                      script_step(40, "true", id="after", requires=["idle", "nap"]))
    result = run_template(opened, {"id": "w", "home_dir": str(home)}, record=False)
    assert [result.steps[s].status for s in ("open", "idle", "nap")] == [StepStatus.completed] * 3
    assert result.steps["after"].status is StepStatus.failed
    assert f"{home.parent} (above the workspace home {home}) is writable by others" in result.steps["after"].error
    # nothing that works in the home ran: none was made
    elsewhere = tmp_path / "ws" / "quiet" / "w"
    (tmp_path / "ws" / "quiet").mkdir(mode=0o755)
    result = run_template(template(step(10, "noop", id="a"), step(20, "sleep", id="b", action_config={"seconds": 0})),
                          {"id": "w2", "home_dir": str(elsewhere)}, record=False)
    assert result.success and not elsewhere.exists()


def test_only_trusted_actions_may_say_they_work_in_no_home(tmp_path):
    """An untrusted action always has its home checked: saying otherwise is
    refused with the field named (as a dict, a file or an ActionSpec); the
    operator's trusted actions may, and `dagrun validate` of the library's
    own files or of a trusted file takes them as a run does (helper-76)."""
    from dataclasses import replace

    from dagrun.api import validate
    from dagrun.compile.loader import ActionDefinitionError, load_action_file, package_dir
    quiet = action("quiet", works_in_home=False)
    refused = ("field 'works_in_home': works_in_home: false is honoured only for the library's and the operator's "
               "trusted actions")
    with pytest.raises(ActionDefinitionError, match=refused):
        compile_template(template(step(10, "quiet")), actions=[quiet])
    spec = replace(load_action_file(package_dir("handlers") / "util" / "noop.yaml", library=True)[0], name="quiet")
    with pytest.raises(ActionDefinitionError, match=refused):
        compile_template(template(step(10, "quiet")), actions=[spec])
    plan = compile_template(template(step(10, "quiet")), trusted_actions=[quiet])
    assert plan.steps["quiet"].action.works_in_home is False
    assert compile_template(template(step(10, "noop"))).steps["noop"].action.works_in_home is False
    assert compile_template(template(script_step(10, "true"))).steps["execute_custom_script"].action.works_in_home
    (tmp_path / "acts").mkdir()
    file = tmp_path / "acts" / "quiet.yaml"
    file.write_text(yaml.safe_dump(quiet))
    library_file = package_dir("handlers") / "util" / "noop.yaml"
    assert [error for _, error in validate([str(library_file)])] == [None]
    [(_, error)] = validate([str(file)])
    assert "works_in_home: false is honoured only" in str(error)
    assert [error for _, error in validate([str(file)], trusted_actions=[str(file)])] == [None]
    assert [error for _, error in validate([str(file)], trusted_actions=[str(tmp_path / "acts")])] == [None]


@root_only
def test_a_handler_that_works_in_no_home_is_handed_none(tmp_path):
    """(helper-76) The promise is held: a trusted action that says it works
    in no home gets no home to use (nor does its isolation), and --check
    does not answer for it that the home is missing."""
    home = tmp_path / "ws" / "w"
    quiet = action("quiet", "tests.helpers:home_given", works_in_home=False)
    loud = action("loud", "tests.helpers:home_given")
    doc = template(step(10, "quiet", id="q"), step(20, "loud", id="l"))
    result = run_template(doc, {"id": "w", "home_dir": str(home)}, trusted_actions=[quiet, loud], record=False,
                          home_roots=[str(tmp_path / "ws")])
    assert result.steps["q"].result == {"home": None, "isolation_home": None}
    assert result.steps["l"].result == {"home": str(home), "isolation_home": str(home)}
    checked = run_template(template(step(10, "noop", id="n")), {"id": "w2", "home_dir": str(tmp_path / "ws" / "v")},
                           record=False, check=True, home_roots=[str(tmp_path / "ws")])
    assert "does not exist yet" not in str(checked.steps["n"].result), checked.steps["n"].result


@root_only
def test_as_root_no_command_comes_from_a_folder_of_the_callers_path_another_user_fills(tmp_path, monkeypatch):
    """(helper-78) The rule for a step's own PATH held only for its env: a
    caller's PATH naming a folder another user owns made root's steps (a
    script's `id`, a library handler's git) run that user's programs."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    marker = tmp_path / "ran"
    for name in ("id", "git"):
        (theirs / name).write_text(f"#!/bin/sh\necho {name} >> {marker}\n")
        (theirs / name).chmod(0o755)
    os.chown(theirs, 65534, 65534)
    origin = bare_repo(tmp_path)  # (made before the PATH changes)
    monkeypatch.setenv("PATH", f"{theirs}:{os.environ['PATH']}")
    home = tmp_path / "ws" / "w"
    doc = template(script_step(10, "id -u > uid", id="who"),
                   step(20, "clone_git_repository", id="clone", action_config={"url": origin, "target_dir": "~/repo"}))
    result = run_template(doc, {"id": "w", "home_dir": str(home)}, record=False, home_roots=[str(tmp_path / "ws")])
    assert result.steps["who"].status is StepStatus.completed, result.steps["who"]
    assert (home / "uid").read_text().strip() == "0"
    assert result.steps["clone"].status is StepStatus.completed, result.steps["clone"]
    assert not marker.exists(), marker.read_text()


@root_only
def test_as_root_a_checked_folder_or_program_is_used_by_its_real_path(tmp_path, monkeypatch):
    """(helper-79) A PATH folder or a program was checked by its real path
    and then used by the name given: a symlink in another user's folder
    passed while it pointed at /usr/bin and was pointed at the user's own
    folder before a later step looked for git (root ran it). What is used
    now is what was checked: the real path."""
    from dagrun.run.paths import own_program
    from dagrun.run.runner import step_environment
    theirs = tmp_path / "theirs"
    (theirs / "bin").mkdir(parents=True)
    (theirs / "tools").symlink_to("/usr/bin")
    for name in ("git", "dot"):
        (theirs / "bin" / name).write_text("#!/bin/sh\nexit 0\n")
        (theirs / "bin" / name).chmod(0o755)
    os.lchown(theirs / "tools", 65534, 65534)
    os.chown(theirs, 65534, 65534)
    monkeypatch.setenv("PATH", f"{theirs}/tools:{theirs}/bin:/usr/bin:/bin")
    assert step_environment()["PATH"].split(":")[0] == "/usr/bin"  # the link by its target; theirs not at all
    assert str(theirs) not in step_environment()["PATH"]
    assert not str(own_program("git")).startswith(str(theirs))
    assert not str(own_program("dot") or "").startswith(str(theirs))  # (graph --format svg)
    # (helper-80) a root-owned link in a folder only root fills, to a file somebody else's: not run
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "dot").symlink_to(theirs / "bin" / "dot")
    (theirs / "bin" / "dot").chmod(0o755)
    os.chown(theirs / "bin" / "dot", 65534, 65534)
    monkeypatch.setenv("PATH", f"{ours}:/usr/bin:/bin")
    assert own_program("dot") != str(ours / "dot")
    # a link nobody else could change keeps the name it is called by (snap's programs need it)
    (ours / "code").symlink_to("/usr/bin/true")
    from dagrun.run.paths import root_program
    assert root_program(str(ours / "code")) == str(ours / "code")
    assert root_program(str(theirs / "tools" / "true")) == "/usr/bin/true"  # (through their link: the real one)
    assert root_program(str(ours / "dot")) is None
    # (helper-81) a ".." applies after the link before it is followed: never kept as given
    (theirs / "l").symlink_to("/usr/lib/python3")
    os.lchown(theirs / "l", 65534, 65534)
    assert root_program(str(theirs / "l" / ".." / ".." / "bin" / "true")) == os.path.realpath("/usr/bin/true")
    # (helper-81) a bare name no folder only root fills has is not handed to Popen to find in the step's PATH
    from dagrun.run.shell import run_command
    (ours / "devtool").symlink_to(theirs / "bin" / "git")
    marker = tmp_path / "devtool-ran"
    (theirs / "bin" / "git").write_text(f"#!/bin/sh\necho x > {marker}\n")
    monkeypatch.setenv("PATH", f"{ours}:/usr/bin:/bin")
    result = run_command(["devtool"], env={"PATH": f"{ours}:/usr/bin:/bin"})
    assert result.exit_code == 127 and "not found where only root could have installed it" in result.stderr
    assert not marker.exists()
    home = tmp_path / "ws" / "w"
    given = template(script_step(10, 'echo "$PATH"', id="p", action_config={"env": {"PATH": f"{theirs}/tools"}}))
    result = run_template(given, {"id": "w", "home_dir": str(home)}, record=False, home_roots=[str(tmp_path / "ws")])
    assert result.steps["p"].stdout == "/usr/bin\n", result.steps["p"]


@root_only
def test_as_root_no_program_of_a_workspace_users_home_runs(user):
    """(helper-79) A root step (run_as: root) ran the venv's python in a
    workspace user's home: its owner could swap the venv (the interpreter's
    link, its site-packages) for their own in between."""
    doc = template(step(10, "create_python_venv", id="venv", action_config={"venv_path": "~/venv", "with_pip": False}),
                   step(20, "install_pip_requirements", id="pip", run_as="root", requires=["venv"],
                        action_config={"venv_path": "~/venv", "packages": ["nothing-here"], "no_index": True}),
                   global_config={"rollback_on_failure": False})
    result = run_template(doc, {"id": "u", "linux_username": user.pw_name}, record=False)
    assert result.steps["venv"].status is StepStatus.completed, result.steps["venv"]
    # (helper-80) making a venv as root there ran its python first (the version check), and made its folder
    made = run_template(template(step(10, "create_python_venv", id="venv2", run_as="root", action_config={
        "venv_path": "~/venv2", "with_pip": False})), {"id": "u", "linux_username": user.pw_name}, record=False)
    for step_result in (result.steps["pip"], made.steps["venv2"]):
        assert step_result.status is StepStatus.failed, step_result
        assert "is in a workspace user's home: dagrun, as root, runs and makes nothing of it" in step_result.error
    assert not (Path(user.pw_dir) / "venv2").exists()


def test_a_home_is_checked_by_its_normalized_path(tmp_path):
    """A trailing slash would make lstat follow a home that is a link."""
    from dagrun.run.paths import home_state
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    owner = os.geteuid()
    assert home_state(f"{tmp_path}/link/", str(tmp_path), owner)[0].endswith("is a symlink or not a folder")
    assert home_state(f"{tmp_path}/real/", str(tmp_path), owner) == (None, True)
    assert home_state(f"{tmp_path}/missing/x", str(tmp_path), owner) == (None, False)


@root_only
def test_as_root_sandboxed_steps_need_a_workspace_user(tmp_path):
    doc = template(step(10, "probe", id="p"))
    with pytest.raises(InputError, match="the workspace has no linux_username"):
        run_template(doc, {"id": "w", "home_dir": str(tmp_path / "h")}, actions=[shell_action("probe", "true")],
                     record=False)


def test_a_user_defined_action_gets_the_network_only_with_the_operators_consent(tmp_path):
    acts = [shell_action("fetch", "true", requires_network=True)]
    with pytest.raises(InputError, match="fetch ask for the network"):
        run_template(template(step(10, "fetch")), {"id": "w", "home_dir": str(tmp_path / "h")}, actions=acts,
                     record=False)


def test_a_user_defined_actions_defaults_and_condition_read_no_variables():
    for extra in ({"default_config": {"note": "{{ vars.db_password }}"}},
                  {"condition_expression": "vars.db_password == 'x'"},
                  {"default_config": {"note": "{{ workspace.api_token }}"}}):
        acts = [{**shell_action("sneak", "echo $CONFIG_NOTE"), "config_schema": {
            "type": "object", "properties": {"note": {"type": "string"}}}, **extra}]
        with pytest.raises(TemplateError, match="is user-defined: its (default_config.note|condition_expression) "
                                                "reads only its config"):
            compile_template(template(step(10, "sneak"), vars={"db_password": "x"}), actions=acts)


def test_environment_variable_names_never_come_from_a_value():
    doc = template(script_step(10, "ls", action_config={"env": "{{ vars.extra }}"}), vars={"extra": {}})
    with pytest.raises(TemplateError, match="its names are written in the template"):
        compile_template(doc)


def test_a_handler_file_swapped_for_a_symlink_is_refused(tmp_path):
    acts = tmp_path / "acts"
    acts.mkdir()
    (acts / "leak.yaml").write_text(yaml.safe_dump({"name": "leak", "action_type": "shell",
                                                    "execution_handler": "body.sh"}))
    (acts / "body.sh").symlink_to("/etc/shadow")
    with pytest.raises(TemplateError, match="'body.sh' is refused: 'body.sh' is a symlink"):
        compile_template(template(step(10, "leak")), actions=[acts])


@root_only
def test_a_user_template_copy_reads_its_own_template_file_in_its_sandbox(user):
    acts = Path(tempfile.mkdtemp(prefix="dagrun-acts-", dir="/tmp"))
    try:
        acts.chmod(0o755)
        (acts / "note.yaml").write_text(yaml.safe_dump({
            "name": "note", "action_type": "template_copy", "execution_handler": "note.j2",
            "config_schema": {"type": "object", "properties": {"target_path": {"type": "string"},
                                                               "who": {"type": "string"}}}}))
        (acts / "note.j2").write_text("hello {{ config.who }}\n")
        result = run_template(template(step(10, "note", id="n", action_config={"target_path": "~/note.txt",
                                                                                "who": "ada"})),
                              as_user(user), actions=[acts], record=False)
        assert result.success, result.error
        assert (Path(user.pw_dir) / "note.txt").read_text() == "hello ada\n"
    finally:
        shutil.rmtree(acts, ignore_errors=True)


# -- what root reads, runs and works in on a value's behalf ------------------------------------

@root_only
def test_tools_dagrun_runs_as_root_never_come_from_the_steps_path(user, shared):
    """setpriv (and prlimit) start as root, before dropping to the user: a
    PATH the template gives its step never makes root run a program planted
    in the home."""
    planted = Path(user.pw_dir) / "bin"
    planted.mkdir()
    marker = shared / "planted-ran"
    for name in ("setpriv", "prlimit"):
        (planted / name).write_text(f"#!/bin/sh\nid -u >> {marker}\nexec /usr/bin/{name} \"$@\"\n")
        (planted / name).chmod(0o755)
    doc = template(script_step(10, "echo $PATH", id="s", action_config={"env": {"PATH": f"{planted}:/usr/bin:/bin"}}))
    result = run_template(doc, as_user(user), record=False)
    assert result.success, result.error
    assert result.steps["s"].stdout.startswith(str(planted))  # the step has its PATH; dagrun's tools do not use it
    assert not marker.exists()


@root_only
def test_as_root_a_python_another_user_could_have_planted_is_not_run(user, tmp_path, shared):
    fake = Path(user.pw_dir) / "python3"
    marker = shared / "fake-python-ran"
    fake.write_text(f"#!/bin/sh\nid -u >> {marker}\n")
    fake.chmod(0o755)
    os.chown(fake, user.pw_uid, user.pw_gid)
    doc = template(step(10, "create_python_venv", id="v", max_retries=1, action_config={
        "venv_path": "~/venv", "python_version": str(fake), "with_pip": False}))
    result = run_template(doc, {"id": "p", "home_dir": str(tmp_path / "h")}, record=False)
    assert "is not a program only root could have installed" in result.steps["v"].error
    assert not marker.exists()


@root_only
def test_as_root_a_value_never_makes_dagrun_read_a_private_file(tmp_path):
    """/etc/shadow as a requirements file, a root-only repository as a clone
    URL: root reads outside the home only what every user could read."""
    private = Path(tempfile.mkdtemp(prefix="dagrun-private-", dir="/tmp"))  # 0700, root's
    try:
        repo = bare_repo(private)
        doc = template(step(5, "create_python_venv", id="v", action_config={"venv_path": "~/venv", "with_pip": False}),
                       step(10, "install_pip_requirements", id="r", max_retries=1, requires=["v"], skip_on_error=True, action_config={
                           "venv_path": "~/venv", "requirements_file": "/etc/shadow"}),
                       step(20, "clone_git_repository", id="c", max_retries=1, skip_on_error=True, action_config={
                           "url": repo, "target_dir": "~/r"}),
                       step(30, "clone_git_repository", id="f", max_retries=1, skip_on_error=True, action_config={
                           "url": f"file://{repo}", "target_dir": "~/f"}),
                       # git takes localhost for this machine and decodes %-escapes (found by helper-21)
                       step(40, "clone_git_repository", id="l", max_retries=1, skip_on_error=True, action_config={
                           "url": f"file://localhost{repo}", "target_dir": "~/l"}),
                       step(50, "clone_git_repository", id="e", max_retries=1, skip_on_error=True, action_config={
                           "url": f"file://{tmp_path}/h/{'..%2F' * (len((tmp_path / 'h').parts) - 1)}{repo[1:]}",
                           "target_dir": "~/e"}),
                       # (helper-53) urlsplit cut the path at # or ?, git did not: a#/../.. left the home
                       *(step(60 + n, "clone_git_repository", id=sid, max_retries=1, skip_on_error=True,
                              action_config={"url": f"file://{tmp_path}/h/a{mark}/{'../' * len((tmp_path / 'h').parts)}"
                                                    f"{repo[1:]}", "target_dir": f"~/{sid}"})
                         for n, (sid, mark) in enumerate((("g", "#"), ("q", "?")))))
        (tmp_path / "h" / "a#").mkdir(parents=True)
        (tmp_path / "h" / "a?").mkdir()
        result = run_template(doc, {"id": "priv", "home_dir": str(tmp_path / "h")}, record=False)
        for sid, path in (("r", "/etc/shadow"), ("c", repo), ("f", repo), ("l", repo), ("e", repo)):
            assert result.steps[sid].error.startswith(f"{path} is outside the workspace home and not readable by "
                                                      "everyone"), result.steps[sid].error
        for sid in "gq":
            assert "holds ? or #: a repository of this machine is file:///path" in result.steps[sid].error
        for name in "rfleg":
            assert not (tmp_path / "h" / name).exists()
    finally:
        shutil.rmtree(private)


@root_only
def test_a_missing_path_is_said_to_be_missing_only_where_anyone_could_see_it(tmp_path):
    """(helper-45) A mistyped repository path was "not readable by everyone"
    (misleading). It is "does not exist" where every user could see that;
    inside a folder others cannot look into, root says nothing more than
    before (no oracle of what exists there)."""
    private = Path(tempfile.mkdtemp(prefix="dagrun-private-", dir="/tmp"))  # 0700, root's
    try:
        doc = template(*(step(n, "clone_git_repository", id=f"c{n}", max_retries=1, skip_on_error=True,
                              action_config={"url": url, "target_dir": f"~/r{n}"})
                         for n, url in ((1, "/tmp/dagrun-no-such-repo.git"), (2, f"{private}/no-such.git"))))
        # (helper-46) nor through a symlink in a private folder to a public one: root follows it, nobody else
        (private / "link").symlink_to("/tmp")
        # (helper-48) nor through a public symlink to one in a private folder
        from dagrun.run.paths import visibly_missing
        public = tmp_path / "pub"
        public.mkdir(mode=0o755)
        os.chmod(tmp_path, 0o755)
        (public / "via").symlink_to(private / "link")
        assert not visibly_missing(str(public / "via" / "dagrun-no-such-repo.git"))
        assert visibly_missing(str(public / "nothing-here"))
        doc["actions"].append(step(3, "clone_git_repository", id="c3", max_retries=1, skip_on_error=True,
                                   action_config={"url": f"{private}/link/dagrun-no-such-repo.git", "target_dir": "~/r3"}))
        result = run_template(doc, {"id": "miss", "home_dir": str(tmp_path / "h")}, record=False)
        assert result.steps["c1"].error == "/tmp/dagrun-no-such-repo.git does not exist"
        for sid, url in (("c2", f"{private}/no-such.git"), ("c3", f"{private}/link/dagrun-no-such-repo.git")):
            assert "is outside the workspace home and not readable by everyone" in result.steps[sid].error, sid
    finally:
        shutil.rmtree(private)


@root_only
def test_another_tenants_account_is_never_the_workspace_user(tmp_path):
    """An account create_linux_user made for workspace A (or one nobody
    marked) is not workspace B's, whatever B's form says; the operator's
    adopt list allows one on purpose."""
    name = f"dgt{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--create-home", "--comment", "dagrun-workspace=tenant-a", name], check=True)
    try:
        doc = template(script_step(10, "id -un", id="s"))
        with pytest.raises(InputError, match=r"is not this workspace's \(it is another workspace's\)") as refused:
            run_template(doc, {"id": "tenant-b", "linux_username": name, "home_dir": f"/home/{name}"}, record=False)
        assert "tenant-a" not in str(refused.value)  # (helper-46) whose it is: not told to another tenant
        with pytest.raises(InputError, match=r"is not this workspace's"):  # "*" adopts unmarked accounts only
            run_template(doc, {"id": "tenant-b", "linux_username": name, "home_dir": f"/home/{name}"},
                         adopt_users=["*"], record=False)
        assert run_template(doc, {"id": "tenant-a", "linux_username": name, "home_dir": f"/home/{name}"},
                            record=False).success
        result = run_template(doc, {"id": "tenant-b", "linux_username": name, "home_dir": f"/home/{name}"},
                              adopt_users=[name], record=False)
        assert result.success and result.steps["s"].stdout.strip() == name
        adopt = template(step(10, "create_linux_user", id="u", action_config={"username": name,
                                                                            "adopt_existing": True}))
        result = run_template(adopt, {"id": "tenant-b", "home_dir": str(tmp_path / "h")}, record=False)
        assert "is not this workspace's" in result.steps["u"].error
    finally:
        subprocess.run(["userdel", "--remove", name], capture_output=True)


@root_only
def test_a_home_another_user_owns_is_not_a_root_workspaces(user):
    with pytest.raises(InputError, match=f"the workspace home {user.pw_dir} belongs to another user"):
        run_template(template(script_step(10, "true")), {"id": "nouser", "home_dir": user.pw_dir}, record=False)


@root_only
def test_create_linux_user_makes_homes_only_where_workspaces_may_live(tmp_path):
    name = f"dgt{uuid.uuid4().hex[:8]}"
    try:
        result = run_template(template(step(10, "create_linux_user", id="u", action_config={
            "username": name, "home": "/etc/dagrun-evil"})), {"id": "x", "home_dir": str(tmp_path / "h")},
            record=False)
        assert "/etc/dagrun-evil is in /etc, a system folder" in result.steps["u"].error
        assert not os.path.exists("/etc/dagrun-evil")
        # (helper-62) not inside another workspace's home either: a root-owned one passed the checks above
        other = tmp_path / "other-workspace"
        other.mkdir(mode=0o700)
        result = run_template(template(step(10, "create_linux_user", id="u", action_config={
            "username": name, "home": str(other / "evil")})), {"id": "x", "home_dir": str(tmp_path / "h")},
            record=False)
        assert f"{other}/evil: a new user's home is the workspace's own home or a folder right in one" in \
            result.steps["u"].error, result.steps["u"].error
        assert not (other / "evil").exists()
        with pytest.raises(KeyError):
            pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", "--remove", name], capture_output=True)


@root_only
def test_as_root_a_requirements_file_never_includes_what_root_may_not_read(tmp_path, roots_public):
    """A public requirements file saying ``-r /etc/shadow`` would make root's
    pip read it and show its first line in the error."""
    for n, line in enumerate(("-r /etc/shadow", "--requirement=/etc/shadow", "-c /etc/shadow",
                              "-e /root/project", "/root/private.whl", "file:///etc/shadow",
                              "-r/etc/shadow", "--requirem=/etc/shadow", "-\\\nr /etc/shadow",
                              "x @ file:///etc/shadow", "${HOME}/../../../etc/shadow", "pkg -r /etc/shadow",
                              "--pre -r /etc/shadow", "# x \\\n-r /etc/shadow", "--index-url /tmp/idx",
                              "--extra-index-url=/srv/idx", "# -*- coding: utf-7 -*-\n+AC0-r +AC8-etc+AC8-shadow",
                              # pip takes an archive's file name for a local file (found by helper-21)
                              "evil3-1.0.tar.gz", "evil-1.0-py3-none-any.whl", "x.zip")):
        requirements = roots_public / f"req{n}.txt"
        requirements.write_text(f"# looks harmless\n{line}\n")
        requirements.chmod(0o644)
        doc = template(step(5, "create_python_venv", id="v", action_config={"venv_path": "~/venv", "with_pip": False}),
                       step(10, "install_pip_requirements", id="r", max_retries=1, requires=["v"], action_config={
                           "venv_path": "~/venv", "requirements_file": str(requirements)}))
        result = run_template(doc, {"id": f"req{n}", "home_dir": str(tmp_path / f"h{n}")}, record=False)
        error = result.steps["r"].error
        assert f"of the requirements file {requirements} is not a package, an http(s) URL or an option" in error, \
            (line, error)
        assert "root:" not in error


def test_a_user_defined_action_never_reads_other_steps_results():
    acts = [{**shell_action("peek", "echo {{ steps.first.result.secret }}")}]
    with pytest.raises(TemplateError, match="is user-defined"):
        compile_template(template(script_step(10, "true", id="first"), step(20, "peek", requires=["first"])),
                         actions=acts)


def test_a_private_folder_is_never_shown_whole_to_a_sandbox(tmp_path, monkeypatch):
    """A folder other users cannot enter (a checkout in mktemp -d, 0700) is
    not bound whole (its user could not read it there); dagrun's own
    packages are bound by themselves."""
    import dagrun
    from dagrun.run.isolation import python_paths
    private = tmp_path / "private"
    (private / "pkg").mkdir(parents=True)
    private.chmod(0o700)
    monkeypatch.setattr(sys, "path", [*sys.path, str(private)])
    shown = python_paths()
    assert str(private) not in shown
    assert any(os.path.dirname(os.path.realpath(dagrun.__file__)).startswith(p) for p in shown)


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_a_home_belongs_to_the_workspace_that_used_it_first(store, tmp_path, request):
    """A home_dir typed into a form never points a workspace's steps at
    another workspace's home (without a Linux user both are root's, so the
    owner check cannot tell them apart): the store knows whose it is."""
    url = f"sqlite:///{tmp_path}/homes.db" if store == "sqlite" else request.getfixturevalue("pg_url")
    home = tmp_path / "alice-home"
    doc = template(script_step(10, "echo mine > ~/owner.txt", id="s"))
    assert run_template(doc, {"id": "alice", "home_dir": str(home)}, database_url=url).success
    with pytest.raises(InputError, match=f"the workspace home {home} is another workspace's: ") as refused:
        run_template(doc, {"id": "mallory", "home_dir": str(home)}, database_url=url)
    assert "alice" not in str(refused.value).replace(str(home), "")  # (helper-54 L4) not whose, nor its home
    assert (home / "owner.txt").read_text() == "mine\n"
    assert run_template(doc, {"id": "alice", "home_dir": str(home)}, database_url=url).success  # its own, again
    for nested in (home / "sub", tmp_path):  # inside alice's home, or around it
        with pytest.raises(InputError, match="is inside or around another workspace's home") as refused:
            run_template(doc, {"id": "mallory", "home_dir": str(nested)}, database_url=url)
        assert "alice" not in str(refused.value).replace(str(nested), "")
    assert run_template(doc, {"id": "bob", "home_dir": str(tmp_path / "alice-home-2")}, database_url=url).success


# -- root steps among a workspace user's files -----------------------------------------

@root_only
def test_a_root_step_never_takes_the_tenants_files_for_its_own(user):
    """A root step of a workspace with a user gets root's HOME and starts in
    /: Python's user site in the tenant's home (a .pth file runs code) is not
    root's, nor any other configuration the tenant could plant there."""
    version = subprocess.run(["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    site = Path(user.pw_dir, ".local", "lib", f"python{version}", "site-packages")
    marker = Path(user.pw_dir, "ran-as-root")
    subprocess.run(["runuser", "-u", user.pw_name, "--", "mkdir", "-p", str(site)], check=True)
    (site / "zz.pth").write_text(f"import os; os.getuid() == 0 and open({str(marker)!r}, 'w').close()\n")
    result = run_template(template(script_step(10, "/usr/bin/python3 -c pass; echo $HOME; pwd; echo $DAGRUN_WORKSPACE_HOME",
                                               id="root", run_as="root")), as_user(user), record=False)
    assert result.success, result.error
    assert not marker.exists()
    assert result.steps["root"].stdout.split() == [pwd.getpwuid(0).pw_dir, "/", user.pw_dir]


def test_a_working_dir_swapped_for_a_symlink_after_its_check_leads_nowhere(tmp_path, monkeypatch):
    """The folder is opened when it is checked and the command starts in
    what was opened: a swap in between (a tenant's process racing the step)
    does not take the command to where the symlink leads."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    (home / "project").mkdir(parents=True)
    elsewhere.mkdir()
    start = subprocess.Popen

    def swap_then_start(*args, **kwargs):
        if not (home / "project").is_symlink():  # the tenant wins the race: just before the command starts
            (home / "project").rename(home / "checked")
            (home / "project").symlink_to(elsewhere)
        return start(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", swap_then_start)
    result = run_template(template(script_step(10, "pwd -P; touch here", id="s",
                                               action_config={"working_dir": "~/project"})),
                          {"id": "w", "home_dir": str(home)}, record=False, sandbox=False)
    assert result.success, result.error
    assert result.steps["s"].stdout == f"{home / 'checked'}\n"
    assert (home / "checked" / "here").exists() and not (elsewhere / "here").exists()


@root_only
def test_a_root_workspaces_home_is_root_s_alone(tmp_path):
    result = run_template(template(script_step(10, "true", id="s")), {"id": "w", "home_dir": str(tmp_path / "w")},
                          record=False)
    assert result.success, result.error
    assert stat.S_IMODE((tmp_path / "w").stat().st_mode) == 0o700


def test_the_sandboxed_python_worker_sees_no_folder_below_a_private_one(tmp_path, monkeypatch):
    """The host application's folder (its settings) below a private folder
    is not bound into the sandbox: the step's user could not reach it
    outside either. Folders anyone can reach still are."""
    from dagrun.run.isolation import python_paths
    private = tmp_path / "private"
    (private / "app").mkdir(parents=True)
    private.chmod(0o700)
    (private / "app").chmod(0o755)
    public = Path(tempfile.mkdtemp(prefix="dagrun-public-", dir="/tmp"))
    try:
        public.chmod(0o755)
        monkeypatch.setattr(sys, "path", [str(private / "app"), str(public), *sys.path])
        shown = python_paths()
        assert str(private / "app") not in shown and str(public) in shown
    finally:
        shutil.rmtree(public)


def test_a_fifo_in_place_of_a_file_is_refused_not_waited_on(tmp_path):
    home = tmp_path / "home"
    (home / "conf").mkdir(parents=True)
    os.mkfifo(home / "conf" / "settings.json")
    result = run_template(template(step(10, "write_file", id="f", timeout_seconds=5,
                                        action_config={"target_path": "~/conf/settings.json", "content": "{}"})),
                          {"id": "w", "home_dir": str(home)}, record=False)
    assert result.steps["f"].status is StepStatus.failed
    assert "not a regular file" in result.steps["f"].error and "timed out" not in result.steps["f"].error


@root_only
def test_as_root_packages_and_programs_from_values_are_what_root_may_run(tmp_path, shared):
    """From a second attack (helper-21), each ran code as root: a package
    given as ``x @ file:///...`` or a local archive; a VS Code cli a user
    could have put there; a venv whose python came with a cloned repository."""
    user_owned = shared / "userbin"
    user_owned.mkdir()
    (user_owned / "code").write_text("#!/bin/sh\ntouch " + str(tmp_path / "RAN") + "\n")
    (user_owned / "code").chmod(0o755)
    os.chown(user_owned / "code", 65534, 65534)
    doc = template(step(5, "create_python_venv", id="v", action_config={"venv_path": "~/venv", "with_pip": False}),
                   *[step(10 + n, "install_pip_requirements", id=f"p{n}", max_retries=1, requires=["v"],
                          skip_on_error=True, action_config={"venv_path": "~/venv", "packages": [package]})
                     for n, package in enumerate(["evil @ file:///tmp/evil", "evil3-1.0.tar.gz", "x.whl"])],
                   step(30, "install_vscode_extensions", id="code", max_retries=1, skip_on_error=True,
                        action_config={"extensions": ["ms-python.python"], "cli": str(user_owned / "code")}))
    doc["global_config"] = {"continue_on_non_critical_errors": True}
    result = run_template(doc, {"id": "pk", "home_dir": str(tmp_path / "h")}, record=False)
    for n in range(3):
        assert "is not a requirement dagrun lets root's pip install" in result.steps[f"p{n}"].error
    assert "not a program only root could have installed" in result.steps["code"].error
    assert not (tmp_path / "RAN").exists()
    # A folder that looks like a venv, from a repository (root-owned once cloned): its python is not run.
    fake = tmp_path / "h2" / "venv"
    (fake / "bin").mkdir(parents=True)
    (fake / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (fake / "bin" / "python").write_text("#!/bin/sh\ntouch " + str(tmp_path / "RAN") + "\n")
    (fake / "bin" / "python").chmod(0o755)
    result = run_template(template(step(5, "create_python_venv", id="v", max_retries=1,
                                        action_config={"venv_path": "~/venv", "with_pip": False})),
                          {"id": "pk2", "home_dir": str(tmp_path / "h2")}, record=False)
    assert "not an interpreter only root could have installed" in result.steps["v"].error
    assert not (tmp_path / "RAN").exists()
    # Its python a link to the system's, but a .pth file in its site-packages (found by helper-24): as root,
    # an existing venv is read (pyvenv.cfg), not run.
    (fake / "bin" / "python").unlink()
    (fake / "bin" / "python").symlink_to("/usr/bin/python3")
    (fake / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.11.2\n")
    site = fake / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    (site / "evil.pth").write_text(f"import os; open({str(tmp_path / 'RAN')!r}, 'w').close()\n")
    result = run_template(template(step(5, "create_python_venv", id="v", max_retries=1,
                                        action_config={"venv_path": "~/venv", "with_pip": False})),
                          {"id": "pk3", "home_dir": str(tmp_path / "h2")}, record=False)
    assert result.success, result.error
    assert result.steps["v"].result["version"] == "3.11.2" and not (tmp_path / "RAN").exists()


def test_credentials_in_a_clone_url_never_reach_a_command_line(tmp_path, monkeypatch):
    """Every user of the machine sees command lines (ps), and git keeps the
    remote URL in the checkout: user:password go to git's environment."""
    import dagrun.run.shell
    seen: list = []
    start = subprocess.Popen

    def record(argv, *args, **kwargs):
        seen.append((list(argv), dict(kwargs.get("env") or {})))
        return start(argv, *args, **kwargs)

    monkeypatch.setattr(dagrun.run.shell.subprocess, "Popen", record)
    result = run_template(template(step(10, "clone_git_repository", id="c", max_retries=1, timeout_seconds=20,
                                        action_config={"url": "http://me:Tok3nSecret@127.0.0.1:9/r.git",
                                                       "target_dir": "~/r"})),
                          {"id": "cred", "home_dir": str(tmp_path / "h")}, record=False)
    assert not result.success  # nothing listens on port 9
    clones = [(argv, env) for argv, env in seen if "clone" in argv]
    assert clones and all("Tok3nSecret" not in " ".join(argv) for argv, _ in clones)
    assert any("http://127.0.0.1:9/r.git" in argv for argv, _ in clones)
    assert clones[0][1]["GIT_CONFIG_KEY_0"] == "http.extraHeader"


@root_only
def test_as_root_a_path_from_a_value_never_chooses_the_program(tmp_path, shared):
    """A step's env PATH (a value, perhaps) naming a folder another user
    could fill: as root, refused (found by helper-26)."""
    planted = shared / "evilbin"
    planted.mkdir()
    (planted / "git").write_text(f"#!/bin/sh\ntouch {tmp_path / 'RAN'}\n")
    (planted / "git").chmod(0o755)
    os.chown(planted, 65534, 65534)
    doc = template(script_step(10, "git --version", id="s", max_retries=1,
                               action_config={"env": {"PATH": "{{ workspace.v }}:/usr/bin:/bin"}}))
    with pytest.raises(TemplateError, match="PATH is run .or loaded from. as code"):  # a value: never
        run_template(doc, {"id": "p", "home_dir": str(tmp_path / "h"), "v": str(planted)}, record=False)
    # the author's own PATH, as root, names only folders only root could fill
    doc = template(script_step(10, "git --version", id="s", max_retries=1,
                               action_config={"env": {"PATH": f"{planted}:/usr/bin:/bin"}}))
    result = run_template(doc, {"id": "p", "home_dir": str(tmp_path / "h")}, record=False)
    assert "which is not a folder only root could fill" in result.steps["s"].error
    assert not (tmp_path / "RAN").exists()
    ok = run_template(template(script_step(10, "git --version", id="s", action_config={"env": {"PATH": "/usr/bin:/bin"}})),
                      {"id": "p2", "home_dir": str(tmp_path / "h2")}, record=False)
    assert ok.success, ok.error


def test_the_sandbox_is_shown_a_handlers_own_package_not_the_folder_around_it():
    from dagrun.run.worker import _handler_package
    here = Path(__file__).parent
    assert _handler_package("tests.helpers:noop") == (str(here / "__init__.py"), str(here / "helpers.py"))
    assert _handler_package("no_such_module_here:f") == () and _handler_package(None) == ()


@root_only
def test_as_root_nothing_a_home_holds_runs_as_python_code(tmp_path):
    """(helper-53) In a workspace without a Linux user, root's programs
    started in the home: `python3 -m venv` imported a `logging.py` a value
    named there; a venv made over a cloned repository's folder ran the
    `.pth` file in it; create_django_project ran a cloned manage.py (its
    validation) as root."""
    home, mark = tmp_path / "h", tmp_path / "RAN"
    code = f"import os; os.close(os.open({str(mark)!r}, os.O_CREAT | os.O_WRONLY))\n"
    (home / "app" / ".venv" / "lib" / "python3.11" / "site-packages").mkdir(parents=True)
    (home / "app" / ".venv" / "lib" / "python3.11" / "site-packages" / "zz.pth").write_text(code)
    (home / "proj").mkdir()
    (home / "proj" / "manage.py").write_text(code)
    doc = template(step(10, "write_file", id="notes", action_config={"target_path": "~/logging.py", "content": code}),
                   step(20, "create_python_venv", id="v", requires=["notes"],
                        action_config={"venv_path": "~/venv", "with_pip": False}),
                   step(35, "install_pip_requirements", id="pip", requires=["v"], condition_expression="false",
                        action_config={"venv_path": "~/venv", "packages": ["django"]}),  # (Django: not needed here)
                   step(40, "create_django_project", id="dj", requires=["pip"],
                        action_config={"project_name": "proj", "venv_path": "~/venv"}))
    result = run_template(doc, {"id": "w", "home_dir": str(home)}, record=False)
    assert result.steps["v"].status is StepStatus.completed, result.steps["v"].error
    over = run_template(template(step(30, "create_python_venv", id="over", max_retries=1, action_config={
        "venv_path": "~/app/.venv", "with_pip": False})), {"id": "w", "home_dir": str(home)}, record=False)
    assert over.steps["over"].error.startswith(f"{home}/app/.venv is not a venv but holds lib: dagrun, as root, "
                                               "does not make a venv over a venv's files it did not make")
    assert result.steps["dj"].status is StepStatus.completed, result.steps["dj"].error
    assert result.steps["dj"].result["created"] is False
    # (helper-62) the same files behind a symlink, or in the home itself, were taken for an empty folder
    site = Path("lib") / "python3.11" / "site-packages"
    (home / "app" / "stuff" / "v" / site).mkdir(parents=True)
    (home / "app" / "stuff" / "v" / site / "zz.pth").write_text(code)
    (home / "app" / "lnk").symlink_to("stuff")
    bare = tmp_path / "bare"
    (bare / site).mkdir(parents=True)
    (bare / site / "zz.pth").write_text(code)
    for venv_home, venv_path, says in ((home, "~/app/lnk/v", "goes through a symlink or is not a folder"),
                                       (home, "~/app/lnk/new", "goes through a symlink or is not a folder"),
                                       (bare, "~", "is not a venv but holds lib")):
        refused = run_template(template(step(30, "create_python_venv", id="over", max_retries=1, action_config={
            "venv_path": venv_path, "with_pip": False})), {"id": "w", "home_dir": str(venv_home)}, record=False)
        assert says in (refused.steps["over"].error or ""), refused.steps["over"].error
    assert not mark.exists()


@root_only
def test_as_root_what_pip_installs_is_never_a_values_choice(tmp_path):
    """(helper-53 F4) A package a value named (a name on PyPI, `x @
    http://...`) ran its build as root, and runs whenever its venv does:
    as root, in a workspace without a Linux user (or a step run as root),
    pip's packages, requirements file, links and index are the author's."""
    from dagrun import InputError, compile_template
    from dagrun.api import check_root_code
    for field, value in (("packages", ["{{ vars.extra }}"]), ("packages", "{{ vars.extras }}"),
                         ("requirements_file", "~/{{ vars.app }}/requirements.txt"),
                         ("index_url", "https://{{ workspace.mirror }}/simple")):
        doc = template(step(5, "create_python_venv", id="v", action_config={"venv_path": "~/venv", "with_pip": False}),
                       step(10, "install_pip_requirements", id="pip", requires=["v"], action_config={
                           "venv_path": "~/venv", "packages": ["six"], field: value}),
                       vars={"extra": "six", "extras": ["six"], "app": "app"})
        with pytest.raises(InputError, match=f"step pip: {field} reads a value, and what it names becomes code that "
                                             "root runs"):
            run_template(doc, {"id": "w", "home_dir": str(tmp_path / "h"), "mirror": "pypi.org"}, record=False)
        assert not (tmp_path / "h" / "venv").exists()  # refused before anything ran
        plan = compile_template(doc)
        check_root_code(plan, {"id": "w", "linux_username": "dev"})  # run as the workspace's user: its own choice
        as_root = compile_template({**doc, "global_config": {"run_as": "root"}})
        with pytest.raises(InputError, match="a step run as root installs only what the template's author wrote"):
            check_root_code(as_root, {"id": "w", "linux_username": "dev"})
    written = template(step(5, "create_python_venv", id="v", action_config={"venv_path": "~/venv"}),
                       step(10, "install_pip_requirements", id="pip", requires=["v"], action_config={
                           "venv_path": "~/venv", "packages": ["six==1.16.0"]}))
    check_root_code(compile_template(written), {"id": "w"})  # written by the author: as before


def test_root_clones_over_ssh_with_no_key_but_the_workspaces_and_no_ssh_config(tmp_path):
    """(helper-53) A value's git@host:operator/private.git, cloned by root
    as not private, ran plain ssh: root's keys (the operator's identity)
    and root's ~/.ssh/config (another Host's IdentityFile, a ProxyCommand).
    There is no ssh server here to watch which key is offered, so this
    checks the command git is given (a stand-in for the step's context)."""
    from types import SimpleNamespace

    from dagrun.handlers.repository import _env
    key = tmp_path / "id_ed25519"
    key.write_text("k")
    for privileged, private in ((True, False), (True, True), (False, True)):
        ctx = SimpleNamespace(config={"private": private}, privileged=privileged,
                              isolation=SimpleNamespace(user=None if privileged else object()),
                              private_file=lambda path: str(key))
        command = _env(ctx).get("GIT_SSH_COMMAND", "")
        assert command.startswith("ssh -F /dev/null "), (privileged, private, command)
        if private:
            assert '-i "$DAGRUN_SSH_KEY" -o IdentitiesOnly=yes' in command
        else:
            assert "-o PubkeyAuthentication=no" in command
    ctx = SimpleNamespace(config={}, privileged=False, isolation=SimpleNamespace(user=object()))
    assert "GIT_SSH_COMMAND" not in _env(ctx)  # the workspace's own user: its own ssh, as it would clone


@root_only
def test_a_user_defined_handlers_programs_start_in_the_home_as_before(tmp_path):
    """(helper-55 F8) Only the library's programs start in / as root: a
    user-defined python_function's ctx.run may count on the home."""
    from tests.helpers import action
    home = tmp_path / "h"
    result = run_template(template(step(10, "where", id="w")), {"id": "w", "home_dir": str(home)},
                          trusted_actions=[action("where", "tests.helpers:working_folder")], record=False, sandbox=False)
    assert result.steps["w"].stdout.strip() == str(home), result.steps["w"]


@root_only
def test_as_root_a_homes_user_site_and_psqlrc_are_not_roots_code(tmp_path, pg_server):
    """(helper-55 F1, F2) In a workspace without a Linux user, root's HOME
    is the workspace home: Python read its user site (a .pth file a clone
    or a value's file put there) in scripts, venv checks and apt's
    maintainer scripts, and psql its ~/.psqlrc (\\! runs a shell)."""
    home, mark = tmp_path / "h", tmp_path / "RAN"
    site = subprocess.run(["/usr/bin/python3", "-c", "import site; print(site.getusersitepackages())"],
                          env={**os.environ, "HOME": str(home)}, capture_output=True, text=True).stdout.strip()
    Path(site).mkdir(parents=True)
    Path(site, "zz.pth").write_text(f"import os; os.close(os.open({str(mark)!r}, os.O_CREAT | os.O_WRONLY))\n")
    (home / ".psqlrc").write_text(f"\\! touch {mark}\n")
    doc = template(script_step(10, "/usr/bin/python3 -c pass", id="py"),
                   script_step(20, "psql -h 127.0.0.1 -U postgres -d postgres -tAc 'select 1'", id="pg"),
                   step(30, "create_python_venv", id="v", action_config={"venv_path": "~/venv", "with_pip": False,
                                                                         "system_site_packages": True}))
    result = run_template(doc, {"id": "w", "home_dir": str(home)}, record=False)
    assert all(s.status is StepStatus.completed for s in result.steps.values()), \
        {k: (s.status, s.error) for k, s in result.steps.items()}
    assert result.steps["pg"].stdout.strip() == "1"
    assert not mark.exists()


def test_as_root_a_django_projects_code_never_runs_in_its_validation(tmp_path):
    """(helper-55 F5) A project dagrun made in a folder that held a cloned
    repository's files (a django/ package of its own) was validated with
    `manage.py check` there, as root: it imports from its folder. The
    handler is called with a stand-in context: as root, it runs nothing."""
    from types import SimpleNamespace

    from dagrun.handlers.projects import validate_django_project
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "manage.py").write_text("raise SystemExit('ran')\n")

    def run(*_args, **_kwargs):
        raise AssertionError("root ran the project's code")
    for created in (True, False):
        ctx = SimpleNamespace(config={"project_name": "app", "directory": str(tmp_path / "app"), "venv_path": "~/v"},
                              path=lambda p: p, privileged=True, result={"created": created}, run=run)
        assert validate_django_project(ctx).ok
    ctx.config["directory"] = str(tmp_path / "none")
    assert "manage.py does not exist" in validate_django_project(ctx).error


@root_only
def test_as_root_pip_installs_from_no_file_of_the_home_nor_one_others_could_write(tmp_path, shared, roots_public):
    """(helper-55 F4) A requirements file in the home (written by a step from
    a value, or a value-chosen repository's) named a wheel whose .pth root's
    pip check ran; x-code reads only the field's text, not the file."""
    home = tmp_path / "h"
    (shared / "req.txt").write_text("six\n")
    (shared / "req.txt").chmod(0o644)
    os.chown(shared / "req.txt", 65534, 65534)  # another user's file
    (roots_public / "req.txt").write_text("")
    doc = lambda path: template(  # noqa: E731
        step(5, "create_python_venv", id="v", action_config={"venv_path": "~/venv", "with_pip": False}),
        step(8, "write_file", id="w", action_config={"target_path": "~/requirements.txt",
                                                     "content": "{{ workspace.extra }}\n"}),
        step(10, "install_pip_requirements", id="r", max_retries=1, requires=["v", "w"], action_config={
            "venv_path": "~/venv", "requirements_file": path, "no_index": True}))
    ws = {"id": "w", "home_dir": str(home), "extra": "evil @ http://127.0.0.1:9/evil-1.0-py3-none-any.whl"}
    result = run_template(doc("~/requirements.txt"), ws, record=False)
    assert result.steps["r"].error.startswith(f"requirements file {home}/requirements.txt is in the workspace "
                                              "home: as root, dagrun installs nothing a workspace's files name")
    result = run_template(doc(str(shared / "req.txt")), ws, record=False)
    assert "could have been written by a user other than root" in result.steps["r"].error
    result = run_template(doc(str(roots_public / "req.txt")), ws, record=False)
    assert "No module named pip" in result.steps["r"].error  # past dagrun's checks, to pip (not in this venv)


@root_only
def test_as_root_pip_reads_the_very_file_it_checked_never_through_anothers_symlink(tmp_path, roots_public):
    """(helper-59 F6) The check resolved symlinks, but pip was given the path
    as written: a symlink in another user's folder, retargeted after the
    check, made root's pip read that user's requirements. Root's pip now
    reads the resolved path it checked."""
    from types import SimpleNamespace

    from dagrun.handlers.environment import _roots_own
    (roots_public / "req.txt").write_text("six\n")
    theirs = Path(tempfile.mkdtemp(prefix="dagrun-theirs-", dir="/tmp"))
    try:
        os.chown(theirs, 65534, 65534)
        (theirs / "link").symlink_to(roots_public / "req.txt")
        ctx = SimpleNamespace(privileged=True, home=str(tmp_path / "h"))
        assert _roots_own(ctx, str(theirs / "link"), "requirements file") == str(roots_public / "req.txt")
    finally:
        shutil.rmtree(theirs)
