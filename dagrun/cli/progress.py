"""Terminal progress for ``dagrun run`` (used by the CLI only).

One line per transition, readable in a terminal and in CI logs alike:
``[3/15] Create Python venv (attempt 2/3)``, then a final table. Everything a
step produced (its id, output, errors) is printed as text, never as Rich
markup: ``see [/var/log/app]`` in an error is just those characters.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..run.events import (AttemptFinished, RetryScheduled, RunStarted, StepFinished, StepRolledBack, StepSkipped,
                          StepStarted)
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

    def _print(self, *parts: str | tuple[str, str]) -> None:
        self.console.print(Text.assemble(*parts), highlight=False)

    def __call__(self, event: Any) -> None:
        out = self._print
        if isinstance(event, RunStarted):
            self.total = event.total_steps
            self.names = {sid: s.display_name for sid, s in event.plan.steps.items()}
            out((event.template, "bold"), f" {event.version}: {event.total_steps} steps, "
                f"{event.max_workers} workers, run {event.run_id}")
        elif isinstance(event, StepStarted):
            attempt = f" (attempt {event.attempt}/{event.max_attempts})" if event.max_attempts > 1 else ""
            out(f"{self._n(event.step_id)} {event.display_name} ", (event.step_id, "dim"), attempt)
        elif isinstance(event, AttemptFinished) and event.outcome.status.value == "failed":
            o = event.outcome
            out("  ", ("✗", "red"), f" {o.step_id} attempt {o.attempt}/{event.max_attempts} failed: {o.error}")
        elif isinstance(event, RetryScheduled):
            out("  ", ("↻", "yellow"), f" {event.step_id} retry in {event.delay:.1f} s")
        elif isinstance(event, StepFinished):
            style = STYLE.get(event.status.value, "white")
            out(f"{self._n(event.step_id)} ", (event.status.value, style), f" {self.names.get(event.step_id, '')} ",
                (event.step_id, "dim"))
        elif isinstance(event, StepSkipped):
            out(f"{self._n(event.step_id)} ", ("skipped", "yellow"), f" {self.names.get(event.step_id, '')} ",
                (event.step_id, "dim"), f": {event.reason}")
        elif isinstance(event, StepRolledBack):
            state = ("rolled back", "magenta") if event.ok else ("rollback failed", "red")
            out(f"  ↶ {event.step_id} ", state, "" if event.ok else f": {event.error}")


def summary_table(result: RunResult) -> Table:
    table = Table(title=Text(f"{result.template} {result.version} — run {result.run_id}"), title_justify="left")
    for column in ("#", "step", "action", "status", "attempts", "time", "detail"):
        table.add_column(column, overflow="fold")
    for step in result.steps.values():
        style = STYLE.get(step.status.value, "white")
        detail = step.error or step.skip_reason or step.rollback_error or ""
        table.add_row(str(step.sequence_order), Text(step.step_id), Text(step.action_name),
                      Text(step.status.value, style=style), str(step.attempts),
                      "" if step.duration_seconds is None else f"{step.duration_seconds:.2f}s", Text(detail))
    return table


def wall(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds >= 60 else f"{seconds:.2f} s"
