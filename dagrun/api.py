"""The Python API: ``run_template``, ``resume``, ``compile_template``, ``plan``.

``run_template`` is what a provisioning service calls instead of its old
``apply_workspace_template()``: it compiles (rejecting bad input before
anything runs), claims the workspace in the store (one active run per
workspace), runs, and returns a :class:`~dagrun.run.result.RunResult` once every
record is committed. ``resume`` continues a failed, cancelled or
interrupted run in the same run record.
"""

from __future__ import annotations

import json
import os
import uuid
from concurrent.futures import Executor
from typing import Any, Callable, Iterable, Mapping

from sqlalchemy.exc import SQLAlchemyError

from .compile import compile_template
from .errors import InputError, RunConflictError
from .run.events import Observer
from .compile.loader import build_library
from .run.logs import log_events
from .run.outcome import StepStatus
from .store.recorder import Recorder
from .run.result import RunResult, StepResult
from .run.redact import Redactor
from .run.runner import Runner, known_secrets
from .store.runs import claim, is_alive, load_for_resume
from .store.seeding import mark_applied, stored_templates
from .spec import Plan
from .store.engine import default_database_url, engine_for
from .spec import MASK
from .workspace import normalize_workspace, stored_fields, with_home


def run_template(template: Any, workspace: Any, *, database_url: str | None = None,
                 max_workers: int | None = None, variables: Mapping[str, Any] | None = None,
                 actions: Iterable[Any] | None = None, on_event: Callable[[Any], None] | None = None,
                 executor: Executor | None = None, record: bool = True, run_id: str | None = None,
                 templates: Iterable[Mapping[str, Any]] = (),
                 observers: Iterable[Observer] = (), runner_hook: Callable[[Runner], None] | None = None,
                 allow_sudo: bool = False, secrets: Mapping[str, Any] | None = None,
                 env_passthrough: Iterable[str] = (), sandbox: bool = True) -> RunResult:
    """Compile ``template`` and run it for ``workspace``.

    ``template``: a path, the name of a template in ``seeds/``, a dict, or a
    legacy monolithic config. ``workspace``: a mapping or object with at
    least an ``id``. ``actions``: extra action definitions (dicts or files)
    extending or overriding the standard library. ``on_event`` receives typed
    events. ``record=False`` runs without a database. ``runner_hook``
    receives the runner before it starts (to keep a handle for ``cancel()``).
    ``allow_sudo`` lets actions marked ``requires_sudo`` run through
    ``sudo -n`` when not running as root; otherwise such a template is
    refused before anything runs. ``secrets`` are variables (``vars.x``)
    whose values are masked in results, events, records and logs, and are
    not stored with the run (pass them again to ``resume``). Steps see only
    PATH, LANG, LC_*, TZ and TERM of the caller's environment, plus the names
    the template declares in ``global_config.env_passthrough`` and those in
    ``env_passthrough``. Raises RunConflictError when the workspace already
    has an active run.
    """
    _check_workers(max_workers)
    url = (database_url or default_database_url()) if record else None
    templates = list(templates)
    if url and isinstance(template, str) and not os.path.exists(template):
        templates += stored_templates(url)  # a template stored with `dagrun seed` runs by name
    plan, ws = compile_for(template, workspace, actions=actions, variables=variables, secrets=secrets,
                           templates=templates, env_passthrough=env_passthrough)
    return _execute(plan, ws, run_id=run_id or str(uuid.uuid4()), variables=variables, secrets=secrets,
                    sandbox=sandbox,
                    max_workers=max_workers,
                    url=url, executor=executor,
                    observers=observers, on_event=on_event, runner_hook=runner_hook, allow_sudo=allow_sudo)


def compile_for(template: Any, workspace: Any, *, actions: Iterable[Any] | None = None,
                variables: Mapping[str, Any] | None = None, secrets: Mapping[str, Any] | None = None,
                templates: Iterable[Mapping[str, Any]] = (), env_passthrough: Iterable[str] = ()
                ) -> tuple[Plan, Mapping[str, Any]]:
    """Compile ``template`` for ``workspace``: the plan, and the workspace as
    a mapping. An object workspace is read through the fields the template
    uses, so it is compiled once to learn them."""
    options = dict(actions=actions, templates=list(templates), env_passthrough=tuple(env_passthrough))
    merged = {**(variables or {}), **(secrets or {})}
    if workspace is None or isinstance(workspace, Mapping):
        ws = normalize_workspace(workspace)
    else:
        ws = normalize_workspace(workspace, fields=compile_template(template, variables=merged, **options)
                                 .workspace_fields)
    ws = with_home(ws)
    plan = compile_template(template, variables=merged, workspace=ws, **options)
    undeclared = sorted(set(variables or {}) - set(plan.snapshot.get("vars") or {}))
    if undeclared:
        from .compile.graph import did_you_mean
        declared = plan.snapshot.get("vars") or {}
        raise InputError("; ".join(f"variable {name!r} is not declared by template {plan.name!r}"
                                   f"{did_you_mean(name, declared)}" for name in undeclared)
                         + f" (it declares: {', '.join(declared) or 'none'})")
    return plan, ws


