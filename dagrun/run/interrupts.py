"""Signals while dagrun waits in the main thread: Ctrl-C is a cancel, not an
exception in the run's bookkeeping, and every handler runs at once.

Python's default SIGINT handler raises KeyboardInterrupt in the main thread
wherever it happens to be. In a run's driver that can be between taking an
attempt's outcome off the queue and recording it, and that outcome is lost
(the step is reported cancelled though it completed; a resume would run it
again). In a fleet's main thread it only stops the waiting, while the runs
go on. So while dagrun runs in the main thread of a caller that left the
default handler in place, Ctrl-C cancels, as the CLI's handler does. Later
presses are ignored while the run winds down: a cancelled run ends within
the cancel's grace, its process trees killed (a KeyboardInterrupt out of
the call would leave the escalation to SIGKILL to daemon threads that die
with the process). A caller with a handler of its own keeps it.

Python runs a signal handler (this one, the CLI's, a caller's) only when
the main thread is back in the interpreter: a signal landing just as the
driver lets go of it to block on its queue would wait for the next
deadline. The signal's C-level handler also writes a byte to the wakeup
fd, whenever it lands: while dagrun waits in the main thread, a thread
reading that fd wakes the waiting thread (:func:`signals_wake`), which then
runs the handler.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

# The C functions signal.signal and signal.getsignal wrap: these take and give handlers as they
# are (the wrappers turn each into an enum, by a failed lookup for a function: four per run).
from _signal import getsignal as _getsignal, signal as _set_handler
from typing import Any, Callable, Iterator


# The cancels of the runs within ctrl_c_cancels, outermost first (a run started by an observer of
# another is nested in it): Ctrl-C cancels them all.
_cancels: list[Callable[[], None]] = []


def _on_sigint(signum: int, frame: Any) -> None:
    if not _cancels:  # no run (any more) to cancel: what Python's own handler does
        signal.default_int_handler(signum, frame)
    for cancel in list(_cancels):
        try:
            cancel()
        except Exception:  # noqa: BLE001 - never into the code the signal interrupted; the others still cancel
            pass


@contextlib.contextmanager
def ctrl_c_cancels(cancel: Callable[[], None]) -> Iterator[None]:
    """Within: Ctrl-C calls ``cancel()`` (and those of the runs this one is
    nested in), which must be safe in a signal handler
    (``Runner.interrupt``, not ``Runner.cancel``)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    current = _getsignal(signal.SIGINT)
    if current is not signal.default_int_handler and current is not _on_sigint:
        yield  # the caller's own handler
        return
    added = cancel not in _cancels  # (api.execute and Runner.run both register the run's)
    try:  # (a press before dagrun's handler is in place raises here: the cancel is taken out again)
        if added:
            _cancels.append(cancel)  # before the handler is in place: a press from then on reaches it
        if current is signal.default_int_handler:
            _set_handler(signal.SIGINT, _on_sigint)
        yield
    finally:
        if added and cancel in _cancels:  # (a child forked meanwhile has none)
            del _cancels[len(_cancels) - 1 - _cancels[::-1].index(cancel)]
        if not _cancels and _getsignal(signal.SIGINT) is _on_sigint:  # unless the caller changed it
            _set_handler(signal.SIGINT, signal.default_int_handler)


class PendingCancel:
    """A cancel that may come before the run's runner exists (while the run
    is compiled or claimed): kept, and given to the runner as it is made
    (``hook``, then the caller's ``runner_hook``). ``interrupt`` is safe in
    a signal handler, as ``Runner.interrupt`` is."""

    def __init__(self, runner_hook: Callable[[Any], None] | None = None):
        self._runner_hook = runner_hook
        self._runner: Any = None
        self._reason: str | None = None

    def interrupt(self, reason: str = "interrupted") -> None:
        runner = self._runner
        if runner is not None:
            runner.interrupt(reason)
        elif self._reason is None:
            self._reason = reason

    def hook(self, runner: Any) -> None:
        self._runner = runner  # from here on a cancel goes to the runner itself
        if self._reason is not None:
            runner.interrupt(self._reason)
        if self._runner_hook is not None:
            self._runner_hook(runner)


@contextlib.contextmanager
def signals_wake(wake: Callable[[], None]) -> Iterator[None]:
    """Within, in the main thread: ``wake()`` (called from another thread)
    for every signal Python receives, so that the main thread's wait
    returns and Python runs the signal's handler. Nothing when the main
    thread is not the caller, or a wakeup fd of somebody else's is set (an
    event loop's: it is theirs to read). Nested calls (a run started by an
    observer of another) each get their ``wake()``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    relay = _WakeupRelay.get()
    previous = signal.set_wakeup_fd(relay.write, warn_on_full_buffer=False)
    if previous not in (-1, relay.write):
        # The caller's (an event loop's). Whether it warned when full cannot be read
        # back: it is put back without warnings, as trio sets it.
        signal.set_wakeup_fd(previous, warn_on_full_buffer=False)
        yield
        return
    key = object()
    relay.wakes[key] = wake
    try:
        yield
    finally:
        del relay.wakes[key]
        if not relay.wakes:  # the outermost: the wakeup fd is given back
            current = signal.set_wakeup_fd(-1)
            if current != relay.write:  # somebody set theirs meanwhile: leave it
                signal.set_wakeup_fd(current)


class _WakeupRelay:
    """The process's one thread that calls every registered ``wake()`` for
    each signal Python receives. It lives as long as the process (a daemon
    blocked on its pipe), so a run pays no thread start and stop: starting
    one per run cost about a tenth of a 50-step run of no-op steps."""

    _current: "_WakeupRelay | None" = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.read, self.write = os.pipe()  # not inherited by the commands steps run
        os.set_blocking(self.write, False)  # as set_wakeup_fd requires
        self.wakes: dict[object, Callable[[], None]] = {}
        threading.Thread(target=self._relay, name="dagrun-signals", daemon=True).start()

    @classmethod
    def get(cls) -> "_WakeupRelay":
        with cls._lock:
            if cls._current is None:
                cls._current = cls()
            return cls._current

    @classmethod
    def _forget(cls) -> None:
        """In a forked child: the parent's relay has no thread here. Its pipe
        is closed and no longer the wakeup fd (a number the child may reuse
        for a file of its own); the next run makes the child's own relay."""
        relay, cls._current = cls._current, None
        cls._lock = threading.Lock()
        if relay is not None:
            current = signal.set_wakeup_fd(-1)
            if current not in (-1, relay.write):  # somebody else's (an event loop's): put back
                signal.set_wakeup_fd(current, warn_on_full_buffer=False)
            os.close(relay.read)
            os.close(relay.write)

    def _relay(self) -> None:
        while True:
            try:
                os.read(self.read, 64)
            except OSError:
                return
            for wake in list(self.wakes.values()):
                try:
                    wake()
                except Exception:  # noqa: BLE001 - a run's wake never stops the others'
                    pass


def _after_fork_in_child() -> None:
    """A child forked during a run runs none of the parent's runs: Ctrl-C is
    Python's own again there, and the signal relay is the child's to make."""
    _cancels.clear()
    try:
        _WakeupRelay._forget()
        if signal.getsignal(signal.SIGINT) is _on_sigint:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # forked from a thread Python does not take for the main one: nothing to undo
        pass


os.register_at_fork(after_in_child=_after_fork_in_child)
