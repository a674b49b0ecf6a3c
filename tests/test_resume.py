"""Resume, crash recovery and one active run per workspace, on SQLite and on
the machine's real PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import yaml

from dagrun import InputError, RunConflictError, StepStatus, TemplateError, resume, run_template
from dagrun.api import get_run, watch_run
from dagrun.run.events import StepStarted
from dagrun.store.history import list_runs, show_run
from tests.helpers import pid_alive, script_step, step, template

STORES = ["sqlite", "postgres"]


def store_url(request, store):
    return request.getfixturevalue("db_url" if store == "sqlite" else "pg_url")


def chain(gate):
    """a -> b -> c; b waits for the gate file (or fails when told not to wait)."""
    return template(
        script_step(10, "echo a >> ~/count", id="a"),
        script_step(20, 'echo $$ > ~/b.pid\nfor i in $(seq {{ vars.polls }}); do [ -f ' + str(gate) + ' ] && exit 0; '
                        'sleep 0.05; done\necho "no gate" >&2; exit 1', id="b", requires=["a"]),
        script_step(30, "echo c", id="c", requires=["b"]), vars={"polls": 1})


def attempts(url, run_id):
    return [(a["step_id"], a["attempt"], a["status"], a["error"]) for a in show_run(url, run_id)["attempts"]]


@pytest.mark.parametrize("store", STORES)
def test_a_second_active_run_for_the_workspace_is_refused(store, request, workspace, tmp_path):
    url = store_url(request, store)
    gate = tmp_path / "gate"
    started = threading.Event()
    outcome = {}

    def first():
        outcome["result"] = run_template(chain(gate), workspace, database_url=url, variables={"polls": 1200},
                                         on_event=lambda e: started.set() if isinstance(e, StepStarted)
                                         and e.step_id == "b" else None)

    thread = threading.Thread(target=first)
    thread.start()
    assert started.wait(30)
    try:
        with pytest.raises(RunConflictError) as exc:
            run_template(template(script_step(10, "true")), workspace, database_url=url)
    finally:
        gate.touch()
        thread.join()
    assert outcome["result"].run_id in str(exc.value)
    assert outcome["result"].success
    assert run_template(template(script_step(10, "true")), workspace, database_url=url).success  # free again


@pytest.mark.parametrize("store", STORES)
def test_sigkill_mid_run_then_resume_completes_without_rerunning(store, request, tmp_path):
    url = store_url(request, store)
    gate, home = tmp_path / "gate", tmp_path / "home"
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(chain(gate)))
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg")}
    proc = subprocess.Popen([sys.executable, "-m", "dagrun", "run", "t.yaml", "--db", url, "--ws", "id=crash",
                             "--home", str(home), "--set", "polls=100000"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pidfile = home / "b.pid"
    for _ in range(600):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        time.sleep(0.05)
    time.sleep(0.3)  # let the writer record b's attempt as running
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step_pid = int(pidfile.read_text())
    os.killpg(step_pid, signal.SIGKILL)  # the step outlived its parent, as after a power loss it would not
    [run] = list_runs(url, workspace="crash")
    # What a crash leaves behind: the store says running until a resume claims it; shown as interrupted,
    # and a watch of it ends (it went on until its timeout: nobody runs it)
    assert run["status"] == "interrupted" and "dagrun resume" in run["error"]
    assert list_runs(url, workspace="crash", status="running") == []
    assert [s["status"] for s in get_run(run["run_id"], database_url=url)["steps"]] == [
        "completed", "interrupted", "not_started"]
    assert list(watch_run(run["run_id"], database_url=url, timeout=60))[-1] == {
        "event": "run", "run_id": run["run_id"], "status": "interrupted", "error": run["error"]}
    gate.touch()
    out = subprocess.run([sys.executable, "-m", "dagrun", "resume", run["run_id"], "--db", url, "--json"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["run_id"] == run["run_id"] and result["success"] is True
    assert (home / "count").read_text() == "a\n"  # a was not run again
    assert attempts(url, run["run_id"]) == [("a", 1, "completed", None), ("b", 1, "failed", "interrupted"),
                                            ("b", 2, "completed", None), ("c", 1, "completed", None)]
    assert not pid_alive(step_pid)


@pytest.mark.parametrize("store", STORES)
def test_resume_a_failed_run_continues_attempt_numbers(store, request, workspace, home, tmp_path):
    url = store_url(request, store)
    gate = tmp_path / "gate"
    failed = run_template(chain(gate), workspace, database_url=url)
    assert failed.status.value == "failed" and failed.failed_action == "execute_custom_script"
    gate.touch()
    resumed = resume(failed.run_id, database_url=url)
    assert resumed.success and resumed.run_id == failed.run_id
    assert resumed.completed_actions == 3
    assert (home / "count").read_text() == "a\n"
    assert attempts(url, failed.run_id) == [("a", 1, "completed", None), ("b", 1, "failed", "script: exit code 1: no gate"),
                                            ("b", 2, "completed", None), ("c", 1, "completed", None)]
    assert list_runs(url, workspace="ws1")[0]["status"] == "succeeded"


@pytest.mark.parametrize("store", STORES)
def test_two_resumes_of_one_run_do_not_both_go_ahead(store, request, workspace, home, tmp_path):
    """Both read the run before either claimed it (two operators, two API
    calls): the second must not run again what the first did."""
    from dagrun.api import claim, execute, prepare_resume
    url = store_url(request, store)
    gate = tmp_path / "gate"
    failed = run_template(chain(gate), workspace, database_url=url)
    gate.touch()
    first, second = prepare_resume(failed.run_id, database_url=url), prepare_resume(failed.run_id, database_url=url)
    claim(first)
    assert execute(first).success
    with pytest.raises(RunConflictError, match="resumed by someone else meanwhile .it is succeeded now"):
        claim(second)
    assert [(s, a) for s, a, _, _ in attempts(url, failed.run_id)] == [("a", 1), ("b", 1), ("b", 2), ("c", 1)]
    assert list_runs(url, workspace="ws1")[0]["status"] == "succeeded"


def test_a_resume_does_not_hand_on_a_secret_it_only_has_masked(workspace, home, tmp_path, db_url):
    """(helper-30) a's result held a secret, stored masked: b, run again,
    would get ********. Refused, naming the step to resume from."""
    gate = tmp_path / "gate"
    doc = template(script_step(10, 'echo "token={{ vars.token }}" >> "$DAGRUN_OUTPUT"', id="a"),
                   script_step(20, f'test -f {gate}; echo "{{{{ steps.a.result.token }}}}" > ~/token', id="b",
                               requires=["a"]), vars={"token": ""})
    failed = run_template(doc, workspace, database_url=db_url, secrets={"token": "S3cret-Tok"})
    assert not failed.success
    gate.touch()
    with pytest.raises(InputError, match=r"step b reads the results of step a, which held a secret .* \(--from a\)"):
        resume(failed.run_id, database_url=db_url, secrets={"token": "S3cret-Tok"})
    again = resume(failed.run_id, database_url=db_url, secrets={"token": "S3cret-Tok"}, from_step="a")
    assert again.success and (home / "token").read_text() == "S3cret-Tok\n"


def test_a_resume_refuses_a_masked_result_read_any_way(workspace, home, tmp_path, db_url):
    """(helper-32) .get('token') and | tojson read it too."""
    gate = tmp_path / "gate"
    for read in ("{{ steps.a.result.get('token') }}", "{{ steps.a.result | tojson }}"):
        doc = template(script_step(10, 'echo "token={{ vars.token }}" >> "$DAGRUN_OUTPUT"', id="a"),
                       script_step(20, f'test -f {gate}; echo "{read}" > ~/token', id="b", requires=["a"]),
                       vars={"token": ""})
        failed = run_template(doc, workspace, database_url=db_url, secrets={"token": "S3cret-Tok"})
        with pytest.raises(InputError, match=r"step b reads the results of step a, which held a secret"):
            resume(failed.run_id, database_url=db_url, secrets={"token": "S3cret-Tok"})


def test_a_step_whose_rollback_failed_runs_again_on_resume(workspace, home, tmp_path, db_url):
    """(helper-32) Its record said completed (rollback failed): trusted, though
    the rollback had undone part of it."""
    gate = tmp_path / "gate"
    doc = template(script_step(10, "touch ~/marker", id="x", action_config={"rollback_script": "rm ~/marker; exit 1"}),
                   script_step(20, f"test -f {gate}", id="f", requires=["x"]),
                   global_config={"rollback_on_failure": True})
    failed = run_template(doc, workspace, database_url=db_url)
    assert not failed.success and not (home / "marker").exists() and failed.steps["x"].rollback_error
    gate.touch()
    resumed = resume(failed.run_id, database_url=db_url)
    assert resumed.success and (home / "marker").exists() and resumed.steps["x"].attempts == 2


def kill_the_run_when(mark, doc, workspace, url, run_id, tmp_path, settle=0.0):
    """Run ``doc`` in a child process; SIGKILL it (and what it started) once
    the file ``mark`` exists (and ``settle`` seconds more)."""
    (tmp_path / "t.json").write_text(json.dumps(doc))
    code = ("import json, sys; from dagrun import run_template; run_template(json.load(open(sys.argv[1])), "
            "json.loads(sys.argv[2]), database_url=sys.argv[3], run_id=sys.argv[4])")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "t.json"), json.dumps(dict(workspace)), url,
                              run_id], start_new_session=True)
    deadline = time.monotonic() + 60
    while not mark.exists():
        assert child.poll() is None and time.monotonic() < deadline, f"{mark.name} never appeared"
        time.sleep(0.05)
    time.sleep(settle)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()


@pytest.mark.parametrize("store", STORES)
def test_a_run_killed_while_rolling_back_does_not_trust_what_it_may_have_undone(store, request, workspace, home,
                                                                                tmp_path):
    """(helper-30) x completed, f failed, x's rollback removed x's work, then
    the process died: a resume runs x again instead of trusting its record."""
    url = store_url(request, store)
    gate, rolling = tmp_path / "gate", tmp_path / "rolling"
    doc = template(script_step(10, "touch ~/marker", id="x", action_config={
        "rollback_script": f"rm ~/marker; touch {rolling}; sleep 30"}),
        script_step(20, f"test -f {gate}", id="f", requires=["x"]),
        global_config={"rollback_on_failure": True})
    kill_the_run_when(rolling, doc, workspace, url, "rolling-" + store, tmp_path)
    assert not (home / "marker").exists()
    gate.touch()
    resumed = resume("rolling-" + store, database_url=url)
    assert resumed.success, resumed.error
    assert (home / "marker").exists() and resumed.steps["x"].attempts == 2


def test_a_step_with_nothing_to_undo_is_trusted_after_a_death_in_rollback(workspace, home, tmp_path, db_url):
    """y (a custom script without a rollback_script) completed; its
    rollback undoes nothing, so a resume after a death while x's rollback
    ran keeps it: it ran again (a non-idempotent script twice)."""
    gate, rolling = tmp_path / "gate", tmp_path / "rolling"
    doc = template(script_step(10, "touch ~/marker", id="x", action_config={
        "rollback_script": f"rm ~/marker; touch {rolling}; sleep 30"}),
        script_step(15, "echo y >> ~/ycount", id="y", requires=["x"]),
        script_step(20, f"test -f {gate}", id="f", requires=["y"]),
        global_config={"rollback_on_failure": True})
    kill_the_run_when(rolling, doc, workspace, db_url, "nothing-to-undo", tmp_path)
    gate.touch()
    resumed = resume("nothing-to-undo", database_url=db_url)
    assert resumed.success, resumed.error
    assert resumed.steps["x"].attempts == 2 and (home / "marker").exists()  # x's rollback may have undone it
    assert (home / "ycount").read_text() == "y\n" and resumed.steps["y"].attempts == 1


def test_a_resume_looks_for_the_journal_where_the_run_last_ran(workspace, home, tmp_path, db_url, monkeypatch):
    """(helper-72) The journal guard looked only in the resuming process's
    own data folder: a resume with another HOME (the service, another
    operator) or on another host ran again steps whose completion was only
    journalled, and the journal's replay then lost their records."""
    from sqlalchemy import update
    from dagrun.store import journal
    from dagrun.store.engine import engine_for
    from dagrun.store.models import ProvisioningRun
    gate = tmp_path / "gate"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "first"))
    failed = run_template(template(script_step(10, f"test -f {gate}", id="s")), workspace, database_url=db_url)
    assert not failed.success
    kept = journal.append(failed.run_id, db_url, [])  # what the store could not take, in that folder
    assert (tmp_path / "first" / "dagrun").stat().st_mode & 0o777 == 0o700  # (made by the journal: its owner's)
    with engine_for(db_url).connect() as conn:  # where the run's process journals: the folder itself (helper-73)
        recorded = conn.execute(ProvisioningRun.__table__.select().where(ProvisioningRun.id == failed.run_id)).first()
    assert recorded.journal == f"{socket.gethostname()}:{os.path.realpath(tmp_path / 'first' / 'dagrun' / 'journal')}"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "second"))  # another process's data folder
    with pytest.raises(InputError, match=f"records the store could not take, kept in {kept}: replay them first"):
        resume(failed.run_id, database_url=db_url)
    kept.unlink()
    with engine_for(db_url).begin() as conn:  # as a process on another host records it when it claims
        conn.execute(update(ProvisioningRun).where(ProvisioningRun.id == failed.run_id)
                     .values(journal="elsewhere.example:/var/lib/dagrun/journal"))
    with pytest.raises(InputError, match="last ran on host elsewhere.example, whose journal .* --journal-checked"):
        resume(failed.run_id, database_url=db_url)
    gate.touch()
    assert resume(failed.run_id, database_url=db_url, journal_checked=True).success


