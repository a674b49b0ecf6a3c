"""The Python API: ``run_template``, ``resume``, ``compile_template``, ``plan``.

``run_template`` is what a provisioning service calls instead of its old
``apply_workspace_template()``. Every run goes through the same three
stages, so that everything that can be refused is refused before anything
runs:

1. **prepare** (:func:`prepare` / :func:`prepare_resume`): compile the
   template for the workspace (bad input raises), check sudo and the
   sandbox, decide the workspace home, what a resume does not run again;
2. **claim** (:func:`claim`): record the run as this process's in the store
   (one active run per workspace: a conflict raises), ending what a dead
   earlier run left running;
3. **execute** (:func:`execute`): run, streaming records (write-ahead), and
   return a :class:`~dagrun.run.result.RunResult` once every record is
   committed.

``resume`` continues a failed, cancelled or interrupted run in the same run
record.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from .compile import compile_template
from .compile.loader import build_library
from .errors import DagrunError, InputError, RunConflictError, SecretsNeeded, TemplateError
from .spec import MASK, Plan
from .workspace import ALWAYS_STORED, normalize_workspace, stored_fields, with_home

if TYPE_CHECKING:  # the engine is imported where a run starts: validate, plan and graph never load it
    from concurrent.futures import Executor

    from .run.events import Observer
    from .run.result import RunResult
    from .run.runner import Done, Runner


@dataclass
class PreparedRun:
    """A run that compiled and passed every check, not yet claimed."""

    plan: Plan
    workspace: Mapping[str, Any]
    run_id: str
    url: str | None  # None: not recorded
    variables: Mapping[str, Any] = field(default_factory=dict)  # stored with the run
    secrets: Mapping[str, Any] = field(default_factory=dict)  # never stored
    max_workers: int | None = None
    executor: Executor | None = None
    sudo: tuple[str, ...] = ()
    sandbox: bool = True
    done: Mapping[str, Done] = field(default_factory=dict)  # a resume: steps not run again
    attempts: Mapping[str, int] | None = None
    fleet_id: str | None = None
    resumed: bool = False
    check: bool = False  # validate only: what would change (dagrun run --check)
    home_root: str | None = None  # the allowed folder the workspace home is in
    adopt_users: tuple[str, ...] = ()  # existing accounts the operator lets any workspace use
    shared_locks: Any = None  # a fleet's locks (run.shared_locks.SharedLocks), held with its other runs
    # A resume: the run's row as it was read (status, heartbeat, end). The claim goes ahead only if
    # it is still so: another resume that went first would have run what ``done`` says is to do.
    seen: tuple[Any, ...] | None = None
    # The template is the one stored (or shipped) under its name, not a caller's document: a resume may
    # take the secrets its author wrote in it from there (see _written_in_stored_template).
    named_template: bool = False


def run_template(template: Any, workspace: Any, *, database_url: str | None = None,
                 max_workers: int | None = None, variables: Mapping[str, Any] | None = None,
                 actions: Iterable[Any] | None = None, on_event: Callable[[Any], None] | None = None,
                 executor: Executor | None = None, record: bool = True, run_id: str | None = None,
                 templates: Iterable[Mapping[str, Any]] = (),
                 observers: Iterable[Observer] = (), runner_hook: Callable[[Runner], None] | None = None,
                 allow_sudo: bool = False, secrets: Mapping[str, Any] | None = None,
                 env_passthrough: Iterable[str] = (), sandbox: bool = True,
                 trusted_actions: Iterable[Any] | None = None, database_schema: str | None = None,
                 check: bool = False, home_roots: Iterable[str] = (),
                 allow_network: Iterable[str] = (), adopt_users: Iterable[str] = ()) -> RunResult:
    """Compile ``template`` and run it for ``workspace``.

    ``template``: a path, the name of a template in ``seeds/`` or stored with
    ``dagrun seed``, a dict, or a legacy monolithic config. ``workspace``: a
    mapping or object with at least an ``id``. ``actions``: extra action
    definitions (dicts or files) extending or overriding the standard
    library. ``on_event`` receives typed events. ``record=False`` runs
    without a database. ``runner_hook`` receives the runner before it starts
    (to keep a handle for ``cancel()``). ``allow_sudo`` lets actions marked
    ``requires_sudo`` run through ``sudo -n`` when not running as root;
    otherwise such a template is refused before anything runs. ``secrets``
    are variables (``vars.x``) whose values are masked in results, events,
    records and logs, and are not stored with the run (pass them again to
    ``resume``). Steps see only PATH, LANG, LC_*, TZ and TERM of the
    caller's environment, plus the names the template declares in
    ``global_config.env_passthrough`` and those in ``env_passthrough``.
    ``sandbox=False`` runs user-defined actions without bubblewrap;
    ``trusted_actions`` are the operator's own actions, trusted like the
    standard library (they may need root and run unsandboxed).
    ``database_schema``: the PostgreSQL schema of dagrun's tables (default
    ``dagrun``, or ``$DAGRUN_SCHEMA``). ``check=True`` runs no execute
    handler: each step's validation says whether it would change anything
    (each step's ``changed``), and nothing but the run's record changes.
    As root, the workspace home must be inside ``/home``, ``/srv/workspaces``,
    dagrun's workspaces folder, ``$DAGRUN_WORKSPACE_ROOTS`` or ``home_roots``;
    user-defined actions run as the workspace's ``linux_username`` (required
    then) and reach the network only when named in ``allow_network``. A
    ``linux_username`` must be an account create_linux_user made for this
    workspace, or one named in ``adopt_users`` (``*``: any non-system one).
    Raises RunConflictError when the workspace already has an active run.
    """
    prepared = prepare(template, workspace, database_url=_url(database_url, database_schema),
                       max_workers=max_workers, variables=variables, actions=actions, executor=executor, record=record, run_id=run_id,
                       templates=templates, allow_sudo=allow_sudo, secrets=secrets,
                       env_passthrough=env_passthrough, sandbox=sandbox, trusted_actions=trusted_actions,
                       check=check, home_roots=home_roots, allow_network=allow_network, adopt_users=adopt_users)
    return _claim_and_execute(prepared, observers, on_event, runner_hook)


def _claim_and_execute(prepared: PreparedRun, observers: Iterable[Observer],
                       on_event: Callable[[Any], None] | None,
                       runner_hook: Callable[[Runner], None] | None) -> RunResult:
    from .run.interrupts import PendingCancel, ctrl_c_cancels
    # From the claim on, Ctrl-C cancels (see run.interrupts): a KeyboardInterrupt while the run is
    # claimed would leave it recorded as running. A press before its runner exists is kept for it.
    pending = PendingCancel(runner_hook)
    with ctrl_c_cancels(pending.interrupt):
        claim(prepared)
        return execute(prepared, observers=observers, on_event=on_event, runner_hook=pending.hook)


def resume(run_id: str, *, database_url: str | None = None, from_step: str | None = None,
           max_workers: int | None = None, actions: Iterable[Any] | None = None,
           on_event: Callable[[Any], None] | None = None, executor: Executor | None = None,
           observers: Iterable[Observer] = (), runner_hook: Callable[[Runner], None] | None = None,
           allow_sudo: bool = False, secrets: Mapping[str, Any] | None = None, sandbox: bool = True,
           trusted_actions: Iterable[Any] | None = None, database_schema: str | None = None,
           home_roots: Iterable[str] = (), allow_network: Iterable[str] = (),
           adopt_users: Iterable[str] = (), journal_checked: bool = False) -> RunResult:
    """Continue a run from its snapshot, in the same run record.

    Completed steps (and steps skipped by their condition) are not run
    again; failed, cancelled, interrupted, rolled-back, skipped-because-
    upstream-failed and never-started steps are, with attempt numbers
    continuing. ``from_step`` also re-runs that step and everything
    downstream of it. A run whose process died is detected (stale heartbeat)
    and what it left running is ended before the resume starts.
    """
    prepared = prepare_resume(run_id, database_url=_url(database_url, database_schema), from_step=from_step,
                              max_workers=max_workers, actions=actions, executor=executor, allow_sudo=allow_sudo, secrets=secrets,
                              sandbox=sandbox, trusted_actions=trusted_actions, home_roots=home_roots,
                              allow_network=allow_network, adopt_users=adopt_users, journal_checked=journal_checked)
    return _claim_and_execute(prepared, observers, on_event, runner_hook)


# -- in the background ----------------------------------------------------------------

class RunHandle:
    """A run started in the background by :func:`start_run` or
    :func:`start_resume`: everything that can be refused was refused before
    it was returned; the run itself goes on in a thread of this process."""

    def __init__(self, prepared: PreparedRun, observers: Iterable[Observer] = (),
                 on_event: Callable[[Any], None] | None = None):
        self.run_id = prepared.run_id
        self.prepared = prepared
        self.runner: Runner | None = None
        self._result: RunResult | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._ready = threading.Event()
        self._cancel: str | None = None
        self._thread = threading.Thread(target=self._work, args=(list(observers), on_event),
                                        name=f"dagrun-run-{self.run_id[:8]}", daemon=True)
        _handles[self.run_id] = self
        self._thread.start()

    def _hook(self, runner: Runner) -> None:
        self.runner = runner
        self._ready.set()
        if self._cancel is not None:
            runner.cancel(self._cancel)

    def _work(self, observers: list[Observer], on_event: Callable[[Any], None] | None) -> None:
        try:
            self._result = execute(self.prepared, observers=observers, on_event=on_event, runner_hook=self._hook)
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits
            self._error = exc
        finally:
            self._ready.set()
            self._done.set()
            _handles.pop(self.run_id, None)

    def status(self) -> str:
        """``running`` until the run ends, then its status."""
        if not self._done.is_set():
            return "running"
        return self._result.status.value if self._result is not None else "failed"

    def wait(self, timeout: float | None = None) -> RunResult | None:
        """The result once the run ends (None if ``timeout`` passed first).
        Re-raises what made the run itself fail (a store it cannot write)."""
        if not self._done.wait(timeout):
            return None
        if self._error is not None:
            raise self._error
        return self._result

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop dispatching and end what runs (thread-safe; returns at once)."""
        self._cancel = reason
        if self.runner is not None:
            self.runner.cancel(reason)

    @property
    def done(self) -> bool:
        return self._done.is_set()


