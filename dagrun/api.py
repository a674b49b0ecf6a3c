"""The Python API: ``run_template``, ``compile_template``, ``plan``.

``run_template`` is what a provisioning service calls instead of its old
``apply_workspace_template()``: it compiles (rejecting bad input before
anything runs), records the run in the store, runs it and returns a
:class:`~dagrun.result.RunResult` once every record is committed.
"""

from __future__ import annotations

import os
import uuid
from concurrent.futures import Executor
from typing import Any, Callable, Iterable, Mapping

from .compiler import compile_template
from .errors import InputError
from .events import Observer
from .loader import build_library
from .logs import log_events
from .recorder import Recorder
from .result import RunResult
from .runner import Runner
from .spec import Plan
from .store import default_database_url
from .workspace import normalize_workspace


def run_template(template: Any, workspace: Any, *, database_url: str | None = None,
                 max_workers: int | None = None, variables: Mapping[str, Any] | None = None,
                 actions: Iterable[Any] | None = None, on_event: Callable[[Any], None] | None = None,
                 executor: Executor | None = None, record: bool = True, run_id: str | None = None,
                 templates: Iterable[Mapping[str, Any]] = (),
                 observers: Iterable[Observer] = (), runner_hook: Callable[[Runner], None] | None = None,
                 allow_sudo: bool = False) -> RunResult:
    """Compile ``template`` and run it for ``workspace``.

    ``template``: a path, the name of a template in ``seeds/``, or a dict.
    ``workspace``: a mapping or object with at least an ``id``.
    ``actions``: extra action definitions (dicts or files) extending or
    overriding the standard library. ``on_event`` receives typed events.
    ``record=False`` runs without a database. ``runner_hook`` receives the
    runner before it starts (to keep a handle for ``cancel()``).
    ``allow_sudo`` lets actions marked ``requires_sudo`` run through
    ``sudo -n`` when not running as root; otherwise such a template is
    refused before anything runs.
    """
    if max_workers is not None and (not isinstance(max_workers, int) or max_workers < 1):
        raise InputError(f"max_workers must be a positive integer, not {max_workers!r}")
    ws = normalize_workspace(workspace)
    plan = compile_template(template, actions=actions, variables=variables, workspace=ws, templates=templates)
    sudo = sudo_prefix(plan, allow_sudo)
    url = (database_url or default_database_url()) if record else None
    recorder = Recorder(url) if url else None
    all_observers: list[Observer] = [log_events]
    if recorder:
        all_observers.append(recorder)
    all_observers += list(observers)
    if on_event:
        all_observers.append(on_event)
    runner = Runner(plan, ws, run_id=run_id or str(uuid.uuid4()), variables=variables, max_workers=max_workers,
                    executor=executor, observers=all_observers, sudo=sudo)
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
    return result


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
