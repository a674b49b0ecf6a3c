"""Why is this step waiting?

For each step that has not started (or waits to be retried), every reason it
cannot start now: the upstream steps not done, the record of a finished
upstream step not yet committed, a conflicting step running, a full lock
(and which steps hold it), a retry back-off and when it is due, the worker
limit, or a run that stopped dispatching. Computed from plain facts, so the
same answer comes from a live run (its :class:`~.scheduler.RunState`) and
from a run in another process (its records).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from ..spec import Plan

DONE = frozenset({"completed", "skipped"})


def waiting_for(plan: Plan, sid: str, status: Mapping[str, str], *, running: Iterable[str] = (),
                retry_due: float | None = None, awaiting_records: Iterable[str] = (),
                max_workers: int | None = None, halted: str | None = None) -> list[dict[str, Any]]:
    """The reasons step ``sid`` is not running, each ``{"reason", "text", ...}``."""
    running = set(running)
    records = set(awaiting_records)
    reasons: list[dict[str, Any]] = []
    if halted:
        return [{"reason": "halted", "text": f"the run stopped starting steps: {halted}"}]
    upstream = [p for p in plan.predecessors[sid] if status.get(p) not in DONE]
    if upstream:
        reasons.append({"reason": "upstream", "steps": upstream,
                        "text": "waits for " + ", ".join(f"{p} ({status.get(p, 'not started')})" for p in upstream)})
    held = [p for p in plan.predecessors[sid] if p in records]
    if held:
        reasons.append({"reason": "record", "steps": held,
                        "text": f"waits for the record of {', '.join(held)} to be committed"})
    if retry_due is not None:
        due = datetime.fromtimestamp(retry_due, timezone.utc)
        reasons.append({"reason": "retry", "due": due.isoformat(),
                        "text": f"retries at {due.strftime('%H:%M:%S')} UTC (back-off after a failed attempt)"})
    for other in sorted(plan.conflicts[sid] & running):
        reasons.append({"reason": "conflict", "step": other, "text": f"never runs together with {other}, running"})
    for lock in plan.steps[sid].locks:
        holders = sorted(s for s in running if any(l.name == lock.name for l in plan.steps[s].locks))
        capacity = plan.lock_capacity.get(lock.name, lock.capacity)
        if len(holders) >= capacity:
            reasons.append({"reason": "lock", "lock": lock.name, "held_by": holders, "capacity": capacity,
                            "text": f"lock {lock.name} (capacity {capacity}) is held by {', '.join(holders)}"})
    if not reasons and max_workers is not None and len(running) >= max_workers:
        reasons.append({"reason": "workers", "running": len(running), "max_workers": max_workers,
                        "text": f"all {max_workers} workers are busy"})
    if not reasons:  # nothing holds it: seen between its last upstream's end and its start
        reasons.append({"reason": "ready", "text": "ready: starting"})
    return reasons
