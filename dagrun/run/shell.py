"""Running commands whose whole process tree can always be stopped.

Each command runs in a new session and in a :class:`~.processes.ProcessTree`
(a cgroup of its own, or its process group plus an environment tag), so a
timeout or a cancel ends the command and every process it started, daemons
included, and a Ctrl-C in the terminal reaches dagrun only, which then stops
the trees itself. The command is over when its main process exits: whatever
it left running is killed then, so a script that exits is never reported as
timed out because a daemon kept its output open.

Scripts run under ``bash --noprofile --norc -eo pipefail``. Live commands
are registered with a :class:`CancelToken`, which Python handlers may also
wait on (``ctx.cancel.wait(seconds)``) so that a cancel stops them at once.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import _thread
import threading
from dataclasses import dataclass
from typing import Callable, Protocol

from .isolation import STANDARD_PATH, Isolation
from .paths import own_program
from .processes import ProcessTree, start_time
from .scratch import scratch

TERM_GRACE_SECONDS = 1.0
MAX_OUTPUT_BYTES = 4 * 1024 * 1024  # per stream, kept as head and tail


OnStart = Callable[[int, "float | None"], None]


class Stoppable(Protocol):
    def stop(self) -> None: ...


class CancelToken:
    """Shared by a run and its workers: ``cancel()`` stops every live command.

    Cheap to make (one per attempt, on the scheduler's hot path): the gate a
    ``wait()`` sleeps on is made by the first wait, and a child token
    attaches itself to its parent only once it has something to stop or
    wake (most attempts of short steps never do).

    The gate is a lock held until the cancel: a wait is one timed acquire
    (as cheap as ``time.sleep``; a ``threading.Event`` wait builds a
    Condition's waiter each time, which with 64 short sleeping steps cost
    a third of the run's CPU)."""

    __slots__ = ("_cancelled", "_lock", "_live", "_gate", "_parent", "_attached")

    def __init__(self, parent: "CancelToken | None" = None) -> None:
        self._cancelled = False
        self._lock = _thread.allocate_lock()
        self._live: set[Stoppable] | None = None
        self._gate: _thread.LockType | None = None  # locked until the cancel opens it
        self._parent = parent
        self._attached = False

    @property
    def cancelled(self) -> bool:
        parent = self._parent
        return self._cancelled or (parent is not None and parent.cancelled)

    def wait(self, seconds: float | None) -> bool:
        """Sleep up to ``seconds`` (None: until the cancel); True as soon as
        the run is cancelled."""
        gate = self._gate
        if gate is None:
            with self._lock:
                if self._cancelled:
                    return True
                if self._gate is None:
                    made = _thread.allocate_lock()
                    made.acquire()
                    self._gate = made
                gate = self._gate
            self._attach()  # a parent cancelled already cancels this token now (and opens the gate)
        if gate.acquire(True, -1 if seconds is None else min(max(0.0, seconds), threading.TIMEOUT_MAX)):
            gate.release()  # open for the next waiter too
            return True
        return self._cancelled

    def register(self, item: Stoppable) -> None:
        with self._lock:
            if not self._cancelled:
                if self._live is None:
                    self._live = set()
                self._live.add(item)
                stop = False
            else:
                stop = True
        if stop:
            item.stop()
        else:
            self._attach()

    def _attach(self) -> None:
        """From now on the parent's cancel reaches this token (at once, if
        the parent was cancelled already)."""
        parent = self._parent
        if parent is not None and not self._attached:
            self._attached = True
            parent.register(self)

    def detach(self) -> None:
        """The attempt is over: its parent need not reach it any more."""
        if self._attached:
            self._parent.unregister(self)  # type: ignore[union-attr]

    def unregister(self, item: Stoppable) -> None:
        with self._lock:
            if self._live is not None:
                self._live.discard(item)

    def cancel(self) -> None:
        with self._lock:
            gate = self._gate if not self._cancelled else None  # opened once, by the first cancel
            self._cancelled = True
            live = list(self._live or ())
        if gate is not None:
            gate.release()
        for item in live:
            threading.Thread(target=item.stop, daemon=True).start()

    def stop(self) -> None:  # a child token is stopped by cancelling it
        self.cancel()

    def child(self) -> "CancelToken":
        """A token of its own (one attempt's) that this one's cancel reaches too."""
        return CancelToken(self)


@dataclass(slots=True)
class ShellResult:
    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    cancelled: bool = False
    outputs: dict[str, str] | None = None


class _Reader(threading.Thread):
    """Drains one pipe, keeping the head and tail of very long output."""

    def __init__(self, pipe) -> None:  # noqa: ANN001
        super().__init__(daemon=True)
        self.pipe = pipe
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0

    def run(self) -> None:
        half = MAX_OUTPUT_BYTES // 2
        while chunk := self.pipe.read1(65536) if hasattr(self.pipe, "read1") else self.pipe.read(65536):
            if len(self.head) < half:
                take = chunk[:half - len(self.head)]
                self.head += take
                chunk = chunk[len(take):]
            self.tail += chunk
            if len(self.tail) > half:
                self.dropped += len(self.tail) - half
                del self.tail[:len(self.tail) - half]

    def text(self) -> str:
        data = bytes(self.head)
        if self.dropped:
            data += f"\n... [{self.dropped} bytes dropped] ...\n".encode()
        return (data + bytes(self.tail)).decode("utf-8", errors="replace")


class _Command:
    """One running command: its process, its tree, and how to stop them."""

    def __init__(self, proc: subprocess.Popen, tree: ProcessTree):
        self.proc = proc
        self.tree = tree

    def stop(self, grace: float = TERM_GRACE_SECONDS) -> None:
        """SIGTERM the tree, then SIGKILL whatever is left of it."""
        self.tree.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        self.tree.kill()


def run_script(script: str, *, env: dict[str, str], cwd: str | None = None, timeout: float | None = None,
               cancel: CancelToken | None = None, run_id: str | None = None,
               isolation: Isolation | None = None, on_start: OnStart | None = None) -> ShellResult:
    """Run ``script`` with bash; collect output and the ``$DAGRUN_OUTPUT`` file.

    Lines ``key=value`` written to ``$DAGRUN_OUTPUT`` become the step's
    result fields (``steps.<id>.result.key`` downstream).
    """
    user = isolation.user if isolation is not None else None
    with scratch(script, owner=(user.uid, user.gid) if user is not None else None) as folder:
        if isolation is not None and isolation.sandbox:  # the sandbox sees the two files, and only them
            isolation = dataclasses.replace(isolation, readable=(*isolation.readable, folder.path),
                                            writable=(*isolation.writable, folder.output))
        result = run_command(["bash", "--noprofile", "--norc", "-eo", "pipefail", folder.script],
                             env={**env, "DAGRUN_OUTPUT": folder.output}, cwd=cwd, timeout=timeout, cancel=cancel,
                             run_id=run_id, isolation=isolation, on_start=on_start)
        outputs = {}
        # Lines end at \n only: str.splitlines would also end one at U+2028, \x1c-\x1e, \x85 or a lone \r,
        # which a value may hold (name="Alice<U+2028>is_admin=true" would write a key of its own).
        for line in folder.read_output().decode("utf-8", errors="replace").split("\n"):
            key, sep, value = line.removesuffix("\r").partition("=")
            if sep and key.strip():
                outputs[key.strip()] = value
    result.outputs = outputs
    return result


def run_command(argv: list[str], *, env: dict[str, str], cwd: str | None = None, timeout: float | None = None,
                cancel: CancelToken | None = None, input: bytes | None = None,
                run_id: str | None = None, isolation: Isolation | None = None,
                on_start: OnStart | None = None) -> ShellResult:
    """Run one program (no shell) in a process tree of its own, with a
    timeout, isolated as ``isolation`` says (user, sandbox, limits).
    ``on_start(pid, start time)`` hears of the process group it started."""
    limits = isolation.limits if isolation is not None else None
    if "/" not in argv[0] and (isolation is None or isolation.user is None):
        # A program dagrun runs itself (not as the workspace user) is found in dagrun's own PATH,
        # never in the step's, which the template may point at the workspace home; as root, only
        # in its folders somebody else may not fill.
        found = own_program(argv[0], STANDARD_PATH)
        if found is None and os.geteuid() == 0:  # (never a bare name for Popen to look for in the step's PATH)
            return ShellResult(exit_code=127, stdout="", stderr=f"{argv[0]}: command not found where only root "
                                                                "could have installed it")
        argv = [found, *argv[1:]] if found else argv
    tree = ProcessTree(run_id, pids_max=limits.processes if limits is not None else None)
    if isolation is not None and isolation.restricted:
        argv = dataclasses.replace(isolation, pids_cgroup=tree.limited).wrap(argv)
    try:
        proc = subprocess.Popen(tree.argv(argv), cwd=cwd, env=tree.env(env),
                                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    except FileNotFoundError:
        tree.close()
        return ShellResult(exit_code=127, stdout="", stderr=f"{argv[0]}: command not found")
    tree.leader = proc.pid
    if on_start is not None:
        on_start(proc.pid, start_time(proc.pid))
    command = _Command(proc, tree)
    readers = [_Reader(proc.stdout), _Reader(proc.stderr)]
    for reader in readers:
        reader.start()
    if cancel is not None:
        cancel.register(command)
    timed_out = False
    try:
        if input is not None:
            try:
                proc.stdin.write(input)  # type: ignore[union-attr]
                proc.stdin.close()  # type: ignore[union-attr]
            except BrokenPipeError:
                pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            command.stop()
            proc.wait()
    finally:
        if cancel is not None:
            cancel.unregister(command)
        tree.close()  # the main process is gone: so is everything it started
    for reader in readers:
        reader.join(timeout=5)  # a process outside the tree could hold a pipe: give up on it
    return ShellResult(
        exit_code=proc.returncode,
        stdout=readers[0].text(),
        stderr=readers[1].text(),
        timed_out=timed_out,
        cancelled=bool(cancel and cancel.cancelled),
    )