def test_a_run_whose_records_cannot_be_kept_anywhere_stops(workspace, home, tmp_path, monkeypatch):
    """(helper-72) With the store and the journal both refusing, a completed
    step counted as recorded: its dependents started, and after a crash a
    resume would run it again. The run stops instead."""
    import dagrun.store.recorder
    monkeypatch.setattr(dagrun.store.recorder, "RETRY_LIMIT_SECONDS", 0.5)  # (then the journal: refused too)
    db = tmp_path / "kept.db"
    (tmp_path / "xdg").write_text("")  # a file: no journal folder can be made in it
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    away = (f"python3 -c \"import sqlite3; c = sqlite3.connect('{db}'); "
            "c.execute('ALTER TABLE workspace_action_executions RENAME TO away'); c.commit()\"")
    doc = template(script_step(10, away, id="a"), script_step(20, "touch ~/b", id="b", requires=["a"]))
    result = run_template(doc, workspace, database_url=f"sqlite:///{db}")
    assert result.status.value == "cancelled" and "records cannot be kept" in result.error, result.error
    assert not (home / "b").exists() and result.steps["b"].status is not StepStatus.completed


def test_a_run_stops_when_any_of_its_records_cannot_be_kept(workspace, home, tmp_path, monkeypatch):
    """(helper-73) A lost batch without a completion in it (a failed
    attempt's end, the next attempt's row) went unnoticed: the retry's
    completion then updated no row, its dependents ran, and a resume ran it
    again."""
    import dagrun.store.recorder
    monkeypatch.setattr(dagrun.store.recorder, "RETRY_LIMIT_SECONDS", 0.5)
    db = tmp_path / "kept.db"
    (tmp_path / "xdg").write_text("")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    away = (f"python3 -c \"import sqlite3; c = sqlite3.connect('{db}'); "
            "c.execute('ALTER TABLE workspace_action_executions RENAME TO away'); c.commit()\"")
    retried = f"if [ -f ~/once ]; then touch ~/second; exit 0; fi; touch ~/once; {away}; exit 1"
    doc = template(script_step(10, retried, id="a", max_retries=2, retry_delay_seconds=3),
                   script_step(20, "touch ~/b", id="b", requires=["a"]))
    result = run_template(doc, workspace, database_url=f"sqlite:///{db}")
    assert result.status.value == "cancelled" and "records cannot be kept" in result.error, result.error
    assert (home / "once").exists() and not (home / "second").exists() and not (home / "b").exists()


