"""What ``dagrun run`` prints (the CLI only): progress, then a summary.

One line per transition, readable in a terminal and in CI logs alike, each
step numbered by its place in the plan (the same number as in the table)
and named by its id first: ``[3/8] venv · Create Python venv``. The table
fits 80 columns (identifiers are cut with …, never split); errors and skip
reasons go under it, in full. Everything a step produced is printed as text,
never as Rich markup: ``see [/var/log/app]`` in an error is just that.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..run.events import (AttemptFinished, RetryScheduled, RunStarted, StepFinished, StepRolledBack, StepSkipped,
                          StepStarted)
from ..run.events import RunFinished as RunFinishedEvent
from ..run.result import RunResult

STYLE = {"completed": "green", "failed": "red", "skipped": "yellow", "rolled_back": "magenta",
         "cancelled": "bright_black", "not_started": "bright_black", "running": "cyan",
         "interrupted": "red"}
WORDS = {"rolled_back": "rolled back", "not_started": "not started"}


class Progress:
    def __init__(self, console: Console):
        self.console = console
        self.total = 0
        self.position: dict[str, int] = {}
        self.names: dict[str, str] = {}
        self.tries: dict[str, int] = {}  # attempts made in this process (a resume starts again at 1)

    def _n(self, sid: str) -> str:
        width = len(str(self.total))
        return f"[{self.position.get(sid, 0):>{width}}/{self.total}]"

    def _print(self, *parts: str | tuple[str, str]) -> None:
        self.console.print(Text.assemble(*parts), highlight=False, soft_wrap=True)

    def __call__(self, event: Any) -> None:
        out = self._print
        if isinstance(event, RunStarted):
            self.total = event.total_steps
            self.position = {sid: i for i, sid in enumerate(event.plan.order, 1)}
            self.names = {sid: s.display_name for sid, s in event.plan.steps.items()}
            out((event.template, "bold"), f" {event.version}: {event.total_steps} steps, "
                f"{event.max_workers} workers, run {event.run_id}")
        elif isinstance(event, StepStarted):
            tries = self.tries[event.step_id] = self.tries.get(event.step_id, 0) + 1
            attempt = f" (attempt {tries}/{event.max_attempts})" if tries > 1 else ""
            out(f"{self._n(event.step_id)} ", (event.step_id, "bold"), f" · {event.display_name}{attempt}")
        elif isinstance(event, AttemptFinished) and event.outcome.status.value == "failed":
            o = event.outcome
            first = (o.error or "failed").splitlines()[0]
            out(" " * (len(self._n(o.step_id)) + 1), ("✗", "red"), f" {o.step_id}: {first}")
        elif isinstance(event, RetryScheduled):
            out(" " * (len(self._n(event.step_id)) + 1), ("↻", "yellow"),
                f" {event.step_id}: again in {event.delay:.1f} s")
        elif isinstance(event, StepFinished):
            status = event.status.value
            out(f"{self._n(event.step_id)} ", (event.step_id, "bold"), " ",
                (WORDS.get(status, status), STYLE.get(status, "white")))
        elif isinstance(event, StepSkipped):
            out(f"{self._n(event.step_id)} ", (event.step_id, "bold"), " ", ("skipped", "yellow"),
                f": {event.reason}")
        elif isinstance(event, StepRolledBack):
            state = ("rolled back", "magenta") if event.ok else ("rollback failed", "red")
            out(" " * (len(self._n(event.step_id)) + 1), f"↶ {event.step_id} ", state,
                "" if event.ok else f": {event.error}")


def summary_table(result: RunResult, width: int = 80) -> Table:
    """One row per step; cut, never wrapped, so it reads at 80 columns."""
    wide = width >= 110
    table = Table(title=Text(f"{result.template} {result.version}: run {result.run_id}"), title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("step", no_wrap=True, overflow="ellipsis", max_width=28 if wide else 18)
    if wide:
        table.add_column("action", no_wrap=True, overflow="ellipsis", max_width=30)
    table.add_column("status", no_wrap=True)
    table.add_column("tries", justify="right", no_wrap=True)
    table.add_column("time", justify="right", no_wrap=True)
    table.add_column("would change" if result.check else "changed", no_wrap=True)
    for i, step in enumerate(result.steps.values(), 1):
        status = step.status.value
        if status != "completed":
            changed = ""
        elif result.check:
            changed = {True: "yes", False: "no", None: "?"}[step.changed]
        else:
            changed = "no" if step.changed is False else "yes"
        row = [str(i), Text(step.step_id)] + ([Text(step.action_name)] if wide else []) + [
            Text(WORDS.get(status, status), style=STYLE.get(status, "white")), str(step.attempts),
            "" if step.duration_seconds is None else _short(step.duration_seconds), changed]
        table.add_row(*row)
    return table


def details(result: RunResult) -> list[Text]:
    """What the table cannot hold: each step's error, skip reason or check note, in full."""
    lines = []
    for i, step in enumerate(result.steps.values(), 1):
        note = step.error or step.skip_reason or step.rollback_error or (
            step.result.get("check") if result.check and step.changed is not False else None)
        if note:
            lines.append(Text.assemble((f"{i:>3} {step.step_id}: ", "bold"), str(note)))
    return lines


