"""A Python handler of a user-defined action, run in a process of its own.

Library handlers are dagrun's own code and run in dagrun's process (their
commands are isolated one by one). A user-defined action's Python handler is
somebody else's code: when its step is sandboxed or runs as the workspace
user, the call happens here, in ``python -I -m dagrun.run.worker FD``
started with the step's isolation (setpriv, prlimit, bubblewrap, its process
tree) so the code runs as the workspace user, inside the sandbox, within the
limits, and can be killed.

The parent sends the call as a pickle on stdin (parent to child only: a less
privileged process never sends a pickle to a more privileged one). The child
answers with JSON on the descriptor ``FD``: plain data the parent validates.
A SIGTERM in the child cancels the handler's token, as Ctrl-C does in the
parent.
"""

from __future__ import annotations

import _thread
import importlib.util
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
from dataclasses import asdict, replace
from typing import Any

from ..workspace import KNOWN_FIELDS
from .isolation import Isolation, python_paths
from .outcome import HandlerResult
from .processes import ProcessTree
from .shell import TERM_GRACE_SECONDS, CancelToken, _Reader

# SIGTERM, then SIGKILL this long after: well within the run's cancel grace (2 s), as for shell steps,
# so a cancelled run never returns while a worker is still to be killed.
GRACE_SECONDS = TERM_GRACE_SECONDS


def _handler_package(reference: Any) -> tuple[str, ...]:
    """The files a ``module:function`` handler is imported from: the module
    and the ``__init__.py`` of each package above it, shown to the sandbox
    one by one, even below a folder other users cannot enter (python_paths
    shows no such folder whole: the host application's settings may sit
    beside them). A namespace package (no file of its own) shows nothing."""
    if not isinstance(reference, str) or ":" not in reference:
        return ()
    parts = reference.split(":", 1)[0].strip().split(".")
    files = []
    for depth in range(1, len(parts) + 1):
        try:
            spec = importlib.util.find_spec(".".join(parts[:depth]))
        except (ImportError, ValueError):
            return ()
        if spec is None or not spec.origin or not os.path.isabs(spec.origin):
            return ()  # a namespace package, a built-in: nothing of its own to show
        files.append(spec.origin)
    return tuple(files)