def test_a_relative_xdg_data_home_is_ignored(monkeypatch, tmp_path):
    """(helper-73) It named another folder from each working folder, so a
    resume elsewhere did not find the run's journal. The XDG spec says to
    ignore a relative path there."""
    from pathlib import Path
    from dagrun.locations import data_dir
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", "data")
    assert data_dir() == Path(tmp_path) / ".local" / "share" / "dagrun"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "abs"))
    assert data_dir() == tmp_path / "abs" / "dagrun"


def test_a_run_killed_waiting_to_retry_keeps_its_completed_steps(workspace, home, tmp_path, db_url):
    """(helper-32) No rollback had begun (a failure waiting for its retry):
    the completed step is not run again."""
    gate, waiting = tmp_path / "gate", tmp_path / "waiting"
    doc = template(script_step(10, "echo x >> ~/count", id="x", action_config={"rollback_script": "rm ~/count"}),
                   script_step(20, f"touch {waiting}; test -f {gate}", id="f", requires=["x"], max_retries=3,
                               retry_delay_seconds=60),
                   global_config={"rollback_on_failure": True})
    # (settle: its failure recorded, waiting 60 s for the retry)
    kill_the_run_when(waiting, doc, workspace, db_url, "retrying", tmp_path, settle=0.5)
    gate.touch()
    resumed = resume("retrying", database_url=db_url)
    assert resumed.success and (home / "count").read_text() == "x\n" and resumed.steps["x"].attempts == 1


