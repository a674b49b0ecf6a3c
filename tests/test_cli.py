"""The dagrun command, run as a real process."""

from __future__ import annotations

import json
import re
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.helpers import pid_alive, script_step, template


def dagrun(*args, cwd, **kw):
    env = {**os.environ, "XDG_DATA_HOME": str(cwd / "xdg"), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "dagrun", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=120, **kw)


def test_run_demo_shows_progress_and_records_in_sqlite(tmp_path):
    out = dagrun("run", "demo", "--ws", "id=dev1", "--ws", "ssh_public_key=ssh-ed25519 AAAAC3Nz dev@host",
                 cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "[1/8] layout · Run Custom Script" in out.stdout and "[1/8] layout completed" in out.stdout
    assert "succeeded in" in out.stdout and ": 7 changed, 1 unchanged" in out.stdout  # the last step only looks
    db = tmp_path / "xdg" / "dagrun" / "dagrun.db"
    assert f"records: sqlite:///{db}" in out.stdout
    home = tmp_path / "dagrun-workspaces" / "dev1"
    assert (home / ".ssh" / "authorized_keys").read_text() == "ssh-ed25519 AAAAC3Nz dev@host\n"
    assert (home / "hello" / ".venv" / "bin" / "python").exists()
    again = dagrun("run", "demo", "--ws", "id=dev1", "--ws", "ssh_public_key=ssh-ed25519 AAAAC3Nz dev@host",
                   cwd=tmp_path)
    assert ": 0 changed, 8 unchanged" in again.stdout, again.stdout  # a second run finds everything done
    assert "Initial commit" in (home / "hello" / "WORKSPACE.md").read_text()
    again = dagrun("run", "demo", "--ws", "id=dev1", "--json", cwd=tmp_path)  # re-provisioning works
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["skipped_actions"] == 1


def test_a_bare_template_name_is_never_a_file_of_the_working_folder(tmp_path):
    """(helper-78) Root running `dagrun run demo` in a folder a user can
    write ran that user's ./demo: a bare name is a stored or seed
    template's, and a file is named with its folder or its suffix."""
    planted = tmp_path / "demo"
    planted.write_text(yaml.safe_dump(template(script_step(10, "true", id="planted_step"), name="demo")))
    out = dagrun("plan", "demo", cwd=tmp_path)
    assert out.returncode == 0 and "planted_step" not in out.stdout and "layout" in out.stdout, out.stdout + out.stderr
    out = dagrun("plan", "./demo", cwd=tmp_path)
    assert out.returncode == 0 and "planted_step" in out.stdout, out.stdout + out.stderr
    out = dagrun("validate", "demo", cwd=tmp_path)  # (helper-80: validate read ./demo, or where it led)
    assert out.returncode == 0 and "planted_step" not in out.stdout + out.stderr, out.stdout + out.stderr
    planted.unlink()
    planted.symlink_to("/etc/shadow")
    trace = tmp_path / "trace"
    out = subprocess.run(["strace", "-f", "-qq", "-e", "trace=open,openat", "-o", trace, sys.executable, "-m", "dagrun",
                          "validate", "demo"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert '"demo"' not in trace.read_text() and "shadow" not in trace.read_text()
    (tmp_path / "mine").write_text(yaml.safe_dump(template(script_step(10, "true", id="planted_step"), name="m")))
    out = dagrun("plan", "mine", cwd=tmp_path)
    assert out.returncode == 2 and "no template file or seed template named 'mine'" in out.stderr, out.stderr
    assert "a file is named with its folder: ./mine" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"), reason="the check is root's (CI runs as root)")
def test_as_root_the_cli_home_is_below_folders_only_root_can_change(tmp_path):
    """(helper-78) The CLI allows the folder of the home its operator types
    or defaults to (./dagrun-workspaces), and nothing checked above it: in
    a folder a user owned, that user swapped the home for their own between
    the check and a step (root ran their .venv/bin/python). Every folder
    from / down is now root's and not writable by others, or sticky (as
    /tmp) with root's folder below."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    out = dagrun("run", "demo", "--ws", "id=w", cwd=theirs)
    assert out.returncode == 2, out.stdout + out.stderr
    assert (f"the workspace home {theirs}/dagrun-workspaces/w is in a folder another user could change: {theirs} "
            "belongs to uid 65534, not root") in out.stderr and "Traceback" not in out.stderr
    assert not (theirs / "dagrun-workspaces").exists()
    shared = tmp_path / "shared"  # sticky, as /tmp: root's folder below it is root's to keep
    shared.mkdir()
    shared.chmod(0o1777)
    (shared / "mine").mkdir()
    out = dagrun("validate", "demo", "--home", shared / "mine" / "w", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    out = dagrun("validate", "demo", "--home", theirs / "w", cwd=tmp_path)
    assert out.returncode == 2 and "belongs to uid 65534" in out.stderr, out.stderr
    (shared / "mine").chmod(0o777)
    out = dagrun("validate", "demo", "--home", shared / "mine" / "w", cwd=tmp_path)
    assert out.returncode == 2 and f"{shared}/mine is writable by others" in out.stderr, out.stderr


@pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"), reason="the check is root's (CI runs as root)")
def test_the_cli_takes_an_operators_home_by_its_real_path(tmp_path):
    """(helper-79) --home through a link in another user's folder was checked
    by its real path, then handed on by the name given: the user flipped
    the link to their own folder in between. The real path is what runs."""
    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    theirs.mkdir()
    ours.mkdir()
    (theirs / "flip").symlink_to(ours)
    os.lchown(theirs / "flip", 65534, 65534)
    os.chown(theirs, 65534, 65534)
    out = dagrun("run", "demo", "--home", theirs / "flip" / "w", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    from dagrun import get_run
    run = get_run(json.loads(out.stdout)["run_id"], database_url=json.loads(out.stdout)["database_url"])
    assert run["home_dir"] == str(ours / "w")
    assert (ours / "w" / "hello").is_dir()


def test_writing_an_output_never_follows_a_symlink_at_its_name(tmp_path):
    """(helper-79) migrate-legacy wrote beside a user's file through the
    symlink the user put at the output's name (root could be made to write
    /etc/ld.so.preload); graph -o too. The file is made new, then renamed
    (--force) or linked into place."""
    from dagrun.compile.loader import package_dir
    theirs = tmp_path / "theirs"  # a user's folder, the user's file and link in it
    theirs.mkdir()
    legacy = theirs / "config.json"
    shutil.copy(package_dir("seeds") / "legacy" / "odoo-18-legacy.json", legacy)
    target = tmp_path / "elsewhere"
    (theirs / "config.template.yaml").symlink_to(target)
    if os.geteuid() == 0:
        os.chown(theirs, 65534, 65534)
        out = dagrun("migrate-legacy", legacy, cwd=tmp_path)
        assert out.returncode == 2 and "config.template.yaml exists (use --force to overwrite)" in out.stderr, \
            out.stderr
        assert not target.exists()
        out = dagrun("migrate-legacy", legacy, "--force", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert not target.exists() and not (theirs / "config.template.yaml").is_symlink()
    (theirs / "g.dot").symlink_to(target)
    out = dagrun("graph", "demo", "-o", theirs / "g.dot", cwd=tmp_path)
    assert out.returncode == 0 and "digraph" in (theirs / "g.dot").read_text()
    if os.geteuid() == 0:  # (their link replaced, not followed; a path somebody else may point elsewhere refused)
        assert not target.exists()
        (theirs / "sub").symlink_to(tmp_path / "etc")
        (tmp_path / "etc").mkdir()
        (tmp_path / "etc" / "hosts").write_text("kept\n")
        out = dagrun("graph", "demo", "-o", theirs / "sub" / "hosts", cwd=tmp_path)
        assert out.returncode == 2 and "is in a folder somebody else could change" in out.stderr, out.stderr
        assert (tmp_path / "etc" / "hosts").read_text() == "kept\n"
    out = dagrun("graph", "demo", "-o", tmp_path / "missing" / "g.dot", cwd=tmp_path)
    assert out.returncode == 2 and "cannot write" in out.stderr and "Traceback" not in out.stderr
    # (helper-80) a device and root's own link to one are written as they are, never replaced by a file
    # (stand-ins for /dev/null and /dev/stdout: a regression here must not break the machine)
    if os.geteuid() == 0:
        import stat
        null = tmp_path / "null"
        os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        out = dagrun("graph", "demo", "-o", null, cwd=tmp_path)
        assert out.returncode == 0 and stat.S_ISCHR(null.lstat().st_mode), out.stderr
    (tmp_path / "stdout").symlink_to("/proc/self/fd/1")
    out = dagrun("graph", "demo", "-o", tmp_path / "stdout", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("digraph") and (tmp_path / "stdout").is_symlink()
    log = tmp_path / "log"  # (helper-81) stdout appending to a file: appended to, never replaced
    log.write_text("before\n")
    with open(log, "a") as stream:
        subprocess.run([sys.executable, "-m", "dagrun", "graph", "demo", "-o", tmp_path / "stdout"], cwd=tmp_path,
                       stdout=stream, stderr=subprocess.DEVNULL, check=True, timeout=120,
                       env={**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg")})
    assert log.read_text().startswith("before\ndigraph")
    out = dagrun("graph", "demo", "-o", "/dev/fd/1", cwd=tmp_path)  # (helper-82) by its own name too
    assert out.returncode == 0 and out.stdout.startswith("digraph"), out.stderr
    if os.geteuid() == 0:  # (helper-81) somebody else's FIFO in their folder is replaced, never written to
        legacy_fifo = theirs / "config.template.yaml"
        legacy_fifo.unlink()
        os.mkfifo(legacy_fifo)
        os.chown(legacy_fifo, 65534, 65534)
        out = dagrun("migrate-legacy", legacy, "--force", cwd=tmp_path)
        assert out.returncode == 0 and legacy_fifo.read_text().startswith("name:"), out.stderr
        # (helper-82) and somebody else's device in root's folder is neither written to nor replaced
        tty = tmp_path / "tty1"
        os.mknod(tty, 0o620 | stat.S_IFCHR, os.makedev(1, 3))
        os.chown(tty, 65534, 65534)
        out = dagrun("graph", "demo", "-o", tty, cwd=tmp_path)
        assert out.returncode == 2 and "not a regular file: not written" in out.stderr, out.stderr
        assert stat.S_ISCHR(tty.lstat().st_mode)
    # (helper-80) the source is read, and its output written, in the folder as it was opened
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    out = dagrun("migrate-legacy", fifo, cwd=tmp_path)
    assert out.returncode == 2 and "not a regular file" in out.stderr, out.stderr
    (tmp_path / "link.json").symlink_to(legacy)  # (helper-81) nor a link the folder's owner may point anywhere
    out = dagrun("migrate-legacy", tmp_path / "link.json", cwd=tmp_path)
    assert out.returncode == 2 and "cannot read" in out.stderr, out.stderr


def test_an_output_is_written_in_the_folder_opened_not_where_its_path_leads_later(tmp_path):
    """(helper-80) Between reading a user's legacy file and writing beside
    it, the user swapped its folder for a link elsewhere: the output landed
    there. The folder is opened once and the file made in it."""
    from dagrun.run.paths import write_output
    folder, elsewhere = tmp_path / "proj", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        folder.rename(tmp_path / "proj.old")
        folder.symlink_to(elsewhere)
        write_output(str(folder / "out.yaml"), b"x", replace=False, dir_fd=fd)
    finally:
        os.close(fd)
    assert (tmp_path / "proj.old" / "out.yaml").read_bytes() == b"x" and not (elsewhere / "out.yaml").exists()


def test_run_json_and_failure_exit_code(tmp_path):
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(template(script_step(10, "echo nope >&2; exit 4", id="bad"))))
    out = dagrun("run", "t.yaml", "--json", "--db", f"sqlite:///{tmp_path}/x.db", cwd=tmp_path)
    assert out.returncode == 1
    result = json.loads(out.stdout)
    assert result["success"] is False and result["failed_action"] == "execute_custom_script"
    assert result["execution_details"][0]["error"] == "script: exit code 4: nope"


def test_validate_reports_each_problem_without_traceback(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(template(script_step(10, "true"))))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(template(script_step(10, "echo {{ nope }}", id="s1"),
                                       {"sequence_order": 20, "action_name": "execute_custom_script", "id": "s2",
                                        "action_config": {"scrpt": "x"}}, name="broken")))
    out = dagrun("validate", good, bad, cwd=tmp_path)
    assert out.returncode == 2
    assert f"{good}: ok" in out.stdout
    assert "broken: step s1: field 'action_config.script': unknown variable 'nope'" in out.stderr
    assert "broken: step s2: field 'action_config'" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_file_that_does_not_parse_is_named_once_with_its_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: x\nactions:\n  - sequence_order: 10\n    action_name: [unclosed\n")
    (tmp_path / "bad.json").write_text('{"name": "x",\n "actions": [}')
    out = dagrun("validate", "bad.yaml", "bad.json", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        "bad.yaml: not valid YAML: did not find expected ',' or ']' (line 5, column 1, while parsing a flow sequence)",
        "bad.json: not valid JSON: Expecting value (line 2, column 14)"]


def test_files_beside_a_template_that_are_no_templates_are_named_only_when_no_base_is_found(tmp_path):
    (tmp_path / "ws.yaml").write_text("- id: a\n")  # a workspaces list beside the templates
    (tmp_path / "child.yaml").write_text('name: child\nversion: "1"\nextends: python-base\nactions: []\n')
    out = dagrun("-v", "validate", "child.yaml", cwd=tmp_path)
    assert out.returncode == 0 and "skipped" not in out.stderr, out.stderr
    (tmp_path / "base.yaml").write_text("name: mybase\nactions: [\n")
    (tmp_path / "c2.yaml").write_text('name: c2\nversion: "1"\nextends: mybase\nactions: []\n')
    out = dagrun("validate", "c2.yaml", cwd=tmp_path)
    assert out.returncode == 2
    assert f"base template 'mybase' not found; skipped {tmp_path}/base.yaml: not valid YAML" in out.stderr
    assert f"skipped {tmp_path}/ws.yaml: expected a mapping at the top level" in out.stderr


def test_a_workspace_file_that_is_no_mapping_is_said_to_be_a_workspace_file(tmp_path):
    (tmp_path / "list.yaml").write_text("- id: a\n- id: b\n")
    out = dagrun("run", "demo", "--workspace", "list.yaml", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == "dagrun: workspace file: list.yaml: expected a mapping at the top level"


@pytest.mark.skipif(os.geteuid() != 0, reason="the allowed-folders rule applies when dagrun runs as root (CI does)")
def test_a_home_read_from_a_workspace_file_is_data(tmp_path):
    """As a fleet's file is (a form's export): its home_dir must be inside
    the allowed folders; the home the operator types is allowed (helper-40)."""
    (tmp_path / "ws.json").write_text(json.dumps({"id": "x", "home_dir": str(tmp_path / "elsewhere" / "x")}))
    env = {**os.environ, "DAGRUN_WORKSPACE_ROOTS": str(tmp_path / "roots")}
    for command in ("run", "validate"):
        out = subprocess.run([sys.executable, "-m", "dagrun", command, "demo", "--workspace", "ws.json", "--db",
                              f"sqlite:///{tmp_path}/w.db"] + (["--check"] if command == "run" else []),
                             cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 2 and "is outside the folders workspaces may live in" in out.stderr, out.stderr
        typed = subprocess.run(
            [sys.executable, "-m", "dagrun", command, "demo", "--workspace", "ws.json", "--home", tmp_path / "mine",
             "--db", f"sqlite:///{tmp_path}/w.db"] + (["--check"] if command == "run" else []),
            cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
        assert typed.returncode == 0, typed.stderr


def test_validate_checks_a_typed_workspace_as_run_does(tmp_path):
    """As root, run allows the home its operator types (or its default under
    the current folder); validate with the same workspace said it was
    outside the allowed folders."""
    out = dagrun("validate", "demo", "--ws", "id=x", cwd=tmp_path)
    assert out.returncode == 0 and "demo: ok" in out.stdout, out.stderr
    out = dagrun("validate", "demo", "--ws", "id=x", "--home", tmp_path / "h", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    out = dagrun("validate", "demo", "--ws", "id=x", "--ws", "nmae=typo", "--home", "/etc", cwd=tmp_path)
    assert out.returncode == 2 and "/etc is a system folder" in out.stderr


def test_validate_an_action_definition(tmp_path):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"name": "x", "action_type": "shell", "execution_handler": "true",
                                                      "max_retries": 0}))
    out = dagrun("validate", tmp_path / "a.yaml", cwd=tmp_path)
    assert out.returncode == 2 and "action x: field 'max_retries': 0 is less than the minimum of 1" in out.stderr


def test_validate_an_action_definition_builds_its_handlers(tmp_path):
    """A handler that cannot be built is told when the file is checked, not
    when a template first uses the action."""
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"name": "x", "action_type": "shell",
                                                      "execution_handler": "echo {{ config.name",
                                                      "rollback_handler": "eval {{ config.name }}"}))
    out = dagrun("validate", tmp_path / "a.yaml", cwd=tmp_path)
    assert out.returncode == 2
    assert "action x: field 'execution_handler': unexpected end of template" in out.stderr
    assert "action x: field 'rollback_handler':" in out.stderr and "Traceback" not in out.stderr
    listed = dagrun("actions", "--actions", tmp_path / "a.yaml", cwd=tmp_path)
    assert listed.returncode == 2 and "invalid action definition: 2 problems found" in listed.stderr


def test_plan_shows_levels_critical_path_and_estimate(tmp_path):
    out = dagrun("plan", "demo", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "8 steps in 4 levels" in out.stdout
    assert "critical path: layout -> venv -> summary -> check" in out.stdout
    assert "estimated duration with 4 workers" in out.stdout
    data = json.loads(dagrun("plan", "demo", "--json", cwd=tmp_path).stdout)
    assert data["levels"][0] == ["layout"] and len(data["levels"][1]) == 5


def test_graph_formats(tmp_path):
    dot = dagrun("graph", "demo", cwd=tmp_path)
    assert dot.returncode == 0 and dot.stdout.startswith('digraph "demo"') and '"layout" -> "venv";' in dot.stdout
    mermaid = dagrun("graph", "demo", "--format", "mermaid", cwd=tmp_path)
    assert mermaid.stdout.startswith("flowchart LR") and "s0 --> s1" in mermaid.stdout
    svg = dagrun("graph", "demo", "--format", "svg", cwd=tmp_path)  # graphviz's, else dagrun's own drawing
    assert svg.returncode == 0 and "<svg" in svg.stdout and "layout" in svg.stdout, svg.stderr
    png = dagrun("graph", "demo", "--format", "png", "-o", tmp_path / "g.png", cwd=tmp_path)
    if shutil.which("dot"):
        assert png.returncode == 0 and (tmp_path / "g.png").read_bytes().startswith(b"\x89PNG")
    else:  # without graphviz: one clear sentence
        assert png.returncode == 2 and "needs graphviz's 'dot' program" in png.stderr
    # a quote in a template's name ends no DOT string (helper-40)
    from dagrun import compile_template
    from dagrun.render import to_dot
    odd = to_dot(compile_template({"name": 'a"b\\c', "version": "1", "actions": [
        {"sequence_order": 1, "id": "x", "action_name": "noop"}]}, keep=False))
    assert odd.startswith('digraph "a\\"b\\\\c" {')
    # the format follows the output file's suffix (a .svg of DOT text was written before)
    for name, start in (("g.svg", "<svg"), ("g.mmd", "flowchart LR"), ("g.dot", 'digraph "demo"')):
        out = dagrun("graph", "demo", "-o", tmp_path / name, cwd=tmp_path)
        assert out.returncode == 0 and (tmp_path / name).read_text().startswith(start), (name, out.stderr)


@pytest.mark.parametrize("args,message", [
    (["run", "no-such-template"], "no template file or seed template named 'no-such-template'"),
    (["run", "demo", "--workers", "0"], "--workers must be at least 1"),
    (["run", "demo", "--set", "oops"], "--set expects KEY=VALUE, got 'oops'"),
    (["run", "demo", "--db", "nosuch://"], "bad database URL"),
    (["plan", "missing.yaml"], "template file missing.yaml does not exist"),
])
def test_bad_input_is_one_clear_error(tmp_path, args, message):
    out = dagrun(*args, cwd=tmp_path)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_sigterm_cancels_cleanly_without_orphans(tmp_path):
    pidfile = tmp_path / "child.pid"
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(template(
        script_step(10, f"sleep 300 &\necho $! > {pidfile}\nwait", id="long"))))
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg")}
    proc = subprocess.Popen([sys.executable, "-m", "dagrun", "run", "t.yaml", "--json"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(400):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        time.sleep(0.025)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert json.loads(out)["execution_details"][0]["status"] == "cancelled"
    assert not pid_alive(int(pidfile.read_text()))


def test_runs_and_show_read_the_history(tmp_path):
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(template(
        script_step(10, "echo hello", id="hi"), script_step(20, "echo oops >&2; exit 3", id="bad", requires=["hi"]),
        script_step(30, "true", id="after", requires=["bad"]))))
    db = f"sqlite:///{tmp_path}/h.db"
    ran = dagrun("run", "t.yaml", "--db", db, "--ws", "id=w9", "--json", cwd=tmp_path)
    run_id = json.loads(ran.stdout)["run_id"]
    runs = json.loads(dagrun("runs", "--db", db, "--workspace", "w9", "--json", cwd=tmp_path).stdout)
    assert [(r["run_id"], r["status"], r["completed"], r["failed"]) for r in runs] == [(run_id, "failed", 1, 1)]
    assert json.loads(dagrun("runs", "--db", db, "--status", "succeeded", "--json", cwd=tmp_path).stdout) == []
    shown = dagrun("show", run_id[:8], "--db", db, "--output", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"^  hi +attempt 1  completed +\d", shown.stdout, re.M), shown.stdout
    assert re.search(r"^  bad +attempt 1  failed .* script: exit code 3: oops", shown.stdout, re.M), shown.stdout
    assert "      | hello" in shown.stdout
    assert re.search(r"^  after +not started$", shown.stdout, re.M), shown.stdout  # (helper-45) it was left out
    missing = dagrun("show", "nope", "--db", db, cwd=tmp_path)
    assert missing.returncode == 2 and "no run 'nope' in the store" in missing.stderr


def test_the_api_takes_whole_run_ids_only_the_cli_takes_a_prefix(tmp_path):
    """A service or a program embedding dagrun hands on an id a tenant typed:
    a prefix would find (and show, cancel or resume) another tenant's run."""
    from dagrun import api
    from dagrun.errors import InputError
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(template(script_step(10, "exit 3", id="bad"))))
    db = f"sqlite:///{tmp_path}/h.db"
    run_id = json.loads(dagrun("run", "t.yaml", "--db", db, "--ws", "id=w9", "--json", cwd=tmp_path).stdout)["run_id"]
    assert api.get_run(run_id, database_url=db)["run_id"] == run_id
    for call in (lambda: api.get_run(run_id[:8], database_url=db),
                 lambda: api.cancel_run(run_id[:8], database_url=db),
                 lambda: api.resume(run_id[:8], database_url=db),
                 lambda: list(api.watch_run(run_id[:8], database_url=db, timeout=1))):
        with pytest.raises(InputError, match=f"no run '{run_id[:8]}' in the store"):
            call()
    assert api.find_run(run_id[:8], database_url=db) == run_id
    assert api.find_run(run_id, database_url=db) == run_id
    for typed in ("%", "_", run_id[:8] + "%"):  # LIKE's wildcards are characters
        with pytest.raises(InputError, match="no run"):
            api.find_run(typed, database_url=db)
    resumed = dagrun("resume", run_id[:8], "--db", db, cwd=tmp_path)  # the CLI resolves the prefix first
    assert resumed.returncode == 1 and f"run {run_id}" in resumed.stdout + resumed.stderr, resumed.stderr


