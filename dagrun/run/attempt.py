"""One attempt of one step, as run on a worker (a thread, or another process).

``run_attempt`` never raises: whatever happens becomes an
:class:`~dagrun.run.outcome.Outcome`. Order of work: condition (at every
attempt: it may read upstream results and the file system) -> interpolate
config, field by field in dependency order -> re-validate the interpolated
config -> optional ``check_first`` validation -> execute -> validate. Errors
that cannot succeed on retry (a condition that raises, undefined variables,
invalid interpolated config, a value refused by the shell rules,
:class:`~dagrun.errors.PermanentError`) are marked not retryable.

A job is plain data (it pickles): the handlers are resolved here, by action.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from jinja2 import TemplateError as JinjaError

from ..compile import expressions
from ..compile.configs import config_problems, render_config
from ..compile.shell_text import ShellValueError, UnsafeContext
from ..errors import PermanentError
from ..spec import Limits, StepSpec
from ..util import fresh_copy
from .handler_types import StepContext, handlers_for
from .isolation import Isolation, User, ensure_home
from .outcome import HandlerResult, Outcome, StepStatus
from .paths import home_state
from .shell import CancelToken


@dataclass(slots=True)
class AttemptJob:
    """What every attempt of one step needs; built once per step, never
    changed after (not frozen: a frozen init costs a setattr call per field,
    and one is built for every step of every run)."""

    step: StepSpec
    workspace: Mapping[str, Any]
    variables: Mapping[str, Any]
    env: Mapping[str, str]  # the step's environment: the allowlisted part of the caller's
    home: str | None
    sudo: tuple[str, ...] = ()  # prefix for privileged commands ("sudo", "-n") when not root
    user: str | None = None  # run the step's processes as this Linux user
    workspace_user: str | None = None  # the workspace's user steps run as (even when this one is root's)
    sandbox: bool = False
    run_id: str | None = None
    check: bool = False  # --check: validate only, change nothing
    home_root: str | None = None  # the allowed folder the home is in (as root, the home is checked up to it)
    adopt_users: tuple[str, ...] = ()  # accounts the operator lets any workspace run as
    priority: float = 0.0  # the step's remaining critical path (seconds): a cluster runs longer paths first
    plain_isolation: Isolation | None = field(default=None, compare=False, repr=False)  # made by the first attempt


def _context(job: AttemptJob, config: Mapping[str, Any], steps: Mapping[str, Any]) -> dict[str, Any]:
    return expressions.build_context(workspace=job.workspace, config=config, variables=job.variables,
                                     env=job.env, steps=steps, home=job.home)


def _outcome(job: AttemptJob, attempt: int, status: StepStatus, started: float, t0: float, **fields: Any) -> Outcome:
    return Outcome(job.step.id, attempt, status, started, time.perf_counter() - t0, **fields)


def _from_handler(job: AttemptJob, attempt: int, result: HandlerResult, started: float, t0: float,
                  config: dict[str, Any], cancel: CancelToken, error_prefix: str = "") -> Outcome:
    if result.ok:  # positional, in field order (error, retryable, exit_code, stdout, stderr, data, config,
        # timed_out, skip_reason, changed): once per attempt, and keywords cost four times as much
        return Outcome(job.step.id, attempt, StepStatus.completed, started, time.perf_counter() - t0, None, True,
                       result.exit_code, result.stdout, result.stderr, result.data, config, False, None,
                       result.changed)
    status = StepStatus.cancelled if result.cancelled or cancel.cancelled else StepStatus.failed
    return _outcome(job, attempt, status, started, t0, error=error_prefix + (result.error or "failed"),
                    exit_code=result.exit_code, stdout=result.stdout, stderr=result.stderr, data=result.data,
                    config=config, timed_out=result.timed_out)


def home_usage(home: str | None) -> int:
    """Bytes used under the workspace home (what a step's files cost)."""
    total = 0
    for root, _dirs, files in os.walk(home or "/nonexistent"):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue
    return total


def check_disk_space(home: str | None, required_mb: int) -> None:
    """Refuse a step whose action needs more free space than there is."""
    where = home if home and os.path.isdir(home) else os.getcwd()
    free_mb = shutil.disk_usage(where).free // (1024 * 1024)
    if free_mb < required_mb:
        raise PermanentError(f"needs {required_mb} MB free on {where}, only {free_mb} MB available")


def _uid(name: str | None) -> int | None:
    if not name:
        return None
    import pwd
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def isolation_for(job: AttemptJob) -> Isolation:
    """The step's isolation, resolved now: the workspace user may have been
    created by an earlier step of the run."""
    action = job.step.action
    if job.user and os.geteuid() == 0:
        from .accounts import account_problem
        problem = account_problem(job.user, str(job.workspace["id"]), job.adopt_users)
        if problem:
            raise PermanentError(problem)
    user = User.lookup(job.user) if job.user else None
    exists = None
    home = _work_home(job)
    if home and os.geteuid() == 0:
        # Checked again as each attempt starts (an earlier step may have changed the folders): no
        # symlink or folder another user could change between the allowed root and the home, and
        # the home not somebody else's.
        owner = user.uid if user is not None else _uid(job.workspace_user)
        problem, exists = home_state(home, job.home_root, owner)
        if problem:
            raise PermanentError(problem)
    # The home is made for the steps that work in it: the workspace user's (the user's
    # own home is made by create_linux_user, which a root step before it must not pre-empt).
    # A check makes nothing.
    if home and (user is not None or not job.workspace_user) and not job.check \
            and not (os.path.exists(home) if exists is None else exists):
        ensure_home(home, user)
    if user is not None:
        return Isolation(user=user, sandbox=job.sandbox, network=action.requires_network, limits=action.limits,
                         home=home)
    if job.plain_isolation is None:  # without a user, the same for every attempt of the step
        job.plain_isolation = _plain_isolation(job.sandbox, action.requires_network, action.limits, home)
    return job.plain_isolation


def _work_home(job: AttemptJob) -> str | None:
    """The home the step's handler works in. None for a trusted action that
    says it works in no home: its attempts neither make the home nor, as
    root, check the folders above it (with eight workers that one system
    call per attempt costs more than the rest of a short step's overhead),
    and its handler is handed no home to use after all."""
    action = job.step.action
    return job.home if action.works_in_home or not action.library else None


@functools.lru_cache(maxsize=1024)
def _plain_isolation(sandbox: bool, network: bool, limits: Limits | None, home: str | None) -> Isolation:
    """Isolation is frozen: the steps of a run (and of runs) with the same
    settings share one, instead of leaving one object per step for the
    garbage collector to walk until the run ends."""
    return Isolation(sandbox=sandbox, network=network, limits=limits, home=home)


def _context_for(job: AttemptJob, steps: Mapping[str, Any], attempt: int, cancel: CancelToken,
                 config: dict[str, Any], result: dict[str, Any] | None = None,
                 isolation: Isolation | None = None, report: Any = None) -> StepContext:
    step = job.step
    # Positional, in field order (... cancel, result, sudo, isolation, run_id, report, deadline,
    # adopt_users, home_root): once per attempt, and keywords cost four times as much.
    return StepContext(step.id, step.action, config, job.workspace, job.variables, steps, job.env, _work_home(job),
                       attempt, step.timeout_seconds, cancel, result or {}, job.sudo, isolation or Isolation(),
                       job.run_id, report, time.monotonic() + step.timeout_seconds, job.adopt_users, job.home_root)


def _isolated(handler: Any, field: str, action: Any, isolation: Isolation) -> Any:
    """A handler of a user-defined action that runs in Python (a callable,
    an api_call, a template_copy) runs in a worker process when its step is
    sandboxed or runs as the workspace user. (Shell handlers isolate each
    command they run.)"""
    if handler is None or action.library or not getattr(handler, "in_worker", False) or not isolation.restricted:
        return handler
    from .worker import call_isolated
    return lambda ctx: call_isolated(field, ctx)


def run_attempt(job: AttemptJob, attempt: int, steps: Mapping[str, Any], cancel: CancelToken,
                report: Any = None) -> Outcome:
    """Attempt ``attempt`` of the job's step; ``steps`` holds the results of
    the upstream steps it reads; ``report(pid, started)`` hears of each
    command it starts."""
    started, t0 = time.time(), time.perf_counter()
    step = job.step
    config: dict[str, Any] = fresh_copy(step.config)  # the plan is shared by other runs: never changed here
    try:
        if step.condition is not None:
            try:
                holds = step.condition.evaluate(_context(job, config, steps))
            except Exception as exc:  # a condition that cannot be evaluated never lets the step run
                return _outcome(job, attempt, StepStatus.failed, started, t0, retryable=False, config=config,
                                error=f"condition {step.condition.source!r} failed: {type(exc).__name__}: {exc}")
            if not holds:
                return _outcome(job, attempt, StepStatus.skipped, started, t0,
                                skip_reason=f"condition is false: {step.condition.source}")
        if step.templated:
            config = render_config(config, step.config_order, schema=step.action.config_schema,
                                   shell=step.shell_fields, make_context=lambda c: _context(job, c, steps))
            problems = config_problems(config, step.action.config_schema, allow_templates=False)
            if problems:
                raise PermanentError("invalid config after interpolation: "
                                     + "; ".join(f"{f}: {m}" for f, m in problems))
        if job.check:
            return _check(job, attempt, steps, cancel, config, report, started, t0)
        if step.action.disk_space_required_mb:
            check_disk_space(_work_home(job), step.action.disk_space_required_mb)
        isolation = isolation_for(job)
        handlers = handlers_for(step.action)
        ctx = _context_for(job, steps, attempt, cancel, config, isolation=isolation, report=report)
        validate = _isolated(handlers.validate, "validation_handler", step.action, isolation)
        execute = _isolated(handlers.execute, "execution_handler", step.action, isolation)
        if step.check_first and validate is not None:
            check = validate(ctx)
            if check.ok:
                return _outcome(job, attempt, StepStatus.completed, started, t0, config=config,
                                data={**check.data, "already_satisfied": True}, stdout=check.stdout, changed=False)
        used_before = home_usage(job.home) if step.sandbox and step.action.disk_space_required_mb else None
        result = execute(ctx)
        if used_before is not None and result.ok:
            grew = (home_usage(job.home) - used_before) // (1024 * 1024)
            if grew > step.action.disk_space_required_mb:
                return _outcome(job, attempt, StepStatus.failed, started, t0, config=config, retryable=False,
                                error=f"the step used {grew} MB of the workspace home, more than the "
                                      f"{step.action.disk_space_required_mb} MB its action declares")
        if not result.ok or validate is None:
            return _from_handler(job, attempt, result, started, t0, config, cancel)
        ctx.result = result.data
        check = validate(ctx)
        if not check.ok:
            return _from_handler(job, attempt, check, started, t0, config, cancel, error_prefix="validation failed: ")
        out = _from_handler(job, attempt, result, started, t0, config, cancel)
        out.stdout += check.stdout
        return out
    except (PermanentError, ShellValueError, UnsafeContext) as exc:
        return _outcome(job, attempt, StepStatus.failed, started, t0, error=str(exc), retryable=False, config=config)
    except PermissionError as exc:  # refused by the system: retrying cannot help
        return _outcome(job, attempt, StepStatus.failed, started, t0, error=f"permission refused: {exc}",
                        retryable=False, config=config)
    except JinjaError as exc:
        if job.check:  # most likely a value an earlier step would produce
            refs = sorted(job.step.step_refs)
            why = (f"it reads the results of {', '.join(refs)}, which a check does not make" if refs
                   else f"template error: {exc}")
            return _outcome(job, attempt, StepStatus.completed, started, t0, config=config,
                            data={"check": f"cannot tell before earlier steps run: {why}"})
        return _outcome(job, attempt, StepStatus.failed, started, t0, error=f"template error: {exc}",
                        retryable=False, config=config)
    except Exception as exc:  # a handler bug is a failed attempt, not a crashed run
        return _outcome(job, attempt, StepStatus.failed, started, t0, error=f"{type(exc).__name__}: {exc}",
                        config=config)


def _check(job: AttemptJob, attempt: int, steps: Mapping[str, Any], cancel: CancelToken, config: dict[str, Any],
           report: Any, started: float, t0: float) -> Outcome:
    """``--check``: would the step change anything? Its validation (which
    reads, never writes) says: passing means already so (unchanged), failing
    means the step would run and change it. No execute handler runs."""
    def answer(changed: bool | None, reason: str) -> Outcome:
        return _outcome(job, attempt, StepStatus.completed, started, t0, config=config, changed=changed,
                        data={"check": reason})

    home = _work_home(job)
    if home and not os.path.isdir(home):
        return answer(True, f"would run: the workspace home {home} does not exist yet")
    try:
        isolation = isolation_for(job)
    except PermanentError as exc:  # e.g. the workspace user is created by an earlier step
        return answer(None, f"cannot tell before earlier steps run: {exc}")
    handlers = handlers_for(job.step.action)
    if handlers.validate is None:
        return answer(None, "would run: its action has no validation to tell whether anything would change")
    ctx = _context_for(job, steps, attempt, cancel, config, isolation=isolation, report=report)
    try:
        result = _isolated(handlers.validate, "validation_handler", job.step.action, isolation)(ctx)
    except PermanentError as exc:  # e.g. what it checks is made by an earlier step
        return answer(None, f"cannot tell before earlier steps run: {exc}")
    if result.ok and result.data.get("nothing_to_validate"):
        return answer(None, "would run: it has no validation to tell whether anything would change")
    if result.ok:
        return answer(False, "already as it should be")
    return answer(True, f"would change: {result.error or 'its validation fails'}")


def run_rollback(job: AttemptJob, attempt: int, steps: Mapping[str, Any], result: dict[str, Any],
                 config: Mapping[str, Any] | None, cancel: CancelToken) -> Outcome:
    """Run the rollback handler of a completed step with its execute result."""
    started, t0 = time.time(), time.perf_counter()
    cfg = fresh_copy(config if config is not None else job.step.config)
    try:
        isolation = isolation_for(job)
        rollback = _isolated(handlers_for(job.step.action).rollback, "rollback_handler", job.step.action, isolation)
        if rollback is None:
            return _outcome(job, attempt, StepStatus.completed, started, t0, data={"nothing_to_undo": True})
        ctx = _context_for(job, steps, attempt, cancel, cfg, result, isolation=isolation)
        return _from_handler(job, attempt, rollback(ctx), started, t0, cfg, cancel)
    except Exception as exc:
        return _outcome(job, attempt, StepStatus.failed, started, t0, error=f"{type(exc).__name__}: {exc}",
                        config=cfg)