_handles: dict[str, RunHandle] = {}  # runs of this process, by id (while they run)


def running_here(run_id: str) -> RunHandle | None:
    """The handle of a run going on in this process, if it is one."""
    return _handles.get(run_id)


def start_run(template: Any, workspace: Any, *, observers: Iterable[Observer] = (),
              on_event: Callable[[Any], None] | None = None, **options: Any) -> RunHandle:
    """Like :func:`run_template`, but returns once the run is compiled,
    checked and claimed (bad input raises :class:`InputError` /
    :class:`TemplateError`, an active run of the workspace
    :class:`RunConflictError`, before anything runs); the run goes on in
    the background."""
    prepared = prepare(template, workspace, **options)
    claim(prepared)
    return RunHandle(prepared, observers, on_event)


def start_resume(run_id: str, *, observers: Iterable[Observer] = (),
                 on_event: Callable[[Any], None] | None = None, **options: Any) -> RunHandle:
    """:func:`resume` in the background, refused as :func:`start_run` is."""
    prepared = prepare_resume(run_id, **options)
    claim(prepared)
    return RunHandle(prepared, observers, on_event)


def cancel_run(run_id: str, *, database_url: str | None = None, reason: str = "cancelled") -> str:
    """Ask a run to stop, wherever it runs: at once in this process, else
    through its record (its recorder looks every second). ``run_id``: the
    whole id. Returns it."""
    handle = running_here(run_id)
    if handle is not None:
        handle.cancel(reason)
        return run_id
    from .store.runs import request_cancel
    return request_cancel(database_url or default_database_url(), run_id, reason)


def closed_as_interrupted(run_id: str, *, database_url: str | None = None) -> bool:
    """Was the run closed because its process had stopped without ending it
    (by a cancel that found nobody left to ask)? It can be resumed."""
    from .store.history import show_run
    from .store.runs import INTERRUPTED
    run = show_run(database_url or default_database_url(), run_id)
    return run["status"] == "failed" and (run["error"] or "").startswith(INTERRUPTED)


# -- 1. prepare ---------------------------------------------------------------------

def prepare(template: Any, workspace: Any, *, database_url: str | None = None, max_workers: int | None = None,
            variables: Mapping[str, Any] | None = None, actions: Iterable[Any] | None = None,
            executor: Executor | None = None, record: bool = True, run_id: str | None = None,
            templates: Iterable[Mapping[str, Any]] = (), allow_sudo: bool = False,
            secrets: Mapping[str, Any] | None = None, env_passthrough: Iterable[str] = (),
            sandbox: bool = True, fleet_id: str | None = None,
            trusted_actions: Iterable[Any] | None = None, check: bool = False, home_roots: Iterable[str] = (),
            allow_network: Iterable[str] = (), adopt_users: Iterable[str] = (),
            stored_template: bool = False, database_templates: bool = True) -> PreparedRun:
    """Compile and check a new run; raises on bad input, runs nothing.
    ``stored_template``: ``template`` is the document stored or shipped
    under its name, as a service found it (a name given here is known to
    be one). ``database_templates``: may its bases be any template stored
    in the database (False: only ``templates`` and the shipped ones; a
    service gives those its caller may read)."""
    _check_workers(max_workers)
    url = (database_url or default_database_url()) if record else None
    templates = list(templates)
    if url and database_templates and _names_stored(template):
        from .store.seeding import stored_templates
        templates += stored_templates(url)  # a template stored with `dagrun seed` runs by name (or is extended)
    roots = _allowed_roots(home_roots)  # once: each root is resolved on disk
    plan, ws = compile_for(template, workspace, actions=actions, variables=variables, secrets=secrets,
                           templates=templates, env_passthrough=env_passthrough, trusted_actions=trusted_actions,
                           roots=roots)
    secrets = _typed_secrets(secrets, plan)  # as compile_for read them
    check_sandbox(plan, sandbox, ws, allow_network)
    check_account(ws, adopt_users)
    check_root_code(plan, ws)
    if url:
        plan = learned(plan, url)
    executor = _executor(executor)
    check_cluster(executor, plan, secrets)
    return PreparedRun(plan=plan, workspace=ws, run_id=run_id or _new_run_id(), url=url,
                       variables=dict(variables or {}), secrets=dict(secrets or {}), max_workers=max_workers,
                       executor=executor, sudo=sudo_prefix(plan, allow_sudo), sandbox=sandbox,
                       fleet_id=fleet_id,
                       check=check, home_root=_home_root(ws, roots), adopt_users=tuple(adopt_users),
                       named_template=stored_template or (isinstance(template, str) and _names_stored(template)))


