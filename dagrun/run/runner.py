"""The driver: one thread runs the run and talks to the executor.

Loop: ask the scheduler core for steps to start, submit each attempt to the
executor (its outcome comes back on a completion queue), then block on that
queue until a completion arrives or the next deadline (a parked retry
becoming due, or an attempt overrunning its timeout). The loop never polls
and never sleeps; workers never wait for retries. The clocks are injected.

Hand-over: whoever changes the run state holds one lock. On dagrun's own
thread pool, when no observer needs the events in order and no record is
awaited, a worker whose attempt completed takes that lock (if it is free)
and does the driver's part itself: records the outcome and dispatches the
steps it made ready. The driver is not woken and waited for (on a chain,
at most one thread wake-up per step instead of two: the pool's next get()
usually finds the dispatched step at once); it wakes when the run ends, at
the nearest deadline (a worker that dispatches a nearer one wakes it), and
for every failure, retry, cancel or event.

:class:`~.scheduler.RunState` owns every step's status; the runner keeps
what a result shows besides (attempts, output, errors) in per-step records.
Outcomes become events for the observers (store, logs, progress, the
caller's ``on_event``), masked at the edge by the :class:`~.redact.Redactor`.

Write-ahead: when the run is recorded, a finished step's dependents are held
back until the recorder says its record is committed (``durable()``): a
crash never makes a resume redo a step whose dependent had started.

After a critical failure, completed steps with a rollback handler are rolled
back in reverse completion order, one at a time, through the same queue and
with deadlines: a rollback that hangs is abandoned, the others still run.
``cancel()`` (any thread) or ``interrupt()`` (a signal handler: Ctrl-C,
SIGTERM; see :mod:`.interrupts`) stops dispatch and kills the running
process trees; the run ends ``cancelled``.
"""

from __future__ import annotations

import _thread
import contextvars
import heapq
import logging
import os
import queue
import re
import time
import uuid
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from ..compile.configs import secret_field_texts
from ..compile.expressions import has_template
from ..spec import Plan, is_base_env
from ..util import bounded, deep_merge, fresh_copy
from .attempt import AttemptJob, run_attempt, run_rollback
from .events import (ROLLBACK_RECORDED, AttemptFinished, Observer, ProcessStarted, RetryScheduled, RollbackStarted,
                     RunFinished, RunStarted, StepFinished, StepRolledBack, StepSkipped, StepStarted)
from .executors import WorkerPool, dispatch, make_executor
from .handler_types import handlers_for
from .interrupts import ctrl_c_cancels, signals_wake
from .outcome import Outcome, RunStatus, StepStatus
from .redact import Redactor
from .result import RunResult, StepResult
from .scheduler import UPSTREAM_FAILED, Failed, Retry, RunState
from .shell import CancelToken

log = logging.getLogger("dagrun")

DEFAULT_MAX_WORKERS = 8
# Shell steps kill themselves at their timeout; this backstop catches
# handlers that cannot be killed (Python code), which are then abandoned.
DEADLINE_GRACE_SECONDS = 5.0
# After a cancel, a handler that did not stop (Python code ignoring its
# cancel token) is abandoned after this long, not after its full timeout.
CANCEL_GRACE_SECONDS = 2.0
# How long rollbacks wait for the run's 'rolling back' record (see Runner._rollback). The recorder
# says it is safe once committed or journalled, after retrying a store that is away for up to
# $DAGRUN_STORE_RETRY_SECONDS (120 s by default): no rollback may start before, or a crash in it
# leaves completed records a resume trusts (helper-63: 30 s was shorter). This bound only guards
# against a writer that died.
ROLLBACK_RECORD_SECONDS = 3600.0
_WAKE = ("wake",)
# A value that is only part of a secret field (a user name beside the password in a URL) is masked on
# its own when at least this long: masking every "app" or "db" would destroy the output, hiding nothing.
PART_MIN_LENGTH = 6
_NO_STEPS: Mapping[str, Any] = {}


def step_environment(passthrough: Iterable[str] = (), source: Mapping[str, str] | None = None) -> dict[str, str]:
    """What steps see of the caller's environment: a small base (PATH, LANG,
    LC_*, TZ, TERM) and the names the template (or caller) passes through.
    dagrun's own settings (DAGRUN_*) never reach a step."""
    source = os.environ if source is None else source
    wanted = set(passthrough)
    # Names first, values only of those kept: os.environ decodes each it hands out (once per run).
    env = {k: source[k] for k in source if (is_base_env(k) or k in wanted) and not k.startswith("DAGRUN_")}
    if "PATH" in env and os.geteuid() == 0:  # as root, no command from a folder somebody else may fill
        from .isolation import STANDARD_PATH
        from .paths import root_only_search_path
        env["PATH"] = root_only_search_path(env["PATH"]) or STANDARD_PATH
    return env


