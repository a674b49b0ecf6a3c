"""Row operations: what the recorder writes, as plain data.

An operation is a JSON-able dict (timestamps are epoch seconds, JSON
columns hold JSON text), so a batch the database cannot take is journalled
as it is and replayed later by :func:`apply_operations`:

- ``{"op": "run", "run_id", "values"}``: update the run's row;
- ``{"op": "insert", "row"}``: a new attempt row;
- ``{"op": "update", "key": [run, step, attempt], "values"}``: change an attempt;
- ``{"op": "rollback", "key": [run, step], "values"}``: mark a step's completed attempt;
- ``{"op": "template used", "name", "version", "time"}``: a run of a stored template succeeded.

Attempt rows get ``created_at`` / ``updated_at`` when they are written.

Attempt rows are the hot path (one per step of every run): they are written
through the driver with SQL built once per table, with values converted once
here instead of by per-row type processing: multi-row statements on SQLite;
on PostgreSQL one JSON document per statement, which the server turns into
rows (``json_to_recordset``). Quoting each value in Python (psycopg2's
``execute_values``) held the GIL twice as long as the whole server-side
insert, and the GIL is what the running steps wait for.
"""

from __future__ import annotations

import functools
import json
import math
import sqlite3
import re
import time
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator, Mapping

from sqlalchemy import Engine, and_, bindparam, select, update

from ..run.outcome import StepStatus
from .engine import schema_of
from .models import ProvisioningRun, TemplateAction, WorkspaceActionExecution, WorkspaceTemplate

ATTEMPTS = WorkspaceActionExecution.__table__
RUNS = ProvisioningRun.__table__
TEMPLATES = WorkspaceTemplate.__table__
TIMESTAMPS = frozenset({"started_at", "completed_at", "next_retry_at", "created_at", "updated_at", "heartbeat_at",
                        "last_applied_at"})
JSON_COLUMNS = frozenset({"action_config", "result_data"})
# Every column an attempt row is inserted with (absent values are NULL).
INSERT_COLUMNS = ("run_id", "workspace_id", "step_id", "action_name", "action_id", "attempt_number", "max_retries",
                  "status", "action_config", "started_at", "completed_at", "duration_seconds", "execution_output",
                  "error_message", "exit_code", "result_data", "skip_reason", "changed", "process_group",
                  "process_started", "next_retry_at", "config_key", "created_at", "updated_at")
_INSERT_TIMES = tuple(i for i, c in enumerate(INSERT_COLUMNS) if c in TIMESTAMPS - {"created_at", "updated_at"})
_CREATED, _UPDATED = INSERT_COLUMNS.index("created_at"), INSERT_COLUMNS.index("updated_at")
# Multi-row statements on SQLite: UPDATE ... FROM since 3.33; 32766 parameters since 3.32 (999 before).
_SQLITE_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33)
_SQLITE_MAX_VARIABLES = 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999
KEY_COLUMNS = ("run_id", "step_id", "attempt_number")
CONDITION = "condition"  # skip_reason of a step whose condition was false (it stands on resume)
ROLLBACK_FAILED = "rollback failed: "  # how a completed step's record says its rollback failed
ROLLING_BACK = "rolling back after: "  # a run's error while its rollbacks run (a resume trusts no rollbackable step)
# The whole mark, with when the rollbacks began: what completed before it may have been undone.
ROLLING_BACK_MARK = re.compile(re.escape(ROLLING_BACK) + r".*?\(at ([0-9.]+)\)")


def _sqlite_time(epoch: float | None) -> str | None:
    # SQLAlchemy's storage format for DateTime on SQLite (read back by its models)
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(" ", "microseconds")[:26]  # without "+00:00"