def prepare_resume(run_id: str, *, database_url: str | None = None, from_step: str | None = None,
                   max_workers: int | None = None, actions: Iterable[Any] | None = None,
                   executor: Executor | None = None, allow_sudo: bool = False,
                   secrets: Mapping[str, Any] | None = None, sandbox: bool = True,
                   trusted_actions: Iterable[Any] | None = None, home_roots: Iterable[str] = (),
                   allow_network: Iterable[str] = (), adopt_users: Iterable[str] = (),
                   workspace: Mapping[str, Any] | None = None, journal_checked: bool = False) -> PreparedRun:
    """Compile and check the resume of a recorded run; raises on bad input.
    ``workspace``: the workspace as the run was given it (a fleet's file):
    the fields of it that were not stored are given again from it.
    ``journal_checked``: the run's last process ran on another host, and
    its journal there was replayed or is known to be empty."""
    from .store.engine import store_errors, writable
    from .store.runs import claim_token, done_steps, is_alive, load_for_resume, newer_run, superseded
    _check_workers(max_workers)
    url = database_url or default_database_url()
    engine = writable(url)
    with store_errors(url, "cannot read"):
        run, rows = load_for_resume(engine, run_id)
    from .store.journal import pending_for
    kept = pending_for(run.id, run.journal, journal_checked)
    if kept is not None:  # what the store shows of the run may not be all it did: a resume would redo steps
        raise InputError(kept)
    if is_alive(run):
        raise RunConflictError(f"run {run.id} is still running (owner {run.owner})", run_id=run.id)
    newer = newer_run(engine, run)
    if newer is not None:  # what this run did may be undone or changed by it: its steps are not the state
        raise superseded(run, newer)
    if run.mode == "check":
        raise InputError(f"run {run.id} was a check (--check): it changed nothing, so there is nothing to resume; "
                         "run the template again")
    if run.workspace is None:
        raise InputError(f"run {run.id} was recorded without its workspace: it cannot be resumed")
    secrets = dict(secrets or {})
    if workspace is not None:
        if str(workspace.get("id")) != str(run.workspace.get("id")):
            raise InputError(f"run {run.id} is workspace {run.workspace.get('id')}'s, not {workspace.get('id')}'s")
        secrets = {**{f"workspace.{k}": v for k, v in workspace.items()
                      if f"workspace.{k}" in (run.secret_names or ())}, **secrets}
    # Only what was not stored is given again: a resume never changes the workspace, a stored
    # variable or a step's config (over HTTP, a tenant's body would otherwise rewrite what runs).
    extra = sorted(str(name) for name in secrets if name not in (run.secret_names or ())
                   or str(name).startswith("workspace.") and str(name).removeprefix("workspace.") in ALWAYS_STORED)
    if extra:
        kept = ", ".join(run.secret_names or ()) or "none"
        raise InputError(f"run {run.id}: a resume is given again only what was not stored ({kept}); "
                         f"not {', '.join(extra)}")
    missing = [name for name in run.secret_names or () if name not in secrets]
    # A secret the template's author wrote (step.field) is taken from the template stored under the
    # run's name, when it still holds that very value: whoever resumes need not know it.
    written = _written_in_stored_template(url, run, actions, trusted_actions)
    missing = [name for name in missing if name not in written]
    if missing:
        fleet = " (a fleet's workspace fields: dagrun fleet --resume ID --workspaces FILE)" \
            if run.fleet_id and any(n.startswith("workspace.") for n in missing) else ""
        raise SecretsNeeded(run.id, missing, f" (secrets=..., dagrun resume --secret NAME=ENV_VAR){fleet}")
    # A value given for one the stored template holds is not used (nor checked: no guess is told apart).
    secrets = {**_check_given_again(run, {k: v for k, v in secrets.items() if k not in written}), **written}
    given_fields = {k.split(".", 1)[1]: v for k, v in secrets.items() if k.startswith("workspace.")}
    roots = _allowed_roots(home_roots)
    ws = with_home(normalize_workspace({**(run.workspace or {}), **given_fields}), roots=roots)
    step_secrets = {k: v for k, v in secrets.items() if "." in k and not k.startswith("workspace.")}
    secret_vars = {k: v for k, v in secrets.items() if "." not in k}
    plan = compile_template(with_secret_literals(run.template_snapshot, step_secrets), actions=actions,
                            workspace=ws, variables={**(run.variables or {}), **secret_vars},
                            trusted_actions=trusted_actions, keep=not secrets)
    again: set[str] = set()
    if from_step is not None:
        if from_step not in plan.steps:
            raise InputError(f"run {run.id} has no step {from_step!r} (steps: {', '.join(plan.order)})")
        again = {from_step, *plan.descendants(from_step)}
    elif run.status == "succeeded":
        raise InputError(f"run {run.id} already succeeded: use from_step (--from STEP) to run steps again")
    check_sandbox(plan, sandbox, ws, allow_network)
    check_account(ws, adopt_users)
    check_root_code(plan, ws)
    plan = learned(plan, url)
    again |= _maybe_rolled_back(plan, run, rows)
    done, numbers = done_steps(rows, plan.order, again)
    _check_masked_results(plan, run.id, done)
    _check_rendered_configs(plan, ws, {**(run.variables or {}), **secret_vars}, secrets, skip=set(done))
    executor = _executor(executor)
    check_cluster(executor, plan, secrets)
    return PreparedRun(plan=plan, workspace=ws, run_id=run.id, url=url, variables=dict(run.variables or {}),
                       secrets=secrets, max_workers=max_workers or run.max_workers, executor=executor,
                       sudo=sudo_prefix(plan, allow_sudo), sandbox=sandbox, done=done, attempts=numbers,
                       fleet_id=run.fleet_id, resumed=True, home_root=_home_root(ws, roots),
                       adopt_users=tuple(adopt_users), seen=claim_token(run))


def compile_for(template: Any, workspace: Any, *, actions: Iterable[Any] | None = None,
                variables: Mapping[str, Any] | None = None, secrets: Mapping[str, Any] | None = None,
                templates: Iterable[Mapping[str, Any]] = (), env_passthrough: Iterable[str] = (),
                trusted_actions: Iterable[Any] | None = None,
                roots: tuple[str, ...] | None = None) -> tuple[Plan, Mapping[str, Any]]:
    """Compile ``template`` for ``workspace``: the plan, and the workspace as
    a mapping. An object workspace is read through the fields the template
    uses, so it is compiled once to learn them. ``roots``: the folders its
    home may be in (:func:`_allowed_roots`; default: the configured ones)."""
    # A plan compiled with secrets in its variables is not kept beyond its run (compile cache).
    options = dict(actions=actions, templates=list(templates), env_passthrough=tuple(env_passthrough),
                   trusted_actions=trusted_actions, keep=not secrets)
    odd = sorted(str(n) for n in secrets or {} if not str(n).isidentifier())
    if odd:  # recorded by name, and given again by name: "db.pw" would read as step db's field pw
        raise InputError(f"secret names are identifiers (letters, digits, _), as variable names are: not "
                         f"{', '.join(repr(n) for n in odd)} (a mapping gives a secret parts: {{'db': {{'pw': ...}}}})")
    both = sorted(set(variables or {}) & set(secrets or {}))
    if both:  # which one runs, which one a resume is given again, which one is stored: none would be clear
        raise InputError(f"{', '.join(map(str, both))} given both as a variable and as a secret: give each once "
                         "(as a secret, to keep it out of the records)")
    merged = {**(variables or {}), **(secrets or {})}
    if workspace is None or isinstance(workspace, Mapping):
        ws = normalize_workspace(workspace)
    else:
        ws = normalize_workspace(workspace, fields=compile_template(template, variables=merged, **options)
                                 .workspace_fields)
    ws = with_home(ws, roots=_allowed_roots(()) if roots is None else roots)
    plan = compile_template(template, variables=merged, workspace=ws, **options)
    typed = _typed_secrets(secrets, plan)
    if typed != dict(secrets or {}):  # a mapping secret given as text (the CLI, a form): read as a resume reads it
        merged = {**(variables or {}), **typed}
        plan = compile_template(template, variables=merged, workspace=ws, **options)
    _check_variables(plan, variables)
    _check_rendered_configs(plan, ws, merged, typed)
    return plan, ws


def _typed_secrets(secrets: Mapping[str, Any] | None, plan: Plan) -> dict[str, Any]:
    """The secrets as the run takes them: a mapping over a mapping default
    given whole (text given for one read as the mapping it writes)."""
    defaults = plan.snapshot.get("vars") or {}
    return {name: _whole_secret(name, value, defaults.get(name)) for name, value in (secrets or {}).items()}


def _check_rendered_configs(plan: Plan, workspace: Mapping[str, Any], variables: Mapping[str, Any],
                            secrets: Mapping[str, Any], skip: Iterable[str] = ()) -> None:
    """A step whose config reads nothing but the workspace, the variables
    and the environment is rendered and checked now, as its attempt would:
    a workspace value its schema refuses (db_name "-x", a missing port) is
    one clear error before anything runs, not a failure after other steps
    ran. (Steps with a condition may be skipped, and a step that may fail
    without stopping the run (``skip_on_error``), or runs after one, may fail
    or be skipped: their attempt tells.) Messages show no secret."""
    from .compile.configs import config_problems, render_config
    from .compile.expressions import build_context
    from .errors import Problem, TemplateError
    from .run.redact import Redactor
    from .run.runner import known_secrets, step_environment
    from .util import fresh_copy
    problems: list[Problem] = []
    env: dict[str, str] | None = None
    redactor: Redactor | None = None
    maybe_skipped: set[str] = set(skip)  # (a resume's done steps) and what a non-critical step's failure skips
    if plan.global_config.continue_on_non_critical_errors:
        for sid in plan.order:
            if plan.steps[sid].skip_on_error:
                maybe_skipped |= {sid, *plan.descendants(sid)}
    for sid in plan.order:
        step = plan.steps[sid]
        if not step.templated or step.step_refs or step.condition is not None or sid in maybe_skipped:
            continue
        if env is None:
            env = step_environment(plan.global_config.env_passthrough)
            redactor = Redactor([*secrets.values(), *known_secrets(plan, workspace, {**plan.variables, **variables},
                                                                   env)])
        context = dict(workspace=workspace, variables={**plan.variables, **variables}, env=env, steps={},
                       home=workspace.get("home_dir"))
        try:
            config = render_config(fresh_copy(step.config), step.config_order, schema=step.action.config_schema,
                                   shell=step.shell_fields, make_context=lambda c: build_context(config=c, **context))
        except Exception:  # noqa: BLE001 - a value the shell or URL rules refuse: the attempt tells, as ever
            continue
        for where, message in config_problems(config, step.action.config_schema, allow_templates=False):
            unset = _unset_fields(plan, step, where.split(".", 1)[0].split("[", 1)[0], workspace)
            if unset and message.startswith("None "):
                message = unset
            else:
                if where.split(".", 1)[0].split("[", 1)[0] in step.secret_fields:
                    message = "its value (a secret, not shown) is not valid for this field"
                message = "with this workspace and these variables: " + (
                    redactor.text(message) if redactor is not None else message)
            problems.append(Problem(plan.name, message, step=sid, field=f"action_config.{where}"))
    if problems:
        raise TemplateError(problems)