@pytest.mark.parametrize("store", STORES)
def test_a_run_taken_over_stops_and_writes_nothing_more(store, request, workspace, home, tmp_path):
    """(helper-32) A process taken for dead (paused past the heartbeat, on
    another host) woke and went on writing over its successor's records."""
    from sqlalchemy import update
    from dagrun.store.engine import engine_for
    from dagrun.store.models import ProvisioningRun
    url = store_url(request, store)
    gate, started = tmp_path / "gate", threading.Event()
    doc = template(script_step(10, f"for i in $(seq 200); do [ -f {gate} ] && break; sleep 0.05; done", id="a"),
                   script_step(20, "echo b > ~/b", id="b", requires=["a"]))

    def take_over(event):
        if isinstance(event, StepStarted) and event.step_id == "a" and not started.is_set():
            started.set()
            with engine_for(url).begin() as conn:  # what a resume on another host writes when it claims
                conn.execute(update(ProvisioningRun).where(ProvisioningRun.id == "taken-" + store)
                             .values(owner="elsewhere:1@1"))

    result = run_template(doc, workspace, database_url=url, run_id="taken-" + store, on_event=take_over)
    assert result.status.value == "cancelled" and "taken over by elsewhere:1@1" in result.error
    assert not (home / "b").exists()
    with engine_for(url).connect() as conn:  # the new owner's row, untouched by the old one
        row = conn.execute(ProvisioningRun.__table__.select().where(ProvisioningRun.id == "taken-" + store)).first()
    assert row.status == "running" and row.owner == "elsewhere:1@1" and row.completed_at is None


