"""Streams a run's events to the database from a writer thread.

The runner calls the recorder like any observer; the call only puts the
event on a queue, so the scheduler never waits on a database round-trip.
The writer thread turns whatever events queued up while its last commit ran
into row operations (:mod:`.operations`) and applies them in one
transaction (group commit): one multi-row INSERT for the attempts that
started, one UPDATE per kind of change, the run's row with the heartbeat.
An attempt row appears ``running`` when the attempt starts and is updated
when it ends; one that starts and ends within a batch is one INSERT.

A batch that fails because the database is unreachable is retried with
backoff for up to ``retry_limit_seconds``; after that its operations go to a
local journal (JSON lines) that ``dagrun db recover`` replays, and the run
says so in its result: nothing is lost silently. :meth:`Recorder.close`
returns once every queued event is committed (or journalled).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from ..run.events import (ROLLBACK_RECORDED, AttemptFinished, ProcessStarted, RetryScheduled, RollbackStarted,
                          RunFinished, RunStarted, StepFinished, StepRolledBack, StepSkipped, StepStarted)
from ..run.outcome import StepStatus
from ..run.scheduler import UPSTREAM_FAILED
from ..util import bounded
from . import journal
from .engine import describe_url, writable
from .estimates import stored_config
from .operations import CONDITION, ROLLBACK_FAILED, ROLLING_BACK, RUNS, NotOwner, apply_operations

log = logging.getLogger("dagrun.store")

HEARTBEAT_SECONDS = 5.0
CANCEL_POLL_SECONDS = 1.0  # how often a running run looks for a cancel asked by another process
RETRY_LIMIT_SECONDS = float(os.environ.get("DAGRUN_STORE_RETRY_SECONDS", 120))
MAX_BATCH = 5000
BATCH_WINDOW = 0.01  # how long records nobody waits for may wait for more (a crash loses at most these)
_STOP = object()


def _output(stdout: str, stderr: str) -> str:
    text = stdout
    if stderr:
        text += ("\n" if text and not text.endswith("\n") else "") + "--- stderr ---\n" + stderr
    return _text(bounded(text))


_SURROGATE = re.compile("[\ud800-\udfff]")


def _text(value: str | None) -> str | None:
    """Text a database column takes: no NUL (PostgreSQL refuses it; a
    program may print one) and no lone surrogate (not UTF-8; a Python
    handler may return one), each shown as U+FFFD instead."""
    if not value:
        return value
    if "\0" in value:
        value = value.replace("\0", "\ufffd")
    if not value.isascii() and _SURROGATE.search(value):
        value = _SURROGATE.sub("\ufffd", value)
    return value


def _json(value: Any) -> str:
    """JSON both stores take, whatever a handler returned."""
    try:
        text = json.dumps(value, default=str, allow_nan=False)
    except (TypeError, ValueError, OverflowError, RecursionError):  # a tuple key, NaN, an int too long to print...
        return json.dumps(_plain(value))
    # (a NUL or a surrogate shows as an escape in the text: the walk is paid only by the rare value that holds one)
    return json.dumps(_plain(value)) if "\\u0000" in text or "\\ud" in text else text


def _plain(value: Any, depth: int = 0) -> Any:
    """``value`` as plain JSON data: text cleaned (:func:`_text`), keys as
    text, NaN and infinities as null, what is not JSON as its text."""
    if isinstance(value, str):
        return _text(value)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value) if value.bit_length() < 1000 else "(an integer too long to store)"
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth > 100:
        return "(nested too deep to store)"
    if isinstance(value, Mapping):
        return {_text(k) if isinstance(k, str) else _text(str(k)): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v, depth + 1) for v in value]
    try:
        return _text(str(value))
    except Exception:  # noqa: BLE001 - a handler's object whose str() fails
        return f"({type(value).__name__})"


def _changed(value: Any) -> bool | None:
    return value if value is None or isinstance(value, bool) else (bool(value) if value in (0, 1) else None)


def _exit_code(value: Any) -> int | None:
    """An exit code the column takes (a 32-bit integer), else none."""
    return value if type(value) is int and -2 ** 31 <= value < 2 ** 31 else None


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
                 on_durable: Callable[[list[str]], None] | None = None, count_use: bool = False,
                 on_cancel: Callable[[str], None] | None = None, owner: str | None = None):
        self.url = url
        # The claim's owner (store.runs.owner_id): when the run's row names another, a resume took the
        # run over (this process was taken for dead: paused, cut off): it is cancelled, and what it
        # still records is dropped, not written over the new owner's records.
        self.owner = owner
        self.fenced = False
        self.engine = writable(url)
        self.retry_limit_seconds = RETRY_LIMIT_SECONDS if retry_limit_seconds is None else retry_limit_seconds
        self.on_durable = on_durable
        self.count_use = count_use  # a successful run adds one to its template's usage_count
        self.on_cancel = on_cancel  # called (from the writer thread) when another process asks the run to stop
        self.error: str | None = None
        self.journal: Path | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._action_ids: dict[str, int] = {}
        self._run: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._work, name="dagrun-recorder", daemon=True)
        self._thread.start()

    def __call__(self, event: Any) -> None:
        self._queue.put(([event], True))

    def observe_batch(self, events: list[Any], urgent: bool = True) -> None:
        """The runner's way: the events of one turn of its loop at once.
        Not ``urgent``: nobody waits for them yet, so they may wait up to
        ``BATCH_WINDOW`` for company (fewer, larger commits)."""
        self._queue.put((events, urgent))

    def close(self) -> None:
        """Returns once every queued event is committed (or journalled)."""
        self._queue.put(([_STOP], True))
        self._thread.join()

    # -- writer thread --------------------------------------------------------

    def _work(self) -> None:
        last_beat = last_poll = time.monotonic()
        stopping = False
        get, get_nowait = self._queue.get, self._queue.get_nowait
        while not stopping:
            if self.on_cancel is not None and self._run.get("running") \
                    and time.monotonic() - last_poll >= CANCEL_POLL_SECONDS:
                last_poll = time.monotonic()
                self._poll_cancel()
            try:
                events, urgent = get(timeout=CANCEL_POLL_SECONDS if self.on_cancel is not None else HEARTBEAT_SECONDS)
                batch = list(events)
            except queue.Empty:
                batch, urgent = [], True
            # Group commit: whatever queued up while the last commit ran goes in this one,
            # and what nobody waits for yet waits a moment for more.
            until = time.monotonic() + BATCH_WINDOW
            while batch and len(batch) < MAX_BATCH:
                try:
                    events, now = get_nowait() if urgent else get(timeout=max(0.0, until - time.monotonic()))
                except queue.Empty:
                    break
                batch += events
                urgent = urgent or now
            if _STOP in batch:
                stopping = True
                batch = [e for e in batch if e is not _STOP]
            ops: list[dict[str, Any]] = []
            durable: list[str] = []
            for event in batch:
                try:
                    ops += self._operations(event)
                except Exception as exc:  # noqa: BLE001 - a writer that dies would hold every record back
                    log.exception("could not make the record of %s", type(event).__name__)
                    self.error = self.error or f"a record could not be made ({type(event).__name__}: {exc})"
                if isinstance(event, StepFinished) and event.status is StepStatus.completed \
                        or isinstance(event, StepSkipped) and event.reason != UPSTREAM_FAILED:
                    durable.append(event.step_id)
                elif isinstance(event, RollbackStarted):
                    durable.append(ROLLBACK_RECORDED)
            # Each round-trip gives the GIL away and may wait a switch interval to get
            # it back, so the heartbeat rides along only every HEARTBEAT_SECONDS.
            if self._run.get("running") and time.monotonic() - last_beat >= HEARTBEAT_SECONDS:
                ops.append({"op": "run", "run_id": self._run["id"], "values": {"heartbeat_at": time.time()}})
                last_beat = time.monotonic()
            kept = self._commit(ops, urgent or stopping) if ops else True
            if not kept and self.on_cancel is not None and not stopping:
                # Kept nowhere (store and journal both refused): nothing more starts on top of records
                # that are missing (a completion, or an attempt's row a later completion would update:
                # helper-72, helper-73), which a crash would have a resume run again. Asked before the
                # completions are released, so the run halts before their dependents could start.
                self.on_cancel(f"stopped: its records cannot be kept ({self.error})")
            if durable and self.on_durable is not None:
                self.on_durable(durable)

    def _poll_cancel(self) -> None:
        from sqlalchemy import select
        try:
            with self.engine.connect() as conn:
                row = conn.execute(select(RUNS.c.cancel_requested, RUNS.c.owner)
                                   .where(RUNS.c.id == self._run["id"])).first()
        except SQLAlchemyError:
            return  # the store is away: the run goes on (and its records are retried)
        if row is None:
            return
        reason, owner = row
        if self.owner is not None and owner is not None and owner != self.owner:
            self._fence(owner)
        elif reason and self.on_cancel is not None:
            self.on_cancel(reason)
            self.on_cancel = None

    def _fence(self, owner: str) -> None:
        """Another process owns the run now: cancel it here, record nothing more."""
        if self.fenced:
            return
        self.fenced = True
        log.warning("run %s was taken over by %s (this process was taken for dead): it stops, and what it still "
                    "records is dropped", self._run.get("id"), owner)
        if self.on_cancel is not None:
            self.on_cancel(f"taken over by {owner} (this process was taken for dead)")
            self.on_cancel = None

    def _commit(self, ops: list[dict[str, Any]], urgent: bool = True) -> bool:
        """Write ``ops`` to the store, or else to the journal; False when
        neither would take them."""
        if self.fenced:
            return True  # the run is another process's now (and stops)
        if self.journal is not None:
            # Once a run's records went to the journal, the rest follow them there: replayed in the order
            # they were made (an update written before its journalled insert would match no row).
            # Only the heartbeat still goes to the store, best effort: the run is alive.
            beats = [op for op in ops if _heartbeat_only(op)]
            if beats:
                try:
                    apply_operations(self.engine, beats, self._action_ids, self._run.get("actions"),
                                     owner=(self._run["id"], self.owner) if self.owner and self._run.get("id") else None)
                except NotOwner as exc:
                    self._fence(str(exc))
                    return True
                except Exception:  # noqa: BLE001 - best effort: the store is away
                    pass
            ops = [op for op in ops if not _heartbeat_only(op)]
            return self._to_journal(ops, "earlier records are in the journal", 0.0) if ops else True
        delay, waited = 0.2, 0.0
        owner = (self._run["id"], self.owner) if self.owner is not None and self._run.get("id") else None
        while True:
            try:
                apply_operations(self.engine, ops, self._action_ids, self._run.get("actions"), wait_for_disk=urgent,
                                 owner=owner)
                return True
            except NotOwner as exc:  # taken over: this process was taken for dead
                self._fence(str(exc))
                return True
            except Exception as exc:  # noqa: BLE001 - the driver's own errors too (attempt rows go through it)
                # Whatever the store says, the writer goes on: it retries, then journals (a dead writer
                # would hold every dependent of an unrecorded step back, and the run would never end).
                self._action_ids.clear()  # ids from a rolled-back transaction may be void
                reason = (str(exc).splitlines() or [type(exc).__name__])[0]
                if not _transient(exc) or waited >= self.retry_limit_seconds:
                    return self._to_journal(ops, reason, waited)
                log.warning("store write failed (%s); retrying in %.1f s", reason, delay)
                time.sleep(delay)
                waited += delay
                delay = min(delay * 2, 5.0)

    def _to_journal(self, ops: list[dict[str, Any]], reason: str, waited: float) -> bool:
        first = self.journal is None
        try:
            self.journal = journal.append(self._run.get("id", "unknown"), self.url, ops, self.owner)
        except OSError as exc:  # nowhere left to keep them: said in the result, the run goes on
            self.error = f"could not write to {describe_url(self.url)} ({reason}) nor to the journal ({exc})"
            log.error("store write failed; %d records lost: %s", len(ops), self.error)
            return False
        if not first:  # the rest of the run follows its first journalled records: said once
            return True
        self.error = (f"could not write to {describe_url(self.url)} ({reason}"
                      + (f", for {waited:.0f} s" if waited else "") + f"); records kept in {self.journal}, "
                      "replay them with: dagrun db recover")
        log.error("store write failed; %d records journalled: %s", len(ops), self.error)
        return True

    # -- events -> operations -------------------------------------------------

    def _new_row(self, run_id: str, step_id: str, attempt: int, **values: Any) -> dict[str, Any]:
        step = self._run["plan"].steps[step_id]
        config, key = stored_config(step)
        row = {"run_id": run_id, "workspace_id": self._run["workspace_id"], "step_id": step_id,
               "action_name": step.action.name, "attempt_number": attempt, "max_retries": step.retry.max_attempts,
               "action_config": config, "config_key": key}
        row.update(values)
        return {"op": "insert", "row": row}

    def _operations(self, event: Any) -> list[dict[str, Any]]:
        if isinstance(event, StepStarted):
            self._run["started"].add((event.step_id, event.attempt))
            self._run["started_steps"].add(event.step_id)
            return [self._new_row(event.run_id, event.step_id, event.attempt, status="running",
                                  started_at=event.time)]
        if isinstance(event, AttemptFinished):
            o = event.outcome
            values = {"status": o.status.value, "completed_at": o.started_at + o.duration,
                      "duration_seconds": round(o.duration, 6), "execution_output": _output(o.stdout, o.stderr),
                      "error_message": _text(o.error or o.skip_reason), "exit_code": _exit_code(o.exit_code),
                      "result_data": _json(o.data) if o.data else "{}",
                      "skip_reason": CONDITION if o.status is StepStatus.skipped else None,
                      "changed": _changed(o.changed)}
            step = self._run["plan"].steps[o.step_id]
            if o.config is not None and step.templated:  # the interpolated config (masked by the runner)
                values["action_config"] = _json(o.config)
            if (o.step_id, o.attempt) not in self._run["started"]:  # e.g. abandoned, or no StepStarted seen
                return [self._new_row(event.run_id, o.step_id, o.attempt, started_at=o.started_at, **values)]
            return [{"op": "update", "key": [event.run_id, o.step_id, o.attempt], "values": values}]
        if isinstance(event, RunStarted):
            self._run = {"id": event.run_id, "plan": event.plan, "workspace_id": event.workspace_id, "running": True,
                         "started": set(), "started_steps": set(),
                         "actions": {s.action.name: s.action for s in event.plan.steps.values()}}
            return [{"op": "run", "run_id": event.run_id, "values": {"status": "running", "heartbeat_at": event.time}}]
        if isinstance(event, RetryScheduled):
            return [{"op": "update", "key": [event.run_id, event.step_id, event.attempt],
                     "values": {"next_retry_at": event.next_retry_at}}]
        if isinstance(event, StepSkipped):
            if event.step_id in self._run["started_steps"]:
                return []  # skipped by its condition: the attempt row says so
            return [self._new_row(event.run_id, event.step_id, 0, status=StepStatus.skipped.value,
                                  skip_reason=UPSTREAM_FAILED, error_message=event.reason,
                                  completed_at=event.time)]
        if isinstance(event, ProcessStarted):
            return [{"op": "update", "key": [event.run_id, event.step_id, event.attempt],
                     "values": {"process_group": event.pid, "process_started": event.started}}]
        if isinstance(event, StepFinished) and event.status is StepStatus.cancelled and event.attempts:
            return [{"op": "update", "key": [event.run_id, event.step_id, event.attempts],
                     "values": {"status": "cancelled", "next_retry_at": None, "error_message": _text(event.error)}}]
        if isinstance(event, RollbackStarted):
            return [{"op": "run", "run_id": event.run_id,
                     "values": {"error": _text(f"{ROLLING_BACK}{event.reason} (at {event.time:.3f})")}}]
        if isinstance(event, StepRolledBack):
            values = ({"status": StepStatus.rolled_back.value} if event.ok
                      else {"error_message": _text(f"{ROLLBACK_FAILED}{event.error}")})
            return [{"op": "rollback", "key": [event.run_id, event.step_id], "values": values}]
        if isinstance(event, RunFinished):
            result = event.result
            self._run["running"] = False
            ops = [{"op": "run", "run_id": event.run_id, "values": {
                "status": result.status.value, "completed_at": event.time,
                "completed_steps": result.completed_actions, "failed_steps": result.failed_actions,
                "skipped_steps": result.skipped_actions, "error": _text(result.error), "heartbeat_at": event.time}}]
            if self.count_use and result.success:
                plan = self._run["plan"]
                ops.append({"op": "template used", "name": plan.name, "version": plan.version, "time": event.time})
            return ops
        return []


def _transient(exc: BaseException) -> bool:
    """A store that is away or busy (worth retrying), as SQLAlchemy or the
    driver (psycopg2, sqlite3: attempt rows go through it) says it."""
    return isinstance(exc, (OperationalError, InterfaceError)) or \
        type(exc).__name__ in ("OperationalError", "InterfaceError")


def _heartbeat_only(op: Mapping[str, Any]) -> bool:
    return op.get("op") == "run" and set(op.get("values", {})) == {"heartbeat_at"}
