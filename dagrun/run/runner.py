"""The driver: one thread owns the run state and talks to the executor.

Loop: ask the scheduler core for steps to start, submit each attempt to the
executor (a done-callback puts the finished future on a completion queue),
then block on that queue until a completion arrives or the next deadline
(a parked retry becoming due, or an attempt overrunning its timeout). The
loop never polls and never sleeps; workers never wait for retries.

Outcomes become events for the observers (store, logs, progress, the
caller's ``on_event``). After a critical failure, completed steps with a
rollback handler are rolled back in reverse completion order. ``cancel()``
(any thread, Ctrl-C, SIGTERM via the CLI) stops dispatch and kills the
running process groups; the run ends ``cancelled``.
"""

from __future__ import annotations

import heapq
import logging
import os
import queue
import time
import uuid
from concurrent.futures import Executor
from typing import Any, Iterable, Mapping

import structlog

from ..compile.expressions import has_template
from .attempt import AttemptJob, run_attempt, run_rollback
from .handler_types import handlers_for
from .redact import Redactor
from .events import (AttemptFinished, Observer, RetryScheduled, RunFinished, RunStarted, StepFinished,
                     StepRolledBack, StepSkipped, StepStarted)
from .executors import dispatch, make_executor, submit_with_context
from .outcome import Outcome, RunStatus, StepStatus
from .result import RunResult, StepResult
from .scheduler import UPSTREAM_FAILED, Failed, Retry, RunState
from .shell import CancelToken
from ..spec import Plan, is_base_env
from ..util import bounded

log = logging.getLogger("dagrun")

DEFAULT_MAX_WORKERS = 8
# Shell steps kill themselves at their timeout; this backstop catches
# handlers that cannot be killed (Python code), which are then abandoned.
DEADLINE_GRACE_SECONDS = 5.0
# After a cancel, a handler that did not stop (Python code ignoring its
# cancel token) is abandoned after this long, not after its full timeout.
CANCEL_GRACE_SECONDS = 2.0
_WAKE = object()
_NO_STEPS: Mapping[str, Any] = {}


def step_environment(passthrough: Iterable[str] = (), source: Mapping[str, str] | None = None) -> dict[str, str]:
    """What steps see of the caller's environment: a small base (PATH, LANG,
    LC_*, TZ, TERM) and the names the template (or caller) passes through.
    dagrun's own settings (DAGRUN_*) never reach a step."""
    source = os.environ if source is None else source
    wanted = set(passthrough)
    return {k: v for k, v in source.items()
            if (is_base_env(k) or k in wanted) and not k.startswith("DAGRUN_")}


def known_secrets(plan: Plan, workspace: Mapping[str, Any], variables: Mapping[str, Any],
                  env: Mapping[str, str]) -> list[str]:
    """The values of x-secret config fields that can be known before the run:
    written in the template, or rendered from the workspace, variables or
    environment. (One that reads an upstream result is learned when its step
    has run.) Knowing them early masks them wherever they show first."""
    from ..compile.expressions import build_context, render_string
    found = []
    for step in plan.steps.values():
        for key in step.secret_fields:
            value = step.config.get(key)
            if value in (None, ""):
                continue
            if not has_template(value):
                found.append(str(value))
                continue
            try:
                rendered = render_string(value, build_context(workspace=workspace, config=step.config,
                                                              variables=variables, env=env, steps={}, home=None))
            except Exception:  # reads an upstream step, or fails: its attempt will tell
                continue
            if rendered not in (None, ""):
                found.append(str(rendered))
    return found


