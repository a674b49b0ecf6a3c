"""Reading runs back from the store: history and per-run detail."""

from __future__ import annotations

from typing import Any, Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import InputError
from .models import ProvisioningRun, WorkspaceActionExecution
from .engine import readable, store_errors


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


INTERRUPTED_STATUS = "interrupted"
STOPPED_WITHOUT_ENDING = ("its process stopped without ending it (no heartbeat): dagrun resume goes on from where "
                          "it stopped; dagrun cancel closes it")


def shown_status(run: ProvisioningRun) -> str:
    """A run's status as people and programs reading it see it. The store
    says ``running`` until a resume claims a run whose process died, or a
    cancel closes it: such a run is shown ``interrupted``, as a cancel
    would close it, so nobody waits for (or watches) a run nobody runs."""
    from .runs import is_alive
    if run.status == "running" and not is_alive(run):
        return INTERRUPTED_STATUS
    return run.status


def list_runs(url: str, *, workspace: str | None = None, status: str | None = None,
              limit: int = 50, fleet: str | None = None) -> list[dict[str, Any]]:
    query = select(ProvisioningRun).order_by(ProvisioningRun.started_at.desc())
    if fleet is not None:
        query = query.where(ProvisioningRun.fleet_id == str(fleet))
    if workspace is not None:
        query = query.where(ProvisioningRun.workspace_id == str(workspace))
    if status in ("running", INTERRUPTED_STATUS):  # (told apart by their processes, below: few rows)
        query = query.where(ProvisioningRun.status == "running")
    else:
        query = query.limit(limit)
        if status is not None:
            query = query.where(ProvisioningRun.status == status)
    with store_errors(url, "cannot read"), Session(readable(url)) as session:
        found = []
        for r in session.scalars(query):
            shown = shown_status(r)
            if status is not None and shown != status:
                continue
            found.append({"run_id": r.id, "workspace_id": r.workspace_id, "template": r.template_name,
                          "version": r.template_version, "status": shown, "started_at": _iso(r.started_at),
                          "completed_at": _iso(r.completed_at), "total": r.total_steps,
                          "completed": r.completed_steps, "failed": r.failed_steps, "skipped": r.skipped_steps,
                          "error": r.error or (STOPPED_WITHOUT_ENDING if shown == INTERRUPTED_STATUS else None),
                          "mode": r.mode, "fleet_id": r.fleet_id})
            if len(found) == limit:
                break
        return found


def find_run(session: Session, run_id: str) -> ProvisioningRun:
    """A run by its whole id, or a clear error. (Only a person at the
    command line gets prefixes, through :func:`run_id_from_prefix`: in a
    service or a program embedding dagrun, a prefix a tenant typed would
    find another tenant's run.)"""
    run = session.get(ProvisioningRun, str(run_id))
    if run is None:
        raise InputError(f"no run {run_id!r} in the store")
    return run


def run_id_from_prefix(url: str, prefix: str) -> str:
    """The whole id of the one run whose id starts with ``prefix``."""
    with store_errors(url, "cannot read"), Session(readable(url)) as session:
        if session.get(ProvisioningRun, prefix) is not None:
            return prefix
        matches = session.scalars(select(ProvisioningRun.id).where(
            ProvisioningRun.id.startswith(prefix, autoescape=True)).limit(2)).all()  # a % or _ is a character
    if len(matches) != 1:
        raise InputError(f"no run {prefix!r} in the store" if not matches
                         else f"{prefix!r} matches more than one run: give more characters")
    return matches[0]


def find_fleet(url: str, fleet_id: str) -> str | None:
    """A fleet's id, given it or an unambiguous prefix of it (None: no such fleet)."""
    with store_errors(url, "cannot read"), Session(readable(url)) as session:
        ids = session.scalars(select(ProvisioningRun.fleet_id).where(
            ProvisioningRun.fleet_id.startswith(fleet_id, autoescape=True)).distinct()).all()
    if not ids or fleet_id in ids:
        return fleet_id if ids else None
    if len(ids) > 1:
        raise InputError(f"{fleet_id!r} matches {len(ids)} fleets: give more characters")
    return ids[0]