@functools.lru_cache(maxsize=None)
def _pg_recordset(columns: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """For rows sent as one JSON array of objects: the ``json_to_recordset``
    column list, and the SQL reading each column of ``v`` as its own type
    (timestamps travel as whole microseconds since the epoch, exact where a
    float of seconds is not; JSON columns as JSON text)."""
    from sqlalchemy.dialects import postgresql
    dialect = postgresql.dialect()
    defs, reads = [], {}
    for column in columns:
        if column in TIMESTAMPS:
            defs.append(f"{column} int8")
            reads[column] = f"TIMESTAMPTZ 'epoch' + v.{column} * INTERVAL '1 microsecond'"
        elif column in JSON_COLUMNS:
            defs.append(f"{column} text")
            reads[column] = f"v.{column}::jsonb"
        else:
            defs.append(f"{column} {ATTEMPTS.c[column].type.compile(dialect=dialect)}")
            reads[column] = f"v.{column}"
    return ", ".join(defs), reads


def _microseconds(epoch: float | None) -> int | None:
    """Whole microseconds since the epoch, rounded as ``datetime.fromtimestamp``
    rounds (the SQLite path's, and SQLAlchemy's): both stores say the same time."""
    if epoch is None:
        return None
    fraction, whole = math.modf(epoch)
    return int(whole) * 1_000_000 + round(fraction * 1e6)


_ROW_TIMES = tuple(sorted(TIMESTAMPS))
_PG_LONG = ("execution_output", "result_data", "action_config", "error_message")
_PG_CHUNK_ROWS = 1000
_PG_CHUNK_BYTES = 8 * 1024 * 1024  # a statement stays far below PostgreSQL's 1 GB


def _pg_chunks(rows: list[dict[str, Any]]) -> Iterator[str]:
    """The rows as JSON arrays of at most a thousand rows or a few MB each
    (their timestamps in microseconds)."""
    part: list[dict[str, Any]] = []
    size = 0
    for row in rows:
        row = dict(row)
        for column in _ROW_TIMES:
            if row.get(column) is not None:
                row[column] = _microseconds(row[column])
        text = sum(len(row.get(c) or "") for c in _PG_LONG)  # (these are nearly all of a row's size)
        if part and (len(part) >= _PG_CHUNK_ROWS or size + text > _PG_CHUNK_BYTES):
            yield json.dumps(part, default=str, ensure_ascii=False)
            part, size = [], 0
        part.append(row)
        size += text
    if part:
        yield json.dumps(part, default=str, ensure_ascii=False)


def _to_datetime(column: str, value: Any) -> Any:
    if column in TIMESTAMPS and isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, timezone.utc)
    return value


class NotOwner(Exception):
    """The run's row names another owner: a resume took the run over."""


