"""What ``run_template()`` returns.

:class:`RunResult` carries the seed's summary fields (``success``,
``total_actions``, ``completed_actions``, ``failed_actions``,
``skipped_actions``, ``execution_details``, ``error``, ``failed_action``) and
reads like a mapping of them, so the seed's ``result.update(execution_result)``
in ``apply_workspace_template_v2`` works unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from .outcome import RunStatus, StepStatus


@dataclass(slots=True)
class StepResult:
    step_id: str
    sequence_order: int
    action_name: str
    display_name: str
    status: StepStatus
    attempts: int = 0
    duration_seconds: float | None = None
    error: str | None = None
    skip_reason: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    rollback_error: str | None = None
    changed: bool | None = None  # did the step change anything? (None: its handler does not say)


@dataclass(slots=True)
class RunResult:
    run_id: str
    template: str
    version: str
    workspace_id: str
    status: RunStatus
    steps: dict[str, StepResult]
    started_at: float
    finished_at: float
    error: str | None = None
    failed_action: str | None = None
    database_url: str | None = None
    check: bool = False  # a --check run: "changed" means "would change"; nothing was done

    @property
    def success(self) -> bool:
        return self.status is RunStatus.succeeded

    def _count(self, *statuses: StepStatus) -> int:
        return sum(1 for s in self.steps.values() if s.status in statuses)

    @property
    def total_actions(self) -> int:
        return len(self.steps)

    @property
    def completed_actions(self) -> int:
        return self._count(StepStatus.completed)

    @property
    def failed_actions(self) -> int:
        return self._count(StepStatus.failed)

    @property
    def skipped_actions(self) -> int:
        return self._count(StepStatus.skipped)

    @property
    def rolled_back_actions(self) -> int:
        return self._count(StepStatus.rolled_back)

    @property
    def not_started_actions(self) -> int:
        return self._count(StepStatus.not_started)

    @property
    def changed_actions(self) -> int:
        """Completed steps that changed something (or do not say: a script)."""
        return sum(1 for s in self.steps.values() if s.status is StepStatus.completed and s.changed is not False)

    @property
    def unchanged_actions(self) -> int:
        """Completed steps that found everything already as it should be."""
        return sum(1 for s in self.steps.values() if s.status is StepStatus.completed and s.changed is False)

    @property
    def duration_seconds(self) -> float:
        return self.finished_at - self.started_at

    @property
    def execution_details(self) -> list[dict[str, Any]]:
        return [{
            "step_id": s.step_id, "sequence_order": s.sequence_order, "action_name": s.action_name,
            "display_name": s.display_name, "status": s.status.value, "attempts": s.attempts,
            "duration_seconds": None if s.duration_seconds is None else round(s.duration_seconds, 3),
            "error": s.error, "skip_reason": s.skip_reason,
            "changed": None if s.status is not StepStatus.completed else s.changed is not False,
        } for s in self.steps.values()]

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "template": self.template, "version": self.version,
            "workspace_id": self.workspace_id, "status": self.status.value, "success": self.success,
            "check": self.check,
            "total_actions": self.total_actions, "completed_actions": self.completed_actions,
            "failed_actions": self.failed_actions, "skipped_actions": self.skipped_actions,
            "rolled_back_actions": self.rolled_back_actions, "not_started_actions": self.not_started_actions,
            "changed_actions": self.changed_actions, "unchanged_actions": self.unchanged_actions,
            "execution_details": self.execution_details, "error": self.error, "failed_action": self.failed_action,
            "duration_seconds": round(self.duration_seconds, 3), "database_url": self.database_url,
            "results": {sid: s.result for sid, s in self.steps.items()},
        }

    # Mapping protocol over as_dict(), for code written against the seed's dict.
    def keys(self) -> list[str]:
        return list(self.as_dict())

    def __getitem__(self, key: str) -> Any:
        return self.as_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def get(self, key: str, default: Any = None) -> Any:
        return self.as_dict().get(key, default)


def step_result_dict(step: StepResult) -> dict[str, Any]:
    out = asdict(step)
    out["status"] = step.status.value
    return out