class Runner:
    def __init__(self, plan: Plan, workspace: Mapping[str, Any], *, run_id: str | None = None,
                 variables: Mapping[str, Any] | None = None, max_workers: int | None = None,
                 executor: Executor | None = None, observers: Iterable[Observer] = (),
                 env: Mapping[str, str] | None = None, previous: Mapping[str, StepResult] | None = None,
                 attempts: Mapping[str, int] | None = None, sudo: tuple[str, ...] = (),
                 secret_values: Iterable[str] = (), sandbox: bool = True):
        """``previous`` (resume): results of steps already done, which are
        not run again; ``attempts``: attempt numbers to continue from."""
        self.plan = plan
        self.workspace = workspace
        self.run_id = run_id or uuid.uuid4().hex
        self.variables = dict(plan.variables) | dict(variables or {})
        self.max_workers = max_workers or plan.global_config.max_workers or DEFAULT_MAX_WORKERS
        self.executor = executor
        self.observers = list(observers)
        self.env = step_environment(plan.global_config.env_passthrough) if env is None else dict(env)
        self.home = workspace.get("home_dir")
        self.sudo = tuple(sudo)
        self.sandbox = sandbox  # False: --no-sandbox, for a machine without bubblewrap
        # Steps run as the workspace's Linux user when dagrun is root and it names one.
        self.user = workspace.get("linux_username") if os.geteuid() == 0 else None
        self.redactor = Redactor(secret_values)
        if previous is None and attempts is None:
            self.state = RunState(plan, self.max_workers)
        else:
            self.state = RunState.resumed(plan, self.max_workers, attempts=dict(attempts or {}),
                                          done={sid: r.status for sid, r in (previous or {}).items()})
        self.cancel_token = CancelToken()
        self._cancel_reason: str | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._inflight: dict[tuple[str, int], float] = {}
        self._deadlines: list[tuple[float, tuple[str, int]]] = []
        self._abandoned = 0
        self._steps: dict[str, StepResult] = {
            sid: StepResult(step_id=sid, sequence_order=s.sequence_order, action_name=s.action.name,
                            display_name=s.display_name, status=StepStatus.pending)
            for sid, s in plan.steps.items()}
        for sid, old in (previous or {}).items():
            if sid in self._steps:
                self._steps[sid] = old
        self._configs: dict[str, dict[str, Any]] = {}  # real rendered configs (a rollback needs them)
        self._data: dict[str, dict[str, Any]] = {sid: dict(r.result) for sid, r in (previous or {}).items()}
        self._jobs: dict[str, AttemptJob] = {}
        self._critical: tuple[str, str] | None = None  # (step id, error)

    # -- public ---------------------------------------------------------------

    def cancel(self, reason: str = "cancelled") -> None:
        """Thread-safe: stop dispatching and kill running process groups."""
        if self._cancel_reason is None:
            self._cancel_reason = reason
        self.cancel_token.cancel()
        self._queue.put(_WAKE)

    def run(self) -> RunResult:
        # Every log line of the run (workers copy this context) names it and its workspace.
        with structlog.contextvars.bound_contextvars(run_id=self.run_id, workspace=str(self.workspace["id"])):
            return self._run()

    def _run(self) -> RunResult:
        started = time.time()
        for secret in known_secrets(self.plan, self.workspace, self.variables, self.env):
            self.redactor.add(secret)
        self._emit(RunStarted(self.run_id, self.plan.name, self.plan.version, str(self.workspace["id"]),
                              len(self.plan.order), self.max_workers, started, self.redactor.plan(self.plan),
                              self.redactor.value(dict(self.workspace)) if self.redactor else self.workspace))
        executor = self.executor or make_executor("threads", self.max_workers)
        while True:
            try:
                self._loop(executor)
                break
            except KeyboardInterrupt:
                self.cancel("interrupted")
        if self._critical and self._cancel_reason is None and self.plan.global_config.rollback_on_failure:
            self._rollback(executor)
        result = self._result(started)
        self._emit(RunFinished(self.run_id, result, time.time()))
        return result

    # -- the loop -------------------------------------------------------------

    def _loop(self, executor: Executor) -> None:
        state = self.state
        get = self._queue.get
        while True:
            now = time.monotonic()
            if self._cancel_reason is not None and state.halted is None:
                for sid in state.halt(self._cancel_reason):
                    self._finish(sid, StepStatus.cancelled, self._cancel_reason)
                grace = now + CANCEL_GRACE_SECONDS  # running handlers get a short grace, then are abandoned
                for key, deadline in list(self._inflight.items()):
                    if deadline > grace:
                        self._inflight[key] = grace
                        heapq.heappush(self._deadlines, (grace, key))
            for sid, attempt in state.start(now):
                self._submit(executor, sid, attempt, now)
            if state.finished:
                return
            timeout = self._timeout(now)
            try:
                item = get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                self._expire(time.monotonic())
                continue
            self._handle(item)
            while True:  # drain whatever else finished meanwhile
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                self._handle(item)

    def _timeout(self, now: float) -> float | None:
        wake = self.state.next_wakeup()
        deadlines = self._deadlines
        while deadlines and self._inflight.get(deadlines[0][1]) != deadlines[0][0]:
            heapq.heappop(deadlines)  # lazily drop deadlines of finished (or re-dated) attempts
        if deadlines:
            wake = deadlines[0][0] if wake is None else min(wake, deadlines[0][0])
        return None if wake is None else max(0.0, wake - now)

    def _job(self, sid: str) -> AttemptJob:
        job = self._jobs.get(sid)
        if job is None:
            step = self.plan.steps[sid]
            job = self._jobs[sid] = AttemptJob(
                step, self.workspace, self.variables, self.env, self.home, self.sudo,
                user=self.user if step.run_as == "workspace" else None, workspace_user=self.user,
                sandbox=step.sandbox and self.sandbox, run_id=self.run_id)
        return job

    def _upstream(self, sid: str) -> Mapping[str, Any]:
        """Results of the upstream steps ``sid`` reads (``steps.<id>``)."""
        refs = self.plan.steps[sid].step_refs
        if not refs:
            return _NO_STEPS
        return {r: {"status": self.state.status[r].value, "result": self._data.get(r, {})} for r in refs}

    def _submit(self, executor: Executor, sid: str, attempt: int, now: float) -> None:
        job = self._job(sid)
        key = (sid, attempt)
        deadline = now + job.step.timeout_seconds + DEADLINE_GRACE_SECONDS
        self._inflight[key] = deadline
        heapq.heappush(self._deadlines, (deadline, key))
        if self.observers:
            step = job.step
            self._emit(StepStarted(self.run_id, sid, attempt, step.retry.max_attempts, step.display_name,
                                   time.time()))
        put = self._queue.put
        dispatch(executor, run_attempt, (job, attempt, self._upstream(sid), self.cancel_token),
                 lambda outcome, error: put((key, outcome, error)))

    def _handle(self, item: Any) -> None:
        if item is _WAKE:
            return
        key, outcome, error = item
        if self._inflight.pop(key, None) is None:
            return  # an abandoned attempt finally returned; its outcome was already decided
        if error is not None:  # e.g. a remote executor lost the task
            outcome = Outcome(key[0], key[1], StepStatus.failed, error=f"executor error: {error!r}")
        self._apply(outcome)

    def _expire(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, key = heapq.heappop(self._deadlines)
            if self._inflight.get(key) != deadline:
                continue  # finished, or re-dated
            del self._inflight[key]
            self._abandoned += 1
            if self._cancel_reason is not None:
                self._apply(Outcome(key[0], key[1], StepStatus.cancelled, started_at=time.time(),
                                    error=f"{self._cancel_reason} (the handler did not stop; abandoned)"))
                continue
            timeout = self.plan.steps[key[0]].timeout_seconds
            self._apply(Outcome(key[0], key[1], StepStatus.failed, started_at=time.time(), duration=timeout,
                                error=f"timed out after {timeout:g} s (handler did not stop; abandoned)",
                                timed_out=True))

    # -- outcomes -------------------------------------------------------------

    def _apply(self, outcome: Outcome) -> None:
        sid = outcome.step_id
        step = self.plan.steps[sid]
        if outcome.config is not None:
            self._configs[sid] = outcome.config  # unmasked: a rollback may need it
            self.redactor.learn(outcome.config, step.secret_fields)
        if outcome.status is StepStatus.completed:
            self._data[sid] = outcome.data  # unmasked: downstream steps read it
        outcome = self.redactor.outcome(outcome, step.secret_fields)  # what leaves the run
        record = self._steps[sid]
        record.attempts = outcome.attempt
        record.duration_seconds = (record.duration_seconds or 0.0) + outcome.duration
        record.exit_code = outcome.exit_code
        if outcome.stdout or outcome.stderr:
            record.stdout, record.stderr = bounded(outcome.stdout), bounded(outcome.stderr)
        if self.observers:
            self._emit(AttemptFinished(self.run_id, outcome, step.retry.max_attempts))
        status = outcome.status
        if status is StepStatus.completed:
            record.result, record.error = outcome.data, None
            self.state.succeeded(sid)
            self._finish(sid, status, None)
        elif status is StepStatus.skipped:
            self.state.skipped(sid, outcome.skip_reason or "skipped")
            self._skip(sid, outcome.skip_reason or "skipped")
        elif status is StepStatus.cancelled:
            self.state.cancelled(sid)
            self._finish(sid, status, outcome.error or "cancelled")
        else:
            decision = self.state.failed(sid, time.monotonic(), retryable=outcome.retryable)
            if isinstance(decision, Retry):
                record.status = StepStatus.pending
                record.error = outcome.error
                self._emit(RetryScheduled(self.run_id, sid, outcome.attempt, outcome.attempt + 1,
                                          decision.delay, time.time() + decision.delay))
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
        record = self._steps[sid]
        record.status = status
        if status is not StepStatus.completed:
            record.error = error
        if self.observers:
            self._emit(StepFinished(self.run_id, sid, status, record.attempts, error, time.time()))

    def _skip(self, sid: str, reason: str) -> None:
        record = self._steps[sid]
        record.status = StepStatus.skipped
        record.skip_reason = reason
        if self.observers:
            self._emit(StepSkipped(self.run_id, sid, reason, time.time()))

    def _rollback(self, executor: Executor) -> None:
        """Undo completed steps in reverse completion order; a failing
        rollback is recorded and the others still run."""
        for sid in reversed(self.state.completion_order):
            step = self.plan.steps[sid]
            if handlers_for(step.action).rollback is None:
                continue
            future = submit_with_context(executor, run_rollback, self._job(sid), self.state.attempts[sid],
                                         self._upstream(sid), self._data.get(sid, {}), self._configs.get(sid),
                                         self.cancel_token)
            outcome = self.redactor.outcome(future.result(), step.secret_fields)
            record = self._steps[sid]
            if outcome.status is StepStatus.completed and outcome.data.get("nothing_to_undo"):
                continue
            if outcome.status is StepStatus.completed:
                self.state.rolled_back(sid)
                record.status = StepStatus.rolled_back
            else:
                record.rollback_error = outcome.error
            self._emit(StepRolledBack(self.run_id, sid, outcome.status is StepStatus.completed,
                                      outcome.error, outcome, time.time()))

    # -- events and result ----------------------------------------------------

    def _emit(self, event: Any) -> None:
        for observer in self.observers:
            try:
                observer(event)
            except Exception:  # an observer's bug never breaks the run: reported once, then detached
                log.exception("observer %r failed on %s and was detached", observer, type(event).__name__)
                self.observers = [o for o in self.observers if o is not observer]

    def _result(self, started: float) -> RunResult:
        if self._cancel_reason is not None:
            status, error, failed_action = RunStatus.cancelled, f"run {self._cancel_reason}", None
        elif self._critical is not None:
            sid, message = self._critical
            action = self.plan.steps[sid].action.name
            status, error, failed_action = RunStatus.failed, f"Critical action failed: {action} (step {sid}): {message}", action
        else:
            status, error, failed_action = RunStatus.succeeded, None, None
        return RunResult(run_id=self.run_id, template=self.plan.name, version=self.plan.version,
                         workspace_id=str(self.workspace["id"]), status=status, steps=dict(self._steps),
                         started_at=started, finished_at=time.time(), error=error, failed_action=failed_action)
