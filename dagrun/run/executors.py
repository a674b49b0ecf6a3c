"""Executors: anything with ``submit()`` returning a ``concurrent.futures.Future``.

The runner never cares which: dagrun's thread pool (default), the synchronous
executor below (deterministic tests, debugging), or a Dask cluster's
``distributed.Client.get_executor()``. Work submitted through
:func:`submit_with_context` carries the caller's ``contextvars`` so structlog
bindings (run id, step) follow it onto the worker.
"""

from __future__ import annotations

import contextvars
import _thread
import queue
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
    ``ThreadPoolExecutor``.

    The pool grows on demand (a task never waits for a busy thread: each run
    bounds its own concurrency) and keeps idle threads for the next run, as
    dask's threaded scheduler does: starting threads costs a GIL round-trip
    each, which a provisioning service would otherwise pay on every run.
    Threads are daemons, so a handler that never returns (abandoned after
    its timeout) cannot keep the process alive.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        # One token per thread that is free for a task. Taking and giving one are single C calls:
        # no lock that a thread switch in the middle of a with-block would make the other side wait on.
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        self._grow = _thread.allocate_lock()  # several runs may dispatch at once
        self._threads = 0

    @property
    def threads(self) -> int:
        return self._threads

    def run(self, fn: Callable[..., Any], args: tuple, deliver: Deliver,
            context: contextvars.Context | None = None) -> None:
        """``fn(*args)`` in a copy of ``context`` (default: the caller's);
        ``deliver(result, error)`` on the worker, outside it."""
        try:
            self._idle.get_nowait()
            start = False
        except queue.Empty:
            with self._grow:
                self._threads += 1
            start = True
        self._queue.put((fn, args, deliver, contextvars.copy_context() if context is None else context.copy()))
        if start:
            # A low-level thread: starting it does not wait for it to run
            # (threading.Thread.start does, a context switch per thread).
            _thread.start_new_thread(self._work, ())

    def _work(self) -> None:
        get, free = self._queue.get, self._idle.put
        while True:
            fn, args, deliver, context = get()
            try:
                result = context.run(fn, *args)
            except BaseException as exc:  # noqa: BLE001 - delivered as data
                free(None)
                deliver(None, exc)
                fn = args = deliver = context = exc = None
                continue
            free(None)  # free before delivering: the next task may be dispatched at once
            deliver(result, None)
            # An idle thread holds nothing of its last task (a step's config, a secret in it).
            fn = args = deliver = context = result = None

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
        """The shared pool outlives runs; its idle threads cost nothing."""


_default_pool: WorkerPool | None = None
_default_lock = _thread.allocate_lock()


def default_pool() -> WorkerPool:
    global _default_pool
    with _default_lock:
        if _default_pool is None:
            _default_pool = WorkerPool()
        return _default_pool


def dispatch(executor: Executor, fn: Callable[..., Any], args: tuple, deliver: Deliver,
             context: contextvars.Context | None = None) -> None:
    """Run ``fn(*args)`` on ``executor`` and hand ``(result, error)`` to ``deliver``.
    In-process, ``fn`` runs in a copy of ``context`` (default: the caller's):
    a worker dispatching the next step passes the run's, not its own.

    In-process executors deliver directly from the worker (no done-callback,
    no ``Future.result()`` lock round-trips: this is the scheduler's hot
    path). Other executors (a Dask cluster) deliver through the future's
    done-callback.
    """
    if isinstance(executor, WorkerPool):
        executor.run(fn, args, deliver, context)
        return
    if isinstance(executor, (ThreadPoolExecutor, SynchronousExecutor)):
        context = contextvars.copy_context() if context is None else context.copy()

        def work() -> None:
            try:
                result = context.run(fn, *args)
            except BaseException as exc:  # noqa: BLE001 - delivered as data
                deliver(None, exc)
                return
            deliver(result, None)

        executor.submit(work)
        return

    run = getattr(executor, "run", None)
    if run is not None:  # an executor that delivers by itself (a Dask cluster: cluster.DaskExecutor)
        run(fn, args, deliver)
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
        return default_pool()
    if kind == "sync":
        return SynchronousExecutor()
    return resolve_executor(kind)


_clusters: dict[str, Any] = {}
_clusters_lock = _thread.allocate_lock()


def resolve_executor(executor: Any) -> Any:
    """What ``executor=`` may be: None (dagrun's thread pool), an Executor,
    ``"threads"``, ``"sync"``, a Dask scheduler address (``tcp://host:8786``,
    ``tls://...``, ``dask:ADDRESS``), a ``distributed.Client`` or its
    ``get_executor()``. A Dask address is connected once per process."""
    if executor is None or isinstance(executor, (WorkerPool, ThreadPoolExecutor, SynchronousExecutor)):
        return executor
    if isinstance(executor, str):
        if executor in ("threads", "sync"):
            return make_executor(executor, 1)
        address = executor.partition(":")[2] if executor.startswith("dask:") else executor
        if "://" not in address:
            from ..errors import InputError
            raise InputError(f"unknown executor {executor!r} (expected threads, sync, or a Dask scheduler "
                             "address such as tcp://host:8786)")
        from .cluster import DaskExecutor
        with _clusters_lock:
            if address not in _clusters:
                _clusters[address] = DaskExecutor.connect(address)
            return _clusters[address]
    module = type(executor).__module__
    if module.startswith("distributed"):
        from .cluster import DaskExecutor
        client = getattr(executor, "_client", executor)  # Client.get_executor() wraps its client
        return DaskExecutor(client)
    return executor