def known_secrets(plan: Plan, workspace: Mapping[str, Any], variables: Mapping[str, Any],
                  env: Mapping[str, str]) -> list[str]:
    """The values of x-secret config fields that can be known before the run:
    written in the template, or rendered from the workspace, variables or
    environment. (One that reads an upstream result is learned when its step
    has run.) Knowing them early masks them wherever they show first."""
    from ..compile.expressions import template_strings
    found: list[Any] = []
    for step in plan.steps.values():
        for key in step.secret_fields:
            whole = step.config.get(key)
            if whole in (None, ""):
                continue
            if not isinstance(whole, str):  # a secret mapping or list: its texts each
                texts = [t for _, t in template_strings(whole)]
                found.append(_literal_parts(whole))
            else:
                texts = [whole]
            for value in texts:
                found += _secret_parts(value, step, workspace, variables, env)
    # the fields holding a secret a secret field reads from them (dsn read by url), written in the template
    # (plan.secret_literals: the compiler's test with the template's fields only) or by the action's defaults
    from ..compile.graph import written_through
    for step in plan.steps.values():
        for key in step.secret_fields:
            found += [step.config.get(k) for k in written_through(step.config, key, step.config)]
    return found


def _literal_parts(value: Any) -> Any:
    """A structure's parts that hold no template (the template's own secret text)."""
    if isinstance(value, str):
        return None if has_template(value) else value
    if isinstance(value, Mapping):
        return [_literal_parts(v) for v in value.values()]
    if isinstance(value, (list, tuple)):
        return [_literal_parts(v) for v in value]
    return value


def _secret_parts(value: str, step: Any, workspace: Mapping[str, Any], variables: Mapping[str, Any],
                  env: Mapping[str, str], seen: set[str] | None = None) -> list[Any]:
    """What one text of a secret field makes known before the run: the text
    itself (written in the template), or rendered, and the values it is made
    of: a variable or workspace field that is part of a secret
    (postgresql://u:{{ vars.pw }}@h) is one itself, shown alone in an error
    or by a script, and so is another field of the step it reads
    (``{{ config.dsn }}``), with what that field is made of."""
    from ..compile.expressions import build_context, leaf_references, references, render_string, template_strings
    if not has_template(value):
        return [value]
    found: list[Any] = []
    sources = {"vars": variables, "env": env, "workspace": workspace}
    seen = set() if seen is None else seen
    refs = references(value)
    whole = any(ref.root == "config" and ref.attr is None for ref in refs)  # {{ config | tojson }}
    read = [ref.attr for ref in refs if ref.root == "config" and ref.attr]
    for key in (list(step.config) if whole else read):
        if key not in seen:
            seen.add(key)
            # (what of it is written out and a secret, the compiler says: plan.secret_literals)
            for _, text in template_strings(step.config.get(key)):
                found += _secret_parts(text, step, workspace, variables, env, seen)
    for root in {ref.root for ref in refs if ref.root in ("vars", "workspace") and ref.attr is None}:
        # read whole ({% set v = vars %}, vars | tojson): every value of it may be in the secret
        found += [v for v in sources[root].values() if isinstance(v, (Mapping, list, tuple))
                  or v is not None and not isinstance(v, bool) and len(str(v)) >= PART_MIN_LENGTH]
    for path in leaf_references(value):
        if path[0] == "config":
            continue
        held: Any = sources.get(path[0])
        for key in path[1:]:
            if isinstance(held, Mapping):
                if hasattr(dict, key):
                    break  # vars.db.get('password'), vars.db.items(): a method (Jinja's first choice): all of it
                held = held.get(key)
            elif isinstance(held, (list, tuple)):
                if not (key.lstrip("-").isdigit() and -len(held) <= int(key) < len(held)):
                    break  # vars.tokens.copy(): a method: all of it
                held = held[int(key)]
            else:
                break  # vars.pw.strip(), vars.pw.split('-'): a method of the value: the value
        if (isinstance(held, (Mapping, list, tuple)) or (
                held is not None and not isinstance(held, bool) and len(str(held)) >= PART_MIN_LENGTH)) \
                and _where_a_secret_is(value, path, held, sources):
            found.append(held)  # (a mapping or a list: each part, see Redactor.add)
    try:
        rendered = render_string(value, build_context(workspace=workspace, config=step.config, variables=variables,
                                                      env=env, steps={}, home=None))
    except Exception:  # reads an upstream step, or fails: its attempt will tell
        return found
    if rendered not in (None, ""):
        found.append(rendered)
    return found


