"""Typed events the runner emits; observers subscribe to them.

An observer is any callable taking one event. The store writer, structlog
logging, the CLI progress display and a user's ``on_event`` are observers;
the scheduler core knows none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Union

from .outcome import Outcome, StepStatus


@dataclass(frozen=True, slots=True)
class RunStarted:
    run_id: str
    template: str
    version: str
    workspace_id: str
    total_steps: int
    max_workers: int
    time: float
    # Out of the repr: on_event=print would print the whole plan, and the workspace's secret fields.
    plan: Any = field(default=None, repr=False)
    workspace: Any = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class StepStarted:
    run_id: str
    step_id: str
    attempt: int
    max_attempts: int
    display_name: str
    time: float


@dataclass(frozen=True, slots=True)
class ProcessStarted:
    """An attempt started a command (its process group leader, and the
    leader's start time in clock ticks since boot, as /proc/PID/stat says)."""

    run_id: str
    step_id: str
    attempt: int
    pid: int
    started: float | None


@dataclass(frozen=True, slots=True)
class AttemptFinished:
    run_id: str
    outcome: Outcome
    max_attempts: int


@dataclass(frozen=True, slots=True)
class RetryScheduled:
    run_id: str
    step_id: str
    attempt: int  # the attempt that failed
    next_attempt: int
    delay: float
    next_retry_at: float  # epoch seconds


@dataclass(frozen=True, slots=True)
class StepFinished:
    run_id: str
    step_id: str
    status: StepStatus  # completed, failed, cancelled
    attempts: int
    error: str | None
    time: float


@dataclass(frozen=True, slots=True)
class StepSkipped:
    run_id: str
    step_id: str
    reason: str
    time: float


# What a recorder reports durable (Runner.durable) once RollbackStarted is committed: no step's id.
ROLLBACK_RECORDED = "\0rollback"


@dataclass(frozen=True, slots=True)
class RollbackStarted:
    """After a critical failure, before the first rollback runs: recorded
    first, so that a resume after a crash knows completed steps may have
    been undone."""

    run_id: str
    reason: str
    time: float


@dataclass(frozen=True, slots=True)
class StepRolledBack:
    run_id: str
    step_id: str
    ok: bool
    error: str | None
    outcome: Outcome | None
    time: float


@dataclass(frozen=True, slots=True)
class RunFinished:
    run_id: str
    result: Any  # RunResult
    time: float


Event = Union[RunStarted, StepStarted, ProcessStarted, AttemptFinished, RetryScheduled, StepFinished, StepSkipped,
              StepRolledBack, RunFinished]
Observer = Callable[[Event], None]
