"""Streams a run's events to the database from a writer thread.

The runner calls the recorder like any observer; the call only puts the
event on a queue, so the scheduler never waits on a database round-trip. The
writer thread owns its own session: it takes whatever events have queued up,
applies them as one batch and commits once. An attempt row is inserted
``running`` when the attempt starts and updated when it ends.

Every operation finds its row by natural key (run, step, attempt), so a
batch that failed (database unreachable) can be applied again: the writer
retries with backoff and loses nothing. :meth:`Recorder.close` returns once
every queued event is committed.
"""

from __future__ import annotations

import queue
import threading
import time
from datetime import datetime, timezone
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from .events import (AttemptFinished, RetryScheduled, RunFinished, RunStarted, StepFinished, StepRolledBack,
                     StepSkipped, StepStarted)
from .models import ProvisioningRun, TemplateAction, WorkspaceActionExecution
from .outcome import StepStatus
from .spec import MASK
from .store import describe_url, engine_for
from .util import bounded

log = structlog.get_logger("dagrun.store")

HEARTBEAT_SECONDS = 5.0
MAX_BATCH = 500
_STOP = object()


def _ts(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc)


def _output(stdout: str, stderr: str) -> str:
    text = stdout
    if stderr:
        text += ("\n" if text and not text.endswith("\n") else "") + "--- stderr ---\n" + stderr
    return bounded(text)


def _jsonable(value: Any) -> Any:
    import json
    return json.loads(json.dumps(value, default=str))


