"""A run's life in the store: claiming a workspace, detecting dead runs,
and what resume needs to continue one.

Claiming happens once, synchronously, before anything runs, in one
transaction that holds a per-workspace lock (an advisory lock on
PostgreSQL, a lock file beside the database on SQLite), so two processes can
never both start a run for the same workspace:

- a ``running`` run of that workspace whose owner is alive is a conflict;
- one whose owner is dead is *interrupted*: its ``running`` attempts are
  closed as failed ("interrupted") and the run as failed, so it can be
  resumed. An owner on this host is alive exactly when its process is (the
  same process: its pid and start time), however old its heartbeat (the
  store may have been away); an owner on another host is dead when its
  heartbeat is older than ``STALE_SECONDS``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import PurePosixPath
from typing import Any, Iterable, Iterator, Mapping

from sqlalchemy import Engine, func, or_, select
from sqlalchemy.orm import Session

from ..errors import RunConflictError
from ..run import processes
from ..run.runner import Done
from .models import ProvisioningRun, WorkspaceActionExecution
from .operations import CONDITION, ROLLBACK_FAILED, ROLLING_BACK, ROLLING_BACK_MARK
from ..run.outcome import StepStatus

STALE_SECONDS = float(os.environ.get("DAGRUN_HEARTBEAT_STALE_SECONDS", 30))
INTERRUPTED = "interrupted: the process running it stopped (no heartbeat)"


def owner_id() -> str:
    """``host:pid@start``: the start time tells the process from a later one given the same pid."""
    started = processes.start_time(os.getpid())
    return f"{socket.gethostname()}:{os.getpid()}" + ("" if started is None else f"@{int(started)}")


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:  # SQLite returns naive datetimes
        value = value.replace(tzinfo=timezone.utc)
    return value


def is_alive(run: ProvisioningRun, now: datetime | None = None) -> bool:
    """Is the process that owns this running run still there?"""
    if run.status != "running":
        return False
    host, _, process = (run.owner or "").rpartition(":")
    pid, _, started = process.partition("@")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        if started:  # the very process (not a later one given its pid) is alive, whatever its heartbeat says
            now_started = processes.start_time(int(pid))
            # (a killed owner its parent has not reaped yet is dead: helper-63)
            return now_started is not None and str(int(now_started)) == started and not processes.has_exited(int(pid))
    heartbeat = _utc(run.heartbeat_at)
    now = now or datetime.now(timezone.utc)
    return heartbeat is not None and now - heartbeat < timedelta(seconds=STALE_SECONDS)


@contextlib.contextmanager
def workspace_transaction(engine: Engine, workspace_id: str) -> Iterator[Session]:
    """A session in a transaction that no other claim or cancel of the
    workspace's runs interleaves with, up to and including its commit: what
    it read stays true until what it wrote is there for the next one."""
    with _store_file_lock(engine), Session(engine) as session, session.begin():
        if engine.dialect.name == "postgresql":  # (held until the transaction ends)
            session.execute(select(func.pg_advisory_xact_lock(zlib.crc32(f"dagrun:{workspace_id}".encode()))))
        yield session


@contextlib.contextmanager
def _store_file_lock(engine: Engine) -> Iterator[None]:
    """SQLite: one claim or cancel at a time across processes, held past the
    commit (SQLite has no lock a transaction could take on a row)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    fd = os.open(f"{database}.lock", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as fh:  # one writer at a time across processes
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


ROWS_BEFORE_RESUME = re.compile(r" \[rows to ([0-9]+)\]")


def interrupt(session: Session, run: ProvisioningRun) -> None:
    """Close a dead run so it can be resumed. What its attempts left running
    on this host is ended first, so a resume never races the old attempt of
    the same step."""
    now = datetime.now(timezone.utc)
    host = (run.owner or "").rpartition(":")[0]
    running = session.scalars(select(WorkspaceActionExecution).where(
        WorkspaceActionExecution.run_id == run.id, WorkspaceActionExecution.status == "running")).all()
    if host == socket.gethostname():
        processes.kill_run(run.id)  # its cgroups, and processes carrying its tag
        for attempt in running:  # and recorded process groups whose leader is still the one recorded
            if attempt.process_group:
                processes.kill_group(attempt.process_group, attempt.process_started)
    run.status = "failed"
    # (a run that died rolling back keeps saying so: a resume must not trust its completed steps)
    run.error = f"{INTERRUPTED} ({run.error})" if (run.error or "").startswith(ROLLING_BACK) else INTERRUPTED
    run.completed_at = now
    for attempt in running:
        attempt.status = StepStatus.failed.value
        attempt.error_message = "interrupted"
        attempt.completed_at = now


def claim_token(run: ProvisioningRun) -> tuple[Any, ...]:
    """What changes whenever a run is claimed, beats or ends."""
    return run.status, run.heartbeat_at, run.completed_at


def claim(engine: Engine, *, run_id: str, workspace_id: str, fields: Mapping[str, Any],
          expect: tuple[Any, ...] | None = None) -> None:
    """Record the run as running for this process, or raise RunConflictError
    (another active run of the workspace; with ``expect``, a resume's
    :func:`claim_token`, the run changed since the resume read it) or
    InputError (its home is another workspace's)."""
    with workspace_transaction(engine, workspace_id) as session:
        if expect is not None:
            seen = session.get(ProvisioningRun, run_id)
            if seen is None or claim_token(seen) != expect:
                raise RunConflictError(f"run {run_id} was resumed by someone else meanwhile (it is "
                                       f"{seen.status if seen else 'gone'} now): look at it again before "
                                       "resuming it", run_id=run_id)
            newer = _newer(session, seen)  # (one may have started and ended since the resume was prepared)
            if newer is not None:
                raise superseded(seen, newer)
        home = fields.get("home_dir")
        if home:
            _check_home_is_its_own(engine, session, workspace_id, str(home))
        active = session.scalars(select(ProvisioningRun).where(
            ProvisioningRun.workspace_id == workspace_id, ProvisioningRun.status == "running")).all()
        for run in active:
            if is_alive(run):
                raise RunConflictError(f"workspace {workspace_id} already has an active run {run.id} "
                                       f"(owner {run.owner}, heartbeat {run.heartbeat_at})", run_id=run.id)
            interrupt(session, run)
        run = session.get(ProvisioningRun, run_id)
        if run is None:
            run = ProvisioningRun(id=run_id, workspace_id=workspace_id, total_steps=0)
            session.add(run)
        now = datetime.now(timezone.utc)
        for key, value in fields.items():
            setattr(run, key, value)
        run.status = "running"
        # (a run that died rolling back keeps saying so until a resume has run its steps again; the
        # first resume after the mark notes the last attempt row made before it: every later row is a
        # resume's, which no rollback of the dead run could have undone (helper-63))
        marked = ROLLING_BACK_MARK.search(run.error or "")
        if marked:
            rows = ROWS_BEFORE_RESUME.search(run.error or "", marked.end())
            last = int(rows.group(1)) if rows else session.scalar(
                select(func.max(WorkspaceActionExecution.id)).where(WorkspaceActionExecution.run_id == run_id)) or 0
            run.error = f"{marked.group()} [rows to {last}]"
        else:
            run.error = None
        run.cancel_requested = None
        run.completed_at = None
        run.owner = owner_id()
        from ..locations import journal_dir
        # (where a resume must look first: the folder itself, whatever the resuming process's cwd or links)
        run.journal = f"{socket.gethostname()}:{os.path.realpath(journal_dir())}"
        run.heartbeat_at = now
        run.started_at = run.started_at or now


def _check_home_is_its_own(engine: Engine, session: Session, workspace_id: str, home: str) -> None:
    """A home belongs to the workspace whose runs used it first: no other
    workspace's run worked in it, above it or below it (a home inside
    another's, or around it, reaches its files too)."""
    from sqlalchemy import or_
    home = home.rstrip("/") or "/"
    above = [str(p) for p in PurePosixPath(home).parents]  # "/a/b/c": "/a/b", "/a", "/"
    if engine.dialect.name == "postgresql":  # two workspaces claiming related homes: one at a time
        for path in sorted([home, *above]):
            session.execute(select(func.pg_advisory_xact_lock(zlib.crc32(f"dagrun-home:{path}".encode()))))
    other = session.execute(select(ProvisioningRun.workspace_id, ProvisioningRun.home_dir).where(
        ProvisioningRun.workspace_id != workspace_id,
        or_(ProvisioningRun.home_dir.in_([home, *above]),
            ProvisioningRun.home_dir.startswith(home.rstrip("/") + "/", autoescape=True))).limit(1)).first()
    if other is not None:
        from ..errors import InputError
        # Whose it is, and where that one works, are another tenant's to know: not said.
        where = "is another workspace's" if other.home_dir == home else "is inside or around another workspace's home"
        raise InputError(f"the workspace home {home} {where}: a home, and what is above and below it, belongs "
                         "to one workspace; give this one a home of its own")


def request_cancel(url: str, run_id: str, reason: str) -> str:
    """Mark a running run to be cancelled by the process that runs it."""
    from ..errors import InputError
    from .engine import store_errors, writable
    from .history import find_run
    engine = writable(url)
    with store_errors(url, "cannot write to"):
        with Session(engine) as session:
            found = find_run(session, run_id)
            run_id, workspace_id = found.id, found.workspace_id
        # Decided and written under the lock a claim takes: a resume claiming the run meanwhile is
        # seen (its owner alive), never overwritten as interrupted (helper-63).
        with workspace_transaction(engine, workspace_id) as session:
            run = session.get(ProvisioningRun, run_id)
            if run.status != "running":
                raise InputError(f"run {run.id} is not running (it {run.status})")
            if not is_alive(run):  # nobody is left to hear it: closed now as interrupted, so it can be resumed
                interrupt(session, run)
                return run.id
            run.cancel_requested = reason[:200]
            return run.id


def done_steps(rows: Mapping[str, list[WorkspaceActionExecution]], step_ids: Iterable[str],
               again: Iterable[str] = ()) -> tuple[dict[str, Done], dict[str, int]]:
    """What a resume does not run again, and the attempt numbers to go on from.

    A step stands when its last record says ``completed``, or ``skipped`` by
    its condition. Failed, cancelled, interrupted, rolled back, never started
    and skipped-because-upstream-failed steps run again, as do ``again``
    (``--from STEP`` and its downstream)."""
    again = set(again)
    done: dict[str, Done] = {}
    numbers: dict[str, int] = {}
    for sid in step_ids:
        attempts = rows.get(sid, [])
        numbers[sid] = max((r.attempt_number for r in attempts), default=0)
        last = attempts[-1] if attempts else None
        if last is None or sid in again:
            continue
        condition_skip = last.status == StepStatus.skipped.value and (
            last.skip_reason == CONDITION or (last.skip_reason is None and last.attempt_number > 0))  # older rows
        if last.status == StepStatus.completed.value and (last.error_message or "").startswith(ROLLBACK_FAILED):
            continue  # a rollback began to undo it and failed: what it left is unknown, so it runs again
        if last.status == StepStatus.completed.value or condition_skip:
            made = sum(1 for r in attempts if r.attempt_number > 0 and not (  # a condition skip is no attempt
                r.status == StepStatus.skipped.value and r.skip_reason == CONDITION))
            done[sid] = Done(status=StepStatus(last.status), attempts=made,
                             duration=sum(r.duration_seconds or 0.0 for r in attempts),
                             result=dict(last.result_data or {}),
                             skip_reason=last.error_message if condition_skip else None, exit_code=last.exit_code,
                             changed=last.changed)
    return done, numbers


def newer_run(engine: Engine, run: ProvisioningRun) -> ProvisioningRun | None:
    """The latest run of ``run``'s workspace started after it (a check, which
    changes nothing, aside), or None."""
    with Session(engine, expire_on_commit=False) as session:
        newer = _newer(session, run)
        session.expunge_all()
        return newer


def superseded(run: ProvisioningRun, newer: ProvisioningRun) -> Exception:
    """The refusal to resume ``run``, which ``newer`` came after."""
    from ..errors import SupersededRun
    return SupersededRun(f"run {run.id} is not workspace {run.workspace_id}'s latest: run {newer.id[:8]} "
                         f"({newer.status}) came after it, and resuming this one would run its steps over that "
                         "one's work: run the template again instead")


def _newer(session: Session, run: ProvisioningRun) -> ProvisioningRun | None:
    if run.started_at is None:
        return None
    return session.scalars(select(ProvisioningRun).where(
        ProvisioningRun.workspace_id == run.workspace_id, ProvisioningRun.started_at > run.started_at,
        ProvisioningRun.id != run.id, or_(ProvisioningRun.mode.is_(None), ProvisioningRun.mode != "check"))
        .order_by(ProvisioningRun.started_at.desc()).limit(1)).first()


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