def show_run(url: str, run_id: str, *, output: bool = False) -> dict[str, Any]:
    with store_errors(url, "cannot read"), Session(readable(url)) as session:
        run = find_run(session, run_id)
        attempts = session.scalars(select(WorkspaceActionExecution).where(WorkspaceActionExecution.run_id == run.id)
                                   .order_by(WorkspaceActionExecution.id)).all()
        shown = shown_status(run)
        return {
            "run_id": run.id, "workspace_id": run.workspace_id, "template": run.template_name,
            "version": run.template_version, "status": shown, "started_at": _iso(run.started_at),
            "completed_at": _iso(run.completed_at), "heartbeat_at": _iso(run.heartbeat_at),
            "error": run.error or (STOPPED_WITHOUT_ENDING if shown == INTERRUPTED_STATUS else None),
            "mode": run.mode, "fleet_id": run.fleet_id, "total_steps": run.total_steps,
            "max_workers": run.max_workers, "cancel_requested": run.cancel_requested,
            "home_dir": (run.workspace or {}).get("home_dir"),
            "attempts": [{
                "step_id": a.step_id, "action": a.action_name, "attempt": a.attempt_number,
                "max_attempts": a.max_retries, "status": a.status, "started_at": _iso(a.started_at),
                "duration_seconds": a.duration_seconds, "exit_code": a.exit_code, "error": a.error_message,
                "next_retry_at": _iso(a.next_retry_at), "changed": a.changed, "skip_reason": a.skip_reason,
                **({"output": a.execution_output, "config": a.action_config, "result": a.result_data}
                   if output else {}),
            } for a in attempts],
        }


def run_snapshot(url: str, run_id: str) -> dict[str, Any] | None:
    """The template a run ran (as stored with it)."""
    with store_errors(url, "cannot read"), Session(readable(url)) as session:
        run = find_run(session, run_id)
        return dict(run.template_snapshot) if run.template_snapshot else None


def step_statuses(url: str, run_id: str) -> tuple[dict[str, Any], dict[str, str]]:
    """A run's template snapshot and each step's latest status."""
    run = show_run(url, run_id)
    with store_errors(url, "cannot read"), Session(readable(url)) as session:
        snapshot = session.get(ProvisioningRun, run["run_id"]).template_snapshot
    latest: dict[str, tuple[int, str]] = {}
    for attempt in run["attempts"]:
        if attempt["step_id"] not in latest or attempt["attempt"] >= latest[attempt["step_id"]][0]:
            latest[attempt["step_id"]] = (attempt["attempt"], attempt["status"])
    return snapshot, {sid: status for sid, (_, status) in latest.items()}


def watch(url: str, run_id: str, *, poll_seconds: float = 0.5, timeout: float | None = None,
          heartbeat: float | None = None) -> Iterator[dict[str, Any]]:
    """Follow a run from another process: yields one event per attempt change
    (and the run's final state), until the run is no longer running.
    PostgreSQL wakes the watcher with LISTEN/NOTIFY; SQLite is polled.
    ``heartbeat``: also yield ``{"event": "heartbeat"}`` after that many
    seconds without news (a stream's keep-alive)."""
    import time
    engine = readable(url)
    listener = None
    if engine.dialect.name == "postgresql":
        import psycopg2
        # A connection of its own: in autocommit and LISTENing, it must not go back to the pool.
        listener = psycopg2.connect(engine.url.render_as_string(hide_password=False).replace(
            "postgresql+psycopg2://", "postgresql://"))
        listener.autocommit = True
        with listener.cursor() as cur:
            cur.execute("LISTEN dagrun_runs")
    seen: dict[tuple[str, int], tuple] = {}
    started = news = time.monotonic()
    try:
        while True:
            run = show_run(url, run_id)
            for attempt in run["attempts"]:
                key = (attempt["step_id"], attempt["attempt"])
                state = (attempt["status"], attempt["error"])
                if seen.get(key) != state:
                    seen[key] = state
                    news = time.monotonic()
                    yield {"event": "attempt", **attempt}
            if run["status"] != "running":
                yield {"event": "run", "run_id": run["run_id"], "status": run["status"], "error": run["error"]}
                return
            if timeout is not None and time.monotonic() - started > timeout:
                yield {"event": "timeout", "run_id": run["run_id"]}
                return
            if heartbeat is not None and time.monotonic() - news >= heartbeat:
                news = time.monotonic()
                yield {"event": "heartbeat"}
            if listener is not None:
                import select as select_module
                deadline = time.monotonic() + poll_seconds * 10
                while time.monotonic() < deadline:  # wake only for this run's commits (or to look again)
                    if select_module.select([listener], [], [], max(0.0, deadline - time.monotonic()))[0]:
                        listener.poll()
                        mine = any(n.payload == run["run_id"] for n in listener.notifies)
                        listener.notifies.clear()
                        if mine:
                            break
            else:
                time.sleep(poll_seconds)
    finally:
        if listener is not None:
            listener.close()


def run_exists(url: str, run_id: str) -> bool:
    """Is there a run with exactly this id? (The service takes whole ids: a
    prefix would find, and name, another tenant's run.)"""
    with store_errors(url, "cannot read"), Session(readable(url)) as session:
        return session.get(ProvisioningRun, run_id) is not None
