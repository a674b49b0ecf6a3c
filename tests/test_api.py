"""The Python API a provisioning service calls."""

from __future__ import annotations

import pytest

from dagrun import InputError, RunResult, TemplateError, compile_template
from dagrun import run_template as _run_template
from dagrun.run.events import (AttemptFinished, RetryScheduled, RunFinished, RunStarted, StepFinished, StepSkipped,
                           StepStarted)
from tests.helpers import action, script_step, step, template


def run_template(*args, **kwargs):
    """User-defined actions here stand in for steps that fail, flake or say something: what is
    tested is not the sandbox (tests/test_containment.py), so they run unconfined."""
    kwargs.setdefault("sandbox", False)
    return _run_template(*args, **kwargs)


class Workspace:
    """The provisioning service passes its ORM object, not a dict."""

    def __init__(self, home):
        self.id = 42
        self.name = "bob"
        self.db_name = "bob_db"
        self.port = 8069
        self.ssh_public_key = None
        self.home_dir = str(home)

    def method(self):  # callables are not workspace fields
        return "x"


def test_run_template_with_an_object_workspace_and_seed_summary(home, db_url):
    result = run_template(template(script_step(10, "echo {{ workspace.name }} {{ workspace.port }}", id="a"),
                                   script_step(20, "true", id="b", condition_expression="workspace.ssh_public_key IS NOT NULL")),
                          Workspace(home), database_url=db_url)
    assert isinstance(result, RunResult)
    assert result.steps["a"].stdout == "bob 8069\n"
    # the seed's apply_workspace_template_v2 does result.update(execution_result)
    summary = {"success": False, "template_id": 1}
    summary.update(result)
    assert summary["success"] is True and summary["total_actions"] == 2
    assert summary["completed_actions"] == 1 and summary["skipped_actions"] == 1 and summary["failed_actions"] == 0
    assert summary["error"] is None and summary["failed_action"] is None and summary["run_id"] == result.run_id
    assert [d["step_id"] for d in summary["execution_details"]] == ["a", "b"]
    assert set(summary["execution_details"][0]) >= {"step_id", "sequence_order", "action_name", "display_name",
                                                    "status", "attempts", "duration_seconds", "error"}


def test_on_event_receives_typed_events_in_order(workspace):
    acts = [action("flaky", "tests.helpers:flaky", max_retries=2, retry_delay_seconds=0,
                   config_schema={"properties": {"succeed_on": {}}}, default_config={"succeed_on": 2})]
    events = []
    run_template(template(step(10, "flaky"), script_step(20, "true", id="cond", condition_expression="1 = 2",
                                                         requires=["flaky"])),
                 workspace, actions=acts, record=False, on_event=events.append)
    kinds = [type(e) for e in events]
    assert kinds == [RunStarted, StepStarted, AttemptFinished, RetryScheduled, StepStarted, AttemptFinished,
                     StepFinished, StepStarted, AttemptFinished, StepSkipped, RunFinished]
    assert events[-1].result.success


def test_user_actions_extend_and_override_the_library(workspace, home):
    override = {"name": "execute_custom_script", "action_type": "shell", "execution_handler": "echo overridden",
                "config_schema": {"type": "object"}}
    result = run_template(template(script_step(10, "echo original")), workspace, actions=[override], record=False)
    assert result.steps["execute_custom_script"].stdout == "overridden\n"


def test_template_by_seed_name(workspace, db_url):
    plan = compile_template("demo")
    assert plan.name == "demo" and "venv" in plan.order


def test_bad_input_raises_before_anything_runs(workspace, home, db_url):
    marker = home / "ran"
    doc = template(script_step(10, f"touch {marker}"), script_step(20, "echo {{ workspace.nope }}", id="bad"))
    with pytest.raises(TemplateError) as exc:
        run_template(doc, workspace, database_url=db_url)
    assert "the workspace has no field 'nope'" in str(exc.value)
    assert not marker.exists()
    with pytest.raises(InputError, match="the workspace has no 'id'"):
        run_template(template(script_step(10, "true")), {"name": "x"}, record=False)
    with pytest.raises(InputError, match="max_workers must be a positive integer"):
        run_template(template(script_step(10, "true")), workspace, max_workers=0, record=False)


def test_variables_override_template_vars(workspace):
    doc = template(script_step(10, "echo {{ vars.who }}", id="s"), vars={"who": "default"})
    assert run_template(doc, workspace, record=False).steps["s"].stdout == "default\n"
    assert run_template(doc, workspace, variables={"who": "given"}, record=False).steps["s"].stdout == "given\n"


def test_audit_log_lines_are_json_bound_with_run_workspace_and_step(tmp_path):
    """Run in a fresh process: logging is configured once per process."""
    import json
    import subprocess
    import sys
    code = """
import io, logging, sys
from dagrun.run.logs import configure
configure(json=True, level=logging.INFO)
from dagrun import run_template
run_template({"name": "t", "actions": [{"sequence_order": 10, "id": "s", "action_name": "noop"}]},
             {"id": "w1"}, record=False)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    lines = [json.loads(line) for line in out.stderr.splitlines()]
    assert [line["event"] for line in lines] == ["run started", "step finished", "run finished"]
    assert all(line["workspace"] == "w1" and line["run_id"] == lines[0]["run_id"] for line in lines)
    assert lines[1]["step"] == "s" and lines[1]["status"] == "completed"


def test_printing_the_run_started_event_shows_neither_the_plan_nor_the_workspace(tmp_path):
    """(helper-45) on_event=print, as the README shows it, printed the whole
    plan (tens of kilobytes per run), and the workspace with its fields."""
    from dagrun.run.events import RunStarted
    seen = []
    result = run_template(template(script_step(10, "true", id="a")),
                          {"id": "w", "home_dir": str(tmp_path / "h"), "db_password": "Ws-Secret-Pw9"},
                          record=False, on_event=lambda e: seen.append(repr(e)) if isinstance(e, RunStarted) else None)
    assert result.success and len(seen) == 1
    assert "plan=" not in seen[0] and "Ws-Secret-Pw9" not in seen[0] and len(seen[0]) < 300, seen[0]
