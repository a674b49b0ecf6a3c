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
from typing import Any, Callable, Iterator


@contextlib.contextmanager
def ctrl_c_cancels(cancel: Callable[[], None]) -> Iterator[None]:
    """Within: Ctrl-C calls ``cancel()``, which must be safe in a signal
    handler (``Runner.interrupt``, not ``Runner.cancel``)."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def on_sigint(signum: int, _frame: Any) -> None:
        cancel()

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is on_sigint:  # unless the caller changed it meanwhile
            signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def signals_wake(wake: Callable[[], None]) -> Iterator[None]:
    """Within, in the main thread: ``wake()`` (called from another thread)
    for every signal Python receives, so that the main thread's wait
    returns and Python runs the signal's handler. Nothing when the main
    thread is not the caller, or a wakeup fd is set already (an event
    loop's: it is theirs to read)."""
    relay = None
    try:
        if threading.current_thread() is threading.main_thread():
            relay = _WakeupRelay.start(wake)
        yield
    finally:
        if relay is not None:
            relay.stop()


class _WakeupRelay:
    """A thread that calls ``wake()`` for each signal Python receives."""

    def __init__(self, read: int, write: int, wake: Callable[[], None]):
        self._read, self._write = read, write
        self._stopping = False
        self._thread = threading.Thread(target=self._relay, args=(wake,), name="dagrun-signals", daemon=True)

    @classmethod
    def start(cls, wake: Callable[[], None]) -> "_WakeupRelay | None":
        read, write = os.pipe()
        previous = -1
        try:
            os.set_blocking(write, False)  # as set_wakeup_fd requires
            previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
            if previous == -1:
                relay = cls(read, write, wake)
                relay._thread.start()
                return relay
        except BaseException:
            if previous == -1:
                signal.set_wakeup_fd(-1)
            os.close(read)
            os.close(write)
            raise
        # The caller's (an event loop's): it is theirs to read. (Whether it warned when full
        # cannot be read back; it is put back without warnings, as trio sets it.)
        signal.set_wakeup_fd(previous, warn_on_full_buffer=False)
        os.close(read)
        os.close(write)
        return None

    def _relay(self, wake: Callable[[], None]) -> None:
        while not self._stopping:
            try:
                os.read(self._read, 64)
            except OSError:
                return
            if not self._stopping:
                wake()

    def stop(self) -> None:
        try:
            current = signal.set_wakeup_fd(-1)
            if current != self._write:  # somebody set theirs meanwhile: leave it
                signal.set_wakeup_fd(current)
        finally:
            # A flag and a byte, not end-of-file: a child forked meanwhile holds the write end too.
            self._stopping = True
            try:
                os.write(self._write, b"\0")
            except BlockingIOError:  # full: the reader has bytes to wake it anyway
                pass
            finally:
                self._thread.join()
                os.close(self._write)
                os.close(self._read)
