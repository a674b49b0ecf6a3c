"""The surface a newcomer meets: the CLI's help, version and options, a
library that prints nothing, one-pass validation, changed/unchanged, --check,
status words, output that fits 80 columns, templates, learned estimates,
explain, and retries by error class. CLI through a subprocess, the API
through the package, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from dagrun import InputError, StepStatus, api, run_template
from dagrun.cli.main import build_parser
from tests.helpers import script_step, step, template


def dagrun(*args, cwd: Path, columns: int = 200, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_DATA_HOME": str(cwd / "xdg"), "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-m", "dagrun", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=120, **kw)


def write(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# -- the command line ------------------------------------------------------------------

def test_version_and_global_options_anywhere(tmp_path):
    out = dagrun("--version", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("dagrun ") and out.stdout.strip() != "dagrun"
    db = f"sqlite:///{tmp_path}/v.db"
    for args in (["-v", "templates", "--db", db], ["templates", "-v", "--db", db], ["templates", "--db", db, "-vv"],
                 ["--log-json", "templates", "--db", db], ["templates", "--log-json", "--db", db]):
        result = dagrun(*args, cwd=tmp_path)
        assert result.returncode == 0, (args, result.stderr)
        assert "demo" in result.stdout


def test_the_examples_newcomers_copy_work(tmp_path):
    """The README's template (every field, extending a seed) validates and
    plans; every command in ``dagrun --help`` that runs nothing works."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    example = readme.split("## Templates\n\n```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "mine.yaml").write_text(example)
    out = dagrun("validate", "mine.yaml", cwd=tmp_path)
    assert out.returncode == 0 and "mine.yaml: ok" in out.stdout, out.stderr
    assert dagrun("plan", "mine.yaml", cwd=tmp_path).returncode == 0
    usage = dagrun("--help", cwd=tmp_path).stdout
    examples = [line.strip().split("  ")[0].split()[1:] for line in usage.splitlines()
                if line.strip().startswith("dagrun ") and line.split()[1] in ("plan", "validate", "graph", "explain")]
    assert examples
    for args in examples:
        out = dagrun(*args, cwd=tmp_path)
        assert out.returncode == 0, (args, out.stderr)


def test_every_option_of_every_command_says_what_it_does():
    parser = build_parser()
    commands = {name: p for a in parser._subparsers._group_actions for name, p in a.choices.items()}
    assert {"run", "resume", "validate", "plan", "graph", "explain", "templates", "actions", "runs", "show", "watch",
            "db", "seed", "migrate-legacy"} <= set(commands)
    undocumented = []
    for name, sub in commands.items():
        for action in sub._actions:
            if action.help in (None, "") and not isinstance(action, type(parser._subparsers._group_actions[0])):
                undocumented.append(f"{name} {action.option_strings or action.dest}")
    assert undocumented == []
    assert "Provision developer workspaces" in parser.format_help() and '"""' not in parser.format_help()


def test_help_fits_an_80_column_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    parser = build_parser()
    commands = {name: p for a in parser._subparsers._group_actions for name, p in a.choices.items()}
    long = [(name, line) for name, p in {"dagrun": parser, **commands}.items()
            for line in p.format_help().splitlines() if len(line) > 80]
    assert long == []