def resume(run_id: str, *, database_url: str | None = None, from_step: str | None = None,
           max_workers: int | None = None, actions: Iterable[Any] | None = None,
           on_event: Callable[[Any], None] | None = None, executor: Executor | None = None,
           observers: Iterable[Observer] = (), runner_hook: Callable[[Runner], None] | None = None,
           allow_sudo: bool = False, secrets: Mapping[str, Any] | None = None, sandbox: bool = True) -> RunResult:
    """Continue a run from its snapshot, in the same run record.

    Completed steps (and steps skipped by their condition) are not run
    again; failed, cancelled, interrupted, rolled-back, skipped-because-
    upstream-failed and never-started steps are, with attempt numbers
    continuing. ``from_step`` also re-runs that step and everything
    downstream of it.
    """
    _check_workers(max_workers)
    url = database_url or default_database_url()
    engine = engine_for(url)
    run, attempts = load_for_resume(engine, run_id)
    if is_alive(run):
        raise RunConflictError(f"run {run.id} is still running (owner {run.owner})")
    if run.workspace is None:
        raise InputError(f"run {run.id} was recorded without its workspace: it cannot be resumed")
    secrets = dict(secrets or {})
    missing = [name for name in run.secret_names or () if name not in secrets]
    if missing:
        raise InputError(f"run {run.id} was started with secrets that are not stored: {', '.join(missing)}; "
                         "give them again (secrets=..., dagrun resume --secret NAME=ENV_VAR)")
    given_fields = {k.split(".", 1)[1]: v for k, v in secrets.items() if k.startswith("workspace.")}
    secrets = {k: v for k, v in secrets.items() if not k.startswith("workspace.")}
    ws = with_home(normalize_workspace({**(run.workspace or {}), **given_fields}))
    snapshot = with_secret_literals(run.template_snapshot, secrets)
    step_secrets = {k: v for k, v in secrets.items() if "." in k}
    secrets = {k: v for k, v in secrets.items() if "." not in k}
    plan = compile_template(snapshot, actions=actions, workspace=ws,
                            variables={**(run.variables or {}), **secrets})
    again: set[str] = set()
    if from_step is not None:
        if from_step not in plan.steps:
            raise InputError(f"run {run.id} has no step {from_step!r} (steps: {', '.join(plan.order)})")
        again = {from_step, *plan.descendants(from_step)}
    elif run.status == "succeeded":
        raise InputError(f"run {run.id} already succeeded: use from_step (--from STEP) to run steps again")
    previous: dict[str, StepResult] = {}
    numbers: dict[str, int] = {}
    for sid in plan.order:
        rows = attempts.get(sid, [])
        numbers[sid] = max((r.attempt_number for r in rows), default=0)
        last = rows[-1] if rows else None
        # A condition skip (attempt >= 1) stands; an "upstream failed" skip (attempt 0) is retried.
        satisfied = last is not None and (last.status == "completed"
                                          or (last.status == "skipped" and last.attempt_number > 0))
        if satisfied and sid not in again:
            step = plan.steps[sid]
            previous[sid] = StepResult(
                step_id=sid, sequence_order=step.sequence_order, action_name=step.action.name,
                display_name=step.display_name, status=StepStatus(last.status), attempts=numbers[sid],
                duration_seconds=sum(r.duration_seconds or 0.0 for r in rows), result=dict(last.result_data or {}),
                skip_reason=last.error_message if last.status == "skipped" else None, exit_code=last.exit_code)
    return _execute(plan, ws, run_id=run.id, variables=run.variables, secrets={**secrets, **step_secrets}, url=url,
                    max_workers=max_workers or run.max_workers, executor=executor, observers=observers,
                    on_event=on_event, runner_hook=runner_hook, allow_sudo=allow_sudo,
                    previous=previous, attempts=numbers, sandbox=sandbox)


def _check_workers(max_workers: int | None) -> None:
    if max_workers is not None and (not isinstance(max_workers, int) or max_workers < 1):
        raise InputError(f"max_workers must be a positive integer, not {max_workers!r}")


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _snapshot_step(snapshot: Mapping[str, Any], sequence_order: int) -> dict[str, Any] | None:
    for step in snapshot.get("actions") or ():
        if step.get("sequence_order") == sequence_order:
            return step
    return None


def masked_snapshot(plan: Plan) -> dict[str, Any]:
    """The template as stored with the run: x-secret values written in the
    template are masked (a resume is given them again as ``step.field``)."""
    snapshot = _jsonable(dict(plan.snapshot))
    for sid, key in plan.secret_literals:
        step = _snapshot_step(snapshot, plan.steps[sid].sequence_order)
        if step is not None and key in (step.get("action_config") or {}):
            step["action_config"][key] = MASK
    return snapshot


