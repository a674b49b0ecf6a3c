"""A worker hands over its own completed attempt (dispatching the steps it
made ready) when nothing else holds the run state: the driver sleeps until
it has to look. These tests check that the driver still wakes for what only
it does (deadlines, cancels, the end of the run, a bug in the hand-over),
that a failure halts the run before hand-overs start more steps, that every
attempt runs in the run's own context, and that a worker never waits for
the run's lock."""

from __future__ import annotations

import contextvars
import threading
import time
from typing import Any

import pytest

import dagrun.run.runner
from dagrun import compile_template, run_template
from dagrun.run.executors import WorkerPool
from dagrun.run.outcome import RunStatus, StepStatus
from dagrun.run.runner import Runner
from tests.helpers import action, step, template

RUNNERS: list[Runner] = []
STARTED: list[float] = []
A_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("a_var", default="unset")


def cancel_the_run(ctx: Any) -> None:
    RUNNERS[-1].cancel("stopped by a step")


def note_start(ctx: Any) -> None:
    STARTED.append(time.monotonic())


def fail(ctx: Any) -> None:
    raise RuntimeError("critical step fails")


def set_context(ctx: Any) -> None:
    import structlog.contextvars
    A_VAR.set(f"set by {ctx.step_id}")
    structlog.contextvars.bind_contextvars(step=ctx.step_id)


def read_context(ctx: Any) -> dict[str, Any]:
    import structlog.contextvars
    return {"var": A_VAR.get(), "step": structlog.contextvars.get_contextvars().get("step")}


SECOND_MAY_FAIL = threading.Event()
BOTH_RUNNING = threading.Barrier(2, timeout=5)


def fail_now(ctx: Any) -> None:
    raise RuntimeError("fails on purpose")


def fail_when_told(ctx: Any) -> None:
    SECOND_MAY_FAIL.wait(10)
    raise RuntimeError("fails on purpose")


def meet_the_other(ctx: Any) -> None:
    BOTH_RUNNING.wait()  # both steps must be running at once, on the same pool


INSIDE = {"now": 0, "most": 0}
INSIDE_LOCK = threading.Lock()


def hold_the_lock(ctx: Any) -> None:
    with INSIDE_LOCK:
        INSIDE["now"] += 1
        INSIDE["most"] = max(INSIDE["most"], INSIDE["now"])
    time.sleep(0.0005)
    with INSIDE_LOCK:
        INSIDE["now"] -= 1


def bound_run_id(ctx: Any) -> dict[str, Any]:
    import structlog.contextvars
    return {"bound": structlog.contextvars.get_contextvars().get("run_id"), "mine": ctx.run_id}


def chain(n: int, action_name: str = "a") -> dict[str, Any]:
    return template(*[step(i + 1, action_name, id=f"s{i}", requires=[f"s{i - 1}"] if i else []) for i in range(n)])


def finishes(fn, seconds: float = 60) -> Any:
    """Liveness, not speed: a driver that is never woken would wait for a
    far deadline (minutes) and this gives up long before."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the run never ended: the driver was not woken"
    if "error" in box:
        raise box["error"]
    return box["value"]


class Spy(Runner):
    """Records which thread handled each completion."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handled_by: list[int] = []

    def _handle(self, item: tuple) -> None:
        if item[0] == "done":
            self.handled_by.append(threading.get_ident())
        super()._handle(item)


def test_completions_are_handed_over_off_the_driver_thread_and_the_run_is_whole():
    plan = compile_template(chain(300), actions=[action("a")])
    runner = Spy(plan, {"id": "w"}, max_workers=4, sandbox=False)
    driver: list[int] = []
    result = finishes(lambda: driver.append(threading.get_ident()) or runner.run())
    assert result.success and all(s.status is StepStatus.completed for s in result.steps.values())
    assert len(runner.handled_by) == 300  # each completion handled once
    assert any(thread != driver[0] for thread in runner.handled_by)


def test_observers_or_write_ahead_keep_completions_on_the_driver():
    plan = compile_template(chain(50), actions=[action("a")])
    seen: list[Any] = []
    runner = Spy(plan, {"id": "w"}, max_workers=4, sandbox=False, observers=[seen.append])
    driver: list[int] = []
    result = finishes(lambda: driver.append(threading.get_ident()) or runner.run())
    assert result.success
    assert set(runner.handled_by) == set(driver)  # every event in order, from one thread
    ahead = Spy(plan, {"id": "w"}, max_workers=4, sandbox=False, write_ahead=True)
    ahead_driver: list[int] = []

    def run_recording() -> Any:
        ahead_driver.append(threading.get_ident())
        # what the recorder does: say each finished step's record is committed
        ahead.observers = [type("Recorder", (), {"observe_batch": lambda self, events, urgent: ahead.durable(
            [e.step_id for e in events if type(e).__name__ == "StepFinished"])})()]
        return ahead.run()

    assert finishes(run_recording).success
    assert set(ahead.handled_by) == set(ahead_driver)