def test_a_resume_that_dies_before_redoing_keeps_the_rolling_back_mark(workspace, home, tmp_path, db_url):
    """(helper-33) The first resume's claim cleared it, and a second resume
    trusted the undone step."""
    from dagrun.api import claim, prepare_resume
    from dagrun.store.engine import engine_for
    from dagrun.store.models import ProvisioningRun
    from dagrun.store.operations import ROLLING_BACK
    from sqlalchemy import update
    gate = tmp_path / "gate"
    doc = template(script_step(10, "touch ~/marker", id="x", action_config={"rollback_script": "rm ~/marker"}),
                   script_step(20, f"test -f {gate}", id="f", requires=["x"]), global_config={"rollback_on_failure": True})
    failed = run_template(doc, workspace, database_url=db_url)
    with engine_for(db_url).begin() as conn:  # as a run killed in its rollback (the rollback did run) leaves it
        conn.execute(update(ProvisioningRun).where(ProvisioningRun.id == failed.run_id).values(
            status="running", owner=f"{socket.gethostname()}:999999@1",
            error=f"{ROLLING_BACK}critical step f failed (at {time.time():.3f})"))
        conn.execute(__import__("dagrun.store.models", fromlist=["x"]).WorkspaceActionExecution.__table__.update()
                     .where(__import__("dagrun.store.models", fromlist=["x"]).WorkspaceActionExecution.step_id == "x")
                     .values(status="completed"))
    first = prepare_resume(failed.run_id, database_url=db_url)
    assert "x" not in first.done
    from datetime import datetime, timedelta, timezone
    models = __import__("dagrun.store.models", fromlist=["x"])
    with engine_for(db_url).begin() as conn:  # x completed again after the rollbacks began: a resume's, sure
        conn.execute(models.WorkspaceActionExecution.__table__.update()
                     .where(models.WorkspaceActionExecution.step_id == "x")
                     .values(completed_at=datetime.now(timezone.utc) + timedelta(seconds=60)))
    assert "x" in prepare_resume(failed.run_id, database_url=db_url).done
    with engine_for(db_url).begin() as conn:
        conn.execute(models.WorkspaceActionExecution.__table__.update()
                     .where(models.WorkspaceActionExecution.step_id == "x")
                     .values(completed_at=datetime.now(timezone.utc) - timedelta(seconds=60)))
    claim(first)  # ... and dies before running anything
    with engine_for(db_url).begin() as conn:
        conn.execute(update(ProvisioningRun).where(ProvisioningRun.id == failed.run_id)
                     .values(owner=f"{socket.gethostname()}:999998@1"))
    gate.touch()
    again = resume(failed.run_id, database_url=db_url)
    assert again.success and (home / "marker").exists()