def apply_operations(engine: Engine, ops: list[dict[str, Any]], action_ids: dict[str, int],
                     specs: Mapping[str, Any] | None = None, *, wait_for_disk: bool = True,
                     owner: tuple[str, str] | None = None) -> None:
    """Apply ``ops`` in one transaction, coalescing what can be: an attempt
    started and finished in the same batch is one INSERT. ``specs``: action
    definitions by name, for actions not yet in ``template_actions``.

    ``wait_for_disk=False`` (records nobody waits for yet) lets PostgreSQL
    return before its log is flushed to disk (``synchronous_commit = off``):
    a crash of dagrun loses nothing committed, and the next commit that waits
    for the disk (any a dependent waits for, and a run's last) flushes these
    too, so a crash of the server loses only a suffix of what nothing had
    waited for: steps that then run again, as a step running at a crash does.

    ``owner`` (run id, owner): written only while the run's row still names
    that owner, checked in the same transaction (else :class:`NotOwner`, and
    nothing is written)."""
    inserts: dict[tuple, dict[str, Any]] = {}
    updates: list[tuple[str, tuple, dict[str, Any]]] = []
    run_values: dict[str, dict[str, Any]] = {}
    used: list[dict[str, Any]] = []
    for op in ops:
        kind = op["op"]
        if kind == "template used":
            used.append(op)
        elif kind == "run":
            run_values.setdefault(op["run_id"], {}).update(op["values"])
        elif kind == "insert":
            row = op["row"]
            inserts.setdefault((row["run_id"], row["step_id"], row["attempt_number"]), {}).update(row)
        else:
            key = tuple(op["key"])
            if kind == "update" and key in inserts:
                inserts[key].update(op["values"])
            else:
                updates.append((kind, key, op["values"]))
    now = time.time()
    with engine.begin() as conn:
        postgres = conn.dialect.name == "postgresql"
        if postgres and not wait_for_disk:
            conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
        if owner is not None:  # (FOR UPDATE: a claim waits for this commit; SQLite's writer lock does the same)
            found = conn.execute(select(RUNS.c.owner).where(RUNS.c.id == owner[0]).with_for_update()).first()
            if found is not None and found[0] is not None and found[0] != owner[1]:
                raise NotOwner(found[0])
        if postgres:  # wakes `dagrun watch` (delivered at commit)
            runs = {*run_values, *(k[0] for k in inserts), *(u[1][0] for u in updates)}
            for run_id in sorted(runs):
                conn.exec_driver_sql("SELECT pg_notify('dagrun_runs', %(id)s)", {"id": run_id})
        for run_id, values in run_values.items():
            conn.execute(update(RUNS).where(RUNS.c.id == run_id)
                         .values(**{c: _to_datetime(c, v) for c, v in values.items()}))
        for op in used:
            conn.execute(update(TEMPLATES).where(TEMPLATES.c.name == op["name"], TEMPLATES.c.version == op["version"])
                         .values(usage_count=TEMPLATES.c.usage_count + 1,
                                 last_applied_at=_to_datetime("last_applied_at", op["time"])))
        writer = _Writer(conn, postgres, schema_of(engine))
        if inserts:
            names = {row["action_name"] for row in inserts.values()} - set(action_ids)
            if names:
                _ensure_actions(conn, names, action_ids, specs or {})
            for run_id, step_id, _ in (k for k in inserts if k[2] == 0):  # "upstream failed" rows are replaced
                conn.execute(ATTEMPTS.delete().where(ATTEMPTS.c.run_id == run_id, ATTEMPTS.c.step_id == step_id,
                                                     ATTEMPTS.c.attempt_number == 0))
            for row in inserts.values():
                row["action_id"] = action_ids.get(row["action_name"])
            writer.insert(list(inserts.values()), now)
        # consecutive updates of the same columns go out as one statement
        group: list[tuple[tuple, dict[str, Any]]] = []
        shape: tuple | None = None
        for kind, key, values in updates + [("end", (), {})]:
            this = (kind, tuple(sorted(values)))
            if group and this != shape:
                writer.update(shape, group, now)
                group = []
            shape = this
            if kind != "end":
                group.append((key, values))