def summary_line(result: RunResult) -> Text:
    """``succeeded in 3.1 s: 5 changed, 2 unchanged, 1 skipped`` and the like."""
    status = result.status.value
    failed, skipped, rolled, not_started = (result.failed_actions, result.skipped_actions,
                                            result.rolled_back_actions, result.not_started_actions)
    if result.success and failed:
        status = f"succeeded with {failed} non-critical failure{'s' if failed != 1 else ''}"
    if result.check:
        unknown = sum(1 for s in result.steps.values() if s.status.value == "completed" and s.changed is None)
        counts = [f"{result.changed_actions - unknown} would change", f"{result.unchanged_actions} unchanged"]
        if unknown:
            counts.append(f"{unknown} cannot tell")
        status = "check " + status
    else:
        counts = [f"{result.changed_actions} changed", f"{result.unchanged_actions} unchanged"]
    counts += [f"{n} {word}" for n, word in ((failed, "failed"), (skipped, "skipped"), (rolled, "rolled back"),
                                             (not_started, "not started")) if n]
    colour = "green" if result.success else "red"
    return Text.assemble((status, colour), f" in {wall(result.duration_seconds)}: {', '.join(counts)}"
                         + (" (nothing was changed)" if result.check else ""))


def print_summary(console: Console, result: RunResult, *, home: str | None = None) -> None:
    from ..store.engine import describe_url
    console.print(summary_table(result, console.width))
    for line in details(result):
        console.print(line, soft_wrap=True)
    if home:
        console.print(Text(f"workspace: {home}"), soft_wrap=True)
    if result.database_url:
        console.print(Text(f"records: {describe_url(result.database_url)} (run {result.run_id})"), soft_wrap=True)
    console.print(summary_line(result), soft_wrap=True)
    if result.error:
        console.print(Text(result.error, style="red"), soft_wrap=True)
    if result.database_url and not result.success and not result.check:
        # (a resume runs the template as the run recorded it: a fixed template file is a new run)
        from ..api import default_database_url
        db = "" if result.database_url == default_database_url() else f" --db {describe_url(result.database_url)}"
        console.print(Text(f"to continue this run as recorded: dagrun resume {result.run_id[:8]}{db}\n"
                           "after changing the template, run it again instead"), soft_wrap=True)


def _short(seconds: float) -> str:
    return f"{seconds:.2f}s" if seconds < 10 else (f"{seconds:.0f}s" if seconds < 600 else f"{seconds / 60:.0f}m")


def wall(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds >= 60 else f"{seconds:.2f} s"


class FleetProgress:
    """``dagrun fleet``'s live display: a line per workspace as it starts,
    as a step of it fails, and as it ends, with how many are done."""

    def __init__(self, console: Console, total: int):
        self.console = console
        self.total = total
        self.done = 0
        self.width = max(len("workspace"), 8)
        self._lock = threading.Lock()

    def observer(self, workspace_id: str) -> Any:
        def seen(event: Any) -> None:
            if isinstance(event, RunStarted):
                self._line(workspace_id, ("started", "cyan"), f" {event.total_steps} steps, run {event.run_id[:8]}")
            elif isinstance(event, StepFinished) and event.status.value == "failed":
                first = (event.error or "failed").splitlines()[0]
                self._line(workspace_id, ("✗", "red"), f" {event.step_id}: {first}")
            elif isinstance(event, RunFinishedEvent):
                with self._lock:
                    self.done += 1
                result = event.result
                status = result.status.value
                done = f"[{self.done}/{self.total} done]" if self.total else f"[{self.done} done]"
                self._line(workspace_id, (status, "green" if result.success else "red"),
                           f" in {wall(result.duration_seconds)} "
                           f"({result.completed_actions}/{result.total_actions} steps) {done}")
        return seen

    def _line(self, workspace_id: str, *parts: str | tuple[str, str]) -> None:
        with self._lock:
            self.console.print(Text.assemble((f"{workspace_id} ", "bold"), *parts), highlight=False, soft_wrap=True)


def fleet_table(fleet: Any, width: int = 80) -> Table:
    """One row per workspace; cut, never wrapped."""
    table = Table(title=Text(f"fleet {fleet.fleet_id}"), title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False, collapse_padding=True)
    table.add_column("workspace", no_wrap=True, overflow="ellipsis", max_width=24)
    table.add_column("status", no_wrap=True, min_width=11)
    table.add_column("steps", justify="right", no_wrap=True, min_width=5)
    table.add_column("time", justify="right", no_wrap=True, min_width=6)
    table.add_column("run", no_wrap=True, min_width=8)
    table.add_column("error", no_wrap=True, overflow="ellipsis", max_width=max(10, width - 66))
    for ws in fleet.order or list(fleet.results):
        result = fleet.results.get(ws)
        if result is None:
            continue
        status = result.status.value
        table.add_row(Text(ws), Text(WORDS.get(status, status), style=STYLE.get(status, "white")),
                      f"{result.completed_actions}/{result.total_actions}", _short(result.duration_seconds),
                      result.run_id[:8], Text((result.error or "").splitlines()[0] if result.error else ""))
    for ws, error in fleet.errors.items():
        table.add_row(Text(ws), Text("not started", style="bright_black"), "", "", "", Text(error.splitlines()[0]))
    return table


def print_fleet_summary(console: Console, fleet: Any) -> None:
    console.print(fleet_table(fleet, console.width))
    ok, bad = len(fleet.succeeded), len(fleet.failed)
    console.print(Text.assemble((f"{ok} succeeded", "green"), ", ", (f"{bad} failed", "red" if bad else "green"),
                                f" in {wall(fleet.duration_seconds)}"), soft_wrap=True)
    if bad:
        console.print(Text(f"to resume them: dagrun fleet --resume {fleet.fleet_id}"), soft_wrap=True)