def test_steps_a_resume_completed_are_trusted_by_the_next_one_after_a_death_in_rollback(workspace, home, tmp_path,
                                                                                       db_url):
    """(helper-63) A resume after a death in rollback completed x again (its
    row within the mark's clock margin) and died: the next resume ran x once
    more. The first resume's claim notes the last row made before it; rows
    after it are a resume's, which no rollback of the dead run undid."""
    from sqlalchemy import func, insert, select, update
    from dagrun.api import claim, prepare_resume
    from dagrun.store.engine import engine_for
    from dagrun.store.models import ProvisioningRun, WorkspaceActionExecution as Row
    from dagrun.store.operations import ROLLING_BACK
    doc = template(script_step(10, "touch ~/marker", id="x", action_config={"rollback_script": "rm ~/marker"}),
                   script_step(20, f"test -f {tmp_path / 'gate'}", id="f", requires=["x"]),
                   global_config={"rollback_on_failure": True})
    failed = run_template(doc, workspace, database_url=db_url)
    engine = engine_for(db_url)
    with engine.begin() as conn:  # killed in its rollback
        conn.execute(update(ProvisioningRun).where(ProvisioningRun.id == failed.run_id).values(
            status="running", owner=f"{socket.gethostname()}:999999@1",
            error=f"{ROLLING_BACK}critical step f failed (at {time.time():.3f})"))
        conn.execute(update(Row).where(Row.run_id == failed.run_id, Row.step_id == "x").values(status="completed"))
    first = prepare_resume(failed.run_id, database_url=db_url)
    assert "x" not in first.done  # (the dead run's row: perhaps undone)
    claim(first)
    with engine.begin() as conn:  # the resume completes x again, now, then dies
        old = conn.execute(select(Row).where(Row.run_id == failed.run_id, Row.step_id == "x")).mappings().first()
        conn.execute(insert(Row).values({**{k: v for k, v in old.items() if k != "id"}, "attempt_number": 2,
                                         "status": "completed", "completed_at": old["completed_at"]}))
        conn.execute(update(ProvisioningRun).where(ProvisioningRun.id == failed.run_id)
                     .values(owner=f"{socket.gethostname()}:999998@1"))
        assert conn.execute(select(func.count()).select_from(Row).where(Row.run_id == failed.run_id,
                                                                        Row.step_id == "x")).scalar() == 2
    assert "x" in prepare_resume(failed.run_id, database_url=db_url).done


@pytest.mark.parametrize("store", STORES)
def test_a_cancel_never_closes_a_run_a_resume_is_claiming(store, request, workspace, tmp_path):
    """(helper-63) A cancel found the run's owner dead and closed it as
    interrupted over the claim a resume had just made: the resume went on
    while the workspace took a new run. A cancel decides and writes under
    the lock a claim takes, up to its commit."""
    import threading
    from sqlalchemy import update
    from dagrun.store.engine import engine_for
    from dagrun.store.models import ProvisioningRun
    from dagrun.store.runs import owner_id, request_cancel, workspace_transaction
    url = store_url(request, store)
    failed = run_template(template(script_step(10, "exit 1", id="a", max_retries=1)), workspace, database_url=url)
    engine = engine_for(url)
    with engine.begin() as conn:  # its process died
        conn.execute(update(ProvisioningRun).where(ProvisioningRun.id == failed.run_id).values(
            status="running", owner=f"{socket.gethostname()}:999999@1", error=None))
    cancelled = []
    with workspace_transaction(engine, "ws1") as session:  # a resume claiming it (this live process)
        run = session.get(ProvisioningRun, failed.run_id)
        run.owner = owner_id()
        session.flush()
        worker = threading.Thread(target=lambda: cancelled.append(request_cancel(url, failed.run_id, "by ops")))
        worker.start()
        worker.join(1.0)  # it waits for the claim to commit
        assert worker.is_alive()
    worker.join(30)
    assert cancelled == [failed.run_id]
    with engine.connect() as conn:
        row = conn.execute(ProvisioningRun.__table__.select().where(ProvisioningRun.id == failed.run_id)).first()
    assert row.status == "running" and row.owner == owner_id() and row.cancel_requested == "by ops"