class _Writer:
    """Attempt rows through the driver, in the caller's transaction."""

    def __init__(self, conn: Any, postgres: bool, schema: str | None) -> None:
        self.conn = conn
        self.postgres = postgres
        self.table = f'"{schema}".{ATTEMPTS.name}' if schema else ATTEMPTS.name
        self.time = _sqlite_time

    def _value(self, column: str, value: Any) -> Any:
        if column in TIMESTAMPS:
            return self.time(value)
        return value

    def _cursor(self) -> Any:
        return self.conn.connection.driver_connection.cursor()  # the transaction's own connection

    def insert(self, rows: list[dict[str, Any]], now: float) -> None:
        columns = ", ".join(INSERT_COLUMNS)
        if self.postgres:
            defs, reads = _pg_recordset(INSERT_COLUMNS)
            cursor = self._cursor()
            for chunk in _pg_chunks([{**row, "created_at": now, "updated_at": now} for row in rows]):
                cursor.execute(f"INSERT INTO {self.table} ({columns}) SELECT {', '.join(reads.values())} "
                               f"FROM json_to_recordset(%s) AS v({defs})", [chunk])
            return
        convert, values = self.time, []
        written = convert(now)
        for row in rows:
            value = [row.get(c) for c in INSERT_COLUMNS]
            for i in _INSERT_TIMES:
                value[i] = convert(value[i]) if value[i] is not None else None
            value[_CREATED] = value[_UPDATED] = written  # when the row was written
            values.append(value)
        self._sqlite_values(f"INSERT INTO {self.table} ({columns}) VALUES {{}}", values)

    def update(self, shape: tuple, group: list[tuple[tuple, dict[str, Any]]], now: float) -> None:
        kind, columns = shape
        if kind == "rollback":  # rare: the step's completed attempt, through SQLAlchemy
            where = and_(ATTEMPTS.c.run_id == bindparam("k_run"), ATTEMPTS.c.step_id == bindparam("k_step"),
                         ATTEMPTS.c.status == StepStatus.completed.value)
            statement = update(ATTEMPTS).where(where).values({c: bindparam(f"v_{c}") for c in columns})
            self.conn.execute(statement, [{"k_run": k[0], "k_step": k[1],
                                           **{f"v_{c}": _to_datetime(c, v) for c, v in values.items()}}
                                          for k, values in group])
            return
        columns = (*(c for c in columns if c != "updated_at"), "updated_at")  # every change says when it was written
        if self.postgres:
            defs, reads = _pg_recordset((*columns, *KEY_COLUMNS))
            sets = ", ".join(f"{c} = {reads[c]}" for c in columns)
            match = " AND ".join(f"t.{c} = v.{c}" for c in KEY_COLUMNS)
            cursor = self._cursor()
            for chunk in _pg_chunks([{**values, "updated_at": now, **dict(zip(KEY_COLUMNS, key))}
                                     for key, values in group]):
                cursor.execute(f"UPDATE {self.table} AS t SET {sets} FROM json_to_recordset(%s) AS v({defs}) "
                               f"WHERE {match}", [chunk])
            return
        written = self.time(now)
        rows = [(*(self._value(c, values[c]) for c in columns[:-1]), written, *key) for key, values in group]
        names = ", ".join((*columns, *KEY_COLUMNS))
        if _SQLITE_UPDATE_FROM:
            sets = ", ".join(f"{c} = v.{c}" for c in columns)
            match = " AND ".join(f"{self.table}.{c} = v.{c}" for c in KEY_COLUMNS)
            self._sqlite_values(f"WITH v({names}) AS (VALUES {{}}) UPDATE {self.table} SET {sets} FROM v "
                                f"WHERE {match}", rows)
        else:  # SQLite before 3.33: a statement per row
            sets = ", ".join(f"{c} = ?" for c in columns)
            match = " AND ".join(f"{c} = ?" for c in KEY_COLUMNS)
            self._cursor().executemany(f"UPDATE {self.table} SET {sets} WHERE {match}", rows)

    def _sqlite_values(self, statement: str, rows: list[Any]) -> None:
        """``statement`` with its ``{}`` replaced by as many rows of values as
        SQLite takes at once: one statement (and one release of the GIL) per
        chunk, not per row."""
        cursor = self._cursor()
        width = len(rows[0])
        chunk = max(1, _SQLITE_MAX_VARIABLES // width)
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            marks = ", ".join(["(" + ", ".join("?" * width) + ")"] * len(part))
            cursor.execute(statement.format(marks), [v for row in part for v in row])


def _ensure_actions(conn: Any, names: Iterable[str], action_ids: dict[str, int], specs: Mapping[str, Any]) -> None:
    from .seeding import action_values
    table = TemplateAction.__table__
    names = set(names)
    found = dict(conn.execute(select(table.c.name, table.c.id).where(table.c.name.in_(names))).all())
    for name in sorted(names - set(found)):
        action = specs.get(name)
        if action is None:  # replaying a journal: only the name is known
            row = {"name": name, "display_name": name, "category": "custom", "action_type": "python_function",
                   "execution_handler": "?"}
        else:
            row = {"name": action.name, **action_values(action)}
        now = datetime.now(timezone.utc)
        defaults = {"max_retries": 3, "timeout_seconds": 300, "retry_delay_seconds": 5, "exponential_backoff": True,
                    "requires_sudo": False, "requires_network": False, "is_active": True, "is_system": False,
                    "created_at": now, "updated_at": now}
        # runs that start together may both add the same action: the first one wins, the others read its id
        statement = _insert_if_absent(conn, table).values(**{**defaults, **row}).on_conflict_do_nothing(
            index_elements=["name"])
        conn.execute(statement)
        found[name] = conn.execute(select(table.c.id).where(table.c.name == name)).scalar_one()
    action_ids.update(found)


def _insert_if_absent(conn: Any, table: Any) -> Any:
    """An INSERT that can say ON CONFLICT DO NOTHING (PostgreSQL, SQLite)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)

