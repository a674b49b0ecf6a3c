"""Ctrl-C in library use. With Python's default SIGINT handler in place and
dagrun in the main thread, Ctrl-C cancels the run (or the fleet) as the
CLI's handler does, instead of a KeyboardInterrupt landing in the run's
bookkeeping; later presses are ignored while it winds down; a caller's own
handler is left alone. Signals are real (``raise_signal``, or
``pthread_kill`` to the main thread, where Linux delivers a terminal's),
and pytest runs the tests in the main thread."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest

import dagrun.run.interrupts
import dagrun.run.runner
from dagrun import run_fleet, run_template
from dagrun.run.events import AttemptFinished, RunFinished
from dagrun.run.interrupts import ctrl_c_cancels, signals_wake
from dagrun.run.outcome import RunStatus, StepStatus
from tests.helpers import action, step, template

ROLLED_BACK: list[str] = []


def press_ctrl_c(ctx: Any = None) -> None:
    """As a terminal's Ctrl-C: to the process, which Linux gives the main
    thread (raise_signal from a worker would signal only that thread)."""
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


PRESSED: list[str] = []


def press_ctrl_c_once(ctx: Any) -> None:
    """Ctrl-C once in a test, by whichever run gets here first (a second would raise)."""
    PRESSED.append(ctx.step_id)
    if len(PRESSED) == 1:
        press_ctrl_c()


def fail(ctx: Any) -> None:
    raise RuntimeError("critical step fails")


def rollback_pressing_ctrl_c(ctx: Any) -> None:
    ROLLED_BACK.append(ctx.step_id)
    press_ctrl_c()


def rollback(ctx: Any) -> None:
    ROLLED_BACK.append(ctx.step_id)


def rollback_pressing_ctrl_c_then_hanging(ctx: Any) -> None:
    ROLLED_BACK.append(ctx.step_id)
    press_ctrl_c()
    time.sleep(5)  # ignores the cancel: abandoned after the cancel's grace


@pytest.fixture
def one_cpu():
    """Every thread of this process on one CPU (the signal's sender and the driver take turns)."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    yield
    os.sched_setaffinity(0, allowed)


@pytest.fixture(autouse=True)
def default_sigint():
    assert threading.current_thread() is threading.main_thread()  # where Python delivers signals
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    PRESSED.clear()
    import faulthandler
    faulthandler.dump_traceback_later(60, exit=True)  # a hang ends the test process, loudly
    yield
    faulthandler.cancel_dump_traceback_later()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back
    assert signal.set_wakeup_fd(-1) == -1  # and the wakeup fd too


def test_ctrl_c_cancels_the_run_and_keeps_the_outcome_it_interrupted():
    """Pressed while the driver records a's outcome (inside an observer,
    between taking it off the queue and recording it): a is still recorded
    completed, b never starts, the run ends cancelled and is returned."""
    pressed: list[int] = []

    def on_event(event: Any) -> None:
        if isinstance(event, AttemptFinished) and not pressed:
            pressed.append(1)
            signal.raise_signal(signal.SIGINT)

    result = run_template(template(step(1, "a", id="a"), step(2, "a", id="b", requires=["a"])), {"id": "w"},
                          actions=[action("a")], record=False, sandbox=False, on_event=on_event)
    assert pressed and result.status is RunStatus.cancelled
    assert result.steps["a"].status is StepStatus.completed
    assert result.steps["b"].status is StepStatus.not_started


@pytest.mark.parametrize("repeat", range(10))
def test_ctrl_c_from_a_step_stops_the_others_running(repeat, one_cpu):
    """Pressed while a 30 s step runs beside it (hand-over on, no observer):
    that step is cancelled through its token, not waited for. On one CPU
    the signal often lands as the driver lets go of the interpreter to
    block on its queue, where Python cannot run the handler until the
    wait returns: the wakeup fd's relay makes it return."""
    result = run_template(template(step(1, "press", id="press"), step(2, "sleep", id="slow", action_config={"seconds": 30}),
                                   step(3, "a", id="after", requires=["press", "slow"])), {"id": "w"},
                          actions=[action("press", "tests.test_interrupts:press_ctrl_c"),
                                   action("a")],
                          record=False, sandbox=False, max_workers=2)
    assert result.status is RunStatus.cancelled
    assert result.steps["press"].status is StepStatus.completed
    assert result.steps["slow"].status is StepStatus.cancelled
    assert result.steps["after"].status is StepStatus.not_started


def test_later_presses_are_ignored_while_the_run_winds_down():
    """A KeyboardInterrupt out of the call would leave killing the steps'
    process trees to daemon threads that die with the process."""
    pressed: list[int] = []

    def on_event(event: Any) -> None:
        if isinstance(event, AttemptFinished) and not pressed:
            pressed.append(1)
            for _ in range(3):
                signal.raise_signal(signal.SIGINT)

    result = run_template(template(step(1, "a", id="a"), step(2, "a", id="b", requires=["a"])), {"id": "w"},
                          actions=[action("a")], record=False, sandbox=False, on_event=on_event)
    assert pressed and result.status is RunStatus.cancelled
    assert result.steps["a"].status is StepStatus.completed


def test_a_ctrl_c_after_the_run_ended_does_not_change_its_verdict():
    def on_event(event: Any) -> None:
        if isinstance(event, RunFinished):
            signal.raise_signal(signal.SIGINT)

    result = run_template(template(step(1, "a", id="a")), {"id": "w"}, actions=[action("a")], record=False,
                          sandbox=False, on_event=on_event)
    assert result.success, result.error


def test_a_child_forked_during_the_run_does_not_hold_it_open():
    """The signal relay is stopped by a flag and a byte, not by its pipe's
    end-of-file, which a forked child holding the write end would delay
    (here for 300 s: the fixture's 60 s guard would end the test process)."""
    children: list[int] = []

    def on_event(event: Any) -> None:
        if isinstance(event, AttemptFinished) and not children:
            pid = os.fork()
            if pid == 0:
                time.sleep(300)
                os._exit(0)
            children.append(pid)

    try:
        result = run_template(template(step(1, "a", id="a")), {"id": "w"}, actions=[action("a")], record=False,
                              sandbox=False, on_event=on_event)
    finally:
        for pid in children:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert children and result.success


def test_a_handler_of_the_callers_own_is_left_alone():
    calls: list[int] = []

    def mine(signum: int, _frame: Any) -> None:
        calls.append(signum)

    signal.signal(signal.SIGINT, mine)
    try:
        result = run_template(template(step(1, "press", id="press"), step(2, "a", id="b", requires=["press"])),
                              {"id": "w"}, actions=[action("press", "tests.test_interrupts:press_ctrl_c"),
                                                    action("a")], record=False, sandbox=False)
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    assert calls == [signal.SIGINT]
    assert result.success  # the caller's handler decided: it did not cancel


def test_ctrl_c_cancels_a_fleet_instead_of_waiting_for_its_runs():
    """The fleet's main thread waits for its runs: the default handler's
    KeyboardInterrupt would stop the waiting while the runs go on."""
    doc = template(step(1, "press", id="press"), step(2, "sleep", id="slow", action_config={"seconds": 30}),
                   step(3, "a", id="after", requires=["press", "slow"]))
    try:
        fleet = run_fleet(doc, [{"id": "w0"}, {"id": "w1"}, {"id": "w2"}], concurrency=2,
                          actions=[action("press", "tests.test_interrupts:press_ctrl_c_once"),
                                   action("a")],
                          record=False, sandbox=False)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C raised out of run_fleet instead of cancelling its runs")
    assert set(fleet.results) == {"w0", "w1", "w2"}  # the run starting after the Ctrl-C was cancelled too
    for result in fleet.results.values():
        assert result.status is RunStatus.cancelled
        assert result.steps["after"].status is StepStatus.not_started


def rolled_back_after_a_failure(second_rollback: str) -> Any:
    """first -> second -> fail: after fail, second's rollback (``second_rollback``), then first's."""
    ROLLED_BACK.clear()
    acts = [action("first", rollback_handler="tests.test_interrupts:rollback"),
            action("second", rollback_handler=f"tests.test_interrupts:{second_rollback}"),
            action("fail", "tests.test_interrupts:fail")]
    return run_template(template(step(1, "first", id="first"), step(2, "second", id="second", requires=["first"]),
                                 step(3, "fail", id="fail", requires=["second"])), {"id": "w"},
                        actions=acts, record=False, sandbox=False)


def test_ctrl_c_during_rollback_stops_the_remaining_rollbacks(monkeypatch):
    monkeypatch.setattr(dagrun.run.runner, "CANCEL_GRACE_SECONDS", 0.5)
    result = rolled_back_after_a_failure("rollback_pressing_ctrl_c")
    assert ROLLED_BACK == ["second"]  # rolled back in reverse order; Ctrl-C there stops before "first"
    assert result.status is RunStatus.cancelled
    assert result.steps["second"].status is StepStatus.rolled_back


def test_a_rollback_that_ignores_the_cancel_is_abandoned_after_its_grace(monkeypatch):
    monkeypatch.setattr(dagrun.run.runner, "CANCEL_GRACE_SECONDS", 0.5)
    result = rolled_back_after_a_failure("rollback_pressing_ctrl_c_then_hanging")
    assert ROLLED_BACK == ["second"]
    assert result.status is RunStatus.cancelled
    assert result.steps["second"].rollback_error == "rollback did not stop when the run was interrupted (abandoned)"



def test_ctrl_c_before_a_recorded_run_starts_cancels_it_and_the_record_says_so(tmp_path):
    """Pressed after the run is claimed and before it runs (its recorder
    starting, the caller's runner_hook): not left recorded as running."""
    from dagrun import get_run
    url = f"sqlite:///{tmp_path}/runs.db"
    result = run_template(template(step(1, "a", id="a")), {"id": "w", "home_dir": str(tmp_path / "w")},
                          actions=[action("a")], database_url=url, sandbox=False, home_roots=[str(tmp_path)],
                          runner_hook=lambda runner: signal.raise_signal(signal.SIGINT))
    assert result.status is RunStatus.cancelled
    assert get_run(result.run_id, database_url=url)["status"] == "cancelled"


def test_ctrl_c_while_the_last_records_are_written_loses_nothing(tmp_path, monkeypatch):
    from dagrun import get_run
    from dagrun.store.recorder import Recorder
    close = Recorder.close

    def pressed_then_close(self: Any) -> None:
        signal.raise_signal(signal.SIGINT)
        close(self)

    monkeypatch.setattr(Recorder, "close", pressed_then_close)
    url = f"sqlite:///{tmp_path}/runs.db"
    result = run_template(template(step(1, "a", id="a")), {"id": "w", "home_dir": str(tmp_path / "w")},
                          actions=[action("a")], database_url=url, sandbox=False, home_roots=[str(tmp_path)])
    assert result.success  # the run had ended: the press changes nothing
    assert get_run(result.run_id, database_url=url)["status"] == "succeeded"


def test_the_workers_sigterm_handler_does_not_wait_for_the_lock_its_own_thread_holds():
    """The isolated worker's SIGTERM handler runs in whichever thread the
    signal interrupted, perhaps inside the token's lock (register,
    unregister, a wait's set-up): cancel() there would wait for itself."""
    from dagrun.run.shell import CancelToken
    from dagrun.run.worker import _cancel_from_a_thread
    token = CancelToken()
    returned = threading.Event()

    def signal_lands_inside_the_lock() -> None:
        with token._lock:
            _cancel_from_a_thread(token)
            returned.set()

    threading.Thread(target=signal_lands_inside_the_lock, daemon=True).start()
    assert returned.wait(10)  # it did not wait for itself (the old handler never returns)
    assert token.wait(10)  # and the token is cancelled once the lock is free


def test_without_a_thread_to_be_had_the_worker_cancels_in_place(monkeypatch):
    """Under the worker's memory or process limit no thread may start."""
    import dagrun.run.worker as worker
    from dagrun.run.shell import CancelToken

    def no_thread(*_args: Any) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(worker._thread, "start_new_thread", no_thread)
    token = CancelToken()
    worker._cancel_from_a_thread(token)
    assert token.cancelled


@pytest.fixture
def sigusr1_handled():
    """A Python handler for SIGUSR1: Python then writes each one to the wakeup fd."""
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    yield
    signal.signal(signal.SIGUSR1, previous)


def wakeup_fd() -> int:
    fd = signal.set_wakeup_fd(-1)
    if fd != -1:
        signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
    return fd


def test_nested_waits_are_each_woken_and_the_outermost_gives_the_wakeup_fd_back(sigusr1_handled):
    """A run started by an observer of another, in the main thread: a
    signal wakes both waits; the wakeup fd stays set until the outer ends."""
    outer, inner = threading.Event(), threading.Event()
    with signals_wake(outer.set):
        with signals_wake(inner.set):
            signal.raise_signal(signal.SIGUSR1)
            assert inner.wait(10) and outer.wait(10)
        assert wakeup_fd() != -1  # the outer run still waits on it
        outer.clear()
        signal.raise_signal(signal.SIGUSR1)
        assert outer.wait(10)
    assert wakeup_fd() == -1


def test_runs_share_one_signal_relay_thread():
    """Starting and stopping a relay thread per run cost about a tenth of a
    50-step run of no-op steps: the relay lives as long as the process."""
    for n in range(3):
        assert run_template(template(step(1, "a", id="a")), {"id": f"w{n}"}, actions=[action("a")], record=False,
                            sandbox=False).success
    assert [t.name for t in threading.enumerate()].count("dagrun-signals") == 1


def test_a_child_forked_during_a_run_relays_its_own_signals(sigusr1_handled):
    """The child inherits the wakeup fd (the parent's relay's pipe) but not
    the relay's thread: a run in the child takes the fd over with its own.
    Ctrl-C is Python's own again in the child (it runs none of the
    parent's runs)."""
    with ctrl_c_cancels(lambda: None), signals_wake(lambda: None):
        pid = os.fork()
        if pid == 0:  # the child: nothing but this, then out without pytest's cleanup
            woken, ok = threading.Event(), False
            try:
                with signals_wake(woken.set):
                    signal.raise_signal(signal.SIGUSR1)
                    ok = woken.wait(10) and signal.getsignal(signal.SIGINT) is signal.default_int_handler
            finally:
                os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_ctrl_c_in_a_run_started_by_an_observer_of_another_cancels_both():
    """The inner run (started from the outer's observer, in the main
    thread) and the run it is nested in are both cancelled."""
    inner_results: list[Any] = []

    def press(event: Any) -> None:
        if isinstance(event, AttemptFinished):
            signal.raise_signal(signal.SIGINT)

    def start_inner(event: Any) -> None:
        if isinstance(event, AttemptFinished) and not inner_results:
            inner_results.append(run_template(template(step(1, "a", id="x"), step(2, "a", id="y", requires=["x"])),
                                              {"id": "inner"}, actions=[action("a")], record=False, sandbox=False,
                                              on_event=press))

    outer = run_template(template(step(1, "a", id="a"), step(2, "a", id="b", requires=["a"])), {"id": "outer"},
                         actions=[action("a")], record=False, sandbox=False, on_event=start_inner)
    inner = inner_results[0]
    assert inner.status is RunStatus.cancelled and inner.steps["y"].status is StepStatus.not_started
    assert outer.status is RunStatus.cancelled and outer.steps["b"].status is StepStatus.not_started


def test_a_press_as_the_handler_goes_in_reaches_the_run(monkeypatch):
    """The run's cancel is registered before dagrun's handler is installed."""
    install = signal.signal
    cancelled: list[int] = []

    def install_then_press(signum: int, handler: Any) -> Any:
        previous = install(signum, handler)
        if handler is not signal.default_int_handler:
            signal.raise_signal(signal.SIGINT)
        return previous

    monkeypatch.setattr(dagrun.run.interrupts, "_set_handler", install_then_press)  # what signal.signal wraps
    with ctrl_c_cancels(lambda: cancelled.append(1)):
        pass
    assert cancelled == [1]


def test_a_handler_left_behind_by_an_observer_acts_as_pythons_own():
    """An observer that saved the SIGINT handler during a run and puts it
    back after the run ended leaves dagrun's in place: with no run to
    cancel, Ctrl-C raises KeyboardInterrupt as Python's own handler does."""
    with ctrl_c_cancels(lambda: None):
        saved = signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGINT, saved)
    try:
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def test_a_child_forked_during_a_run_leaves_it_cleanly():
    """The child (a step of a synchronous run, say) goes on and leaves the
    run's blocks: no error; the parent's relay pipe is not its wakeup fd."""
    pid, fd_given_back = -1, False
    try:
        with ctrl_c_cancels(lambda: None), signals_wake(lambda: None):
            pid = os.fork()
            if pid == 0:
                fd_given_back = signal.set_wakeup_fd(-1) == -1  # the parent's relay pipe is not the child's
    except BaseException:
        if pid == 0:  # never back into pytest from the child
            os._exit(3)
        raise
    if pid == 0:  # the child, out of both blocks without an error
        os._exit(0 if fd_given_back and signal.getsignal(signal.SIGINT) is signal.default_int_handler else 2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_ctrl_c_while_the_run_is_claimed_cancels_it_and_the_record_says_so(tmp_path, monkeypatch):
    """Pressed while the store records the run as this process's (before
    its runner exists): no KeyboardInterrupt out of the store's write; the
    run starts cancelled and is recorded so, not left running."""
    from dagrun import get_run
    import dagrun.store.runs
    claim = dagrun.store.runs.claim

    def claim_then_press(*args: Any, **kwargs: Any) -> Any:
        out = claim(*args, **kwargs)
        signal.raise_signal(signal.SIGINT)
        return out

    monkeypatch.setattr(dagrun.store.runs, "claim", claim_then_press)
    url = f"sqlite:///{tmp_path}/runs.db"
    result = run_template(template(step(1, "a", id="a")), {"id": "w", "home_dir": str(tmp_path / "w")},
                          actions=[action("a")], database_url=url, sandbox=False, home_roots=[str(tmp_path)])
    assert result.status is RunStatus.cancelled
    assert result.steps["a"].status is StepStatus.not_started
    assert get_run(result.run_id, database_url=url)["status"] == "cancelled"


def test_a_press_before_the_handler_goes_in_leaves_no_cancel_behind(monkeypatch):
    """Python's own handler raises KeyboardInterrupt there: the run never
    started, and its cancel is not left to swallow later presses."""
    install = signal.signal
    stale: list[int] = []

    def press_then_install(signum: int, handler: Any) -> Any:
        if handler is not signal.default_int_handler:
            signal.raise_signal(signal.SIGINT)  # Python's default handler is still in place
        return install(signum, handler)

    monkeypatch.setattr(dagrun.run.interrupts, "_set_handler", press_then_install)  # what signal.signal wraps
    with pytest.raises(KeyboardInterrupt):
        with ctrl_c_cancels(lambda: stale.append(1)):
            pass
    monkeypatch.setattr(dagrun.run.interrupts, "_set_handler", install)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with ctrl_c_cancels(lambda: None):
        pass
    with pytest.raises(KeyboardInterrupt):  # outside any run: Python's own behaviour
        signal.raise_signal(signal.SIGINT)
    assert stale == []
