"""The store going away mid-run, on the machine's real PostgreSQL: a
restart is ridden out by the writer's retries; a longer outage ends in the
journal, which `dagrun db recover` replays. Nothing is lost."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

import dagrun.store.recorder
from dagrun import run_template
from dagrun.run.events import StepFinished
from dagrun.store.history import show_run
from tests.helpers import script_step, template

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
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg")}
    out = subprocess.run([sys.executable, "-m", "dagrun", "db", "recover"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "batch(es) replayed" in out.stdout and not journal.exists()
    run = show_run(pg_url, result.run_id)
    assert run["status"] == "succeeded"
    assert [(a["step_id"], a["status"]) for a in run["attempts"]] == [(f"s{i}", "completed") for i in range(1, 5)]
