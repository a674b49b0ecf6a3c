"""A run's life in the store: claiming a workspace, detecting dead runs,
and what resume needs to continue one.

Claiming happens once, synchronously, before anything runs, in one
transaction that holds a per-workspace lock (an advisory lock on
PostgreSQL, a lock file beside the database on SQLite), so two processes can
never both start a run for the same workspace:

- a ``running`` run of that workspace whose owner is alive is a conflict;
- one whose owner is dead is *interrupted*: its ``running`` attempts are
  closed as failed ("interrupted") and the run as failed, so it can be
  resumed. An owner is dead when its heartbeat is older than
  ``STALE_SECONDS``, or at once when it ran on this host and its process is
  gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import zlib
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator, Mapping

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from ..errors import RunConflictError
from .models import ProvisioningRun, WorkspaceActionExecution
from ..run.outcome import StepStatus

STALE_SECONDS = float(os.environ.get("DAGRUN_HEARTBEAT_STALE_SECONDS", 30))
INTERRUPTED = "interrupted: the process running it stopped (no heartbeat)"


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:  # SQLite returns naive datetimes
        value = value.replace(tzinfo=timezone.utc)
    return value


def is_alive(run: ProvisioningRun, now: datetime | None = None) -> bool:
    """Is the process that owns this running run still there?"""
    if run.status != "running":
        return False
    host, _, pid = (run.owner or "").rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
    heartbeat = _utc(run.heartbeat_at)
    now = now or datetime.now(timezone.utc)
    return heartbeat is not None and now - heartbeat < timedelta(seconds=STALE_SECONDS)


@contextlib.contextmanager
def workspace_lock(engine: Engine, session: Session, workspace_id: str) -> Iterator[None]:
    if engine.dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(zlib.crc32(f"dagrun:{workspace_id}".encode()))))
        yield
        return
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    with open(f"{database}.lock", "a") as fh:  # one writer at a time across processes
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def interrupt(session: Session, run: ProvisioningRun) -> None:
    """Close a dead run so it can be resumed."""
    now = datetime.now(timezone.utc)
    run.status = "failed"
    run.error = INTERRUPTED
    run.completed_at = now
    for attempt in session.scalars(select(WorkspaceActionExecution).where(
            WorkspaceActionExecution.run_id == run.id, WorkspaceActionExecution.status == "running")):
        attempt.status = StepStatus.failed.value
        attempt.error_message = "interrupted"
        attempt.completed_at = now


def claim(engine: Engine, *, run_id: str, workspace_id: str, fields: Mapping[str, Any]) -> None:
    """Record the run as running for this process, or raise RunConflictError."""
    with Session(engine) as session, session.begin(), workspace_lock(engine, session, workspace_id):
        active = session.scalars(select(ProvisioningRun).where(
            ProvisioningRun.workspace_id == workspace_id, ProvisioningRun.status == "running")).all()
        for run in active:
            if is_alive(run):
                raise RunConflictError(f"workspace {workspace_id} already has an active run {run.id} "
                                       f"(owner {run.owner}, heartbeat {run.heartbeat_at})")
            interrupt(session, run)
        run = session.get(ProvisioningRun, run_id)
        if run is None:
            run = ProvisioningRun(id=run_id, workspace_id=workspace_id, total_steps=0)
            session.add(run)
        now = datetime.now(timezone.utc)
        for key, value in fields.items():
            setattr(run, key, value)
        run.status = "running"
        run.error = None
        run.completed_at = None
        run.owner = owner_id()
        run.heartbeat_at = now
        run.started_at = run.started_at or now


def load_for_resume(engine: Engine, run_id: str) -> tuple[ProvisioningRun, dict[str, list[WorkspaceActionExecution]]]:
    """The run row and its attempts by step (in attempt order), detached."""
    with Session(engine, expire_on_commit=False) as session:
        from .history import find_run
        run = find_run(session, run_id)
        by_step: dict[str, list[WorkspaceActionExecution]] = {}
        for attempt in session.scalars(select(WorkspaceActionExecution).where(
                WorkspaceActionExecution.run_id == run.id).order_by(WorkspaceActionExecution.attempt_number)):
            by_step.setdefault(attempt.step_id, []).append(attempt)
        session.expunge_all()
        return run, by_step