def test_a_step_dispatched_by_a_worker_with_a_nearer_deadline_wakes_the_driver(monkeypatch):
    """s0..s2 have 600 s deadlines; the last step hangs past 0.3 s. The
    driver went to sleep until s0's deadline; the worker that dispatches the
    hanging step must wake it, or it is abandoned ten minutes late."""
    monkeypatch.setattr(dagrun.run.runner, "DEADLINE_GRACE_SECONDS", 0.2)
    acts = [action("a", timeout_seconds=600),
            action("hang", "tests.helpers:sleep_forever", timeout_seconds=0.3,
                   config_schema={"properties": {"seconds": {}}})]
    doc = chain(4, action_name="a")
    doc["actions"][-1].update(action_name="hang", action_config={"seconds": 10})
    result = finishes(lambda: run_template(doc, {"id": "w"}, actions=acts, record=False, sandbox=False))
    assert [result.steps[f"s{i}"].status for i in range(3)] == [StepStatus.completed] * 3
    assert "timed out after 0.3 s (handler did not stop; abandoned)" in result.steps["s3"].error


def test_a_cancel_while_workers_hand_over_stops_dispatch():
    acts = [action("a"), action("stop", "tests.test_handover:cancel_the_run")]
    doc = chain(200)
    doc["actions"][49]["action_name"] = "stop"
    result = finishes(lambda: run_template(doc, {"id": "w"}, actions=acts, record=False, sandbox=False,
                                           runner_hook=RUNNERS.append))
    assert result.status is RunStatus.cancelled
    assert all(result.steps[f"s{i}"].status is StepStatus.completed for i in range(50))
    # s49's outcome and the cancel reach the driver in either order: s50 is cancelled or never started
    assert result.steps["s50"].status in (StepStatus.cancelled, StepStatus.not_started)
    assert all(result.steps[f"s{i}"].status is StepStatus.not_started for i in range(51, 200))


def test_steps_dispatched_by_a_worker_keep_the_runs_log_bindings():
    acts = [action("bound", "tests.test_handover:bound_run_id")]
    result = finishes(lambda: run_template(chain(40, action_name="bound"), {"id": "w"}, actions=acts,
                                           record=False, sandbox=False))
    assert result.success
    assert {s.result["bound"] for s in result.steps.values()} == {result.run_id}


def test_a_bug_while_handing_over_ends_the_run_with_the_error_not_a_hang():
    plan = compile_template(chain(20), actions=[action("a")])

    class Broken(Runner):
        def _job(self, sid: str) -> Any:
            if sid == "s10":
                raise RuntimeError("a bug in the scheduler")
            return super()._job(sid)

    with pytest.raises(RuntimeError, match="a bug in the scheduler"):
        finishes(Broken(plan, {"id": "w"}, max_workers=4, sandbox=False).run)


def test_a_context_a_handler_changes_does_not_reach_the_steps_after_it():
    acts = [action("set", "tests.test_handover:set_context"), action("read", "tests.test_handover:read_context")]
    doc = template(*[step(i + 1, "set" if i % 2 == 0 else "read", id=f"s{i}", requires=[f"s{i - 1}"] if i else [])
                     for i in range(40)])
    result = finishes(lambda: run_template(doc, {"id": "w"}, actions=acts, record=False, sandbox=False))
    assert result.success
    assert {(s.result["var"], s.result["step"]) for sid, s in result.steps.items() if int(sid[1:]) % 2} == \
        {("unset", None)}


def test_nothing_starts_after_a_critical_failure_but_what_was_already_running():
    """Four chains of quick steps; a critical step fails early. From the
    moment its worker marks the failure for the driver, nothing is
    dispatched: what starts after is what was already dispatched (at most
    max_workers) or dispatched by a hand-over already under way (at most
    max_workers)."""
    acts = [action("a", "tests.test_handover:note_start"), action("bad", "tests.test_handover:fail")]
    steps = [step(c * 1000 + i + 1, "a", id=f"c{c}_{i}", requires=[f"c{c}_{i - 1}"] if i else [])
             for c in range(4) for i in range(600)]
    steps.append(step(9999, "bad", id="bad", requires=["c0_20"]))  # a failure is critical by default
    doc = template(*steps, global_config={"rollback_on_failure": False})
    marked: list[float] = []

    class MarkedAt(set):
        def add(self, key: Any) -> None:
            super().add(key)
            marked.append(time.monotonic())  # just after the mark: a later time counts fewer starts

    def watch(runner: Runner) -> None:
        runner._unhandled = MarkedAt()

    for _ in range(5):
        STARTED.clear(), marked.clear()
        result = finishes(lambda: run_template(doc, {"id": "w"}, actions=acts, record=False, sandbox=False,
                                               max_workers=5, runner_hook=watch))
        assert result.status is RunStatus.failed and result.steps["bad"].status is StepStatus.failed
        assert len(marked) == 1
        late = [t for t in STARTED if t > marked[0]]
        assert len(late) <= 2 * 5, f"{len(late)} steps started after the critical failure was marked"