def test_graph_coloured_by_a_runs_statuses(tmp_path):
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(template(
        script_step(10, "true", id="ok"), script_step(20, "exit 1", id="bad", requires=["ok"]),
        script_step(30, "true", id="never", requires=["bad"]))))
    db = f"sqlite:///{tmp_path}/g.db"
    run_id = json.loads(dagrun("run", "t.yaml", "--db", db, "--json", cwd=tmp_path).stdout)["run_id"]
    dot = dagrun("graph", "-", "--run", run_id, "--db", db, cwd=tmp_path)
    assert dot.returncode == 0, dot.stderr
    assert '"ok" [label="ok\\nexecute_custom_script [main]", fillcolor="#a5d6a7"]' in dot.stdout  # completed
    assert '"bad" [label="bad\\nexecute_custom_script [main]", fillcolor="#ef9a9a"]' in dot.stdout  # failed
    mermaid = dagrun("graph", "t.yaml", "--run", run_id, "--db", db, "--format", "mermaid", cwd=tmp_path)
    assert "class s1 failed" in mermaid.stdout and "class s0 completed" in mermaid.stdout


def test_actions_name_shows_what_its_config_takes(tmp_path):
    """(helper-45) From the CLI one could not learn an action's fields: the
    names only, then guesses corrected by validate."""
    out = dagrun("actions", "create_postgresql_database", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "create_postgresql_database: Create PostgreSQL Database (database)"
    assert any(re.fullmatch(r"  database_name +string; required", line) for line in lines), out.stdout
    assert any(re.fullmatch(r"  encoding +string; default \"UTF8\"", line) for line in lines), out.stdout
    assert any(re.fullmatch(r"  connection_url +string; secret", line) for line in lines), out.stdout
    assert "needs an earlier step of: create_postgresql_user" in out.stdout
    assert all(len(line) <= 80 for line in lines)
    typo = dagrun("actions", "create_postgresql_databse", cwd=tmp_path)
    assert typo.returncode == 2 and "did you mean 'create_postgresql_database'?" in typo.stderr
    data = json.loads(dagrun("actions", "write_file", "--json", cwd=tmp_path).stdout)
    assert data["config_schema"]["required"] == ["target_path", "content"] and data["default_config"]["merge"] is False
    listing = dagrun("actions", cwd=tmp_path)
    assert "dagrun actions NAME" in listing.stderr and "write_file" in listing.stdout


def test_validate_says_what_it_could_not_check_and_a_mistyped_workspace_field(tmp_path):
    """(helper-45) `validate` said ok for a template that needs db_name, and
    `--ws db_nme=x` gave three "None is not of type 'string'"."""
    (tmp_path / "t.yaml").write_text(json.dumps({"name": "webapp", "version": "1.0.0", "actions": [
        {"sequence_order": 10, "id": "role", "action_name": "create_postgresql_user",
         "action_config": {"username": "{{ workspace.db_name }}"}}]}))
    out = dagrun("validate", "t.yaml", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout == "t.yaml: ok\n"
    assert "not checked without a workspace, the values of its fields:\n    db_name\n" in out.stderr, out.stderr
    assert all(len(line) <= 80 for line in dagrun("validate", "demo", cwd=tmp_path).stderr.splitlines())
    typo = dagrun("validate", "t.yaml", "--ws", "db_nme=x", cwd=tmp_path)
    assert typo.returncode == 2
    assert "step role: field 'action_config.username': the workspace has no db_name (it was given db_nme: a " \
           "typo?)" in typo.stderr, typo.stderr
    assert "None is not" not in typo.stderr
    assert dagrun("validate", "t.yaml", "--ws", "db_name=shop", cwd=tmp_path).returncode == 0


def test_validate_names_every_broken_action_file_of_a_folder_and_where(tmp_path):
    """(helper-45) --actions FOLDER reported its first broken file only,
    labelled with the template's name; a mistyped schema type did not say
    where; a default_config the schema refuses was "ok"."""
    folder = tmp_path / "acts"
    folder.mkdir()
    (folder / "a1.yaml").write_text(json.dumps({"name": "broken_one", "action_type": "shell",
                                                "execution_handler": "echo hi",
                                                "config_schema": {"type": "object",
                                                                  "properties": {"x": {"type": "strng"}}}}))
    (folder / "a2.yaml").write_text(json.dumps({"name": "broken_two", "action_type": "shell",
                                                "execution_handler": "echo hi", "default_config": {"y": 1, "x": 2},
                                                "config_schema": {"type": "object", "additionalProperties": False,
                                                                  "properties": {"x": {"type": "string"}}}}))
    (tmp_path / "t.yaml").write_text(json.dumps({"name": "t", "version": "1.0.0", "actions": [
        {"sequence_order": 10, "action_name": "execute_custom_script", "action_config": {"script": "true"}}]}))
    out = dagrun("validate", "t.yaml", "--actions", "acts", cwd=tmp_path)
    assert out.returncode == 2
    assert "acts/a1.yaml: action broken_one: field 'config_schema.properties.x.type': invalid JSON Schema: " \
           "'strng' is not a JSON Schema type" in out.stderr, out.stderr
    assert "acts/a2.yaml: action broken_two: field 'default_config.y': 'y' is not a field of config_schema" \
           in out.stderr, out.stderr
    assert "acts/a2.yaml: action broken_two: field 'default_config.x': 2 is not of type 'string'" in out.stderr


def test_a_mistyped_base_or_template_name_gets_a_suggestion(tmp_path):
    """(helper-45) extends: pyton-base said "not found" and listed unrelated
    broken files beside it."""
    (tmp_path / "notes.yaml").write_text("a: [\n")  # a broken neighbour: not listed when a name is near
    (tmp_path / "kid.yaml").write_text('name: kid\nversion: "1"\nextends: pyton-base\nactions: []\n')
    out = dagrun("validate", "kid.yaml", "dmeo", cwd=tmp_path)
    assert out.returncode == 2
    assert "field 'extends': base template 'pyton-base' not found (did you mean 'python-base'?)\n" in out.stderr
    assert "notes.yaml" not in out.stderr
    assert "dmeo: no template file or seed template named 'dmeo': did you mean 'demo'?" in out.stderr


def test_a_refused_value_is_said_as_its_typist_reads_it(tmp_path):
    """(helper-45) '-x' does not match '^[^-\\s\\x00-\\x1f][^\\x00-\\x1f]*$'
    for a web form's user; a user-defined action's schema says its own words
    (errorMessage, as ajv-errors spells it)."""
    (tmp_path / "t.yaml").write_text(json.dumps({"name": "webapp", "version": "1.0.0", "actions": [
        {"sequence_order": 10, "id": "role", "action_name": "create_postgresql_user",
         "action_config": {"username": "{{ workspace.db_name }}"}},
        {"sequence_order": 20, "id": "mine", "action_name": "mine", "action_config": {"slug": "{{ workspace.slug }}"}}]}))
    (tmp_path / "mine.yaml").write_text(json.dumps({
        "name": "mine", "action_type": "shell", "execution_handler": "echo {{ config.slug }}",
        "config_schema": {"type": "object", "properties": {"slug": {
            "type": "string", "pattern": "^[a-z]+$", "errorMessage": "lowercase letters only"}}}}))
    out = dagrun("validate", "t.yaml", "--actions", "mine.yaml", "--ws", "db_name=-x", "--ws", "slug=Shop",
                 cwd=tmp_path)
    assert out.returncode == 2
    assert "field 'action_config.username': with this workspace and these variables: '-x': must not start with " \
           "'-' or a space, nor hold control characters" in out.stderr, out.stderr
    assert "field 'action_config.slug': with this workspace and these variables: 'Shop': lowercase letters only" \
           in out.stderr, out.stderr