def _unset_fields(plan: Plan, step: Any, key: str, workspace: Mapping[str, Any]) -> str | None:
    """"the workspace has no db_name" when the field ``key`` reads workspace
    fields that were not given, with a near name that was given and is read
    nowhere (a typo: db_nme)."""
    import difflib

    from .compile.expressions import leaf_references, template_strings
    names = sorted({path[1] for _, text in template_strings(step.config.get(key)) for path in leaf_references(text)
                    if len(path) >= 2 and path[0] == "workspace" and workspace.get(path[1]) is None})
    if not names:
        return None
    unread = [k for k, v in workspace.items() if v is not None and k not in plan.workspace_fields]
    near = [m for name in names for m in difflib.get_close_matches(name, unread, n=1)]
    return (f"the workspace has no {' or '.join(names)}"
            + (f" (it was given {', '.join(near)}: a typo?)" if near else ""))


def _allowed_roots(extra: Iterable[str]) -> tuple[str, ...]:
    """The folders workspace homes may live in (the configured ones and
    ``extra``), each resolved on disk now."""
    from .workspace import home_roots
    return home_roots(extra)


def _home_root(workspace: Mapping[str, Any], roots: tuple[str, ...]) -> str | None:
    from .workspace import home_root
    return home_root(str(workspace["home_dir"]), roots) if workspace.get("home_dir") else None


def _executor(executor: Any) -> Any:
    """``executor=`` as the runner takes it (a Dask address or client becomes
    dagrun's Dask adapter)."""
    from .run.executors import resolve_executor
    return resolve_executor(executor)


def check_account(workspace: Mapping[str, Any], adopt_users: Iterable[str] = ()) -> None:
    """As root, an existing ``linux_username`` must be this workspace's
    (marked by create_linux_user) or one the operator allows."""
    name = workspace.get("linux_username")
    if name and os.geteuid() == 0:
        from .run.accounts import account_problem
        problem = account_problem(str(name), str(workspace["id"]), adopt_users)
        if problem:
            raise InputError(problem)


def learned(plan: Plan, url: str) -> Plan:
    """The plan with the durations its steps took here before (their
    dispatch order follows), where the store has them."""
    from .store.engine import store_errors, writable
    from .store.estimates import learned_estimates
    with store_errors(url, "cannot read"):
        found = learned_estimates(writable(url), plan)
    if not found:
        return plan
    return plan.with_estimates({sid: e.seconds for sid, e in found.items()},
                               {sid: f"learned ({e.runs} run{'s' if e.runs != 1 else ''})" for sid, e in found.items()})


INSECURE_CLUSTER_ENV = "DAGRUN_ALLOW_INSECURE_CLUSTER"


def check_cluster(executor: Any, plan: Plan, secrets: Mapping[str, Any] | None) -> None:
    """Secrets go to a Dask cluster only over TLS (helper-68): a scheduler
    reached over plain tcp:// lets anyone who can reach it read every
    task's arguments (each attempt's job holds the run's variables, secrets
    included) and run code on its workers. Refused before anything runs,
    unless the operator says the cluster is reachable only by trusted users."""
    from .run.cluster import DaskExecutor
    if not isinstance(executor, DaskExecutor) or executor.secured or os.environ.get(INSECURE_CLUSTER_ENV):
        return
    holds = bool(secrets) or bool(plan.secret_literals) or any(
        step.config.get(key) not in (None, "") for step in plan.steps.values() for key in step.secret_fields)
    if holds:
        raise InputError(f"this run holds secrets, and the Dask scheduler at {executor.address} is not reached over "
                         "TLS: anyone who can reach it reads every task's arguments (secrets included) and runs "
                         "code on its workers; use a tls:// scheduler that requires client certificates "
                         "(distributed's Security, or its distributed.comm.tls settings), or set "
                         f"{INSECURE_CLUSTER_ENV}=1 for a cluster only trusted users can reach")


def check_sandbox(plan: Plan, sandbox: bool, workspace: Mapping[str, Any] | None = None,
                  allow_network: Iterable[str] = ()) -> None:
    """What sandboxed steps need, refused before anything runs without it:
    bubblewrap; as root, a workspace user to run as (root in a sandbox is
    still root to the files it is shown); for a user-defined action that
    asks for the network, the operator's consent."""
    from .run.isolation import sandbox_available
    needing = [sid for sid in plan.order if plan.steps[sid].sandbox]
    if sandbox and needing and not sandbox_available():
        raise InputError(f"steps {', '.join(needing)} run in a sandbox, but bubblewrap (bwrap) is not installed: "
                         "apt-get install bubblewrap, or run without the sandbox (sandbox=False, --no-sandbox)")
    allowed = set(allow_network)
    asking = sorted({plan.steps[sid].action.name for sid in plan.order
                     if not plan.steps[sid].action.library and plan.steps[sid].action.requires_network}
                    - allowed)
    if asking:
        raise InputError(f"user-defined action(s) {', '.join(asking)} ask for the network (requires_network); a "
                         "step with the network shares the host's, loopback services included: allow it with "
                         "allow_network=[...] / --allow-network NAME")
    if sandbox and needing and os.geteuid() == 0 and workspace is not None and not workspace.get("linux_username"):
        raise InputError(f"steps {', '.join(needing)} run in a sandbox as the workspace's Linux user, and the "
                         "workspace has no linux_username: give one (create it with create_linux_user), or run "
                         "them unconfined as root (sandbox=False, --no-sandbox)")


def check_root_code(plan: Plan, workspace: Mapping[str, Any]) -> None:
    """As root, what a step's ``x-code`` field names becomes code root runs
    (pip runs a package's build, and the package whenever its venv runs): a
    step that runs as root (every step of a workspace without a Linux user)
    takes it only as the template's author wrote it, never from a value."""
    if os.geteuid() != 0:
        return
    from .compile.configs import code_fields
    from .compile.expressions import has_template
    no_user = not workspace.get("linux_username")
    for sid in plan.order:
        step = plan.steps[sid]
        fields = code_fields(step.action.config_schema)  # (cached per schema: most actions have none)
        if not fields or not (no_user or step.run_as != "workspace" or step.action.requires_sudo):
            continue
        for key in sorted(fields & set(step.config)):
            value = step.config[key]
            if any(has_template(text) for text in (value if isinstance(value, list) else [value])):
                raise InputError(
                    f"step {sid}: {key} reads a value, and what it names becomes code that root runs (pip runs "
                    "a package's build, and the package whenever its venv runs): as root, "
                    + ("a workspace without a Linux user" if no_user else "a step run as root")
                    + " installs only what the template's author wrote; give the workspace a linux_username "
                      "(steps then run as that user)")


def sudo_prefix(plan: Plan, allow_sudo: bool) -> tuple[str, ...]:
    """How privileged commands run, or an error naming the steps that need root."""
    if os.geteuid() == 0:
        return ()
    needing = [sid for sid in plan.order if plan.steps[sid].action.requires_sudo]
    if needing and not allow_sudo:
        raise InputError(f"steps {', '.join(needing)} need root: run as root, or allow sudo "
                         f"(allow_sudo=True, dagrun run --allow-sudo)")
    return ("sudo", "-n") if needing else ()


def _check_workers(max_workers: int | None) -> None:
    if max_workers is not None and (not isinstance(max_workers, int) or max_workers < 1):
        raise InputError(f"max_workers must be a positive integer, not {max_workers!r}")


# -- 2. claim -------------------------------------------------------------------------

def _maybe_rolled_back(plan: Plan, run: Any, rows: Mapping[str, list[Any]]) -> set[str]:
    """Completed steps a rollback may have undone before the run's process
    stopped: the run recorded that it was rolling back (before the first
    rollback ran) and never recorded its end. They run again, not trusted."""
    from datetime import datetime, timezone

    from .run.handler_types import handlers_for
    from .store.operations import ROLLING_BACK_MARK
    from .store.runs import INTERRUPTED, ROWS_BEFORE_RESUME
    marked = ROLLING_BACK_MARK.search(run.error or "")
    if marked is None or run.status not in ("running", "failed"):
        return set()
    if run.status == "failed" and not (run.error or "").startswith(INTERRUPTED):
        return set()  # it ended: each rollback's own record says what was undone
    # A margin: completion times come from the workers' clocks (a Dask worker's may be ahead); a step
    # completed just after the mark is run again (once more, as a step running at a crash is).
    began = datetime.fromtimestamp(float(marked.group(1)) + ROLLBACK_CLOCK_MARGIN_SECONDS, timezone.utc)

    noted = ROWS_BEFORE_RESUME.search(run.error or "", marked.end())
    last_before_resume = int(noted.group(1)) if noted else None

    def before(row: Any) -> bool:  # completed before the rollbacks began (a later resume's are sure)
        if last_before_resume is not None and row.id > last_before_resume:
            return False  # made by a resume (its rows come after the first resume's claim)
        done = row.completed_at
        return done is None or (done if done.tzinfo else done.replace(tzinfo=timezone.utc)) <= began

    return {sid for sid, attempts in rows.items() if sid in plan.steps and attempts
            and attempts[-1].status == "completed" and attempts[-1].changed is not False and before(attempts[-1])
            and _undoes(plan.steps[sid], handlers_for(plan.steps[sid].action).rollback)}


