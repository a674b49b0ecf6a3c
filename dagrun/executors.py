"""Executors: anything with ``submit()`` returning a ``concurrent.futures.Future``.

The runner never cares which: dagrun's thread pool (default), the synchronous
executor below (deterministic tests, debugging), or a Dask cluster's
``distributed.Client.get_executor()``. Work submitted through
:func:`submit_with_context` carries the caller's ``contextvars`` so structlog
bindings (run id, step) follow it onto the worker.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, Callable


class SynchronousExecutor(Executor):
    """Runs each task inside ``submit()``: one at a time, in dispatch order."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed back through the future
            future.set_exception(exc)
        return future


Deliver = Callable[[Any, "BaseException | None"], None]


class WorkerPool(Executor):
    """dagrun's default executor: daemon threads taking work from one queue.

    Besides ``submit()`` it offers :meth:`run`, which delivers the result to
    a callback with no ``Future`` at all: no per-task condition variable,
    lock or callback list, which is most of a no-op step's cost in a
    ``ThreadPoolExecutor``. Threads are daemons so a handler that never
    returns (abandoned after its timeout) cannot keep the process alive.
    """

    def __init__(self, max_workers: int, thread_name_prefix: str = "dagrun"):
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._max_workers = max_workers
        self._prefix = thread_name_prefix
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._shutdown = False

    def run(self, fn: Callable[..., Any], args: tuple, deliver: Deliver) -> None:
        if self._shutdown:
            raise RuntimeError("cannot schedule work after shutdown")
        self._queue.put((fn, args, deliver, contextvars.copy_context()))
        if len(self._threads) < self._max_workers:
            thread = threading.Thread(target=self._work, name=f"{self._prefix}-{len(self._threads)}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _work(self) -> None:
        get = self._queue.get
        while True:
            item = get()
            if item is None:
                return
            fn, args, deliver, context = item
            try:
                result = context.run(fn, *args)
            except BaseException as exc:  # noqa: BLE001 - delivered as data
                deliver(None, exc)
                continue
            deliver(result, None)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        future.set_running_or_notify_cancel()

        def deliver(result: Any, error: BaseException | None) -> None:
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

        self.run(lambda: fn(*args, **kwargs), (), deliver)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shutdown = True
        for _ in self._threads:
            self._queue.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


def dispatch(executor: Executor, fn: Callable[..., Any], args: tuple, deliver: Deliver) -> None:
    """Run ``fn(*args)`` on ``executor`` and hand ``(result, error)`` to ``deliver``.

    In-process executors deliver directly from the worker (no done-callback,
    no ``Future.result()`` lock round-trips: this is the scheduler's hot
    path). Other executors (a Dask cluster) deliver through the future's
    done-callback.
    """
    if isinstance(executor, WorkerPool):
        executor.run(fn, args, deliver)
        return
    if isinstance(executor, (ThreadPoolExecutor, SynchronousExecutor)):
        context = contextvars.copy_context()

        def work() -> None:
            try:
                result = context.run(fn, *args)
            except BaseException as exc:  # noqa: BLE001 - delivered as data
                deliver(None, exc)
                return
            deliver(result, None)

        executor.submit(work)
        return

    def done(future: Future) -> None:
        try:
            deliver(future.result(), None)
        except BaseException as exc:  # noqa: BLE001
            deliver(None, exc)

    executor.submit(fn, *args).add_done_callback(done)


def submit_with_context(executor: Executor, fn: Callable[..., Any], *args: Any) -> Future:
    if isinstance(executor, (ThreadPoolExecutor, SynchronousExecutor)):
        return executor.submit(contextvars.copy_context().run, fn, *args)
    return executor.submit(fn, *args)  # other processes cannot share our context


def make_executor(kind: str, max_workers: int) -> Executor:
    if kind == "threads":
        return WorkerPool(max_workers)
    if kind == "sync":
        return SynchronousExecutor()
    if kind.startswith("dask"):
        try:
            from distributed import Client
        except ImportError:
            from .errors import InputError
            raise InputError("the dask executor needs the 'distributed' package: pip install 'dagrun[dask]'") from None
        address = kind.partition(":")[2] or None
        return Client(address).get_executor()
    from .errors import InputError
    raise InputError(f"unknown executor {kind!r} (expected threads, sync or dask[:ADDRESS])")
