"""dagrun's exception tree.

Compile-time problems (bad templates, action definitions, workspaces, options)
are exceptions raised before anything runs. Step failures during a run are not
exceptions: they are recorded as data in an :class:`~dagrun.run.outcome.Outcome`.
The one exception a handler may raise on purpose is :class:`PermanentError`,
which tells the scheduler that retrying cannot help.
"""

from __future__ import annotations

from dataclasses import dataclass


class DagrunError(Exception):
    """Base of every error dagrun raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an input, located as precisely as we can."""

    source: str  # template or action name, or a file path
    message: str
    step: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = [self.source]
        if self.step is not None:
            where.append(f"step {self.step}")
        if self.field:
            where.append(f"field {self.field!r}")
        return f"{': '.join(where)}: {self.message}"


class TemplateError(DagrunError):
    """A template (or an action it uses) is invalid. Carries every problem found."""

    def __init__(self, problems: list[Problem] | Problem | str):
        if isinstance(problems, str):
            problems = [Problem("template", problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        super().__init__(self._render())

    def _render(self) -> str:
        if len(self.problems) == 1:
            return str(self.problems[0])
        lines = [f"{len(self.problems)} problems found:"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class ActionDefinitionError(TemplateError):
    """An action definition is invalid."""


class CycleError(TemplateError):
    """The dependency graph has a cycle; ``cycle`` lists the step labels in order."""

    def __init__(self, template: str, cycle: list[str]):
        self.cycle = cycle
        path = " -> ".join(cycle + cycle[:1])
        super().__init__(Problem(template, f"dependency cycle: {path}"))


class InputError(DagrunError):
    """A bad argument, workspace or option given to the API or CLI."""


class SupersededRun(InputError):
    """A run is not resumed: a newer run of its workspace came after it."""


class SecretsNeeded(InputError):
    """A resume must be given again what was not stored with the run:
    ``names`` (a variable, ``workspace.field``, ``step.field``)."""

    def __init__(self, run_id: str, names: list[str], hint: str = ""):
        self.run_id = run_id
        self.names = list(names)
        super().__init__(f"run {run_id} was started with secrets that are not stored: {', '.join(self.names)}; "
                         f"give them again{hint}")


class RunConflictError(DagrunError):
    """Another run is active for the same workspace (``run_id``: that run)."""

    def __init__(self, message: str, run_id: str | None = None):
        super().__init__(message)
        self.run_id = run_id


class StoreError(DagrunError):
    """The database cannot be opened, reached or written (the message names
    it with its password masked). Not bad input: the same call may succeed
    once the database is back."""


class PermanentError(Exception):
    """Raised by a handler when retrying the attempt cannot succeed
    (invalid configuration, missing program, permission refused)."""