def _undoes(step: Any, rollback: Any) -> bool:
    """May this step's rollback have undone anything? (A library rollback
    may say from the config: a custom script without a rollback_script
    undoes nothing.)"""
    if rollback is None:
        return False
    undoes = getattr(rollback, "undoes", None)
    return undoes is None or bool(undoes(step.config))


ROLLBACK_CLOCK_MARGIN_SECONDS = 60.0


def _check_masked_results(plan: Plan, run_id: str, done: Mapping[str, Done]) -> None:
    """A step that runs again reading a result that was stored masked (a
    secret is never stored) would get ``********``: refused, naming the
    step to resume from."""
    masked = {sid for sid, d in done.items() if MASK in json.dumps(d.result, default=str)}
    if not masked:
        return
    for sid in plan.order:
        step = plan.steps[sid]
        if sid in done:
            continue
        # (any read of the step's results: .get('k'), | tojson, a key from a variable)
        for upstream in sorted(step.step_refs & masked)[:1]:
            raise InputError(f"run {run_id}: step {sid} reads the results of step {upstream}, which held a secret "
                             f"and were stored masked: resume from that step (--from {upstream}) to make them again")


def claim(prepared: PreparedRun) -> None:
    """Record the run as this process's; raises RunConflictError when its
    workspace has another active run. Nothing to do for an unrecorded run."""
    if prepared.url is None:
        return
    from .store.engine import store_errors, writable
    from .store.runs import claim as claim_in_store
    plan, ws = prepared.plan, prepared.workspace
    common = {"template_name": plan.name, "template_version": plan.version, "total_steps": len(plan.order),
              "max_workers": prepared.max_workers, "fleet_id": prepared.fleet_id,
              "mode": "check" if prepared.check else None,
              "home_dir": str(ws["home_dir"]) if ws.get("home_dir") else None}
    if prepared.resumed:
        # The stored template, workspace and variables, what is given again and its digests stay as the
        # run recorded them: a resume was given again exactly those names, checked against those digests
        # (stored again through a redactor that now knows them whole, short values would come out masked).
        with store_errors(prepared.url, "cannot write to"):
            claim_in_store(writable(prepared.url), run_id=prepared.run_id, workspace_id=str(ws["id"]),
                           expect=prepared.seen, fields=common)
        return
    # A workspace field that is a secret (the value of an x-secret field) is not stored either.
    from .run.redact import Redactor
    from .run.runner import known_secrets
    redactor = Redactor([*prepared.secrets.values(),
                         *known_secrets(plan, ws, {**prepared.variables, **_secret_vars(prepared)}, {})])
    stored = stored_fields(ws, plan.workspace_fields)
    # The workspace's identity (id, home, user, host) is stored as it is, never hidden nor masked: a
    # resume could otherwise be "given it again" (a tenant choosing secrets equal to it at the start
    # would move the run into another workspace's home).
    identity = {k: v for k, v in stored.items() if k in ALWAYS_STORED}
    # Nor is a plain variable, or a workspace field, that a secret field reads (password: "{{ vars.pw }}"):
    # like a secret, it is given again to resume the run. Which ones, the template says (by name): a value
    # that merely equals a secret does not make a field one a resume may change.
    from_secret_fields = _secret_field_sources(plan)
    variables = dict(prepared.variables)

    def holds_secret(value: Any) -> bool:  # (a number fills a secret field as its text)
        return redactor.holds(value)

    def read(kind: str, name: str, value: Any) -> bool:  # by name (or all): whatever its length
        return value not in (None, "") and ((kind, name) in from_secret_fields or (kind, "*") in from_secret_fields)

    hidden = [k for k, v in stored.items() if k not in identity and read("workspace", k, v)]
    hidden_vars = [k for k, v in variables.items() if read("vars", k, v) and k not in prepared.secrets]
    clashes = [f"workspace.{k}" for k, v in stored.items() if k not in identity and k not in hidden
               and holds_secret(v)] + [k for k, v in variables.items() if k not in hidden_vars and holds_secret(v)]
    if clashes:  # stored masked it could not be given back, stored clear it would show a secret
        raise InputError(f"{', '.join(sorted(clashes))} holds a secret's value (or part of it) but is no secret "
                         "itself: give it another value")
    defaults = [n for n in secret_variable_defaults(plan) if n not in variables and n not in prepared.secrets]
    names = sorted({*secret_names(plan, prepared.secrets), *(f"workspace.{k}" for k in hidden), *hidden_vars,
                    *defaults})
    # What a resume is given again for them must be what this run starts with (see _check_given_again).
    # A check (--check) is never resumed.
    from .store.digests import digest
    digests = {} if prepared.check else {
        **{n: GIVEN_AS_SECRET for n in prepared.secrets if "." not in n},  # may differ at resume
        **_literal_digests(plan), **{f"workspace.{k}": digest(stored[k]) for k in hidden},
        **({BY_NAME: "named"} if prepared.named_template and (plan.secret_literals or defaults) else {}),
        # a variable as the run uses it: a mapping given over its default merged with it
        **{n: digest(plan.variables[n]) for n in (*hidden_vars, *defaults)}}
    with store_errors(prepared.url, "cannot write to"):
        claim_in_store(writable(prepared.url), run_id=prepared.run_id, workspace_id=str(ws["id"]),
                       expect=prepared.seen, fields={
            **common, "template_snapshot": masked_snapshot(plan),
            "workspace": _jsonable({**redactor.value({k: MASK if k in hidden else v for k, v in stored.items()
                                                      if k not in identity}), **identity}),
            "variables": _jsonable({k: v for k, v in variables.items() if k not in hidden_vars}),
            "secret_names": names, "secret_digests": digests or None})


# -- 3. execute -------------------------------------------------------------------------

def execute(prepared: PreparedRun, *, observers: Iterable[Observer] = (),
            on_event: Callable[[Any], None] | None = None,
            runner_hook: Callable[[Runner], None] | None = None) -> RunResult:
    """Run a claimed run; returns once every record is committed."""
    from .run import logs
    from .run.interrupts import ctrl_c_cancels
    from .run.runner import Runner
    secret_vars = _secret_vars(prepared)
    runner = Runner(prepared.plan, prepared.workspace, run_id=prepared.run_id,
                    variables={**prepared.variables, **secret_vars}, max_workers=prepared.max_workers,
                    executor=prepared.executor, sudo=prepared.sudo, done=prepared.done,
                    attempts=prepared.attempts, secret_values=list(prepared.secrets.values()),
                    sandbox=prepared.sandbox, write_ahead=prepared.url is not None, check=prepared.check,
                    home_root=prepared.home_root, adopt_users=prepared.adopt_users,
                    shared_locks=prepared.shared_locks)
    recorder = None
    # From here until every record is committed, Ctrl-C cancels (see run.interrupts): a
    # KeyboardInterrupt before the run would leave it recorded as running, one while the last
    # records are written would lose them.
    with ctrl_c_cancels(runner.interrupt):
        if prepared.url is not None:
            from .store.recorder import Recorder
            # A new run that succeeds counts as a use of its template (in the run's last commit).
            from .store.runs import owner_id
            recorder = Recorder(prepared.url, on_durable=runner.durable,
                                count_use=not prepared.resumed and not prepared.check, on_cancel=runner.cancel,
                                owner=owner_id())
        runner.observers = [o for o in (logs.log_events if logs.enabled() else None, recorder, *observers,
                                        on_event) if o is not None]
        if runner_hook:
            runner_hook(runner)
        try:
            result = runner.run()
        finally:
            if recorder:
                recorder.close()
    result.database_url = prepared.url
    if recorder and recorder.error:
        result.error = (result.error + "; " if result.error else "") + f"records incomplete: {recorder.error}"
    return result


# -- what the store keeps of a run --------------------------------------------------------

def _secret_vars(prepared: PreparedRun) -> dict[str, Any]:
    return {k: v for k, v in prepared.secrets.items() if "." not in k}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _snapshot_step(snapshot: Mapping[str, Any], sequence_order: int) -> dict[str, Any] | None:
    for step in snapshot.get("actions") or ():
        if step.get("sequence_order") == sequence_order:
            return step
    return None


def _literal_digests(plan: Plan) -> dict[str, str]:
    """A digest of each secret written in the template, by ``step.field``."""
    from .store.digests import digest
    return {f"{sid}.{key}": digest(plan.steps[sid].config[key]) for sid, key in plan.secret_literals}


