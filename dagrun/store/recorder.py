"""Streams a run's events to the database from a writer thread.

The runner calls the recorder like any observer; the call only puts the
event on a queue, so the scheduler never waits on a database round-trip.
The writer thread turns the events that have queued up (for at most
``BATCH_WINDOW`` seconds) into row operations keyed by (run, step, attempt)
and applies them in one transaction: one multi-row INSERT for the attempts
that started, one UPDATE per kind of change, one run update with the
heartbeat. An attempt row appears ``running`` when the attempt starts and is
updated when it ends.

A batch that fails because the database is unreachable is retried with
backoff for up to ``retry_limit_seconds``; after that its operations go to a
local journal (JSON lines) that ``dagrun db recover`` replays, and the run
says so in its result: nothing is lost silently. :meth:`Recorder.close`
returns once every queued event is committed (or journalled).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from sqlalchemy import Engine, and_, bindparam, insert, select, update
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from ..run.events import (AttemptFinished, ProcessStarted, RetryScheduled, RunFinished, RunStarted, StepFinished,
                          StepRolledBack,
                     StepSkipped, StepStarted)
from .models import ProvisioningRun, TemplateAction, WorkspaceActionExecution
from ..run.outcome import StepStatus
from ..run.scheduler import UPSTREAM_FAILED
from ..spec import MASK
from . import journal
from .engine import describe_url, writable
from ..util import bounded

log = logging.getLogger("dagrun.store")

HEARTBEAT_SECONDS = 5.0
RETRY_LIMIT_SECONDS = float(os.environ.get("DAGRUN_STORE_RETRY_SECONDS", 120))
MAX_BATCH = 2000
_STOP = object()
CONDITION = "condition"  # skip_reason of a step whose condition was false (it stands on resume)
ATTEMPTS = WorkspaceActionExecution.__table__
RUNS = ProvisioningRun.__table__


def _ts(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc)


def _output(stdout: str, stderr: str) -> str:
    text = stdout
    if stderr:
        text += ("\n" if text and not text.endswith("\n") else "") + "--- stderr ---\n" + stderr
    return bounded(text)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# -- row operations -------------------------------------------------------------
# An operation is a plain dict, so a batch that cannot be written can be
# journalled as JSON and replayed later by apply_operations().

def apply_operations(engine: Engine, ops: list[dict[str, Any]], action_ids: dict[str, int],
                     specs: Mapping[str, Any] | None = None) -> None:
    """Apply operations in one transaction, coalescing what can be.
    ``specs``: action definitions by name, for actions not yet in
    ``template_actions``."""
    inserts: dict[tuple, dict[str, Any]] = {}
    updates: list[tuple[str, tuple, dict[str, Any]]] = []
    run_values: dict[str, dict[str, Any]] = {}
    for op in ops:
        if op["op"] == "run":
            run_values.setdefault(op["run_id"], {}).update(op["values"])
        elif op["op"] == "insert":
            key = (op["row"]["run_id"], op["row"]["step_id"], op["row"]["attempt_number"])
            inserts.setdefault(key, {}).update(op["row"])
        else:
            key = tuple(op["key"])
            if key in inserts and op["op"] == "update":
                inserts[key].update(op["values"])  # started and changed in the same batch: one INSERT
            else:
                updates.append((op["op"], key, op["values"]))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # wakes `dagrun watch` (delivered at commit)
            for run_id in {op["run_id"] if op["op"] == "run" else (op["row"]["run_id"] if op["op"] == "insert"
                                                                    else op["key"][0]) for op in ops}:
                conn.exec_driver_sql("SELECT pg_notify('dagrun_runs', %(id)s)", {"id": run_id})
        for run_id, values in run_values.items():
            conn.execute(update(RUNS).where(RUNS.c.id == run_id).values(**values))
        if inserts:
            names = {row["action_name"] for row in inserts.values()} - set(action_ids)
            if names:
                _ensure_actions(conn, names, action_ids, specs or {})
            rows = [{**row, "action_id": action_ids.get(row["action_name"])} for row in inserts.values()]
            for run_id, step_id, _ in (k for k in inserts if k[2] == 0):  # "upstream failed" rows are replaced
                conn.execute(ATTEMPTS.delete().where(ATTEMPTS.c.run_id == run_id, ATTEMPTS.c.step_id == step_id,
                                                     ATTEMPTS.c.attempt_number == 0))
            columns = set().union(*rows)
            conn.execute(insert(ATTEMPTS), [{c: row.get(c) for c in columns} for row in rows])
        # consecutive updates with the same columns go out as one executemany
        group: list[dict[str, Any]] = []
        shape: tuple | None = None
        for kind, key, values in updates + [("end", (), {})]:
            this = (kind, tuple(sorted(values)))
            if group and this != shape:
                _flush_updates(conn, shape, group)
                group = []
            shape = this
            if kind != "end":
                group.append({"k_run": key[0], "k_step": key[1], **({"k_attempt": key[2]} if len(key) > 2 else {}),
                              **{f"v_{c}": v for c, v in values.items()}})


def _flush_updates(conn: Any, shape: tuple, params: list[dict[str, Any]]) -> None:
    kind, columns = shape
    where = [ATTEMPTS.c.run_id == bindparam("k_run"), ATTEMPTS.c.step_id == bindparam("k_step")]
    if kind == "update":
        where.append(ATTEMPTS.c.attempt_number == bindparam("k_attempt"))
    elif kind == "rollback":  # the step's completed attempt
        where.append(ATTEMPTS.c.status == StepStatus.completed.value)
    statement = update(ATTEMPTS).where(and_(*where)).values({c: bindparam(f"v_{c}") for c in columns})
    conn.execute(statement, params)


def _ensure_actions(conn: Any, names: Iterable[str], action_ids: dict[str, int], specs: Mapping[str, Any]) -> None:
    table = TemplateAction.__table__
    names = set(names)
    found = dict(conn.execute(select(table.c.name, table.c.id).where(table.c.name.in_(names))).all())
    for name in sorted(names - set(found)):
        action = specs.get(name)
        if action is None:  # replaying a journal: only the name is known
            row = {"name": name, "display_name": name, "category": "custom", "action_type": "python_function",
                   "execution_handler": "?"}
        else:
            row = {"name": action.name, "display_name": action.display_name, "category": action.category,
                   "description": action.description, "action_type": action.action_type,
                   "execution_handler": action.execution_handler, "validation_handler": action.validation_handler,
                   "rollback_handler": action.rollback_handler,
                   "config_schema": _jsonable(dict(action.config_schema)),
                   "default_config": _jsonable(dict(action.default_config)), "max_retries": action.max_retries,
                   "timeout_seconds": action.timeout_seconds, "retry_delay_seconds": action.retry_delay_seconds,
                   "exponential_backoff": action.exponential_backoff,
                   "requires_actions": list(action.requires_actions),
                   "conflicts_with_actions": list(action.conflicts_with_actions),
                   "condition_expression": action.condition_expression,
                   "estimated_duration_seconds": action.estimated_duration_seconds,
                   "requires_sudo": action.requires_sudo, "requires_network": action.requires_network,
                   "disk_space_required_mb": action.disk_space_required_mb, "is_active": action.is_active,
                   "is_system": action.is_system}
        defaults = {"max_retries": 3, "timeout_seconds": 300, "retry_delay_seconds": 5, "exponential_backoff": True,
                    "requires_sudo": False, "requires_network": False, "is_active": True, "is_system": False,
                    "created_at": datetime.now(timezone.utc), "updated_at": datetime.now(timezone.utc)}
        found[name] = conn.execute(insert(table).values(**{**defaults, **row}).returning(table.c.id)).scalar_one()
    action_ids.update(found)


class Recorder:
    """An observer writing events to ``url`` from its own thread.

    Write-ahead: a step's completion (and the result its dependents read) is
    committed before any dependent starts. The runner holds the dependents
    back; the writer commits whatever has queued up (completions that arrive
    together share one commit) and then calls ``on_durable`` with the steps
    whose completions are now safe, from its own thread. A batch the store
    cannot take goes to the journal (synced to disk) and counts as safe too.
    """

    def __init__(self, url: str, *, retry_limit_seconds: float | None = None,
                 on_durable: Callable[[list[str]], None] | None = None):
        self.url = url
        self.engine = writable(url)
        self.retry_limit_seconds = RETRY_LIMIT_SECONDS if retry_limit_seconds is None else retry_limit_seconds
        self.on_durable = on_durable
        self.error: str | None = None
        self.journal: Path | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._action_ids: dict[str, int] = {}
        self._run: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._work, name="dagrun-recorder", daemon=True)
        self._thread.start()

    def __call__(self, event: Any) -> None:
        self._queue.put(event)

    def close(self) -> None:
        """Returns once every queued event is committed (or journalled)."""
        self._queue.put(_STOP)
        self._thread.join()

    # -- writer thread --------------------------------------------------------

    def _work(self) -> None:
        last_beat = time.monotonic()
        stopping = False
        get, get_nowait = self._queue.get, self._queue.get_nowait
        while not stopping:
            try:
                batch = [get(timeout=HEARTBEAT_SECONDS)]
            except queue.Empty:
                batch = []
            # Group commit: whatever queued up while the last commit ran goes in this one.
            while batch and len(batch) < MAX_BATCH:
                try:
                    batch.append(get_nowait())
                except queue.Empty:
                    break
            if _STOP in batch:
                stopping = True
                batch = [e for e in batch if e is not _STOP]
            ops: list[dict[str, Any]] = []
            durable: list[str] = []
            for event in batch:
                ops += self._operations(event)
                if isinstance(event, StepFinished) and event.status is StepStatus.completed \
                        or isinstance(event, StepSkipped) and event.reason != UPSTREAM_FAILED:
                    durable.append(event.step_id)
            # Each round-trip gives the GIL away and may wait a switch interval to get
            # it back, so the heartbeat rides along only every HEARTBEAT_SECONDS.
            if self._run.get("running") and time.monotonic() - last_beat >= HEARTBEAT_SECONDS:
                ops.append({"op": "run", "run_id": self._run["id"],
                            "values": {"heartbeat_at": datetime.now(timezone.utc)}})
                last_beat = time.monotonic()
            if ops:
                self._commit(ops)
            if durable and self.on_durable is not None:
                self.on_durable(durable)

    def _commit(self, ops: list[dict[str, Any]]) -> None:
        delay, waited = 0.2, 0.0
        while True:
            try:
                apply_operations(self.engine, ops, self._action_ids, self._run.get("actions"))
                return
            except SQLAlchemyError as exc:
                self._action_ids.clear()  # ids from a rolled-back transaction may be void
                reason = str(exc).splitlines()[0]
                if not isinstance(exc, (OperationalError, InterfaceError)) or waited >= self.retry_limit_seconds:
                    self._to_journal(ops, reason, waited)
                    return
                log.warning("store write failed (%s); retrying in %.1f s", reason, delay)
                time.sleep(delay)
                waited += delay
                delay = min(delay * 2, 5.0)

    def _to_journal(self, ops: list[dict[str, Any]], reason: str, waited: float) -> None:
        self.journal = journal.append(self._run.get("id", "unknown"), self.url, ops)
        self.error = (f"could not write to {describe_url(self.url)} ({reason}"
                      + (f", for {waited:.0f} s" if waited else "") + f"); records kept in {self.journal}, "
                      "replay them with: dagrun db recover")
        log.error("store write failed; %d records journalled: %s", len(ops), self.error)

    # -- events -> operations -------------------------------------------------

    def _masked_config(self, step: Any) -> dict[str, Any]:
        cache = self._run["configs"]
        if step.id not in cache:  # the same for every attempt of the step
            cache[step.id] = _jsonable({k: (MASK if k in step.secret_fields and v not in (None, "") else v)
                                        for k, v in step.config.items()})
        return cache[step.id]

    def _new_row(self, run_id: str, step_id: str, attempt: int, **values: Any) -> dict[str, Any]:
        step = self._run["plan"].steps[step_id]
        now = datetime.now(timezone.utc)
        row = {"run_id": run_id, "workspace_id": self._run["workspace_id"], "step_id": step_id,
               "action_name": step.action.name, "attempt_number": attempt, "max_retries": step.retry.max_attempts,
               "action_config": self._masked_config(step), "created_at": now, "updated_at": now}
        row.update(values)
        return {"op": "insert", "row": row}

    def _operations(self, event: Any) -> list[dict[str, Any]]:
        now = datetime.now(timezone.utc)
        if isinstance(event, RunStarted):
            self._run = {"id": event.run_id, "plan": event.plan, "workspace_id": event.workspace_id, "running": True,
                         "started": set(), "started_steps": set(), "configs": {},
                         "actions": {s.action.name: s.action for s in event.plan.steps.values()}}
            return [{"op": "run", "run_id": event.run_id, "values": {"status": "running",
                                                                     "heartbeat_at": _ts(event.time)}}]
        if isinstance(event, StepStarted):
            self._run["started"].add((event.step_id, event.attempt))
            self._run["started_steps"].add(event.step_id)
            return [self._new_row(event.run_id, event.step_id, event.attempt, status="running",
                                  started_at=_ts(event.time))]
        if isinstance(event, AttemptFinished):
            o = event.outcome
            values = {"status": o.status.value, "completed_at": _ts(o.started_at + o.duration),
                      "duration_seconds": round(o.duration, 6), "execution_output": _output(o.stdout, o.stderr),
                      "error_message": o.error or o.skip_reason, "exit_code": o.exit_code,
                      "result_data": _jsonable(o.data) if o.data else {}, "updated_at": now,
                      "skip_reason": CONDITION if o.status is StepStatus.skipped else None,
                      "changed": o.changed}
            if o.config is not None:
                values["action_config"] = _jsonable(o.config)
            if (o.step_id, o.attempt) not in self._run["started"]:  # e.g. abandoned, or no StepStarted seen
                return [self._new_row(event.run_id, o.step_id, o.attempt, started_at=_ts(o.started_at), **values)]
            return [{"op": "update", "key": [event.run_id, o.step_id, o.attempt], "values": values}]
        if isinstance(event, RetryScheduled):
            return [{"op": "update", "key": [event.run_id, event.step_id, event.attempt],
                     "values": {"next_retry_at": _ts(event.next_retry_at)}}]
        if isinstance(event, StepSkipped):
            if event.step_id in self._run["started_steps"]:
                return []  # skipped by its condition: the attempt row says so
            return [self._new_row(event.run_id, event.step_id, 0, status=StepStatus.skipped.value,
                                  skip_reason=UPSTREAM_FAILED, error_message=event.reason,
                                  completed_at=_ts(event.time))]
        if isinstance(event, ProcessStarted):
            return [{"op": "update", "key": [event.run_id, event.step_id, event.attempt],
                     "values": {"process_group": event.pid, "process_started": event.started}}]
        if isinstance(event, StepFinished) and event.status is StepStatus.cancelled and event.attempts:
            return [{"op": "update", "key": [event.run_id, event.step_id, event.attempts],
                     "values": {"status": "cancelled", "next_retry_at": None, "error_message": event.error}}]
        if isinstance(event, StepRolledBack):
            values = ({"status": StepStatus.rolled_back.value} if event.ok
                      else {"error_message": f"rollback failed: {event.error}"})
            return [{"op": "rollback", "key": [event.run_id, event.step_id], "values": values}]
        if isinstance(event, RunFinished):
            result = event.result
            self._run["running"] = False
            return [{"op": "run", "run_id": event.run_id, "values": {
                "status": result.status.value, "completed_at": _ts(event.time),
                "completed_steps": result.completed_actions, "failed_steps": result.failed_actions,
                "skipped_steps": result.skipped_actions, "error": result.error, "heartbeat_at": _ts(event.time)}}]
        return []
