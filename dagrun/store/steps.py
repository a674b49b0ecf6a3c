"""A run's steps as an operator reads them: status, attempts, time, error,
the tail of the output, and why a step that has not started is waiting.

Built from the run's records and its template snapshot, so it answers for a
run in any process; for a run going on in this process the live scheduler
state answers instead (it knows about held records and parked retries to
the instant).
"""

from __future__ import annotations


from datetime import datetime
from typing import Any, Iterable, Mapping

from ..run.waiting import waiting_for

OUTPUT_TAIL_LINES = 20


def run_steps(run: Mapping[str, Any], snapshot: Mapping[str, Any] | None, handle: Any = None, *,
              actions: Iterable[Any] | None = None, trusted_actions: Iterable[Any] | None = None
              ) -> list[dict[str, Any]]:
    """``run``: what :func:`~.history.show_run` returns (with output)."""
    plan = _plan(snapshot, actions, trusted_actions)
    latest: dict[str, dict[str, Any]] = {}
    attempts: dict[str, int] = {}
    durations: dict[str, float] = {}
    for row in run["attempts"]:
        sid = row["step_id"]
        if row["attempt"] > 0 and not (row["status"] == "skipped" and row.get("skip_reason") == "condition"):
            attempts[sid] = attempts.get(sid, 0) + 1
        durations[sid] = durations.get(sid, 0.0) + (row["duration_seconds"] or 0.0)
        if sid not in latest or row["attempt"] >= latest[sid]["attempt"]:
            latest[sid] = row
    order = list(plan.order) if plan is not None else list(dict.fromkeys(r["step_id"] for r in run["attempts"]))
    running_run = run["status"] == "running"
    status: dict[str, str] = {}
    retry_due: dict[str, float] = {}
    for sid in order:
        row = latest.get(sid)
        if row is None:
            status[sid] = "pending" if running_run else "not_started"
        elif row["status"] == "failed" and row.get("next_retry_at") and running_run:
            status[sid] = "waiting_retry"
            retry_due[sid] = datetime.fromisoformat(row["next_retry_at"]).timestamp()
        elif row["status"] == "running" and run["status"] == "interrupted":
            status[sid] = "interrupted"  # (its attempt's process went with the run's)
        else:
            status[sid] = row["status"]
    live = _live(handle)
    if live is not None:
        status.update({sid: s for sid, s in live["status"].items() if sid in status})
        retry_due = live["retry_due"]
    steps = []
    for position, sid in enumerate(order, 1):
        row = latest.get(sid) or {}
        spec = plan.steps[sid] if plan is not None else None
        entry = {
            "step_id": sid, "position": position,
            "display_name": spec.display_name if spec else sid,
            "action_name": spec.action.name if spec else row.get("action"),
            "sequence_order": spec.sequence_order if spec else None,
            "requires": list(plan.predecessors[sid]) if plan is not None else [],
            "status": status[sid], "attempts": attempts.get(sid, 0),
            "duration_seconds": round(durations[sid], 3) if sid in durations else None,
            "error": row.get("error") if status[sid] not in ("completed", "running") else None,
            "changed": row.get("changed"), "output_tail": _tail(row.get("output")),
            "waiting_for": [],  # why a step that has not started waits (filled below while the run runs)
        }
        if plan is not None and status[sid] in ("pending", "waiting_retry") and running_run:
            running = [s for s in order if status[s] == "running"]
            entry["waiting_for"] = waiting_for(
                plan, sid, status, running=running, retry_due=retry_due.get(sid),
                awaiting_records=live["awaiting_records"] if live else (),
                max_workers=live["max_workers"] if live else run.get("max_workers"),
                halted=live["halted"] if live else (run.get("cancel_requested") or None))
        steps.append(entry)
    return steps


def _plan(snapshot: Mapping[str, Any] | None, actions: Iterable[Any] | None, trusted: Iterable[Any] | None) -> Any:
    if not snapshot:
        return None
    from ..compile import compile_template
    from ..errors import DagrunError
    try:
        return compile_template(dict(snapshot), actions=actions, trusted_actions=trusted)
    except DagrunError:  # e.g. user-defined actions this process was not given: steps from the records only
        return None


def _live(handle: Any) -> dict[str, Any] | None:
    runner = getattr(handle, "runner", None)
    if runner is None or handle.done:
        return None
    state = runner.state
    now, wall = runner.clock(), runner.wall()
    status = {sid: ("pending" if s.value == "pending" else s.value) for sid, s in state.status.items()}
    retry_due = {}
    for due, _, sid in list(state._retry):  # noqa: SLF001 - the runner's own state, read-only
        status[sid] = "waiting_retry"
        retry_due[sid] = wall + (due - now)
    return {"status": status, "retry_due": retry_due, "awaiting_records": state.awaiting_records,
            "max_workers": state.max_workers, "halted": state.halted}


def _tail(output: str | None) -> str | None:
    if not output:
        return None
    return "\n".join(output.rstrip().splitlines()[-OUTPUT_TAIL_LINES:])


__all__ = ["run_steps"]