def test_a_run_taken_over_at_its_end_writes_nothing_and_its_journal_is_not_replayed(workspace, home, tmp_path,
                                                                                     db_url, monkeypatch):
    """(helper-34) The run's last batch went out unchecked; a journal written
    by the old owner was replayed over its successor's records."""
    from sqlalchemy import update
    from dagrun.store import journal
    from dagrun.store.engine import engine_for
    from dagrun.store.models import ProvisioningRun

    def take_over(event):
        if isinstance(event, StepStarted):
            with engine_for(db_url).begin() as conn:
                conn.execute(update(ProvisioningRun).where(ProvisioningRun.id == "quick").values(owner="elsewhere:1@1"))

    run_template(template(script_step(10, "sleep 0.2", id="a")), workspace, database_url=db_url, run_id="quick",
                 on_event=take_over)
    with engine_for(db_url).connect() as conn:
        row = conn.execute(ProvisioningRun.__table__.select().where(ProvisioningRun.id == "quick")).first()
    assert row.status == "running" and row.owner == "elsewhere:1@1" and row.completed_at is None
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    journal.append("quick", db_url, [{"op": "run", "run_id": "quick", "values": {"status": "succeeded"}}],
                   owner="me:1@1")
    [(_, applied, said)] = journal.recover(url=db_url)
    assert applied == 0 and "taken over by elsewhere:1@1" in said and journal.pending("quick") is None
    with engine_for(db_url).connect() as conn:
        assert conn.execute(ProvisioningRun.__table__.select().where(ProvisioningRun.id == "quick")).first().status \
            == "running"


def test_a_resume_checks_the_configs_it_will_render_first(workspace, home, tmp_path, db_url):
    """(helper-37) A value given again that the step's schema refuses was a
    failure part-way through the resume, not one error before it."""
    acts = [{"name": "typed", "action_type": "shell", "execution_handler": "true",
             "config_schema": {"type": "object", "properties": {"url": {"type": "string", "x-secret": True,
                                                                       "pattern": "^pg://"}}}}]
    gate = tmp_path / "gate"
    doc = template(script_step(5, "echo a >> ~/count", id="a"),
                   step(10, "typed", id="t", requires=["a"], action_config={"url": "{{ vars.url }}"}),
                   script_step(20, f"test -f {gate}", id="g", requires=["t"]), vars={"url": ""})
    # (a secret given as one: a variable a secret field reads must be given again as it was)
    failed = run_template(doc, workspace, database_url=db_url, actions=acts, secrets={"url": "pg://long-url-1"},
                          sandbox=False)
    gate.touch()
    with pytest.raises(TemplateError, match="step t: field 'action_config.url'"):
        resume(failed.run_id, database_url=db_url, actions=acts, sandbox=False, from_step="a",
               secrets={"url": "http://not-pg"})
    assert (home / "count").read_text() == "a\n"  # nothing ran


def test_a_run_a_newer_run_of_its_workspace_came_after_is_not_resumed(workspace, home, tmp_path, db_url):
    """(helper-45) After a newer run of the workspace (here with the fixed
    template) succeeded, resuming the old failed one ran its stale steps over
    the newer one's work. A --check of the workspace changes nothing: it does
    not count."""
    gate = tmp_path / "gate"
    old = run_template(chain(gate), workspace, database_url=db_url)
    assert not old.success
    check = run_template(chain(gate), workspace, database_url=db_url, check=True)
    assert check.check
    gate.touch()
    assert resume(old.run_id, database_url=db_url).success  # only checks came after it
    gate.unlink()
    old = run_template(chain(gate), workspace, database_url=db_url)
    gate.touch()
    newer = run_template(chain(gate), workspace, database_url=db_url)
    assert newer.success
    with pytest.raises(InputError, match=f"run {old.run_id} is not workspace ws1's latest: run {newer.run_id[:8]} "
                                         r"\(succeeded\) came after it"):
        resume(old.run_id, database_url=db_url)
    out = subprocess.run([sys.executable, "-m", "dagrun", "resume", old.run_id, "--db", db_url], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "run the template again instead" in out.stderr and "Traceback" not in out.stderr
    # (helper-63) a newer run that starts and ends between a resume's prepare and its claim counts too
    from dagrun.api import claim, prepare_resume
    gate.unlink()
    old = run_template(chain(gate), workspace, database_url=db_url)
    prepared = prepare_resume(old.run_id, database_url=db_url)
    gate.touch()
    assert run_template(chain(gate), workspace, database_url=db_url).success
    with pytest.raises(InputError, match=f"run {old.run_id} is not workspace ws1's latest"):
        claim(prepared)


def test_a_run_given_environment_names_is_resumed_with_them(workspace, home, tmp_path, db_url, monkeypatch):
    """(helper-47) env_passthrough / --env names were not kept: a run whose
    template reads env.X could never be resumed ("not passed through")."""
    gate = tmp_path / "gate"
    monkeypatch.setenv("TEST_DEPLOY_REGION", "eu-west")
    doc = template(script_step(10, f"test -e {gate} && echo {{{{ env.TEST_DEPLOY_REGION }}}} > ~/region", id="a"))
    failed = run_template(doc, workspace, database_url=db_url, env_passthrough=["TEST_DEPLOY_REGION"])
    assert not failed.success
    gate.touch()
    again = resume(failed.run_id, database_url=db_url)
    assert again.success and (home / "region").read_text() == "eu-west\n"


def test_a_failed_cli_run_says_how_to_continue_it_and_when_not_to(tmp_path):
    doc = tmp_path / "t.yaml"
    doc.write_text(yaml.safe_dump(template(script_step(10, "exit 3", id="a"))))
    db = f"sqlite:///{tmp_path}/x.db"
    out = subprocess.run([sys.executable, "-m", "dagrun", "run", str(doc), "--db", db, "--home", str(tmp_path / "h")],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "80"})
    assert out.returncode == 1
    run_id = list_runs(db)[0]["run_id"]
    assert f"to continue this run as recorded: dagrun resume {run_id[:8]} --db {db}\n" \
           "after changing the template, run it again instead" in out.stdout, out.stdout


