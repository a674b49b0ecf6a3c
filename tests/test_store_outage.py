"""The store going away mid-run, on the machine's real PostgreSQL: a
restart is ridden out by the writer's retries; a longer outage ends in the
journal, which `dagrun db recover` replays. Nothing is lost."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

import json
import time

import dagrun.store.recorder
from dagrun import InputError, resume, run_template
from dagrun.run.events import StepFinished
from dagrun.store.history import show_run
from dagrun.store.runs import is_alive, owner_id
from dagrun.store.models import ProvisioningRun
from tests.helpers import action, script_step, step, template

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="restarting PostgreSQL needs root (CI runs as root)")


def pg_ctl(command: str) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", command], check=True,
                   capture_output=True, timeout=120)
    if command in ("start", "restart"):
        subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-t", "60"], check=True, timeout=90)


def steps(n: int):
    return template(*[script_step(10 * i, "sleep 0.3; echo step", id=f"s{i}", requires=[f"s{i - 1}"] if i > 1 else [])
                      for i in range(1, n + 1)])


class AfterFirstStep:
    """Runs ``action`` in a thread once step s1 has finished; keeps its error."""

    def __init__(self, action):
        self.action = action
        self.thread = None
        self.errors = []

    def _run(self):
        try:
            self.action()
        except Exception as exc:  # reported by the test, not lost in a thread
            self.errors.append(exc)

    def __call__(self, event):
        if isinstance(event, StepFinished) and event.step_id == "s1":
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()

    def done(self):
        self.thread.join(120)
        return self.errors


def test_a_postgres_restart_mid_run_loses_nothing(workspace, pg_url):
    restart = AfterFirstStep(lambda: pg_ctl("restart"))
    result = run_template(steps(6), workspace, database_url=pg_url, on_event=restart)
    assert restart.done() == []
    assert result.success and result.error is None
    run = show_run(pg_url, result.run_id)
    assert run["status"] == "succeeded"
    assert [(a["step_id"], a["status"]) for a in run["attempts"]] == [(f"s{i}", "completed") for i in range(1, 7)]


def test_a_long_outage_is_journalled_and_recovered(workspace, pg_url, tmp_path, monkeypatch):
    monkeypatch.setattr(dagrun.store.recorder, "RETRY_LIMIT_SECONDS", 1.0)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    stop = AfterFirstStep(lambda: pg_ctl("stop"))
    try:
        result = run_template(steps(4), workspace, database_url=pg_url, on_event=stop)
        assert stop.done() == []
    finally:
        pg_ctl("start")
    assert result.success  # the work itself did not need the database
    assert "records kept in" in result.error and "dagrun db recover" in result.error
    journal = tmp_path / "xdg" / "dagrun" / "journal" / f"{result.run_id}.jsonl"
    assert journal.exists()
    # What the store shows of the run is not all it did: a resume now would run steps again.
    with pytest.raises(InputError, match="replay them first"):
        resume(result.run_id, database_url=pg_url)
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg")}
    out = subprocess.run([sys.executable, "-m", "dagrun", "db", "recover"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "batch(es) replayed" in out.stdout and not journal.exists()
    run = show_run(pg_url, result.run_id)
    assert run["status"] == "succeeded"
    assert [(a["step_id"], a["status"]) for a in run["attempts"]] == [(f"s{i}", "completed") for i in range(1, 5)]


def stop_postgres(ctx):
    pg_ctl("stop")


def start_postgres(ctx):
    pg_ctl("start")


def test_once_records_are_journalled_the_rest_follow_them_in_order(workspace, pg_url, tmp_path, monkeypatch):
    """The store comes back while the run goes on: the run's later records
    still go to the journal, after the earlier ones (an update written to
    the store before its journalled insert would match no row, and be lost
    when the journal is replayed)."""
    monkeypatch.setattr(dagrun.store.recorder, "RETRY_LIMIT_SECONDS", 0.5)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    doc = template(script_step(10, "echo one", id="s1"),
                   step(20, "stop_pg", id="s2", requires=["s1"]), step(30, "start_pg", id="s3", requires=["s2"]),
                   script_step(40, "echo four", id="s4", requires=["s3"]))
    acts = [action("stop_pg", "tests.test_store_outage:stop_postgres", timeout_seconds=120),
            action("start_pg", "tests.test_store_outage:start_postgres", timeout_seconds=120)]
    try:
        result = run_template(doc, workspace, database_url=pg_url, actions=acts, sandbox=False)
    finally:
        if subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"]).returncode != 0:
            pg_ctl("start")
    assert result.success and "records kept in" in result.error
    journal = tmp_path / "xdg" / "dagrun" / "journal" / f"{result.run_id}.jsonl"
    batches = [json.loads(line)["ops"] for line in journal.read_text().splitlines()]
    journalled = {op.get("row", {}).get("step_id") or (op.get("key") or [None, None])[1]
                  for batch in batches for op in batch}
    assert {"s3", "s4"} <= journalled  # written after the store was back, still behind the earlier records
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg")}
    out = subprocess.run([sys.executable, "-m", "dagrun", "db", "recover"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    run = show_run(pg_url, result.run_id)
    assert run["status"] == "succeeded"
    assert [(a["step_id"], a["status"]) for a in run["attempts"]] == [(f"s{i}", "completed") for i in range(1, 5)]


def test_a_nul_character_in_a_steps_output_is_recorded_and_the_run_goes_on(workspace, pg_url):
    """PostgreSQL refuses NUL in text; the driver's error killed the writer
    and the dependent step waited for its record forever."""
    outcome = []
    doc = template(script_step(10, "printf 'before\\0after\\n'; printf 'k=a\\0b\\n' >> \"$DAGRUN_OUTPUT\"", id="a"),
                   script_step(20, "echo b", id="b", requires=["a"]))
    worker = threading.Thread(target=lambda: outcome.append(run_template(doc, workspace, database_url=pg_url)),
                              daemon=True)
    worker.start()
    worker.join(60)
    assert outcome, "the run never ended"
    assert outcome[0].success and outcome[0].error is None
    run = show_run(pg_url, outcome[0].run_id, output=True)
    assert run["attempts"][0]["output"] == "before\ufffdafter\n"
    assert run["attempts"][0]["result"] == {"k": "a\ufffdb"}  # JSON refuses \u0000 too


def test_a_live_run_on_this_host_is_alive_however_old_its_heartbeat():
    """The store may have been away for longer than the heartbeat's
    staleness: the very process that owns the run is alive; a later process
    given the same pid is not."""
    old = time.time() - 3600
    from datetime import datetime, timezone
    beat = datetime.fromtimestamp(old, timezone.utc)
    assert is_alive(ProvisioningRun(status="running", owner=owner_id(), heartbeat_at=beat))
    host, _, process = owner_id().rpartition(":")
    pid, _, started = process.partition("@")
    assert started
    reused = f"{host}:{pid}@{int(started) - 1}"  # the same pid, an earlier process
    assert not is_alive(ProvisioningRun(status="running", owner=reused, heartbeat_at=datetime.now(timezone.utc)))


def test_rollbacks_wait_for_their_mark_as_long_as_the_store_is_retried():
    """(helper-63) With the store away for 45 s, rollbacks began after 30 s
    without the run's 'rolling back' mark committed (the writer retries for
    120 s before it journals): a crash then left the undone steps recorded
    as completed, and a resume trusted them. The recorder reports the mark
    safe once committed or journalled; rollbacks wait at least that long."""
    from dagrun.run import runner
    assert runner.ROLLBACK_RECORD_SECONDS > dagrun.store.recorder.RETRY_LIMIT_SECONDS + 30
