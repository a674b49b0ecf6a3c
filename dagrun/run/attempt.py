"""One attempt of one step, as run on a worker.

``run_attempt`` never raises: whatever happens becomes an
:class:`~dagrun.run.outcome.Outcome`. Order of work: condition (first attempt
only, i.e. when the step becomes ready) -> interpolate config -> re-validate
interpolated config -> optional ``check_first`` validation -> execute ->
validate. Errors that cannot succeed on retry (undefined variables, invalid
interpolated config, :class:`~dagrun.errors.PermanentError`) are marked not
retryable.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from typing import Any, Mapping

from jinja2 import TemplateError as JinjaError

from ..compile import expressions
from ..compile.compiler import config_problems
from ..errors import PermanentError
from .handler_types import ActionHandlers, StepContext
from .outcome import HandlerResult, Outcome, StepStatus
from .shell import CancelToken
from ..spec import StepSpec


@dataclass(frozen=True, slots=True)
class AttemptJob:
    """What every attempt of one step needs; built once per step and run."""

    step: StepSpec
    handlers: ActionHandlers
    workspace: Mapping[str, Any]
    variables: Mapping[str, Any]
    env: Mapping[str, str]
    home: str | None
    cancel: CancelToken
    sudo: tuple[str, ...] = ()  # prefix for privileged commands ("sudo", "-n") when not root


def _context(job: AttemptJob, config: Mapping[str, Any], steps: Mapping[str, Any]) -> dict[str, Any]:
    return expressions.build_context(workspace=job.workspace, config=config, variables=job.variables,
                                     env=job.env, steps=steps, home=job.home)


def _outcome(job: AttemptJob, attempt: int, status: StepStatus, started: float, t0: float, **fields: Any) -> Outcome:
    return Outcome(job.step.id, attempt, status, started, time.perf_counter() - t0, **fields)


def _from_handler(job: AttemptJob, attempt: int, result: HandlerResult, started: float, t0: float,
                  config: dict[str, Any], error_prefix: str = "") -> Outcome:
    if result.ok:
        return Outcome(job.step.id, attempt, StepStatus.completed, started, time.perf_counter() - t0,
                       exit_code=result.exit_code, stdout=result.stdout, stderr=result.stderr, data=result.data,
                       config=config)
    status = StepStatus.cancelled if result.cancelled or job.cancel.cancelled else StepStatus.failed
    return _outcome(job, attempt, status, started, t0, error=error_prefix + (result.error or "failed"),
                    exit_code=result.exit_code, stdout=result.stdout, stderr=result.stderr, data=result.data,
                    config=config, timed_out=result.timed_out)


def check_disk_space(home: str | None, required_mb: int) -> None:
    """Refuse a step whose action needs more free space than there is."""
    where = home if home and os.path.isdir(home) else os.getcwd()
    free_mb = shutil.disk_usage(where).free // (1024 * 1024)
    if free_mb < required_mb:
        raise PermanentError(f"needs {required_mb} MB free on {where}, only {free_mb} MB available")


def run_attempt(job: AttemptJob, attempt: int, steps: Mapping[str, Any], evaluate_condition: bool) -> Outcome:
    """Attempt ``attempt`` of the job's step; ``steps`` holds the results of
    the upstream steps it reads."""
    started, t0 = time.time(), time.perf_counter()
    step = job.step
    config: dict[str, Any] = dict(step.config)
    try:
        if evaluate_condition and step.condition is not None:
            if not step.condition.evaluate(_context(job, config, steps)):
                return _outcome(job, attempt, StepStatus.skipped, started, t0,
                                skip_reason=f"condition is false: {step.condition.source}")
        if step.templated:
            config = expressions.render_value(config, _context(job, config, steps), shell_fields=step.shell_fields)
            problems = config_problems(config, step.action.config_schema, allow_templates=False)
            if problems:
                raise PermanentError("invalid config after interpolation: "
                                     + "; ".join(f"{f}: {m}" for f, m in problems))
        if step.action.disk_space_required_mb:
            check_disk_space(job.home, step.action.disk_space_required_mb)
        ctx = StepContext(step.id, step.action, config, job.workspace, job.variables, steps, job.env, job.home,
                          attempt, step.timeout_seconds, job.cancel, sudo=job.sudo)
        validate = job.handlers.validate
        if step.check_first and validate is not None:
            check = validate(ctx)
            if check.ok:
                return _outcome(job, attempt, StepStatus.completed, started, t0, config=config,
                                data={**check.data, "already_satisfied": True}, stdout=check.stdout)
        result = job.handlers.execute(ctx)
        if not result.ok or validate is None:
            return _from_handler(job, attempt, result, started, t0, config)
        ctx.result = result.data
        check = validate(ctx)
        if not check.ok:
            return _from_handler(job, attempt, check, started, t0, config, error_prefix="validation failed: ")
        out = _from_handler(job, attempt, result, started, t0, config)
        out.stdout += check.stdout
        return out
    except PermanentError as exc:
        return _outcome(job, attempt, StepStatus.failed, started, t0, error=str(exc), retryable=False, config=config)
    except JinjaError as exc:
        return _outcome(job, attempt, StepStatus.failed, started, t0, error=f"template error: {exc}",
                        retryable=False, config=config)
    except Exception as exc:  # a handler bug is a failed attempt, not a crashed run
        return _outcome(job, attempt, StepStatus.failed, started, t0, error=f"{type(exc).__name__}: {exc}",
                        config=config)


def run_rollback(job: AttemptJob, attempt: int, steps: Mapping[str, Any], result: dict[str, Any],
                 config: Mapping[str, Any] | None) -> Outcome:
    """Run the rollback handler of a completed step with its execute result."""
    started, t0 = time.time(), time.perf_counter()
    step = job.step
    cfg = dict(config if config is not None else step.config)
    try:
        ctx = StepContext(step.id, step.action, cfg, job.workspace, job.variables, steps, job.env, job.home,
                          attempt, step.timeout_seconds, job.cancel, result=result, sudo=job.sudo)
        assert job.handlers.rollback is not None
        return _from_handler(job, attempt, job.handlers.rollback(ctx), started, t0, cfg)
    except Exception as exc:
        return _outcome(job, attempt, StepStatus.failed, started, t0, error=f"{type(exc).__name__}: {exc}",
                        config=cfg)
