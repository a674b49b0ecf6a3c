"""Terminal progress for ``dagrun run`` (used by the CLI only).

One line per transition, readable in a terminal and in CI logs alike:
``[3/15] Create Python venv (attempt 2/3)``, then a final table.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table

from ..run.events import (AttemptFinished, RetryScheduled, RunFinished, RunStarted, StepFinished, StepRolledBack,
                     StepSkipped, StepStarted)
from ..run.result import RunResult

STYLE = {"completed": "green", "failed": "red", "skipped": "yellow", "rolled_back": "magenta",
         "cancelled": "bright_black", "pending": "white", "running": "cyan"}


class Progress:
    def __init__(self, console: Console):
        self.console = console
        self.total = 0
        self.index: dict[str, int] = {}
        self.names: dict[str, str] = {}

    def _n(self, sid: str) -> str:
        if sid not in self.index:
            self.index[sid] = len(self.index) + 1
        return f"[{self.index[sid]}/{self.total}]"

    def __call__(self, event: Any) -> None:
        out = self.console.print
        if isinstance(event, RunStarted):
            self.total = event.total_steps
            self.names = {sid: s.display_name for sid, s in event.plan.steps.items()}
            out(f"[bold]{event.template}[/] {event.version}: {event.total_steps} steps, "
                f"{event.max_workers} workers, run {event.run_id}")
        elif isinstance(event, StepStarted):
            attempt = f" (attempt {event.attempt}/{event.max_attempts})" if event.max_attempts > 1 else ""
            out(f"{self._n(event.step_id)} {event.display_name} [dim]{event.step_id}[/]{attempt}", highlight=False)
        elif isinstance(event, AttemptFinished) and event.outcome.status.value == "failed":
            o = event.outcome
            out(f"  [red]✗[/] {o.step_id} attempt {o.attempt}/{event.max_attempts} failed: {o.error}", highlight=False)
        elif isinstance(event, RetryScheduled):
            out(f"  [yellow]↻[/] {event.step_id} retry in {event.delay:.1f} s", highlight=False)
        elif isinstance(event, StepFinished):
            style = STYLE.get(event.status.value, "white")
            out(f"{self._n(event.step_id)} [{style}]{event.status.value}[/] {self.names.get(event.step_id, '')} "
                f"[dim]{event.step_id}[/]", highlight=False)
        elif isinstance(event, StepSkipped):
            out(f"{self._n(event.step_id)} [yellow]skipped[/] {self.names.get(event.step_id, '')} "
                f"[dim]{event.step_id}[/]: {event.reason}", highlight=False)
        elif isinstance(event, StepRolledBack):
            state = "[magenta]rolled back[/]" if event.ok else f"[red]rollback failed[/]: {event.error}"
            out(f"  ↶ {event.step_id} {state}", highlight=False)
        elif isinstance(event, RunFinished):
            pass


def summary_table(result: RunResult) -> Table:
    table = Table(title=f"{result.template} {result.version} — run {result.run_id}", title_justify="left")
    for column in ("#", "step", "action", "status", "attempts", "time", "detail"):
        table.add_column(column, overflow="fold")
    for step in result.steps.values():
        style = STYLE.get(step.status.value, "white")
        detail = step.error or step.skip_reason or step.rollback_error or ""
        table.add_row(str(step.sequence_order), step.step_id, step.action_name,
                      f"[{style}]{step.status.value}[/]", str(step.attempts),
                      "" if step.duration_seconds is None else f"{step.duration_seconds:.2f}s", detail)
    return table


def wall(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds >= 60 else f"{seconds:.2f} s"