def masked_snapshot(plan: Plan) -> dict[str, Any]:
    """The template as stored with the run: x-secret values written in the
    template are masked (a resume is given them again as ``step.field``)."""
    snapshot = _jsonable(dict(plan.snapshot))
    for sid, key in plan.secret_literals:
        step = _snapshot_step(snapshot, plan.steps[sid].sequence_order)
        if step is not None and key in (step.get("action_config") or {}):
            step["action_config"][key] = MASK
    if isinstance(snapshot.get("vars"), dict):  # a default a secret field reads: given again too
        snapshot["vars"] = masked_defaults(plan, snapshot["vars"])
    if plan.global_config.env_passthrough:  # the names the run was given (--env) too: a resume reads them again
        gc = snapshot["global_config"] = dict(snapshot.get("global_config") or {})
        gc["env_passthrough"] = list(plan.global_config.env_passthrough)
    return snapshot


def masked_defaults(plan: Plan, defaults: dict[str, Any]) -> dict[str, Any]:
    """The template's variable defaults with what a secret field reads of
    them masked: the very key of a mapping it reads (``vars.db.password``:
    ``db.host`` stays, and a mapping given over it at resume keeps it), a
    whole default it reads whole, every default when one reads them by a
    key that names none."""
    masked = dict(defaults)
    for path in _secret_leaf_paths(plan):
        if path[0] != "vars":
            continue
        if path[1] == "*":
            return {k: MASK if v not in (None, "") else v for k, v in masked.items()}
        container, key = masked, path[1]
        for part in path[2:]:  # down a mapping default (copied as it goes); what is no mapping is masked whole
            value = container.get(key)
            if not isinstance(value, Mapping) or hasattr(dict, part):
                break  # (vars.db.get('password'), vars.db.items(): a method: all of the mapping)
            container[key] = dict(value)
            container, key = container[key], part
        if container.get(key) not in (None, ""):
            container[key] = MASK
    return masked


def _secret_leaf_paths(plan: Plan) -> set[tuple[str, ...]]:
    """The paths under ``vars`` and ``workspace`` that secret fields read
    (``("vars", "db", "password")``); ``("vars", "*")`` or
    ``("workspace", "*")`` when one reads them in a way that names none
    (``vars | tojson``, ``vars['p' ~ 'w']``): then all of them. What a
    secret field reads of its step's other fields counts (``{{ config.dsn }}``)."""
    from .compile.configs import secret_field_texts
    from .compile.expressions import leaf_references, references, template_strings
    found: set[tuple[str, ...]] = set()
    seen: set[tuple[str, str]] = set()
    todo = [(step, text) for step, text in secret_field_texts(plan)]
    while todo:
        step, text = todo.pop()
        found |= {path for path in leaf_references(text) if len(path) >= 2 and path[0] in ("vars", "workspace")}
        refs = references(text)
        found |= {(ref.root, "*") for ref in refs if ref.root in ("vars", "workspace") and ref.attr is None}
        for ref in refs:
            if ref.root == "config":
                for key in (step.config if ref.attr is None else (ref.attr,)):
                    if (step.id, key) not in seen:
                        seen.add((step.id, key))
                        todo += [(step, t) for _, t in template_strings(step.config.get(key))]
    return found


def _secret_field_sources(plan: Plan) -> set[tuple[str, str]]:
    """("vars", name) and ("workspace", field) that a secret field reads,
    and ("vars", "*") / ("workspace", "*") (see :func:`_secret_leaf_paths`)."""
    return {(path[0], path[1]) for path in _secret_leaf_paths(plan)}


def secret_variable_defaults(plan: Plan) -> list[str]:
    """The template's variables with a default written in it that a secret
    field reads, whole or in part (``password: "{{ vars.pw }}"``, ``vars:
    {pw: ...}``): masked in the stored template, given again at resume."""
    defaults = plan.snapshot.get("vars")
    if not isinstance(defaults, Mapping) or not defaults:
        return []
    masked = masked_defaults(plan, _jsonable(dict(defaults)))
    return sorted(name for name in masked if masked[name] != _jsonable(defaults.get(name)))


