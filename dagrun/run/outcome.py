"""What a worker returns: the outcome of one attempt, as data.

The worker wrapper catches everything; the scheduler thread decides what an
outcome means (retry, fail, skip downstream) with a pure policy.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class StepStatus(str, enum.Enum):
    pending = "pending"
    running = "running"
    completed = "completed"
    failed = "failed"
    skipped = "skipped"
    rolled_back = "rolled_back"
    cancelled = "cancelled"
    not_started = "not_started"  # the run ended (failed, cancelled) before the step could start

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def satisfies_dependents(self) -> bool:
        return self in (StepStatus.completed, StepStatus.skipped)


_TERMINAL = frozenset({StepStatus.completed, StepStatus.failed, StepStatus.skipped,
                       StepStatus.rolled_back, StepStatus.cancelled, StepStatus.not_started})


class RunStatus(str, enum.Enum):
    pending = "pending"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


@dataclass(slots=True)
class HandlerResult:
    """What a handler reports. Python handlers may return a dict (the result
    data), ``None`` (success) or ``False`` (failure) instead."""

    ok: bool = True
    data: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    timed_out: bool = False
    cancelled: bool = False
    changed: bool | None = None  # did the handler change anything? (None: it does not say)


@dataclass(slots=True)
class Outcome:
    """The result of one attempt of one step."""

    step_id: str
    attempt: int
    status: StepStatus  # completed, failed, skipped or cancelled
    started_at: float = 0.0  # wall-clock epoch seconds
    duration: float = 0.0
    error: str | None = None
    retryable: bool = True
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] | None = None  # the interpolated config used
    timed_out: bool = False
    skip_reason: str | None = None
    changed: bool | None = None  # did the attempt change anything (None: the handler does not say)
