"""Ctrl-C in library use: a cancel, not an exception in the run's bookkeeping.

Python's default SIGINT handler raises KeyboardInterrupt in the main thread
wherever it happens to be. In a run's driver that can be between taking an
attempt's outcome off the queue and recording it, and that outcome is lost
(the step is reported cancelled though it completed; a resume would run it
again). In a fleet's main thread it only stops the waiting, while the runs
go on. So while dagrun runs in the main thread of a caller that left the
default handler in place, the first Ctrl-C cancels (as the CLI's handler
does) and a second one raises KeyboardInterrupt as usual, as ``asyncio.run``
does. A caller with a handler of its own keeps it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Callable, Iterator


@contextlib.contextmanager
def ctrl_c_cancels(cancel: Callable[[], None]) -> Iterator[None]:
    """Within: the first Ctrl-C calls ``cancel()`` (which must be safe in a
    signal handler: ``Runner.interrupt``, not ``Runner.cancel``)."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    pressed: list[int] = []

    def on_sigint(signum: int, _frame: Any) -> None:
        if pressed:
            raise KeyboardInterrupt
        pressed.append(signum)
        cancel()

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is on_sigint:  # unless the caller changed it meanwhile
            signal.signal(signal.SIGINT, signal.default_int_handler)