def _check_given_again(run: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    """What a resume is given again must be what the run started with,
    wherever the run kept a digest of it: a secret written in the template
    (it goes back into the template as the author's text), and a variable,
    a variable's default or a workspace field that a secret field reads (a
    resume never changes the run's inputs: a host read by a secret URL may
    be used by a deploy script too). Only a secret given as one (secrets=,
    --secret) may differ: a password rotated since the run started; the run
    says which those are (:data:`GIVEN_AS_SECRET`). A name the run kept
    nothing for (recorded by an older dagrun) is refused: it cannot be
    checked."""
    digests = run.secret_digests or {}
    defaults = (run.template_snapshot or {}).get("vars") or {}
    checked = dict(given)
    for name in sorted(given):
        stored = digests.get(name)
        if stored == GIVEN_AS_SECRET:  # free, but whole over a mapping default, as at the start
            checked[name] = _whole_secret(name, given[name], defaults.get(name), f"run {run.id}: ")
            continue
        if stored is None:
            raise InputError(f"run {run.id}: {name} is not stored with the run, and the run was recorded without "
                             "a digest to check the value given again against (by an older dagrun): run the "
                             "template again instead")
        value = _as_it_was(given[name], stored, defaults.get(name) if "." not in name else None)
        if value is _NO_MATCH:
            what = "written in the template" if "." in name and not name.startswith("workspace.") else \
                "a secret field reads it; a resume does not change the run's inputs"
            raise InputError(f"run {run.id}: the value given again for {name} is not the one the run "
                             f"started with ({what})")
        checked[name] = value
    return checked


def _written_in_stored_template(url: str, run: Any, actions: Iterable[Any] | None,
                                trusted_actions: Iterable[Any] | None) -> dict[str, Any]:
    """The secrets written in the template that the run did not store (a
    secret field's text, ``step.field``, and the default of a variable a
    secret field reads), from the template stored (or shipped) under the
    run's name and version (a changed template is stored as another
    version): each only where it is the value the run started with (its
    digest)."""
    digests = run.secret_digests or {}
    wanted = {n: d for n, d in digests.items()
              if not n.startswith("workspace.") and n != BY_NAME and d != GIVEN_AS_SECRET}
    if not wanted or digests.get(BY_NAME) != "named":
        return {}  # (a caller's own document named like a stored one would learn whether it guessed right)
    from .compile.loader import TemplateSource
    from .store.digests import matches
    from .store.seeding import stored_templates
    stored = [] if _surely_no_stored_templates(url) else stored_templates(url)
    found = TemplateSource(stored).find(str(run.template_name), version=str(run.template_version))
    if found is None:
        return {}
    try:
        compiled = compile_template(found[0], actions=actions, templates=stored, trusted_actions=trusted_actions)
    except DagrunError:
        return {}  # one that no longer compiles (its base changed) holds nothing to take
    written = {f"{sid}.{key}": compiled.steps[sid].config[key] for sid, key in compiled.secret_literals}
    written.update({n: compiled.variables[n] for n in secret_variable_defaults(compiled) if n in compiled.variables})
    return {n: v for n, v in written.items() if n in wanted and matches(v, wanted[n])}


def _leaf_paths(value: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    if isinstance(value, Mapping):  # (an empty mapping has no leaf: opts: {} is filled by any mapping)
        return {p for k, v in value.items() for p in _leaf_paths(v, (*prefix, str(k)))}
    return {prefix}


def _whole_secret(name: str, value: Any, default: Any, where: str = "") -> Any:
    """A secret given as a mapping over a mapping default must give every key
    of the default: merged, a resume could not tell the secret's parts from
    the template's (which may not change). Text given for it (the CLI, the
    web page) is read as the mapping it writes."""
    if not isinstance(default, Mapping) or not default:
        return value
    if isinstance(value, str):
        typed = _typed(value)
        value = typed if isinstance(typed, Mapping) else value
    if isinstance(value, Mapping):
        left = sorted(".".join((name, *p)) for p in _leaf_paths(default) - _leaf_paths(value) if p)
        if left:
            raise InputError(f"{where}the secret {name} is a mapping merged over its default in the template: give "
                             f"it whole (it leaves out {', '.join(left)}), or give its secret part as a variable of "
                             "its own")
    return value


def _typed(text: str) -> Any:
    """Text given again read as YAML, as --set reads values (bounded: a
    tenant's text), or None."""
    from .compile.loader import check_shape, parse_text
    from .errors import TemplateError
    if len(text) > MAX_GIVEN_TEXT:
        return None
    try:
        typed = parse_text(text, "the value given again", json_document=False)
        check_shape(typed, "the value given again")
    except TemplateError:
        return None
    return typed if _json_native(typed) else None  # (a date, a set, bytes: not what JSON gave the run)


def _json_native(value: Any) -> bool:
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _json_native(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_json_native(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


# The run's secret_digests entry saying its template was the one stored or shipped under its name.
BY_NAME = "@template"
# The run's secret_digests entry of a secret given as one (secrets=): it may differ at resume.
GIVEN_AS_SECRET = "given as a secret"


_NO_MATCH = object()


def _as_it_was(value: Any, stored: str, default: Any = None) -> Any:
    """The value the digest was made of, from what a resume gives: the value
    itself; text that reads (as YAML, as ``--set`` reads values) as the
    number, boolean, mapping or list it was (the CLI and the web page give
    text); a mapping given over the variable's stored default (its masked
    keys given again, the others kept: the run used the two merged). Else
    _NO_MATCH."""
    from .store.digests import matches
    from .util import deep_merge
    candidates = [value]
    typed = _typed(value) if isinstance(value, str) else None
    if isinstance(typed, (bool, int, float, Mapping, list)):
        candidates.append(typed)
    if isinstance(default, Mapping):
        candidates += [deep_merge(default, c) for c in list(candidates) if isinstance(c, Mapping)]
    return next((c for c in candidates if matches(c, stored)), _NO_MATCH)


MAX_GIVEN_TEXT = 64 * 1024  # text given again is read as YAML only up to this size


def with_secret_literals(snapshot: Mapping[str, Any], secrets: Mapping[str, Any]) -> dict[str, Any]:
    """Put the ``step.field`` secrets given to a resume back into the
    snapshot, each into the one masked field its name names."""
    snapshot = _jsonable(dict(snapshot))
    steps = [s for s in snapshot.get("actions") or () if isinstance(s, dict)]
    uses: dict[Any, int] = {}
    for step in steps:
        uses[step.get("action_name")] = uses.get(step.get("action_name"), 0) + 1
    for name, value in secrets.items():
        found = []
        for step in steps:  # named as the compiler names it: its id, its action, or action_order
            action = step.get("action_name")
            named = str(step.get("id") or (action if uses.get(action) == 1
                                           else f"{action}_{step.get('sequence_order')}"))
            key = name[len(named) + 1:] if name.startswith(f"{named}.") else None
            if key and isinstance(step.get("action_config"), dict) and step["action_config"].get(key) == MASK:
                found.append((step, key))
        if len(found) != 1:  # ("a.b.token": step a's "b.token", or step a.b's "token"?)
            raise InputError(f"{name} names {'no' if not found else 'more than one'} masked field of the template")
        step, key = found[0]
        step["action_config"][key] = value
    return snapshot


def secret_names(plan: Plan, secrets: Mapping[str, Any] | None) -> list[str]:
    return sorted({*(k for k in secrets or {} if "." not in k),
                   *(f"{sid}.{key}" for sid, key in plan.secret_literals)})


def _url(database_url: str | None, schema: str | None) -> str | None:
    if not schema:
        return database_url
    from .store.engine import with_schema
    return with_schema(database_url or default_database_url(), schema)


def default_database_url() -> str:
    from .locations import default_database_url as default  # without SQLAlchemy: validate never opens it
    return default()


# -- compile-only ---------------------------------------------------------------------------

def plan(template: Any, *, actions: Iterable[Any] | None = None, variables: Mapping[str, Any] | None = None,
         templates: Iterable[Mapping[str, Any]] = (), database_url: str | None = None,
         trusted_actions: Iterable[Any] | None = None, estimates: bool = True) -> Plan:
    """Compile without running (``dagrun plan``). With ``database_url``, a
    template stored with ``dagrun seed`` is found by name, and (unless not
    ``estimates``) the steps' durations are learned from the runs recorded
    there (``plan.estimate_sources``)."""
    found = _with_stored(template, database_url, templates)
    compiled = compile_template(template, actions=actions, variables=variables, templates=found,
                                trusted_actions=trusted_actions)
    _check_variables(compiled, variables)
    return learned(compiled, database_url) if estimates and database_url and _has_store(database_url) else compiled


def validate(items: Iterable[str], *, actions: Iterable[Any] | None = None, workspace: Any = None,
             variables: Mapping[str, Any] | None = None, database_url: str | None = None,
             trusted_actions: Iterable[Any] | None = None,
             home_roots: Iterable[str] = ()) -> list[tuple[str, Exception | None]]:
    """Check templates (files, seed or stored names) and action definition
    files; ``(item, error or None)`` each. Every problem of a template is in
    its one error. With ``workspace`` (and ``variables``), its fields and the
    variables are checked as a run would check them (``home_roots``: as
    :func:`run_template`'s)."""
    from .compile.loader import names_a_file, read_document
    from .errors import TemplateError
    results: list[tuple[str, Exception | None]] = []
    for item in items:
        try:
            path = Path(item)
            doc = read_document(path) if names_a_file(item) and path.is_file() else None
            if doc is not None and ("action_type" in doc or (isinstance(doc.get("actions"), list) and doc["actions"]
                                                            and "action_type" in doc["actions"][0])):
                # its actions as a run takes them (trusted where the run would trust them), handlers built
                if _trusted_file(path, trusted_actions):
                    build_library(trusted=[path], check_handlers=True)
                else:
                    build_library([path], check_handlers=True)
            else:
                found = _with_stored(item, database_url, ())
                if workspace is not None:
                    compile_for(item, workspace, actions=actions, variables=variables, templates=found,
                                trusted_actions=trusted_actions, roots=_allowed_roots(home_roots))
                else:
                    _check_variables(compile_template(item, actions=actions, variables=variables, templates=found,
                                                      trusted_actions=trusted_actions), variables)
            results.append((item, None))
        except (TemplateError, InputError) as exc:
            results.append((item, exc))
    return results


def _trusted_file(path: Path, trusted_actions: Iterable[Any] | None) -> bool:
    """Is this action file one a run trusts: the library's own, or in
    ``trusted_actions`` (a file or a folder of them)?"""
    from .compile.loader import package_dir
    real = path.resolve()
    folders = [package_dir("handlers"), *(Path(t) for t in trusted_actions or () if isinstance(t, (str, Path)))]
    return any(real == folder.resolve() or folder.resolve() in real.parents for folder in folders)


def explain(template: Any, *, step: str | None = None, actions: Iterable[Any] | None = None,
            variables: Mapping[str, Any] | None = None, database_url: str | None = None,
            trusted_actions: Iterable[Any] | None = None,
            templates: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The effective template after inheritance and defaults, each value
    with its origin (a base template and file, the child, the action's
    default, the schema's default, ``--set``)."""
    from .compile.explain import explain as explain_template
    return explain_template(template, step=step, actions=actions, variables=variables,
                            templates=_with_stored(template, database_url, templates), trusted_actions=trusted_actions)


def list_actions(actions: Iterable[Any] | None = None, trusted_actions: Iterable[Any] | None = None):
    return build_library(actions, trusted_actions, check_handlers=True)


def list_templates(database_url: str | None = None) -> list[dict[str, Any]]:
    """The templates a run can name: the shipped seeds, and those stored
    with ``dagrun seed`` in ``database_url`` (when it has dagrun's tables)."""
    from .compile.loader import package_dir, read_document
    found = []
    for path in sorted((package_dir("seeds") / "templates").iterdir()):
        if path.suffix in (".yaml", ".yml", ".json"):
            doc = read_document(path)
            found.append({"name": str(doc.get("name") or path.stem), "version": str(doc.get("version", "1.0.0")),
                          "description": (doc.get("description") or "").strip(), "source": "seed",
                          "extends": _extends(doc), "steps": _step_count(str(path), doc, ())})
    if database_url and _has_store(database_url):
        from .store.seeding import stored_templates
        stored = stored_templates(database_url)
        for doc in stored:
            found.append({"name": str(doc.get("name")), "version": str(doc.get("version", "1.0.0")),
                          "description": (doc.get("description") or "").strip(), "source": "stored",
                          "extends": _extends(doc), "steps": _step_count(doc, doc, stored)})
    return found


def _step_count(template: Any, doc: Mapping[str, Any], templates: Iterable[Mapping[str, Any]]) -> int:
    """Its steps with those it inherits (its own only, when a base is missing)."""
    from .compile.inherit import resolve
    from .compile.loader import TemplateSource
    try:
        return len(resolve(template, TemplateSource(templates)).document["actions"])
    except (TemplateError, InputError):
        return len(doc.get("actions") or ())


def _extends(doc: Mapping[str, Any]) -> str | None:
    parent = doc.get("extends")
    return parent.get("name") if isinstance(parent, Mapping) else parent


def _with_stored(template: Any, database_url: str | None, templates: Iterable[Mapping[str, Any]]) -> list:
    """Extra documents for ``template``: those stored in the database when
    ``template`` is a name (not a file) and the database has dagrun's tables."""
    templates = list(templates)
    if database_url and _names_stored(template) \
            and not _surely_no_stored_templates(database_url) and _has_store(database_url):
        from .store.seeding import stored_templates
        templates += stored_templates(database_url)
    return templates


def _names_stored(template: Any) -> bool:
    """Might ``template`` be, or extend, a template stored in the database:
    a name (not a file), or a document whose base (``extends``, by name or
    as ``{name, version}``, or ``base_template_id``) is one."""
    if isinstance(template, Mapping):
        if template.get("base_template_id") is not None:
            return True
        template = template.get("extends")
        if isinstance(template, Mapping):
            template = template.get("name")
    return isinstance(template, str) and not os.path.exists(template)


STORED_TEMPLATES_TABLE = "workspace_templates"  # store.models.WorkspaceTemplate's (a test holds them equal)


def _surely_no_stored_templates(database_url: str) -> bool:
    """True when a SQLite database certainly stores no template: asked
    read-only through the standard library, so that ``dagrun validate NAME``
    after a first recorded run does not load SQLAlchemy (0.35 s here) to
    learn that the table is empty. Anything else (another database, a
    stored template, a locked or unreadable file) says False, and the store
    answers."""
    path = _sqlite_file(database_url)
    if path is None:
        return False
    if not os.path.exists(path):
        return True
    import sqlite3
    read_only = Path(path).resolve().as_uri() + "?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(read_only, uri=True, timeout=0)) as db:
            if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                          (STORED_TEMPLATES_TABLE,)).fetchone() is None:
                return True
            return db.execute(f"SELECT 1 FROM {STORED_TEMPLATES_TABLE} LIMIT 1").fetchone() is None
    except sqlite3.Error:
        return False


def _sqlite_file(database_url: str) -> str | None:
    """The file of a plain SQLite URL (no query options), else None."""
    if database_url.startswith("sqlite:///") and "?" not in database_url:
        return database_url[len("sqlite:///"):]
    return None


def _has_store(database_url: str) -> bool:
    """Does the database hold dagrun's tables (reading never creates them)?"""
    path = _sqlite_file(database_url)
    if path is not None and not os.path.exists(path):
        return False  # no file, no tables: said without loading SQLAlchemy
    from .store.engine import engine_for, store_errors
    from .store.migrate import current
    with store_errors(database_url, "cannot read"):
        return current(engine_for(database_url)) is not None


def _check_variables(compiled: Plan, variables: Mapping[str, Any] | None) -> None:
    odd = sorted(str(n) for n in {*(variables or {}), *(compiled.snapshot.get("vars") or {})}
                 if not str(n).isidentifier())
    if odd:  # (a name like "step.field" would read as a step's secret field to a resume)
        raise InputError(f"template {compiled.name!r}: variable names are identifiers (letters, digits, _), "
                         f"not {', '.join(repr(n) for n in odd)}")
    undeclared = sorted(set(variables or {}) - set(compiled.snapshot.get("vars") or {}))
    if undeclared:
        from .compile.graph import did_you_mean
        declared = compiled.snapshot.get("vars") or {}
        raise InputError("; ".join(f"variable {name!r} is not declared by template {compiled.name!r}"
                                   f"{did_you_mean(name, declared)}" for name in undeclared)
                         + (f" (it declares: {', '.join(declared)})" if declared
                            else " (it declares none: a template names its variables under vars:)"))


# -- the store: history, upkeep -------------------------------------------------------------

def list_runs(*, database_url: str | None = None, workspace: str | None = None, status: str | None = None,
              limit: int = 50, fleet: str | None = None) -> list[dict[str, Any]]:
    """Recorded runs, newest first (none for a database without dagrun's
    tables); ``fleet``: the runs of one fleet run."""
    from .store.history import list_runs as runs
    url = database_url or default_database_url()
    if not _has_store(url):
        return []
    return runs(url, workspace=workspace, status=status, limit=limit, fleet=fleet)


def find_run(prefix: str, *, database_url: str | None = None) -> str:
    """The whole id of the one run whose id starts with ``prefix`` (for a
    person at a terminal: every other function takes whole ids only, so a
    service cannot hand a tenant's prefix on to another tenant's run)."""
    url = database_url or default_database_url()
    if not _has_store(url):
        raise InputError(f"no run {prefix!r} in the store")
    from .store.history import run_id_from_prefix
    return run_id_from_prefix(url, prefix)


def find_fleet(fleet_id: str, *, database_url: str | None = None) -> str:
    """A fleet's whole id, given it or an unambiguous prefix of it (the id
    given, when no fleet has it). Like :func:`find_run`, for a terminal:
    :func:`~dagrun.fleet.resume_fleet` takes the whole id."""
    url = database_url or default_database_url()
    if not _has_store(url):
        return fleet_id
    from .store.history import find_fleet as find
    return find(url, fleet_id) or fleet_id


def get_run(run_id: str, *, database_url: str | None = None, output: bool = False,
            actions: Iterable[Any] | None = None, trusted_actions: Iterable[Any] | None = None) -> dict[str, Any]:
    """One run (by its whole id): every attempt, and each step
    with its status, attempts, duration, error, the tail of its output and,
    while it has not started, ``waiting_for`` (why). ``actions``: the
    user-defined actions the run used (to read its graph)."""
    from .store.steps import run_steps
    from .store.history import run_snapshot, show_run
    url = database_url or default_database_url()
    if not _has_store(url):
        raise InputError(f"no run {run_id!r} in the store")
    run = show_run(url, run_id, output=True)
    run["steps"] = run_steps(run, run_snapshot(url, run["run_id"]), running_here(run["run_id"]),
                             actions=actions, trusted_actions=trusted_actions)
    if not output:
        for attempt in run["attempts"]:
            for key in ("output", "config", "result"):
                attempt.pop(key, None)
    return run


def watch_run(run_id: str, *, database_url: str | None = None, timeout: float | None = None):
    """Follow a run from another process: one event per attempt change, then its end."""
    from .store.history import watch
    url = database_url or default_database_url()
    return watch(url, get_run(run_id, database_url=url)["run_id"], timeout=timeout)


def upgrade_database(database_url: str | None = None) -> str:
    """Create or migrate dagrun's tables; the revision they are at."""
    from .store import migrate
    from .store.engine import writable
    return migrate.current(writable(database_url or default_database_url())) or ""


def warm_up(*, database_url: str | None = None, actions: Iterable[Any] | None = None,
            trusted_actions: Iterable[Any] | None = None) -> None:
    """Do at start what the first run of a long-lived process (a service)
    would otherwise wait for, about half a second: the store opened and its
    tables brought up to date, the action library loaded, the run path
    imported and the ORM configured. A wrong database URL or a bad action
    file is told now, before any request, as the error a run would give."""
    import structlog.contextvars  # noqa: F401 - what Runner.run imports (with rich, 0.1 s)
    from sqlalchemy.orm import configure_mappers

    from .run import logs, runner  # noqa: F401
    from .store import estimates, history, operations, recorder, seeding  # noqa: F401
    upgrade_database(database_url)
    build_library(actions, trusted_actions, check_handlers=True)
    configure_mappers()  # else done by the first query that reads through the ORM


def database_sql(dialect: str = "postgresql") -> str:
    """The DDL of every migration (offline)."""
    from .store import migrate
    return migrate.ddl(dialect)


def recover_journal(journal: str | None = None, *, database_url: str | None = None):
    """Replay records journalled while the database was unreachable:
    ``(file, batches replayed, error or None)`` per journal file."""
    from .store.journal import recover
    return recover(Path(journal) if journal else None, url=database_url or os.environ.get("DAGRUN_DATABASE_URL"))


def save_template(document: Mapping[str, Any], *, database_url: str | None = None,
                  actions: Iterable[Any] | None = None, trusted_actions: Iterable[Any] | None = None,
                  bases: Iterable[Mapping[str, Any]] | None = None) -> str:
    """Store a template document (a new version when its version is already
    stored with other content); raises TemplateError with every problem when
    it does not compile. Returns the version stored. ``bases``: the stored
    templates it may extend (default: all; a service gives those its caller
    may read)."""
    from .store.seeding import store_template
    return store_template(database_url or default_database_url(), dict(document), actions=actions,
                          trusted_actions=trusted_actions, bases=bases)


def seed(*, database_url: str | None = None, actions: Iterable[Any] | None = None,
         templates: Iterable[str] | None = None) -> dict[str, int]:
    """Store the action library and templates (default: the shipped seeds)."""
    from .store.seeding import seed as seed_store
    return seed_store(database_url or default_database_url(), actions=actions,
                      templates=[Path(t) for t in templates] if templates else None)


def _new_run_id() -> str:
    import uuid  # with platform, 2.5 ms that validate, plan and graph never need
    return str(uuid.uuid4())