def test_a_worker_delivering_a_failure_never_waits_for_the_driver():
    """Its pool thread is already counted as free: waiting for the driver's
    turn (here, a slow observer) would leave other runs' steps queued with no
    thread. Run X's observer, busy with one failure, runs Y (two steps that
    must run at the same time) while X's second failure is being delivered."""
    SECOND_MAY_FAIL.clear()
    BOTH_RUNNING.reset()
    acts = [action("fail", "tests.test_handover:fail_now"), action("fail_later", "tests.test_handover:fail_when_told"),
            action("meet", "tests.test_handover:meet_the_other")]
    x = template(step(1, "fail", id="f1", skip_on_error=True), step(2, "fail_later", id="f2", skip_on_error=True))
    y = template(step(1, "meet", id="y1"), step(2, "meet", id="y2"))
    pool = WorkerPool()  # its own: X's two steps make its only two threads
    inner: list[Any] = []

    def observer(event: Any) -> None:
        if type(event).__name__ == "StepFinished" and event.step_id == "f1":
            SECOND_MAY_FAIL.set()
            time.sleep(0.3)  # f2's worker delivers its failure meanwhile
            inner.append(run_template(y, {"id": "y"}, actions=acts, record=False, sandbox=False, executor=pool))

    finishes(lambda: run_template(x, {"id": "x"}, actions=acts, record=False, sandbox=False, on_event=observer,
                                  executor=pool))
    assert inner and inner[0].success, inner and {s: r.error for s, r in inner[0].steps.items()}


def test_a_fleets_shared_lock_holds_while_its_runs_hand_over():
    """Runs of a fleet take and release a fleet-wide lock from their
    workers' threads: never two holders of a capacity-one lock."""
    from dagrun.fleet import run_fleet
    INSIDE.update(now=0, most=0)
    acts = [action("locked", "tests.test_handover:hold_the_lock"), action("a")]
    steps = []
    for i in range(30):
        steps.append(step(2 * i + 1, "a", id=f"free{i}", requires=[f"locked{i - 1}"] if i else []))
        steps.append(step(2 * i + 2, "locked", id=f"locked{i}", requires=[f"free{i}"],
                          locks=[{"name": "one", "capacity": 1, "scope": "fleet"}]))
    fleet = finishes(lambda: run_fleet(template(*steps), [{"id": f"w{n}"} for n in range(6)], actions=acts,
                                       record=False, sandbox=False, max_workers=4, concurrency=6))
    assert fleet.success and len(fleet.succeeded) == 6
    assert INSIDE["most"] == 1


def test_a_fleet_run_that_raises_gives_back_the_locks_its_steps_hold(monkeypatch):
    """A bug while a worker hands over (here: making w0's second step's job
    raises, after it took the fleet lock) ends w0's run with the error; w1,
    waiting for the same capacity-one lock, still gets it."""
    from dagrun.fleet import run_fleet
    original = Runner._job

    def job(self: Runner, sid: str) -> Any:
        if self.workspace["id"] == "w0" and sid == "l2":
            raise RuntimeError("can't start new thread")
        return original(self, sid)

    monkeypatch.setattr(Runner, "_job", job)
    lock = [{"name": "one", "capacity": 1, "scope": "fleet"}]
    doc = template(step(1, "a", id="l1", locks=lock), step(2, "a", id="l2", requires=["l1"], locks=lock))
    fleet = finishes(lambda: run_fleet(doc, [{"id": "w0"}, {"id": "w1"}], actions=[action("a")], record=False,
                                       sandbox=False, concurrency=2), seconds=30)
    assert "can't start new thread" in str(fleet.errors.get("w0"))
    assert fleet.results["w1"].success


def test_a_ctrl_c_while_an_observer_runs_still_ends_the_run(monkeypatch):
    """A caller's SIGINT handler that raises KeyboardInterrupt (dagrun
    leaves a handler of the caller's own alone) raises it in the driver,
    here inside an observer, after the attempt's outcome left the queue and
    before the run state recorded it: the run is cancelled and ends (that
    step is abandoned after the cancel's grace), it does not wait forever."""
    import signal
    from dagrun.run.events import AttemptFinished
    monkeypatch.setattr(dagrun.run.runner, "CANCEL_GRACE_SECONDS", 0.2)
    assert threading.current_thread() is threading.main_thread()  # where Python delivers signals
    fired: list[int] = []

    def raising(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, raising)

    def on_event(event: Any) -> None:
        if isinstance(event, AttemptFinished) and not fired:
            fired.append(1)
            signal.raise_signal(signal.SIGINT)

    import faulthandler
    faulthandler.dump_traceback_later(60, exit=True)  # a hang here ends the test process, loudly
    try:
        result = run_template(template(step(1, "a", id="a"), step(2, "a", id="b", requires=["a"])), {"id": "w"},
                              actions=[action("a")], record=False, sandbox=False, on_event=on_event)
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGINT, previous)
    assert fired and result.status is RunStatus.cancelled
    assert result.steps["a"].status is StepStatus.cancelled  # abandoned: its outcome was lost to the interrupt
    assert result.steps["b"].status is StepStatus.not_started