# A URL's parts, in the template's own text (the value read a \x01, other expressions a \0): the value's
# place is decided by what the author wrote, never by the value's own characters.
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?:(?P<userinfo>[^@/?#]*)@)?(?P<host>[^:/?#@]*)"
                  r"(?::(?P<port>[^/?#]*))?(?P<path>/[^?#]*)?(?P<rest>[?#].*)?", re.S)
# A block that is a bare reference: vars.db.user, workspace['name'] (no filter, no operator, no call).
_BARE = re.compile(r"\{\{-?\s*[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*|\[\s*(?:'[^'\\]*'|\"[^\"\\]*\"|\d+)"
                   r"\s*\])*\s*-?\}\}")
_DATABASE_SCHEMES = re.compile(r"(postgres(ql)?|mysql|mariadb|mongodb|redis|rediss|amqps?)(\+[a-z0-9]+)?", re.I)


def _where_a_secret_is(text: str, path: tuple[str, ...], held: Any, sources: Mapping[str, Any]) -> bool:
    """Does the value at ``path`` sit where a secret field's text holds its
    secret? Told from the template's text alone, for a value read by a bare
    reference (no filter, operator or call, which could add a URL's parts):
    in a URL without whitespace, a user name beside a password read from
    elsewhere, the whole host and a database URL's one path segment (its
    database) are not secrets on their own (the whole URL is masked);
    anything else is: the password, a user alone (a token),
    a path, a query, a fragment, part of a host, text that is no URL, and a
    value named like a secret (``*password*``, ``*token*``) wherever it
    sits. What cannot be told is a secret: read beside something else or in
    a statement, a mapping or a list."""
    from ..compile.expressions import EXPRESSION_BLOCK, SECRET_NAME, leaf_references, references
    if isinstance(held, (Mapping, list, tuple)) or "{%" in text or "{#" in text:
        return True
    if any(SECRET_NAME.search(str(part)) for part in path[1:]):
        return True  # named as one (workspace.db_password), wherever it sits
    mine: list[str] = []
    for match in EXPRESSION_BLOCK.finditer(text):
        block = match.group(0)
        try:
            leaves = leaf_references(block)
            refs = references(block)
        except Exception:  # noqa: BLE001 - (reported by the compile)
            return True
        if path in leaves:
            if len(leaves) != 1 or len(refs) != 1 or not _BARE.fullmatch(block):
                return True  # beside something else, or through an expression that may add a URL's parts
            mine.append(block)
    if not mine:
        return True

    def other(block: str) -> str:  # \0: a bare reference to a value that is not empty; \x02: anything else
        try:
            leaves = list(leaf_references(block))
        except Exception:  # noqa: BLE001
            return "\x02"
        if len(leaves) != 1 or not _BARE.fullmatch(block):
            return "\x02"
        held_there: Any = sources.get(leaves[0][0])
        for part in leaves[0][1:]:
            held_there = held_there.get(part) if isinstance(held_there, Mapping) else None
        return "\0" if held_there not in (None, "") else "\x02"
    shape = EXPRESSION_BLOCK.sub(lambda m: "\x01" if m.group(0) in mine else other(m.group(0)), text).strip()
    url = _URL.fullmatch(shape) if not re.search(r"\s", shape) else None
    if url is None or "\x01" in (url["scheme"] or "") or "\x01" in (url["rest"] or ""):
        return True
    user, _, password = (url["userinfo"] or "").partition(":")
    if "\x01" in password or ("\x01" in user and not (user == "\x01" and password == "\0")):
        return True  # the password; a user alone, beside a written (or no) password, or only part of one
    if "\x01" in url["host"] and url["host"] != "\x01" or "\x01" in (url["port"] or ""):
        return True  # part of a host; a port (short: never masked alone anyway)
    if "\x01" in (url["path"] or ""):
        return not (url["path"] == "/\x01" and _DATABASE_SCHEMES.fullmatch(url["scheme"]))
    return False


@dataclass(frozen=True, slots=True)
class Done:
    """A step a resumed run does not run again (read back from the store)."""

    status: StepStatus  # completed, or skipped by its condition
    attempts: int
    duration: float
    result: Mapping[str, Any]
    skip_reason: str | None = None
    exit_code: int | None = None
    changed: bool | None = None


class Runner:
    def __init__(self, plan: Plan, workspace: Mapping[str, Any], *, run_id: str | None = None,
                 variables: Mapping[str, Any] | None = None, max_workers: int | None = None,
                 executor: Executor | None = None, observers: Iterable[Observer] = (),
                 env: Mapping[str, str] | None = None, done: Mapping[str, Done] | None = None,
                 attempts: Mapping[str, int] | None = None, sudo: tuple[str, ...] = (),
                 secret_values: Iterable[str] = (), sandbox: bool = True, write_ahead: bool = False,
                 check: bool = False, home_root: str | None = None, adopt_users: Iterable[str] = (),
                 shared_locks: Any = None, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        """``done`` (resume): steps already done, which are not run again;
        ``attempts``: attempt numbers to continue from. ``write_ahead``: a
        finished step's dependents wait for :meth:`durable` (the recorder
        calls it once the step's record is committed). ``check``: each step
        only says, through its validation, whether it would change anything
        (no execute handler, no retry, no rollback). ``shared_locks``: a
        fleet's :class:`~.shared_locks.SharedLocks`, which this run's locks
        are held in, with the other runs of the fleet."""
        self.plan = plan
        self.workspace = workspace
        self.run_id = run_id or uuid.uuid4().hex
        # As the compiler merged them (a mapping key by key over its default); the plan's are shared.
        self.variables = fresh_copy(deep_merge(plan.variables, variables) if variables else plan.variables)
        self.max_workers = max_workers or plan.global_config.max_workers or DEFAULT_MAX_WORKERS
        self.executor = executor
        self.observers = list(observers)
        self._pending: list[Any] = []  # events for batch observers, delivered before the loop waits
        self.env = step_environment(plan.global_config.env_passthrough) if env is None else dict(env)
        self.home = workspace.get("home_dir")
        self.sudo = tuple(sudo)
        self.sandbox = sandbox  # False: --no-sandbox, for a machine without bubblewrap
        # Steps run as the workspace's Linux user when dagrun is root and it names one.
        self.user = workspace.get("linux_username") if os.geteuid() == 0 else None
        self.redactor = Redactor(secret_values)
        self._secret_results = secret_results(plan) if any(s.secret_fields for s in plan.steps.values()) else {}
        self.write_ahead = write_ahead
        self.check = check
        self.home_root = home_root  # as root: the allowed folder the home is checked up to
        self.adopt_users = tuple(adopt_users)
        self.clock, self.wall = clock, wall
        done = dict(done or {})
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._locks_view = None if shared_locks is None else shared_locks.view(
            _lock_host(workspace, executor), plan.lock_capacity, lambda: self._queue.put(_WAKE))
        if not done and attempts is None:
            self.state = RunState(plan, self.max_workers, shared_locks=self._locks_view)
        else:
            self.state = RunState.resumed(plan, self.max_workers, attempts=dict(attempts or {}),
                                          done={sid: d.status for sid, d in done.items()},
                                          shared_locks=self._locks_view)
        self.cancel_token = CancelToken()
        self._cancel_reason: str | None = None
        self._inflight: dict[tuple[str, int], float] = {}  # attempt -> its deadline
        self._submitted: dict[tuple[str, int], float] = {}  # attempt -> wall time it was submitted
        self._tokens: dict[tuple[str, int], CancelToken] = {}  # attempt -> its own cancel token
        self._deadlines: list[tuple[float, tuple[str, int]]] = []
        self._abandoned = 0
        # What each step's result shows besides its status (RunState owns that): made when the step
        # first has something to show, and handed to the caller in the run's result when it ends.
        self._records: dict[str, StepResult] = {}
        for sid, d in done.items():
            if sid in plan.steps:
                record = self._record(sid)
                record.attempts, record.duration_seconds, record.result = d.attempts, d.duration, dict(d.result)
                record.skip_reason, record.exit_code, record.changed = d.skip_reason, d.exit_code, d.changed
        self._configs: dict[str, dict[str, Any]] = {}  # real rendered configs (a rollback needs them)
        self._data: dict[str, dict[str, Any]] = {sid: dict(d.result) for sid, d in done.items()}  # real results
        self._jobs: dict[str, AttemptJob] = {}
        self._critical: tuple[str, str] | None = None  # (step id, error)
        # Whoever changes the state holds this: the driver, or a worker handing over its own
        # completion (see _completed). _wake_at: when the driver, blocked, next looks by itself.
        self._sched = _thread.allocate_lock()
        self._wake_at = 0.0
        self._handover = False
        # Attempts that did not complete, on their way to the driver or queued, not yet handled: no
        # step is dispatched while there is one (a critical failure must halt the run first).
        self._unhandled: set[tuple[str, int]] = set()
        self._context: contextvars.Context | None = None  # the run's, taken when it starts

    # -- public ---------------------------------------------------------------

    def cancel(self, reason: str = "cancelled") -> None:
        """Thread-safe: stop dispatching and kill running process trees."""
        if self._cancel_reason is None:
            self._cancel_reason = reason
        self.cancel_token.cancel()
        self._queue.put(_WAKE)

    def interrupt(self, reason: str = "interrupted") -> None:
        """:meth:`cancel`, safe in a signal handler: the driver cancels at
        its next turn, woken at once. (``cancel()`` takes locks, which the
        thread the signal interrupted may be holding.)"""
        if self._cancel_reason is None:  # from now on nothing new starts, nor a rollback
            self._cancel_reason = reason
        self._queue.put(("cancel", reason))  # SimpleQueue.put is reentrant

    def durable(self, step_ids: list[str]) -> None:
        """Thread-safe (the recorder's thread): these steps' records are committed."""
        self._queue.put(("durable", step_ids))

    def run(self) -> RunResult:
        # Every log line of the run (workers copy this context) names it and its workspace.
        import structlog.contextvars  # here, not at import: a command that only compiles never loads it
        with structlog.contextvars.bound_contextvars(run_id=self.run_id, workspace=str(self.workspace["id"])), \
                ctrl_c_cancels(self.interrupt), signals_wake(lambda: self._queue.put(_WAKE)):
            return self._run()

    def _run(self) -> RunResult:
        started = self.wall()
        # Every attempt runs in a copy of this (the run's log bindings), whichever thread dispatches it.
        self._context = contextvars.copy_context()
        for secret in known_secrets(self.plan, self.workspace, self.variables, self.env):
            self.redactor.add(secret)
        self._emit(RunStarted(self.run_id, self.plan.name, self.plan.version, str(self.workspace["id"]),
                              len(self.plan.order), self.max_workers, started, self.redactor.plan(self.plan),
                              self.redactor.value(dict(self.workspace)) if self.redactor else self.workspace))
        executor = self.executor or make_executor("threads", self.max_workers)
        try:
            while True:
                try:
                    self._loop(executor)
                    if self._critical and self._cancel_reason is None \
                            and self.plan.global_config.rollback_on_failure and not self.check:
                        self._rollback(executor)
                    break
                except KeyboardInterrupt:  # raised by a SIGINT handler of the caller's own
                    self.cancel("interrupted")
                    self._track_lost()
            cancelled = self._cancel_reason  # the verdict: a cancel from now on (a late Ctrl-C) changes nothing
        except BaseException:
            # A bug ends the run (raised to the caller): what it still runs is stopped, and the
            # locks its steps hold are given back, or a fleet's other runs would wait for them forever.
            self.cancel_token.cancel()
            with self._sched:
                self.state.abandon()
            raise
        finally:
            if self._locks_view is not None:
                self._locks_view.close()
        result = self._result(started, cancelled)
        self._emit(RunFinished(self.run_id, result, self.wall()))
        self._flush(urgent=True)
        return result

    # -- the loop -------------------------------------------------------------

    def _loop(self, executor: Executor) -> None:
        state = self.state
        # Workers may hand over their own completions on dagrun's own pool, with no observer to
        # keep in order and no record to wait for. (A fleet's shared locks are safe to take and
        # release there: their registry has its own mutex and wakes other runs by queueing.)
        can_hand_over = isinstance(executor, WorkerPool) and not self.write_ahead
        try:
            while True:
                with self._sched:
                    now = self.clock()
                    if self._cancel_reason is not None and state.halted is None:
                        for sid in state.halt(self._cancel_reason):
                            self._finish(sid, StepStatus.cancelled, self._cancel_reason)
                        self._redate(now + CANCEL_GRACE_SECONDS)  # a short grace for running handlers, then abandoned
                    if not self._unhandled:  # else a failure is on its way here: it may halt the run
                        self._start_ready(executor, now)
                    if state.finished:
                        return
                    if self._pending:
                        self._flush(state.waiting_for_records)
                    timeout = self._timeout(now)
                    self._wake_at = float("inf") if timeout is None else now + timeout
                    self._handover = can_hand_over and not self._observers
                self._wait(timeout)
        finally:
            with self._sched:
                self._handover = False

    def _wait(self, timeout: float | None) -> None:
        """Block until something arrives or the next deadline; handle it all."""
        try:
            item = self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            item = None
        self._handover = False  # workers leave the lock to the driver (they queue) until its turn ends
        with self._sched:
            if item is None:
                self._expire(self.clock())
                return
            self._handle(item)
            while True:  # drain whatever else arrived meanwhile
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    return
                self._handle(item)

    def _completed(self, executor: Executor, key: tuple[str, int], outcome: Outcome | None,
                   error: BaseException | None) -> None:
        """An attempt's outcome, on its worker's thread. A completed step is
        handled right here when nothing else holds the state: its successors
        are dispatched without waking the driver and waiting for it. Anything
        else (a failure, a retry, a cancel) goes to the driver."""
        if error is None and outcome.status is StepStatus.completed and self._sched.acquire(False):
            try:
                if self._handover and not self._unhandled and self._cancel_reason is None and key in self._inflight:
                    self._handle(("done", key, outcome, None))
                    self._start_ready(executor, self.clock())
                    # The driver sleeps until _wake_at: wake it if it must look sooner.
                    if self.state.finished or (self._deadlines and self._deadlines[0][0] < self._wake_at):
                        self._queue.put(_WAKE)
                    return
            except BaseException as exc:  # a bug here must end the run as it would on the driver, not hang it
                self._handover = False
                self._queue.put(("crashed", exc))
                return
            finally:
                self._sched.release()
        elif error is not None or outcome.status is not StepStatus.completed:
            # Marked before it is queued, each a single call (no thread switch inside): from the
            # mark on, neither a hand-over nor the driver dispatches a step until the driver has
            # handled it. Never waiting for the lock: the pool already counts this thread as free.
            self._unhandled.add(key)
        self._queue.put(("done", key, outcome, error))

    def _start_ready(self, executor: Executor, now: float) -> None:
        for sid, attempt in self.state.start(now):
            self._submit(executor, sid, attempt, now)

    def _timeout(self, now: float) -> float | None:
        wake = self.state.next_wakeup()
        deadlines = self._deadlines
        while deadlines and self._inflight.get(deadlines[0][1]) != deadlines[0][0]:
            heapq.heappop(deadlines)  # lazily drop deadlines of finished (or re-dated) attempts
        if deadlines:
            wake = deadlines[0][0] if wake is None else min(wake, deadlines[0][0])
        return None if wake is None else max(0.0, wake - now)

    def _redate(self, deadline: float) -> None:
        for key, current in list(self._inflight.items()):
            if current > deadline:
                self._inflight[key] = deadline
                heapq.heappush(self._deadlines, (deadline, key))

    def _job(self, sid: str) -> AttemptJob:
        job = self._jobs.get(sid)
        if job is None:
            step = self.plan.steps[sid]
            # Positional, in field order (user, workspace_user, sandbox, run_id, check, home_root,
            # adopt_users, priority): once per step, and keywords cost four times as much.
            job = self._jobs[sid] = AttemptJob(
                step, self.workspace, self.variables, self.env, self.home, self.sudo,
                self.user if step.run_as == "workspace" else None, self.user, step.sandbox and self.sandbox,
                self.run_id, self.check, self.home_root, self.adopt_users, self.plan.priority.get(sid, 0.0))
        return job

    def _record(self, sid: str) -> StepResult:
        record = self._records.get(sid)
        if record is None:
            spec = self.plan.steps[sid]
            record = self._records[sid] = StepResult(sid, spec.sequence_order, spec.action.name,
                                                     spec.action.display_name, StepStatus.pending)
        return record

    def _upstream(self, sid: str) -> Mapping[str, Any]:
        """Results of the upstream steps ``sid`` reads (``steps.<id>``)."""
        refs = self.plan.steps[sid].step_refs
        if not refs:
            return _NO_STEPS
        return {r: {"status": self.state.status[r].value, "result": self._data.get(r, {})} for r in refs}

    def _submit(self, executor: Executor, sid: str, attempt: int, now: float) -> None:
        # The scheduler's hot path (once per attempt): plain attribute reads, no property.
        job = self._jobs.get(sid) or self._job(sid)
        step = job.step
        key = (sid, attempt)
        deadline = self._inflight[key] = now + step.timeout_seconds + DEADLINE_GRACE_SECONDS
        self._submitted[key] = self.wall()
        heapq.heappush(self._deadlines, (deadline, key))
        put = self._queue.put
        report = None
        if self._observers:
            self._emit(StepStarted(self.run_id, sid, attempt, step.retry.max_attempts, step.action.display_name,
                                   self._submitted[key]))
            report = lambda pid, started: put(("process", key, pid, started))  # noqa: E731
        token = self._tokens[key] = self.cancel_token.child()  # abandoning the attempt cancels this one
        dispatch(executor, run_attempt, (job, attempt, self._upstream(sid) if step.step_refs else _NO_STEPS,
                                         token, report),
                 lambda outcome, error: self._completed(executor, key, outcome, error), self._context)

    def _track_lost(self) -> None:
        """After a Ctrl-C in the driver: an attempt whose outcome was taken
        from the queue but not yet applied (the interrupt landed in between)
        would be running with no deadline, and the run would never end. It
        gets the cancel's grace, then is abandoned like any other."""
        with self._sched:
            tracked = {sid for sid, _ in self._inflight}
            for sid in self.state.running - tracked:
                self._track((sid, self.state.attempts[sid]), self.clock() + CANCEL_GRACE_SECONDS)

    def _track(self, key: tuple[str, int], deadline: float) -> None:
        self._inflight[key] = deadline
        self._submitted[key] = self.wall()
        heapq.heappush(self._deadlines, (deadline, key))

    def _handle(self, item: tuple) -> None:
        kind = item[0]
        if kind == "done":
            _, key, outcome, error = item
            self._unhandled.discard(key)  # handled in this turn, under the lock
            if self._inflight.pop(key, None) is None:
                return  # an abandoned attempt finally returned; its outcome was already decided
            token = self._tokens.pop(key, None)
            if token is not None:
                token.detach()
            started = self._submitted.pop(key, None)
            if error is not None:  # e.g. a remote executor lost the task
                outcome = Outcome(key[0], key[1], StepStatus.failed, started_at=started or self.wall(),
                                  duration=self.wall() - (started or self.wall()), error=f"executor error: {error!r}")
            self._apply(outcome)
        elif kind == "durable":
            self.state.durable(item[1])
        elif kind == "cancel":
            self.cancel(item[1])
        elif kind == "crashed":
            raise item[1]
        elif kind == "process" and item[1] in self._inflight:
            _, (sid, attempt), pid, started = item
            self._emit(ProcessStarted(self.run_id, sid, attempt, pid, started))

    def _expire(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, key = heapq.heappop(self._deadlines)
            if self._inflight.get(key) != deadline:
                continue  # finished, or re-dated
            del self._inflight[key]
            token = self._tokens.pop(key, None)
            if token is not None:  # whatever the abandoned attempt still runs is stopped
                token.cancel()
                token.detach()
            started = self._submitted.pop(key, self.wall())
            self._abandoned += 1
            elapsed = max(0.0, self.wall() - started)
            if self._cancel_reason is not None:
                self._apply(Outcome(key[0], key[1], StepStatus.cancelled, started_at=started, duration=elapsed,
                                    error=f"{self._cancel_reason} (the handler did not stop; abandoned)"))
                continue
            timeout = self.plan.steps[key[0]].timeout_seconds
            self._apply(Outcome(key[0], key[1], StepStatus.failed, started_at=started, duration=elapsed,
                                error=f"timed out after {timeout:g} s (handler did not stop; abandoned)",
                                timed_out=True))

    # -- outcomes -------------------------------------------------------------

    def _apply(self, outcome: Outcome) -> None:
        sid = outcome.step_id
        step = self.plan.steps[sid]
        secret_fields = step.secret_fields
        if outcome.config is not None:
            self._configs[sid] = outcome.config  # unmasked: a rollback may need it
            if secret_fields:
                self.redactor.learn(outcome.config, secret_fields)
        if outcome.status is StepStatus.completed:
            self._data[sid] = outcome.data  # unmasked: downstream steps read it
            for key in self._secret_results.get(sid, ()):  # a later step's secret: masked from its source on
                self.redactor.add(outcome.data if key == WHOLE_RESULT else outcome.data.get(key))
        if secret_fields or self.redactor.active:
            outcome = self.redactor.outcome(outcome, secret_fields)  # what leaves the run
        record = self._records.get(sid) or self._record(sid)
        condition_skip = outcome.status is StepStatus.skipped
        # A step skipped by its condition made no attempt (its row keeps the number, for the record).
        record.attempts = outcome.attempt - 1 if condition_skip else outcome.attempt
        record.duration_seconds = (record.duration_seconds or 0.0) + outcome.duration
        record.exit_code = outcome.exit_code
        record.changed = outcome.changed
        if outcome.stdout or outcome.stderr:
            record.stdout, record.stderr = bounded(outcome.stdout), bounded(outcome.stderr)
        if self._observers:
            self._emit(AttemptFinished(self.run_id, outcome, step.retry.max_attempts))
        status = outcome.status
        if status is StepStatus.completed:
            record.result, record.error = outcome.data, None
            self._jobs.pop(sid, None)  # done with: not left for the garbage collector to walk until the run ends
            self.state.succeeded(sid, hold=self.write_ahead)
            if self._observers:
                self._emit(StepFinished(self.run_id, sid, status, record.attempts, None, self.wall()))
        elif status is StepStatus.skipped:
            reason = outcome.skip_reason or "skipped"
            self.state.skipped(sid, reason, hold=self.write_ahead)
            self._skip(sid, reason)
        elif status is StepStatus.cancelled:
            self.state.cancelled(sid)
            self._finish(sid, status, outcome.error or "cancelled")
        else:
            retryable = outcome.retryable and not self.check and step.retry.allows(
                outcome.exit_code, "\n".join(t for t in (outcome.error, outcome.stderr, outcome.stdout) if t))
            decision = self.state.failed(sid, self.clock(), retryable=retryable)
            record.error = outcome.error
            if isinstance(decision, Retry):
                self._emit(RetryScheduled(self.run_id, sid, outcome.attempt, outcome.attempt + 1,
                                          decision.delay, self.wall() + decision.delay))
                return
            self._finish(sid, StepStatus.failed, outcome.error)
            self._on_failed(sid, outcome, decision)

    def _on_failed(self, sid: str, outcome: Outcome, decision: Failed) -> None:
        if decision.critical:
            if self._critical is None and self._cancel_reason is None:
                self._critical = (sid, outcome.error or "failed")
            for parked in decision.cancelled:
                self._finish(parked, StepStatus.cancelled, f"run stopped: critical step {sid} failed")
        for down in decision.skipped:
            self._skip(down, UPSTREAM_FAILED)

    def _finish(self, sid: str, status: StepStatus, error: str | None) -> None:
        record = self._record(sid)
        if status is not StepStatus.completed:
            record.error = error
        if self._observers:
            self._emit(StepFinished(self.run_id, sid, status, record.attempts, error, self.wall()))

    def _skip(self, sid: str, reason: str) -> None:
        self._record(sid).skip_reason = reason
        if self._observers:
            self._emit(StepSkipped(self.run_id, sid, reason, self.wall()))

    # -- rollback -------------------------------------------------------------

    def _rollback(self, executor: Executor) -> None:
        """Undo completed steps in reverse completion order, one at a time and
        each with a deadline; a failing (or hung) rollback is recorded and the
        others still run. A recorded run first records that it is rolling
        back (write-ahead): a crash during a rollback leaves records a resume
        must not trust."""
        if self.write_ahead and any(handlers_for(self.plan.steps[sid].action).rollback is not None
                                    for sid in self.state.completion_order):
            self._emit(RollbackStarted(self.run_id, f"critical step {self._critical[0]} failed", self.wall()))
            self._flush(urgent=True)
            self._await_recorded()
        for sid in reversed(self.state.completion_order):
            if self._cancel_reason is not None:
                break
            step = self.plan.steps[sid]
            if handlers_for(step.action).rollback is None:
                continue
            record = self._records.get(sid)
            if record is not None and record.changed is False:
                continue  # it found everything already so: undoing it would remove what was there before
            key = (sid, -1)  # a rollback's key: it shares the queue and deadlines with attempts
            self._track(key, self.clock() + step.timeout_seconds + DEADLINE_GRACE_SECONDS)
            put = self._queue.put
            dispatch(executor, run_rollback, (self._job(sid), self.state.attempts[sid], self._upstream(sid),
                                              self._data.get(sid, {}), self._configs.get(sid), self.cancel_token),
                     lambda outcome, error: put(("rolled back", key, outcome, error)), self._context)
            self._flush(urgent=True)
            outcome = self._await_rollback(key, step.timeout_seconds)
            outcome = self.redactor.outcome(outcome, step.secret_fields)
            if outcome.status is StepStatus.completed and outcome.data.get("nothing_to_undo"):
                continue
            if outcome.status is StepStatus.completed:
                self.state.rolled_back(sid)
            else:
                self._record(sid).rollback_error = outcome.error
            self._emit(StepRolledBack(self.run_id, sid, outcome.status is StepStatus.completed,
                                      outcome.error, outcome, self.wall()))

    def _await_recorded(self, timeout: float = ROLLBACK_RECORD_SECONDS) -> None:
        """Until the recorder says the run's 'rolling back' is committed (or
        ``timeout``: a store that cannot take it journals it, and a rollback
        is not held back longer)."""
        deadline = self.clock() + timeout
        while (wait := deadline - self.clock()) > 0:
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                return
            if item[0] == "durable":
                self.state.durable(item[1])
                if ROLLBACK_RECORDED in item[1]:
                    return
            elif item[0] == "cancel":
                self.cancel(item[1])
                return
            # anything else is a late outcome of an abandoned attempt: its fate was decided

    def _await_rollback(self, key: tuple[str, int], timeout: float) -> Outcome:
        while True:
            wait = max(0.0, self._inflight[key] - self.clock())
            try:
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                del self._inflight[key]
                started = self._submitted.pop(key, self.wall())
                why = f"timed out after {timeout:g} s" if self._cancel_reason is None else \
                    f"did not stop when the run was {self._cancel_reason}"
                return Outcome(key[0], 0, StepStatus.failed, started_at=started, duration=self.wall() - started,
                               error=f"rollback {why} (abandoned)", timed_out=True)
            if item[0] == "rolled back" and item[1] == key:
                self._inflight.pop(key, None)
                started = self._submitted.pop(key, self.wall())
                if item[3] is not None:
                    return Outcome(key[0], 0, StepStatus.failed, started_at=started, error=f"executor error: {item[3]!r}")
                return item[2]
            if item[0] == "durable":
                self.state.durable(item[1])
            elif item[0] == "cancel":  # no more rollbacks; this one gets the cancel's grace
                self.cancel(item[1])
                self._redate(self.clock() + CANCEL_GRACE_SECONDS)
            # anything else is a late outcome of an abandoned attempt: its fate was decided

    # -- events and result ----------------------------------------------------

    @property
    def observers(self) -> list[Observer]:
        return self._observers

    @observers.setter
    def observers(self, observers: Iterable[Observer]) -> None:
        # An observer with ``observe_batch`` (the recorder) gets the events of one turn of
        # the loop in one call: one hand-over to its thread per turn, not one per event.
        self._observers = list(observers)
        self._each = [o for o in self._observers if not hasattr(o, "observe_batch")]
        self._batched = [o for o in self._observers if hasattr(o, "observe_batch")]

    def _emit(self, event: Any) -> None:
        if self._batched:
            self._pending.append(event)
        for observer in self._each:
            try:
                observer(event)
            except Exception:  # an observer's bug never breaks the run: reported once, then detached
                self._detach(observer, type(event).__name__)

    def _flush(self, urgent: bool = False) -> None:
        """Hand the pending events to the batch observers (before the loop
        waits: a held dependent waits for its upstream's record). ``urgent``:
        a step waits for these records (or the run ends), so the recorder
        commits at once instead of waiting a moment for more."""
        if not self._pending:
            return
        events, self._pending = self._pending, []
        for observer in self._batched:
            try:
                observer.observe_batch(events, urgent)  # type: ignore[attr-defined]
            except Exception:
                self._detach(observer, "a batch of events")

    def _detach(self, observer: Observer, what: str) -> None:
        log.exception("observer %r failed on %s and was detached", observer, what)
        self.observers = [o for o in self._observers if o is not observer]

    def _result(self, started: float, cancelled: str | None) -> RunResult:
        if cancelled is not None:
            status, error, failed_action = RunStatus.cancelled, f"run {cancelled}", None
        elif self._critical is not None:
            sid, message = self._critical
            action = self.plan.steps[sid].action.name
            status, error, failed_action = (RunStatus.failed,
                                            f"Critical action failed: {action} (step {sid}): {message}", action)
        else:
            status, error, failed_action = RunStatus.succeeded, None, None
        # The records become the result: each gets its final status, and shows an error, a skip
        # reason and a duration only where they apply.
        steps = {}
        records, status_of = self._records, self.state.status
        for sid in self.plan.order:
            record = records.get(sid) or self._record(sid)
            state = status_of[sid]
            if state is StepStatus.pending:
                state = StepStatus.not_started
            record.status = state
            if state is StepStatus.completed:
                record.error = None
            if state is not StepStatus.skipped:
                record.skip_reason = None
            if not record.attempts and not record.duration_seconds:
                record.duration_seconds = None
            steps[sid] = record
        return RunResult(run_id=self.run_id, template=self.plan.name, version=self.plan.version,
                         workspace_id=str(self.workspace["id"]), status=status, steps=steps,
                         started_at=started, finished_at=self.wall(), error=error, failed_action=failed_action,
                         check=self.check)


WHOLE_RESULT = "*"  # secret_results: the step's whole result is read (.get('k'), | tojson, a variable key)


def secret_results(plan: Plan) -> dict[str, frozenset[str]]:
    """The result keys of each step that a later step's secret field reads
    (``password: "{{ steps.gen.result.pw }}"``; :data:`WHOLE_RESULT` when
    it is read otherwise): secrets from the moment the step that makes them
    completes, before its own record is written."""
    from ..compile.expressions import leaf_references, references
    found: dict[str, set[str]] = {}
    for _, value in secret_field_texts(plan):
        paths = [p for p in leaf_references(value) if p[0] == "steps" and len(p) >= 2]
        for path in paths:
            if len(path) >= 4 and path[2] == "result" and path[3] not in ("get", "items", "values", "keys"):
                found.setdefault(path[1], set()).add(path[3])
            else:  # read some other way (.get('k'), | tojson, a key from a variable): all of it
                found.setdefault(path[1], set()).add(WHOLE_RESULT)
        for ref in references(value):  # (a read leaf_references cannot follow)
            if ref.root == "steps" and ref.attr and not any(p[1] == ref.attr for p in paths):
                found.setdefault(ref.attr, set()).add(WHOLE_RESULT)
    return {sid: frozenset(keys) for sid, keys in found.items()}


def _lock_host(workspace: Mapping[str, Any], executor: Any) -> str | None:
    """The machine a workspace's steps run on, for host-scoped locks: its
    ``host`` on a Dask cluster (where it picks the workers); this machine
    otherwise, whatever the field says (a value never escapes a lock)."""
    from .cluster import DaskExecutor
    return workspace.get("host") if isinstance(executor, DaskExecutor) else None
