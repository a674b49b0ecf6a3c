"""Executors: anything with ``submit()`` returning a ``concurrent.futures.Future``.

The runner never cares which: a thread pool (default), the synchronous
executor below (deterministic tests, debugging), or a Dask cluster's
``distributed.Client.get_executor()``. Work submitted through
:func:`submit_with_context` carries the caller's ``contextvars`` so structlog
bindings (run id, step) follow it onto the worker.
"""

from __future__ import annotations

import contextvars
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


def submit_with_context(executor: Executor, fn: Callable[..., Any], *args: Any) -> Future:
    if isinstance(executor, (ThreadPoolExecutor, SynchronousExecutor)):
        return executor.submit(contextvars.copy_context().run, fn, *args)
    return executor.submit(fn, *args)  # other processes cannot share our context


def make_executor(kind: str, max_workers: int) -> Executor:
    if kind == "threads":
        return ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="dagrun")
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