def with_secret_literals(snapshot: Mapping[str, Any], secrets: Mapping[str, Any]) -> dict[str, Any]:
    """Put the ``step.field`` secrets given to a resume back into the snapshot."""
    snapshot = _jsonable(dict(snapshot))
    for name, value in secrets.items():
        sid, dot, key = name.partition(".")
        if not dot:
            continue
        for step in snapshot.get("actions") or ():
            if (step.get("id") or step.get("action_name")) == sid or str(step.get("sequence_order")) == sid:
                step.setdefault("action_config", {})[key] = value
    return snapshot


def secret_names(plan: Plan, secrets: Mapping[str, Any] | None) -> list[str]:
    return sorted({*(k for k in secrets or {} if "." not in k), *(f"{sid}.{key}" for sid, key in plan.secret_literals)})


def _execute(plan: Plan, ws: Mapping[str, Any], *, run_id: str, variables: Mapping[str, Any] | None,
             url: str | None, secrets: Mapping[str, Any] | None = None, max_workers: int | None, executor: Executor | None, observers: Iterable[Observer],
             on_event: Callable[[Any], None] | None, runner_hook: Callable[[Runner], None] | None,
             allow_sudo: bool, previous: Mapping[str, StepResult] | None = None,
             attempts: Mapping[str, int] | None = None, sandbox: bool = True) -> RunResult:
    sudo = sudo_prefix(plan, allow_sudo)
    check_sandbox(plan, sandbox)
    recorder = None
    if url:
        # A workspace field that is a secret (the value of an x-secret field) is not stored either.
        redactor = Redactor([*(str(v) for v in (secrets or {}).values()),
                             *known_secrets(plan, ws, {**(variables or {}), **(secrets or {})}, {})])
        stored = stored_fields(ws, plan.workspace_fields)
        hidden = redactor.masked_fields(stored)
        claim(engine_for(url), run_id=run_id, workspace_id=str(ws["id"]), fields={
            "template_name": plan.name, "template_version": plan.version, "total_steps": len(plan.order),
            "template_snapshot": masked_snapshot(plan),
            "workspace": _jsonable(redactor.value(stored)),
            "variables": _jsonable(dict(variables or {})), "max_workers": max_workers,
            "secret_names": sorted({*secret_names(plan, secrets), *(f"workspace.{k}" for k in hidden)})})
        recorder = Recorder(url)
    all_observers: list[Observer] = [log_events]
    if recorder:
        all_observers.append(recorder)
    all_observers += list(observers)
    if on_event:
        all_observers.append(on_event)
    secret_vars = {k: v for k, v in (secrets or {}).items() if "." not in k}
    runner = Runner(plan, ws, run_id=run_id, variables={**(variables or {}), **secret_vars},
                    max_workers=max_workers, executor=executor, observers=all_observers, sudo=sudo,
                    previous=previous, attempts=attempts, secret_values=[str(v) for v in (secrets or {}).values()],
                    sandbox=sandbox)
    if runner_hook:
        runner_hook(runner)
    try:
        result = runner.run()
    finally:
        if recorder:
            recorder.close()
    result.database_url = url
    if recorder and recorder.error:
        result.error = (result.error + "; " if result.error else "") + f"records incomplete: {recorder.error}"
    elif url and result.success and previous is None:
        try:
            mark_applied(url, plan.name, plan.version)
        except SQLAlchemyError as exc:  # the work is done; only the counter is missing
            result.error = f"template usage count not updated: {str(exc).splitlines()[0]}"
    return result


def check_sandbox(plan: Plan, sandbox: bool) -> None:
    """Sandboxed steps need bubblewrap: refused before anything runs without it."""
    from .run.isolation import sandbox_available
    needing = [sid for sid in plan.order if plan.steps[sid].sandbox]
    if sandbox and needing and not sandbox_available():
        raise InputError(f"steps {', '.join(needing)} run in a sandbox, but bubblewrap (bwrap) is not installed: "
                         "apt-get install bubblewrap, or run without the sandbox (sandbox=False, --no-sandbox)")


def sudo_prefix(plan: Plan, allow_sudo: bool) -> tuple[str, ...]:
    """How privileged commands run, or an error naming the steps that need root."""
    if os.geteuid() == 0:
        return ()
    needing = [sid for sid in plan.order if plan.steps[sid].action.requires_sudo]
    if needing and not allow_sudo:
        raise InputError(f"steps {', '.join(needing)} need root: run as root, or allow sudo "
                         f"(allow_sudo=True, dagrun run --allow-sudo)")
    return ("sudo", "-n") if needing else ()


def plan(template: Any, *, actions: Iterable[Any] | None = None, variables: Mapping[str, Any] | None = None,
         templates: Iterable[Mapping[str, Any]] = ()) -> Plan:
    """Compile without running (``dagrun plan``)."""
    return compile_template(template, actions=actions, variables=variables, templates=templates)


def list_actions(actions: Iterable[Any] | None = None):
    return build_library(actions)
