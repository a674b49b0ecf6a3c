"""dagrun: provision developer workspaces from action-based templates.

A template compiles to a dependency graph (:func:`compile_template`); a
thread-pool scheduler runs every independent ready step concurrently with
retries, timeouts, conditions, validation and rollback
(:func:`run_template`), streaming each attempt to a database.
"""

from .api import (RunHandle, cancel_run, get_run, list_runs, list_templates, plan, resume, run_template,
                  start_resume, start_run)
from .compile import compile_template
from .fleet import FleetResult, resume_fleet, run_fleet
from .errors import (ActionDefinitionError, CycleError, DagrunError, InputError, PermanentError, Problem,
                     RunConflictError, StoreError, TemplateError)
from .run.outcome import HandlerResult, RunStatus, StepStatus
from .run.result import RunResult, StepResult

__all__ = [
    "run_template", "run_fleet", "resume_fleet", "FleetResult", "start_run", "start_resume", "RunHandle", "cancel_run", "resume", "list_runs", "get_run",
    "list_templates", "compile_template", "plan", "RunConflictError", "RunResult", "StepResult", "RunStatus", "StepStatus",
    "HandlerResult", "DagrunError", "TemplateError", "CycleError", "ActionDefinitionError", "InputError",
    "PermanentError", "Problem", "StoreError",
]
__version__ = "0.1.0"