class Recorder:
    """An observer writing events to ``url`` from its own thread."""

    def __init__(self, url: str, *, retry_limit_seconds: float = 120.0):
        self.url = url
        self.engine = engine_for(url)
        self.retry_limit_seconds = retry_limit_seconds
        self.error: str | None = None
        self._queue: queue.Queue = queue.Queue()
        self._action_ids: dict[str, int] = {}
        self._rows: dict[tuple[str, str, int], int] = {}
        self._run: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._work, name="dagrun-recorder", daemon=True)
        self._thread.start()

    def __call__(self, event: Any) -> None:
        self._queue.put(event)

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join()

    # -- writer thread --------------------------------------------------------

    def _work(self) -> None:
        last_beat = time.monotonic()
        stopping = False
        while not stopping:
            try:
                first = self._queue.get(timeout=HEARTBEAT_SECONDS)
                batch = [first]
            except queue.Empty:
                batch = []
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if batch and batch[-1] is _STOP or _STOP in batch:
                stopping = True
                batch = [e for e in batch if e is not _STOP]
            beat = time.monotonic() - last_beat >= HEARTBEAT_SECONDS
            if batch or (beat and self._run):
                self._commit(batch)
                last_beat = time.monotonic()

    def _commit(self, batch: list[Any]) -> None:
        delay, waited = 0.2, 0.0
        while True:
            try:
                with Session(self.engine) as session, session.begin():
                    for event in batch:
                        self._apply(session, event)
                    if self._run.get("id") and self._run.get("running"):
                        run = session.get(ProvisioningRun, self._run["id"])
                        if run is not None:
                            run.heartbeat_at = datetime.now(timezone.utc)
                return
            except SQLAlchemyError as exc:
                self._rows.clear()  # ids from a rolled-back transaction are void
                self._action_ids.clear()
                if not isinstance(exc, (OperationalError, InterfaceError)):  # a bug, not an outage
                    self.error = f"could not record {len(batch)} event(s): {str(exc).splitlines()[0]}"
                    log.error("store rejected records", error=self.error)
                    return
                if waited >= self.retry_limit_seconds:
                    self.error = (f"could not write to {describe_url(self.url)} for {waited:.0f} s: "
                                  f"{str(exc).splitlines()[0]}")
                    log.error("store unreachable; records lost", error=self.error, events=len(batch))
                    return
                log.warning("store write failed; retrying", error=str(exc).splitlines()[0], delay=delay)
                time.sleep(delay)
                waited += delay
                delay = min(delay * 2, 5.0)

    def _row(self, session: Session, run_id: str, step_id: str, attempt: int) -> WorkspaceActionExecution | None:
        key = (run_id, step_id, attempt)
        if key in self._rows:
            return session.get(WorkspaceActionExecution, self._rows[key])
        row = session.scalar(select(WorkspaceActionExecution).where(
            WorkspaceActionExecution.run_id == run_id, WorkspaceActionExecution.step_id == step_id,
            WorkspaceActionExecution.attempt_number == attempt))
        if row is not None:
            self._rows[key] = row.id
        return row

    def _new_row(self, session: Session, run_id: str, step_id: str, attempt: int, **fields: Any) -> WorkspaceActionExecution:
        row = self._row(session, run_id, step_id, attempt)
        if row is None:
            step = self._run["plan"].steps[step_id]
            row = WorkspaceActionExecution(
                run_id=run_id, workspace_id=self._run["workspace_id"], step_id=step_id,
                action_name=step.action.name, action_id=self._action_id(session, step.action),
                attempt_number=attempt, max_retries=step.retry.max_attempts,
                action_config=_jsonable({k: (MASK if k in step.secret_fields and v not in (None, "") else v)
                                         for k, v in step.config.items()}), **fields)
            session.add(row)
            session.flush()
            self._rows[(run_id, step_id, attempt)] = row.id
        return row

    def _action_id(self, session: Session, action: Any) -> int:
        if action.name not in self._action_ids:
            row = session.scalar(select(TemplateAction).where(TemplateAction.name == action.name))
            if row is None:
                row = TemplateAction(
                    name=action.name, display_name=action.display_name, category=action.category,
                    description=action.description, action_type=action.action_type,
                    execution_handler=action.execution_handler, validation_handler=action.validation_handler,
                    rollback_handler=action.rollback_handler, config_schema=_jsonable(dict(action.config_schema)),
                    default_config=_jsonable(dict(action.default_config)), max_retries=action.max_retries,
                    timeout_seconds=action.timeout_seconds, retry_delay_seconds=action.retry_delay_seconds,
                    exponential_backoff=action.exponential_backoff,
                    requires_actions=list(action.requires_actions),
                    conflicts_with_actions=list(action.conflicts_with_actions),
                    condition_expression=action.condition_expression,
                    estimated_duration_seconds=action.estimated_duration_seconds,
                    requires_sudo=action.requires_sudo, requires_network=action.requires_network,
                    disk_space_required_mb=action.disk_space_required_mb, is_active=action.is_active,
                    is_system=action.is_system)
                session.add(row)
                session.flush()
            self._action_ids[action.name] = row.id
        return self._action_ids[action.name]

    def _apply(self, session: Session, event: Any) -> None:
        if isinstance(event, RunStarted):
            self._run = {"id": event.run_id, "plan": event.plan, "workspace_id": event.workspace_id, "running": True}
            run = session.get(ProvisioningRun, event.run_id)
            if run is None:
                run = ProvisioningRun(id=event.run_id, workspace_id=event.workspace_id,
                                      template_name=event.template, template_version=event.version,
                                      template_snapshot=_jsonable(dict(event.plan.snapshot)),
                                      total_steps=event.total_steps)
                session.add(run)
            run.status = "running"
            run.started_at = run.started_at or _ts(event.time)
            run.heartbeat_at = _ts(event.time)
        elif isinstance(event, StepStarted):
            row = self._new_row(session, event.run_id, event.step_id, event.attempt, status="running",
                                started_at=_ts(event.time))
            row.status, row.started_at = "running", _ts(event.time)
        elif isinstance(event, AttemptFinished):
            o = event.outcome
            row = self._new_row(session, event.run_id, o.step_id, o.attempt, status=o.status.value)
            row.status = o.status.value
            row.started_at = row.started_at or _ts(o.started_at)
            row.completed_at = _ts(o.started_at + o.duration)
            row.duration_seconds = round(o.duration, 6)
            row.execution_output = _output(o.stdout, o.stderr)
            row.error_message = o.error or o.skip_reason
            row.exit_code = o.exit_code
            row.result_data = _jsonable(o.data)
            if o.config is not None:
                row.action_config = _jsonable(o.config)
        elif isinstance(event, RetryScheduled):
            row = self._row(session, event.run_id, event.step_id, event.attempt)
            if row is not None:
                row.next_retry_at = _ts(event.next_retry_at)
        elif isinstance(event, StepSkipped):
            row = self._row(session, event.run_id, event.step_id, 1)
            if row is None:  # skipped without an attempt (upstream failed)
                self._new_row(session, event.run_id, event.step_id, 0, status=StepStatus.skipped.value,
                              error_message=event.reason, completed_at=_ts(event.time))
        elif isinstance(event, StepFinished):
            if event.status is StepStatus.cancelled and event.attempts:
                row = self._row(session, event.run_id, event.step_id, event.attempts)
                if row is not None and row.status != "cancelled":
                    row.status, row.next_retry_at = "cancelled", None
                    row.error_message = event.error
        elif isinstance(event, StepRolledBack):
            rows = session.scalars(select(WorkspaceActionExecution).where(
                WorkspaceActionExecution.run_id == event.run_id, WorkspaceActionExecution.step_id == event.step_id,
                WorkspaceActionExecution.status == "completed")).all()
            for row in rows:
                if event.ok:
                    row.status = StepStatus.rolled_back.value
                else:
                    row.error_message = f"rollback failed: {event.error}"
        elif isinstance(event, RunFinished):
            result = event.result
            run = session.get(ProvisioningRun, event.run_id)
            if run is not None:
                run.status = result.status.value
                run.completed_at = _ts(event.time)
                run.completed_steps = result.completed_actions
                run.failed_steps = result.failed_actions
                run.skipped_steps = result.skipped_actions
                run.error = result.error
                run.heartbeat_at = _ts(event.time)
            self._run["running"] = False
