"""The scheduler core: run state and dispatch policy, with no I/O.

Like ``graphlib.TopologicalSorter`` it is driven from outside: the driver
asks :meth:`RunState.start` for steps to launch, reports each attempt's end
with :meth:`succeeded` / :meth:`skipped` / :meth:`failed` / :meth:`cancelled`,
and sleeps until the next completion or :meth:`next_wakeup`. It owns no
threads, no database and no clock: ``now`` is always passed in.

Invariants:

- a step is *ready* when every predecessor is completed or skipped; ready
  steps wait in a heap of their dispatch rank (longest remaining critical
  path first, then sequence_order, then plan order; ranked once at compile
  time), so dispatch is deterministic;
- at most ``max_workers`` steps run; a ready step whose conflicting step is
  running, or whose lock is at capacity, stays in the heap (it does not
  block the steps behind it);
- a failed attempt with attempts left is parked in a retry heap until its
  due time: waiting never holds a worker;
- after a critical failure or a cancel the state is *halted*: nothing new
  starts, parked retries are cancelled, running steps finish;
- write-ahead: a step finished with ``hold=True`` (the run records to a
  store) frees its worker at once, but its dependents become ready only
  when :meth:`durable` says its record is committed, so a crash never makes
  a resume redo a step whose dependent had started. Steps that do not
  depend on it never wait.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .outcome import StepStatus
from ..spec import Plan

UPSTREAM_FAILED = "upstream failed"


@dataclass(frozen=True, slots=True)
class Retry:
    """The failed attempt will be retried at ``due`` (after ``delay`` s)."""

    due: float
    delay: float


@dataclass(frozen=True, slots=True)
class Failed:
    """The step failed for good. ``critical`` halts the run; otherwise its
    downstream steps were skipped (``skipped``)."""

    critical: bool
    skipped: tuple[str, ...] = ()
    cancelled: tuple[str, ...] = ()  # parked retries dropped by the halt


@dataclass(slots=True)
class RunState:
    plan: Plan
    max_workers: int
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    shared_locks: Any = None  # a fleet's LockView: its runs hold the template's locks together
    status: dict[str, StepStatus] = field(init=False)
    attempts: dict[str, int] = field(init=False)
    skip_reason: dict[str, str] = field(init=False)
    completion_order: list[str] = field(init=False)
    halted: str | None = field(init=False, default=None)
    _unmet: dict[str, int] = field(init=False)
    _ready: list[int] = field(init=False)  # dispatch ranks
    _retry: list[tuple[float, int, str]] = field(init=False)
    _running: set[str] = field(init=False)
    _locks: dict[str, int] = field(init=False)
    _rank: Mapping[str, int] = field(init=False)
    _constrained: frozenset[str] = field(init=False)  # steps with conflicts or locks
    _held: set[str] = field(init=False)  # finished, waiting for their record to be committed
    _undone: dict[str, int] = field(init=False)  # upstream steps not finished (committed or not)
    _awaiting: set[str] = field(init=False)  # steps that could start but for their upstreams' records

    def __post_init__(self) -> None:
        if self.max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        plan = self.plan
        self.status = dict.fromkeys(plan.order, StepStatus.pending)
        self.attempts = dict.fromkeys(plan.order, 0)
        self.skip_reason = {}
        self.completion_order = []
        self._rank = plan.dispatch_rank
        self._constrained = frozenset(sid for sid in plan.order if plan.conflicts[sid] or plan.steps[sid].locks)
        self._unmet = {sid: len(plan.predecessors[sid]) for sid in plan.order}
        self._ready = []
        self._retry = []
        self._running = set()
        self._locks = dict.fromkeys(plan.lock_capacity, 0)
        self._held = set()
        self._undone = dict(self._unmet)
        self._awaiting = set()
        for sid in plan.order:
            if self._unmet[sid] == 0:
                self._push_ready(sid)

    @classmethod
    def resumed(cls, plan: Plan, max_workers: int, *, done: dict[str, StepStatus],
                attempts: dict[str, int] | None = None, shared_locks: Any = None) -> "RunState":
        """A state where the steps in ``done`` (completed / skipped) are
        already satisfied; attempt numbers continue from ``attempts``."""
        state = cls(plan, max_workers, shared_locks=shared_locks)
        state._ready.clear()
        for sid, status in done.items():
            if status.satisfies_dependents:
                state.status[sid] = status
                for succ in plan.successors[sid]:
                    state._unmet[succ] -= 1
                    state._undone[succ] -= 1
        for sid in plan.order:
            if state.status[sid] is StepStatus.pending and state._unmet[sid] == 0:
                state._push_ready(sid)
        state.attempts.update(attempts or {})
        return state

    # -- queries --------------------------------------------------------------

    @property
    def running(self) -> frozenset[str]:
        return frozenset(self._running)

    @property
    def finished(self) -> bool:
        """True when nothing runs and nothing more can start."""
        if self._running:
            return False
        if self.halted is not None:
            return True
        return not (self._ready or self._retry or self._held)

    @property
    def awaiting_records(self) -> frozenset[str]:
        """Finished steps whose dependents wait for their record."""
        return frozenset(self._held)

    @property
    def waiting_for_records(self) -> bool:
        """Could a step start now but for the records of its upstream steps?
        (Then committing them is urgent; otherwise it may wait for company.)"""
        return bool(self._awaiting) or bool(self._held and not self._running and not self._ready)

    def next_wakeup(self) -> float | None:
        """The earliest time a parked retry becomes due, if any."""
        if self.halted is not None or not self._retry:
            return None
        return self._retry[0][0]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for status in self.status.values():
            out[status.value] = out.get(status.value, 0) + 1
        return out

    # -- dispatch -------------------------------------------------------------

    def start(self, now: float) -> list[tuple[str, int]]:
        """Steps to launch now, as ``(step_id, attempt_number)``."""
        while self._retry and self._retry[0][0] <= now:
            _, _, sid = heapq.heappop(self._retry)
            self._push_ready(sid)
        if self.halted is not None:
            return []
        launched: list[tuple[str, int]] = []
        blocked = []
        ready, running, attempts, status = self._ready, self._running, self.attempts, self.status
        names, constrained, pop = self.plan.dispatch_order, self._constrained, heapq.heappop
        while ready and len(running) < self.max_workers:
            rank = pop(ready)
            sid = names[rank]
            if sid in constrained:
                if self._blocked(sid) or not self._take_locks(sid):
                    blocked.append(rank)
                    continue
            running.add(sid)
            attempt = attempts[sid] = attempts[sid] + 1
            status[sid] = StepStatus.running
            launched.append((sid, attempt))
        for rank in blocked:
            heapq.heappush(ready, rank)
        return launched

    def _blocked(self, sid: str) -> bool:
        running = self._running
        if running:
            for other in self.plan.conflicts[sid]:
                if other in running:
                    return True
        return False

    def _take_locks(self, sid: str) -> bool:
        """Take all of the step's locks, or none."""
        locks = self.plan.steps[sid].locks
        if not locks:
            return True
        if self.shared_locks is not None:
            return self.shared_locks.take(locks)
        capacity = self.plan.lock_capacity
        if any(self._locks[lock.name] >= capacity[lock.name] for lock in locks):
            return False
        for lock in locks:
            self._locks[lock.name] += 1
        return True

    def _push_ready(self, sid: str) -> None:
        heapq.heappush(self._ready, self._rank[sid])

    def abandon(self) -> None:
        """The run ended on an error: give back the locks of every step it
        still counts as running (a fleet's other runs share them)."""
        for sid in list(self._running):
            self._release(sid)

    def _release(self, sid: str) -> None:
        self._running.discard(sid)
        if sid in self._constrained:
            locks = self.plan.steps[sid].locks
            if self.shared_locks is not None:
                if locks:
                    self.shared_locks.release(locks)
            else:
                for lock in locks:
                    self._locks[lock.name] -= 1

    def _satisfy(self, sid: str, *, counted: bool = False) -> None:
        """``sid``'s dependents have one unmet upstream less (``counted``: its
        finish was counted when it was held)."""
        unmet, undone, status, ready, rank = self._unmet, self._undone, self.status, self._ready, self._rank
        pending = StepStatus.pending
        for succ in self.plan.successors[sid]:
            left = unmet[succ] = unmet[succ] - 1
            if not counted:
                undone[succ] -= 1
            if left == 0 and status[succ] is pending:
                heapq.heappush(ready, rank[succ])
                if counted:
                    self._awaiting.discard(succ)

    # -- outcomes -------------------------------------------------------------

    def succeeded(self, sid: str, *, hold: bool = False) -> None:
        """``hold``: its dependents wait for :meth:`durable`."""
        if sid in self._constrained:
            self._release(sid)
        else:  # the common case, once per step: no call
            self._running.discard(sid)
        self.status[sid] = StepStatus.completed
        self.completion_order.append(sid)
        if hold:
            self._satisfy_or_hold(sid, hold)
        else:
            self._satisfy(sid)

    def skipped(self, sid: str, reason: str, *, hold: bool = False) -> None:
        """The step's condition was false: it counts as done for its dependents."""
        self._release(sid)
        self.status[sid] = StepStatus.skipped
        self.skip_reason[sid] = reason
        self._satisfy_or_hold(sid, hold)

    def _satisfy_or_hold(self, sid: str, hold: bool) -> None:
        successors = self.plan.successors[sid]
        if hold and successors:
            self._held.add(sid)
            for succ in successors:
                left = self._undone[succ] = self._undone[succ] - 1
                if left == 0:
                    self._awaiting.add(succ)
        else:
            self._satisfy(sid)

    def durable(self, sids: "Iterable[str]") -> None:
        """The records of these finished steps are committed: their dependents may start."""
        for sid in sids:
            if sid in self._held:
                self._held.discard(sid)
                self._satisfy(sid, counted=True)

    def cancelled(self, sid: str) -> None:
        self._release(sid)
        self.status[sid] = StepStatus.cancelled

    def failed(self, sid: str, now: float, *, retryable: bool = True) -> Retry | Failed:
        self._release(sid)
        step = self.plan.steps[sid]
        attempt = self.attempts[sid]
        if retryable and attempt < step.retry.max_attempts and self.halted is None:
            delay = step.retry.delay_after(attempt, self.rng)
            self.status[sid] = StepStatus.pending
            heapq.heappush(self._retry, (now + delay, self._rank[sid], sid))
            return Retry(now + delay, delay)
        self.status[sid] = StepStatus.failed
        if step.skip_on_error and self.plan.global_config.continue_on_non_critical_errors:
            skipped = []
            for down in self.plan.descendants(sid):
                if self.status[down] is StepStatus.pending:
                    self.status[down] = StepStatus.skipped
                    self.skip_reason[down] = UPSTREAM_FAILED
                    skipped.append(down)
            self._drop_from_queues(set(skipped))
            return Failed(critical=False, skipped=tuple(skipped))
        parked = self.halt(f"critical step {sid} failed")
        return Failed(critical=True, cancelled=tuple(parked))

    def _drop_from_queues(self, sids: set[str]) -> None:
        if not sids:
            return
        self._ready = [r for r in self._ready if self.plan.dispatch_order[r] not in sids]
        heapq.heapify(self._ready)
        self._retry = [i for i in self._retry if i[2] not in sids]
        heapq.heapify(self._retry)

    def halt(self, reason: str) -> list[str]:
        """Stop starting steps. Parked retries are cancelled (and returned)."""
        if self.halted is None:
            self.halted = reason
        parked = [sid for _, _, sid in self._retry]
        for sid in parked:
            self.status[sid] = StepStatus.cancelled
        self._retry.clear()
        return parked

    def rolled_back(self, sid: str) -> None:
        self.status[sid] = StepStatus.rolled_back
