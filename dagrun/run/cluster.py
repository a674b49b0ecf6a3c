"""Attempts on a Dask cluster: the scheduler core, the records and the
events stay in the driver; each attempt (execute, validate, rollback) runs
in a Dask worker process and comes back as data (an ``Outcome``).

What crosses to the worker is plain, picklable data: the attempt's job
(its step spec, workspace, variables, environment) and the upstream
results it reads. Handlers are resolved on the worker by name (the library
ships with dagrun; a user-defined action's folder must exist at the same
path on the workers). A cancel, or a timeout the driver decides, cancels
the Dask task; the worker running it sees that in its own task table and
cancels the attempt's local token, which ends its process tree.

A workspace that names a ``host`` runs its steps only on workers that
declare the Dask resource ``dagrun-host-<host>`` (``dask worker
--resources "dagrun-host-web1=1000"``: a large amount, since each attempt
takes one unit of it); other workspaces run anywhere.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any, Callable

from .executors import Deliver

RESOURCE_PREFIX = "dagrun-host-"
_CANCEL_POLL_SECONDS = 0.2


def host_resource(host: str) -> str:
    """The Dask resource a worker declares to take a host's steps."""
    return RESOURCE_PREFIX + str(host)


class DaskExecutor:
    """dagrun's adapter to a ``distributed.Client``."""

    def __init__(self, client: Any, *, owns_client: bool = False) -> None:
        self.client = client
        self._owns = owns_client
        self._hosts: set[str] = set()  # hosts some worker was seen to declare

    @property
    def address(self) -> str:
        return str(getattr(self.client.scheduler, "address", "") or "")

    @property
    def secured(self) -> bool:
        """Is the scheduler reached over TLS (or in this process)? Plain
        tcp:// has no authentication: whoever reaches it runs code on it."""
        return self.address.startswith(("tls://", "inproc://"))

    def _serves(self, host: str) -> bool:
        """Does a worker of the cluster declare the host's resource? (A host
        no worker serves would leave its steps waiting until they time out.)"""
        if host in self._hosts:
            return True
        resource = host_resource(host)
        workers = self.client.scheduler_info().get("workers", {})
        if any(resource in (w.get("resources") or {}) for w in workers.values()):
            self._hosts.add(host)
            return True
        return False

    @classmethod
    def connect(cls, address: str) -> "DaskExecutor":
        try:
            from distributed import Client
        except ImportError:
            from ..errors import InputError
            raise InputError("a Dask executor needs the 'distributed' package: pip install 'dagrun[dask]'") from None
        try:
            client = Client(address, set_as_default=False)
        except OSError as exc:  # no scheduler there (distributed waits for one, then says so with a traceback)
            from ..errors import InputError
            raise InputError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
        return cls(client, owns_client=True)

    def run(self, fn: Callable[..., Any], args: tuple, deliver: Deliver) -> None:
        """``fn(*args)`` on a worker (``fn`` is ``run_attempt`` or
        ``run_rollback``: their ``CancelToken`` becomes the task's own, which
        cancelling the Dask task reaches; their progress callback is not
        sent)."""
        from .shell import CancelToken
        job = args[0]
        token = next((a for a in args if isinstance(a, CancelToken)), None)
        remote_args = tuple(_CANCEL if isinstance(a, CancelToken) else (None if callable(a) else a) for a in args)
        host = job.workspace.get("host")
        if host and not self._serves(host):
            from .outcome import Outcome, StepStatus
            deliver(Outcome(job.step.id, args[1] if len(args) > 1 and isinstance(args[1], int) else 0,
                            StepStatus.failed, started_at=time.time(), retryable=False,
                            error=f"no Dask worker declares the resource {host_resource(host)} (workspace host "
                                  f"{host!r}): start one with --resources \"{host_resource(host)}=1000\""), None)
            return
        # Dask runs higher priorities first: across a fleet, the step with the longest path still to go
        future = self.client.submit(_remote, fn, remote_args, pure=False,
                                    key=f"dagrun-{job.step.id}-{uuid.uuid4().hex}",
                                    resources={host_resource(host): 1} if host else None,
                                    priority=int(getattr(job, "priority", 0.0) * 1000))
        relay = _CancelRelay(self.client, future)
        if token is not None:
            token.register(relay)

        def done(fut: Any) -> None:
            if token is not None:
                token.unregister(relay)
            if fut.cancelled():  # cancelled by the run (a cancel, a timeout): the attempt was cancelled
                from .outcome import Outcome, StepStatus
                deliver(Outcome(job.step.id, args[1] if len(args) > 1 and isinstance(args[1], int) else 0,
                                StepStatus.cancelled, started_at=time.time(), error="cancelled"), None)
                return
            try:
                deliver(fut.result(), None)
            except BaseException as exc:  # noqa: BLE001 - a lost worker, a task error: delivered as data
                deliver(None, exc)

        future.add_done_callback(done)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return self.client.submit(fn, *args, pure=False, **kwargs)

    def shutdown(self, wait: bool = True, **_: Any) -> None:
        if self._owns:
            self.client.close()


class _Placeholder:
    """Stands for the attempt's cancel token in what is sent to the worker."""

    def __reduce__(self) -> Any:
        return (_placeholder, ())


def _placeholder() -> "_Placeholder":
    return _CANCEL


_CANCEL = _Placeholder()


class _CancelRelay:
    """Registered with the attempt's token in the driver: a cancel cancels
    the Dask task, which its worker sees."""

    def __init__(self, client: Any, future: Any) -> None:
        self.client, self.future = client, future

    def stop(self) -> None:
        try:
            self.client.cancel(self.future, force=True)
        except Exception:  # noqa: BLE001 - the cluster is gone: nothing runs there any more
            pass


def _remote(fn: Callable[..., Any], args: tuple) -> Any:
    """On the worker: a local cancel token, cancelled when the worker drops
    the task (the driver cancelled it). The watch reads the worker's own
    task table: no message to the scheduler while the attempt runs."""
    from distributed import get_worker

    from .shell import CancelToken
    worker = get_worker()
    key = worker.get_current_task()
    token = CancelToken()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(_CANCEL_POLL_SECONDS):
            task = worker.state.tasks.get(key)
            if task is None or task.state in ("cancelled", "released", "forgotten"):
                token.cancel()
                return

    threading.Thread(target=watch, name="dagrun-cancel-watch", daemon=True).start()
    try:
        return fn(*(token if a is _CANCEL else a for a in args))
    finally:
        done.set()