def test_resume_from_a_step_reruns_it_and_its_downstream(workspace, home, tmp_path, db_url):
    gate = tmp_path / "gate"
    gate.touch()
    first = run_template(chain(gate), workspace, database_url=db_url)
    assert first.success
    with pytest.raises(InputError, match="already succeeded"):
        resume(first.run_id, database_url=db_url)
    with pytest.raises(InputError, match="has no step 'nope'"):
        resume(first.run_id, database_url=db_url, from_step="nope")
    again = resume(first.run_id, database_url=db_url, from_step="b")
    assert again.success
    assert sorted((s, a) for s, a, _, _ in attempts(db_url, first.run_id)) == [("a", 1), ("b", 1), ("b", 2),
                                                                              ("c", 1), ("c", 2)]
    assert (home / "count").read_text() == "a\n"


def test_resume_of_an_unknown_run_is_a_clear_error(db_url):
    with pytest.raises(InputError, match="no run 'missing' in the store"):
        resume("missing", database_url=db_url)


@pytest.mark.parametrize("store", STORES)
def test_watch_follows_a_run_live_from_another_process(store, request, workspace, tmp_path):
    url = store_url(request, store)
    gate = tmp_path / "gate"
    run_id = "watched-" + store
    outcome = {}
    started = threading.Event()

    def run():
        outcome["result"] = run_template(chain(gate), workspace, database_url=url, run_id=run_id,
                                         variables={"polls": 1200},
                                         on_event=lambda e: started.set() if isinstance(e, StepStarted) else None)

    thread = threading.Thread(target=run)
    thread.start()
    assert started.wait(30)
    watcher = subprocess.Popen([sys.executable, "-m", "dagrun", "watch", run_id, "--db", url, "--json",
                                "--timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = watcher.stdout.readline()
    if not line:  # pragma: no cover - diagnostics
        gate.touch()
        thread.join()
        pytest.fail(f"watch printed nothing: {watcher.communicate()[1]}")
    first = json.loads(line)  # the watcher sees the run while it is going
    assert first["event"] == "attempt" and first["step_id"] == "a"
    gate.touch()
    # The rest through the same reader: readline may already hold part of the next line, which
    # communicate() (it reads the pipe itself) would never see. The watcher ends by itself (--timeout).
    out = watcher.stdout.read()
    err = watcher.stderr.read()
    watcher.wait(60)
    thread.join()
    assert watcher.returncode == 0, err
    events = [first] + [json.loads(line) for line in out.splitlines()]
    assert ("b", "completed") in {(e.get("step_id"), e.get("status")) for e in events}
    assert events[-1] == {"event": "run", "run_id": run_id, "status": "succeeded", "error": None}
    assert outcome["result"].success


def test_resume_needs_the_secrets_again(workspace, tmp_path, db_url):
    gate = tmp_path / "gate"
    doc = template(script_step(10, f"test -f {gate}; echo {{{{ vars.token }}}}", id="s"))
    failed = run_template(doc, workspace, database_url=db_url, secrets={"token": "abc123"})
    assert not failed.success
    with pytest.raises(InputError, match="started with secrets that are not stored: token; give them again"):
        resume(failed.run_id, database_url=db_url)  # secrets are not stored with the run
    gate.touch()
    again = resume(failed.run_id, database_url=db_url, secrets={"token": "abc123"})
    assert again.success and again.steps["s"].stdout == "********\n"
