"""dagrun: provision developer workspaces from action-based templates.

A template compiles to a dependency graph (:func:`compile_template`); a
thread-pool scheduler runs every independent ready step concurrently with
retries, timeouts, conditions, validation and rollback
(:func:`run_template`), streaming each attempt to a database.

``import dagrun`` is cheap: each name below is imported on first use (the
compiler, the scheduler, the store and the service are only loaded by
whoever uses them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS = {
    **dict.fromkeys(("run_template", "start_run", "start_resume", "RunHandle", "cancel_run", "resume", "list_runs",
                     "get_run", "list_templates", "plan"), "dagrun.api"),
    **dict.fromkeys(("run_fleet", "resume_fleet", "FleetResult"), "dagrun.fleet"),
    "compile_template": "dagrun.compile",
    **dict.fromkeys(("ActionDefinitionError", "CycleError", "DagrunError", "InputError", "PermanentError", "Problem",
                     "RunConflictError", "SecretsNeeded", "StoreError", "SupersededRun", "TemplateError"), "dagrun.errors"),
    **dict.fromkeys(("HandlerResult", "RunStatus", "StepStatus"), "dagrun.run.outcome"),
    **dict.fromkeys(("RunResult", "StepResult"), "dagrun.run.result"),
}
__all__ = sorted(_EXPORTS)


_SUBMODULES = frozenset({"api", "fleet", "render", "spec", "workspace", "errors", "util", "locations", "compile", "run",
                         "store", "cli", "web"})


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:  # dagrun.api and the like, as before they were imported lazily
        return importlib.import_module(f"dagrun.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dagrun' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:  # what dagrun offers, not the names this module uses itself
    return sorted([*_EXPORTS, *_SUBMODULES, "__version__"])


if TYPE_CHECKING:  # what type checkers and editors see
    from .api import (RunHandle, cancel_run, get_run, list_runs, list_templates, plan, resume, run_template,
                      start_resume, start_run)
    from .compile import compile_template
    from .errors import (ActionDefinitionError, CycleError, DagrunError, InputError, PermanentError, Problem,
                         RunConflictError, SecretsNeeded, StoreError, SupersededRun, TemplateError)
    from .fleet import FleetResult, resume_fleet, run_fleet
    from .run.outcome import HandlerResult, RunStatus, StepStatus
    from .run.result import RunResult, StepResult