def test_the_library_prints_nothing(tmp_path):
    code = textwrap.dedent(f"""
        from dagrun import run_template
        result = run_template("demo", {{"id": "quiet", "home_dir": {str(tmp_path / 'home')!r}}},
                              database_url="sqlite:///{tmp_path}/q.db")
        assert result.success, result.error
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg")})
    assert out.returncode == 0, out.stderr
    assert (out.stdout, out.stderr) == ("", "")


def test_the_cli_prints_progress_once_and_no_log_lines_beside_it(tmp_path):
    out = dagrun("run", "demo", "--db", f"sqlite:///{tmp_path}/p.db", cwd=tmp_path)  # stderr is a pipe here
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert out.stdout.count("[1/8] layout · Run Custom Script") == 1


# -- one pass of validation --------------------------------------------------------------

def test_validate_reports_every_problem_at_once_with_suggestions(tmp_path):
    bad = write(tmp_path / "bad.yaml", template(
        script_step(10, "echo {{ vars.projetc }} {{ workspace.nmae }}", id="a"),
        script_step(20, "true", id="b", requirs=["a"]), step(30, "write_fil", id="c"), vars={"project": "x"}))
    out = dagrun("validate", bad, "--ws", "id=w", "--ws", "name=n", cwd=tmp_path)
    assert out.returncode == 2
    for text in ("undefined variable vars.projetc (did you mean 'project'?)",
                 "the workspace has no field 'nmae' (did you mean 'name'?)",
                 "field 'requirs': unknown field (did you mean 'requires'?)",
                 "unknown action 'write_fil' (did you mean 'write_file'?)"):
        assert text in out.stderr, (text, out.stderr)


@pytest.mark.parametrize("command", ["run", "plan", "validate"])
def test_an_undeclared_variable_is_an_error(command, tmp_path):
    out = dagrun(command, "demo", "--set", "projetc=x", "--db", f"sqlite:///{tmp_path}/u.db", cwd=tmp_path)
    assert out.returncode == 2
    assert "variable 'projetc' is not declared by template 'demo' (did you mean 'project'?)" in out.stderr
    none = dagrun(command, "python-base", "--set", "project=x", "--db", f"sqlite:///{tmp_path}/u.db", cwd=tmp_path)
    assert "(it declares none: a template names its variables under vars:)" in none.stderr, none.stderr


def test_an_undefined_variable_says_where_to_declare_it(tmp_path):
    bad = write(tmp_path / "nv.yaml", template(script_step(10, "echo {{ vars.project }}", id="a")))
    out = dagrun("validate", bad, cwd=tmp_path)
    assert "undefined variable vars.project (declare it under the template's vars:, e.g. vars: {project: ...})" \
        in out.stderr, out.stderr


def test_a_failed_validation_shows_its_command_and_output(tmp_path):
    doc = template(script_step(10, "true", id="s", action_config={
        "validate_script": "echo 'checking the port'; echo 'port 8069 is closed' >&2; exit 1"}))
    result = run_template(doc, {"id": "w", "home_dir": str(tmp_path / "h")}, record=False)
    error = result.steps["s"].error
    assert error.startswith("validation failed: validate_script: exit code 1: port 8069 is closed"), error


# -- changed, unchanged, --check ---------------------------------------------------------

def test_library_steps_say_whether_they_changed_anything_and_records_keep_it(tmp_path, db_url):
    home = tmp_path / "h"
    doc = template(step(10, "write_file", id="f", action_config={"target_path": "~/a.txt", "content": "x"}),
                   step(20, "create_python_venv", id="v", action_config={"venv_path": "~/venv", "with_pip": False}))
    first = run_template(doc, {"id": "w", "home_dir": str(home)}, database_url=db_url)
    second = run_template(doc, {"id": "w", "home_dir": str(home)}, database_url=db_url)
    assert [first.steps[s].changed for s in "fv"] == [True, True]
    assert [second.steps[s].changed for s in "fv"] == [False, False]
    assert (first.changed_actions, second.unchanged_actions) == (2, 2)
    assert [d["changed"] for d in second.execution_details] == [False, False]
    attempts = api.get_run(second.run_id, database_url=db_url)["attempts"]
    assert [a["changed"] for a in attempts] == [False, False]


def test_check_changes_nothing_and_says_what_would_change(tmp_path, db_url):
    home = tmp_path / "h"
    doc = template(step(10, "write_file", id="f", action_config={"target_path": "~/a.txt", "content": "x"}),
                   script_step(20, "touch ~/ran", id="s"))
    checked = run_template(doc, {"id": "w", "home_dir": str(home)}, database_url=db_url, check=True)
    assert checked.success and checked.check and not home.exists()  # not even the home was made
    assert checked.steps["f"].changed is True and "does not exist yet" in checked.steps["f"].result["check"]
    assert api.get_run(checked.run_id, database_url=db_url)["mode"] == "check"
    with pytest.raises(InputError, match="was a check"):
        api.resume(checked.run_id, database_url=db_url)
    run_template(doc, {"id": "w", "home_dir": str(home)}, database_url=db_url)
    (home / "ran").unlink()
    again = run_template(doc, {"id": "w", "home_dir": str(home)}, database_url=db_url, check=True)
    assert again.steps["f"].changed is False and not (home / "ran").exists()
    assert again.steps["s"].changed is None  # a script without a validate_script cannot tell


def test_check_answers_for_a_step_whose_venv_an_earlier_step_would_make(tmp_path, db_url):
    """The pip step's validation found no interpreter to trust (the venv is
    not there yet) and failed the whole check run; it would change."""
    home = tmp_path / "h"
    home.mkdir()
    doc = template(step(10, "create_python_venv", id="venv", action_config={"venv_path": "~/venv"}),
                   step(20, "install_pip_requirements", id="pip", requires=["venv"],
                        action_config={"venv_path": "~/venv", "packages": ["requests"]}))
    checked = run_template(doc, {"id": "w", "home_dir": str(home)}, database_url=db_url, check=True)
    assert checked.success, checked.error
    assert checked.steps["pip"].changed is True and f"no venv at {home}/venv" in checked.steps["pip"].result["check"]
    assert not (home / "venv").exists()


def test_check_says_which_results_it_cannot_read(tmp_path, db_url):
    home = tmp_path / "h"
    home.mkdir()
    doc = template(script_step(10, 'echo "version=1" >> "$DAGRUN_OUTPUT"', id="probe"),
                   script_step(20, "echo {{ steps.probe.result.version }}", id="use", requires=["probe"],
                               action_config={"validate_script": "true"}))
    checked = run_template(doc, {"id": "w", "home_dir": str(home)}, database_url=db_url, check=True)
    assert checked.steps["use"].result["check"] == ("cannot tell before earlier steps run: it reads the results of "
                                                    "probe, which a check does not make")


def test_check_from_the_cli(tmp_path):
    out = dagrun("run", "demo", "--check", "--db", f"sqlite:///{tmp_path}/c.db", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "would change" in out.stdout and "(nothing was changed)" in out.stdout
    assert not (tmp_path / "dagrun-workspaces").exists()
    as_json = json.loads(dagrun("run", "demo", "--check", "--json", "--db", f"sqlite:///{tmp_path}/c.db",
                                cwd=tmp_path).stdout)
    assert as_json["check"] is True and all("changed" in d for d in as_json["execution_details"])


# -- status words and numbers ---------------------------------------------------------------

def test_status_words_and_attempt_numbers(tmp_path, db_url):
    doc = template(script_step(10, "exit 1", id="soft", skip_on_error=True),
                   script_step(20, "true", id="never", condition_expression="workspace.name == 'nobody'"),
                   script_step(30, "true", id="ok"))
    result = run_template(doc, {"id": "w", "name": "ada", "home_dir": str(tmp_path / "h")}, database_url=db_url)
    assert result.success and result.failed_actions == 1
    assert result.steps["never"].status is StepStatus.skipped and result.steps["never"].attempts == 0
    from dagrun.cli.progress import summary_line
    assert summary_line(result).plain.startswith("succeeded with 1 non-critical failure in")
    gate = tmp_path / "gate"
    stop = template(script_step(10, f"test -e {gate}", id="a"), script_step(20, "true", id="b", requires=["a"]))
    failed = run_template(stop, {"id": "w2", "home_dir": str(tmp_path / "h2")}, database_url=db_url)
    assert failed.steps["b"].status is StepStatus.not_started and failed.not_started_actions == 1
    gate.touch()
    out = dagrun("resume", failed.run_id, "--db", db_url, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "[1/2] a · Run Custom Script\n" in out.stdout  # this run's first attempt: no "attempt 2/1"
    assert "attempt 2" not in out.stdout


def test_the_summary_fits_80_columns(tmp_path):
    long = "install_the_postgresql_client_libraries_for_the_project"
    doc = write(tmp_path / "t.yaml", template(script_step(10, "echo 'a long line of output' >&2; exit 3", id=long,
                                                          skip_on_error=True), script_step(20, "true", id="b")))
    out = dagrun("run", doc, "--db", f"sqlite:///{tmp_path}/w.db", cwd=tmp_path, columns=80)
    table, details = out.stdout.split(": run ", 1)[1].split("\n  1 ")  # the table, and what is under it
    assert all(len(line) <= 80 for line in table.splitlines()), table
    assert "install_the_postg…" in table  # cut, never split over two lines
    assert details.startswith(f"{long}: script: exit code 3: a long line of output")  # in full, under the table
    wide = dagrun("run", doc, "--db", f"sqlite:///{tmp_path}/w.db", cwd=tmp_path, columns=160)
    assert "execute_custom_script" in wide.stdout  # room for the action column


# -- templates, learned estimates, explain ----------------------------------------------------------

def test_templates_lists_seeds_and_stored_ones_and_plan_finds_stored_ones(tmp_path):
    db = f"sqlite:///{tmp_path}/s.db"
    mine = write(tmp_path / "mine.yaml", {**template(script_step(10, "true", id="x"), name="mine"),
                                          "description": "my own"})
    assert dagrun("seed", mine, "--db", db, cwd=tmp_path).returncode == 0
    listed = json.loads(dagrun("templates", "--db", db, "--json", cwd=tmp_path).stdout)
    assert {("demo", "seed"), ("mine", "stored")} <= {(t["name"], t["source"]) for t in listed}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for command in (["plan", "mine"], ["validate", "mine"], ["graph", "mine"], ["explain", "mine"]):
        out = dagrun(*command, "--db", db, cwd=elsewhere)
        assert out.returncode == 0, (command, out.stderr)


def test_plan_learns_durations_from_recorded_runs(tmp_path, db_url):
    doc = template(script_step(10, "sleep 0.3", id="slow", estimated_duration_seconds=50),
                   script_step(20, "true", id="quick", estimated_duration_seconds=2))
    before = api.plan(doc, database_url=db_url)
    assert before.estimate_sources == {} and before.steps["slow"].estimated_duration_seconds == 50
    for n in range(2):
        assert run_template(doc, {"id": f"w{n}", "home_dir": str(tmp_path / f"h{n}")}, database_url=db_url).success
    after = api.plan(doc, database_url=db_url)
    assert after.estimate_sources["slow"] == "learned (2 runs)"
    assert 0.3 <= after.steps["slow"].estimated_duration_seconds < 5
    from dagrun.render import plan_dict
    entry = next(e for e in plan_dict(after, 4)["order"] if e["id"] == "slow")
    assert entry["estimate_source"] == "learned (2 runs)"
    other = template(script_step(10, "sleep 0.2", id="slow", estimated_duration_seconds=50))  # another config
    assert api.plan(other, database_url=db_url).estimate_sources == {}


def test_explain_says_where_every_value_comes_from(tmp_path):
    write(tmp_path / "base.yaml", {"name": "base", "version": "1", "vars": {"project": "p", "port": 1},
                                   "actions": [step(10, "create_python_venv", id="venv",
                                                    action_config={"venv_path": "~/venv"}),
                                               script_step(20, "echo base", id="hello")]})
    child = write(tmp_path / "child.yaml", {"name": "child", "version": "1", "extends": "base", "vars": {"port": 2},
                                            "actions": [step(10, "create_python_venv", id="venv",
                                                             action_config={"python_version": "python3.11"})]})
    explained = api.explain(str(child), variables={"project": "shop"})
    assert explained["chain"] == ["base", "child"]
    assert explained["vars"]["project"] == {"value": "shop", "origin": "--set"}
    assert explained["vars"]["port"]["origin"].startswith("child (")
    venv = next(s for s in explained["steps"] if s["id"] == "venv")["config"]
    assert venv["venv_path"]["origin"].startswith("base (") and "base.yaml" in venv["venv_path"]["origin"]
    assert venv["python_version"]["origin"].startswith("child (")
    assert "config schema default" in venv["with_pip"]["origin"]
    out = dagrun("explain", child, "venv", "--set", "project=shop", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "python_version: python3.11    # child (" in out.stdout
    # a dependency no requires wrote comes from somewhere too (here: the phases)
    django = next(s for s in api.explain("django")["steps"] if s["id"] == "venv")["fields"]["requires"]
    assert django == {"value": ["system_packages"],
                      "origin": "the phases: a step waits for every step of an earlier phase"}


def test_explain_masks_the_variables_a_secret_field_reads(tmp_path):
    """(helper-68) The API and the page masked such a default; explain
    printed it (text and --json)."""
    doc = write(tmp_path / "t.yaml", {"name": "t", "version": "1", "vars": {"dbpw": "StoredDefaultPw7", "port": 5432},
                                      "actions": [step(10, "create_postgresql_user", id="role", action_config={
                                          "username": "app", "connection_url":
                                          "postgresql://postgres:{{ vars.dbpw }}@127.0.0.1:5433/postgres"})]})
    explained = api.explain(str(doc))
    assert explained["vars"]["dbpw"]["value"] == "********" and explained["vars"]["port"]["value"] == 5432
    for args in (("explain", doc), ("explain", doc, "--json")):
        out = dagrun(*args, cwd=tmp_path)
        assert out.returncode == 0 and "StoredDefaultPw7" not in out.stdout and "5432" in out.stdout, out


# -- retries by error class ---------------------------------------------------------------------

def test_retries_follow_the_error_class(tmp_path):
    counter = tmp_path / "count"
    script = f"echo x >> {counter}; echo 'fatal: Authentication failed for repo' >&2; exit 128"
    never = template(script_step(10, script, id="s", max_retries=4, retry_delay_seconds=0,
                                 never_retry_when={"output_matches": ["Authentication failed"]}))
    result = run_template(never, {"id": "w", "home_dir": str(tmp_path / "h")}, record=False)
    assert result.steps["s"].attempts == 1 and len(counter.read_text().split()) == 1
    counter.unlink()
    only = template(script_step(10, f"echo x >> {counter}; exit 75", id="s", max_retries=3, retry_delay_seconds=0,
                                retry_when={"exit_codes": [75]}))
    assert run_template(only, {"id": "w", "home_dir": str(tmp_path / "h")}, record=False).steps["s"].attempts == 3
    counter.unlink()
    other = template(script_step(10, f"echo x >> {counter}; exit 1", id="s", max_retries=3, retry_delay_seconds=0,
                                 retry_when={"exit_codes": [75]}))
    assert run_template(other, {"id": "w", "home_dir": str(tmp_path / "h")}, record=False).steps["s"].attempts == 1


def test_the_library_does_not_retry_what_cannot_succeed(tmp_path):
    from dagrun.compile.loader import standard_library
    clone = standard_library()["clone_git_repository"]
    assert not clone.never_retry_when is None
    assert clone.never_retry_when.matches(128, "remote: Repository not found.\nfatal: repository ... not found")
    assert not clone.never_retry_when.matches(128, "fatal: unable to access: Could not resolve host: example.com")
    apt = standard_library()["install_system_packages"]
    assert apt.never_retry_when.matches(100, "E: Unable to locate package nosuchpkg")


def test_a_bad_retry_pattern_is_a_compile_error():
    from dagrun import TemplateError, compile_template
    with pytest.raises(TemplateError, match="field 'never_retry_when.output_matches': bad regular expression"):
        compile_template(template(script_step(10, "true", never_retry_when={"output_matches": ["(unclosed"]})))