def call_isolated(field: str, ctx: Any) -> HandlerResult:
    """Call the action's ``field`` handler for ``ctx`` in a worker process."""
    extra = (str(ctx.action.base_dir),) if ctx.action.base_dir is not None else ()  # its own files (templates)
    extra += _handler_package(getattr(ctx.action, field, None))  # its own code, wherever it is
    isolation: Isolation = (replace(ctx.isolation, readable=(*python_paths(), *extra)) if ctx.isolation.sandbox
                            else ctx.isolation)
    context = {name: getattr(ctx, name) for name in ("step_id", "action", "config", "workspace", "steps", "env",
                                                     "home", "attempt", "timeout", "result", "sudo", "run_id")}
    # Somebody else's code gets what its step passes it (config), never the run's variables:
    # they may hold secrets. Of the workspace, the well-known fields only.
    context["variables"] = {}
    context["steps"] = {}  # nor other steps' results (a secret an earlier step produced)
    context["workspace"] = {k: v for k, v in ctx.workspace.items() if k in KNOWN_FIELDS}
    call = {"field": field, "sys_path": list(sys.path), "context": context}
    limits = isolation.limits
    tree = ProcessTree(ctx.run_id, pids_max=limits.processes if limits is not None else None)
    read_end, write_end = os.pipe()
    argv = tree.argv(replace(isolation, pids_cgroup=tree.limited).wrap(
        [sys.executable, "-I", "-m", "dagrun.run.worker", str(write_end)]))
    env = isolation.environment({k: v for k, v in ctx.env.items()} | {"HOME": ctx.process_home() or "/"})
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=(write_end,), env=tree.env(env),
                                cwd="/" if ctx.root_in_tenant_home else ctx.home or None, start_new_session=True)
    except OSError as exc:
        tree.close()
        os.close(read_end)
        return HandlerResult(ok=False, error=f"cannot start the Python worker: {exc}")
    finally:
        os.close(write_end)
    tree.leader = proc.pid
    readers = [_Reader(proc.stdout), _Reader(proc.stderr)]
    for reader in readers:
        reader.start()
    answer: list[bytes] = []
    collector = threading.Thread(target=lambda: answer.append(_read_all(read_end)), daemon=True)
    collector.start()

    class _Stop:
        def stop(self) -> None:
            tree.signal(signal.SIGTERM)
            try:
                proc.wait(timeout=GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                pass
            tree.kill()

    stopper = _Stop()
    ctx.cancel.register(stopper)
    timed_out = False
    try:
        try:
            proc.stdin.write(pickle.dumps(call))  # type: ignore[union-attr]
            proc.stdin.close()  # type: ignore[union-attr]
        except BrokenPipeError:
            pass
        try:
            proc.wait(timeout=None if ctx.timeout is None else ctx.timeout + TERM_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            timed_out = True
            stopper.stop()
            proc.wait()
    finally:
        ctx.cancel.unregister(stopper)
        tree.close()
    collector.join(timeout=5)
    for reader in readers:
        reader.join(timeout=5)
    stdout, stderr = readers[0].text(), readers[1].text()
    if timed_out:
        return HandlerResult(ok=False, error=f"timed out after {ctx.timeout:g} s", stdout=stdout, stderr=stderr,
                             timed_out=True)
    try:
        data = json.loads(answer[0].decode("utf-8")) if answer and answer[0] else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        tail = (stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return HandlerResult(ok=False, error=f"the Python worker gave no result: {tail}", stdout=stdout,
                             stderr=stderr, exit_code=proc.returncode, cancelled=ctx.cancel.cancelled)
    return _result(data, stdout, stderr)


MAX_REPLY_BYTES = 16 * 1024 * 1024


def _read_all(fd: int) -> bytes:
    """The worker's reply, at most MAX_REPLY_BYTES (a bigger one is refused,
    and the rest drained so the worker is not blocked)."""
    chunks, size = [], 0
    with os.fdopen(fd, "rb") as fh:
        while chunk := fh.read(65536):
            size += len(chunk)
            if size <= MAX_REPLY_BYTES:
                chunks.append(chunk)
    return b"".join(chunks) if size <= MAX_REPLY_BYTES else b""


def _result(data: dict[str, Any], stdout: str, stderr: str) -> HandlerResult:
    """A HandlerResult from the worker's JSON, keeping only known fields."""
    if data.get("permanent"):
        from ..errors import PermanentError
        raise PermanentError(str(data.get("error") or "failed"))
    result = HandlerResult(ok=bool(data.get("ok")), data=data["data"] if isinstance(data.get("data"), dict) else {},
                           exit_code=data.get("exit_code") if isinstance(data.get("exit_code"), int) else None,
                           error=str(data["error"]) if data.get("error") is not None else None,
                           timed_out=bool(data.get("timed_out")), cancelled=bool(data.get("cancelled")),
                           changed=data["changed"] if isinstance(data.get("changed"), bool) else None)
    result.stdout = stdout + str(data.get("stdout") or "")
    result.stderr = stderr + str(data.get("stderr") or "")
    return result


def _cancel_from_a_thread(cancel: CancelToken) -> None:
    """On SIGTERM: cancel() takes the token's lock, which the thread the
    signal interrupted may hold, so it runs in a thread of its own (a
    low-level one: starting it does not wait). Without a thread to be had
    (the worker's memory or process limit), here, as the last resort."""
    try:
        _thread.start_new_thread(cancel.cancel, ())
    except RuntimeError:
        cancel.cancel()


def main(argv: list[str]) -> int:
    fd = int(argv[0])
    call = pickle.loads(sys.stdin.buffer.read())
    sys.path[:0] = [p for p in call["sys_path"] if p not in sys.path]
    from .handler_types import StepContext, build_handler, coerce_result
    cancel = CancelToken()
    signal.signal(signal.SIGTERM, lambda *_: _cancel_from_a_thread(cancel))
    ctx = StepContext(cancel=cancel, **call["context"])
    try:
        handler = build_handler(ctx.action, getattr(ctx.action, call["field"]))
        result = coerce_result(handler(ctx))
    except Exception as exc:  # reported as data, as in the parent
        from ..errors import PermanentError
        permanent = isinstance(exc, PermanentError)
        result = HandlerResult(ok=False, error=str(exc) if permanent else f"{type(exc).__name__}: {exc}")
    else:
        permanent = False
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump({**asdict(result), "permanent": permanent}, out, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
