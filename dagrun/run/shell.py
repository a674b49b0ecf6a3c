"""Running shell scripts as process groups that can always be stopped.

Each script runs under ``bash -eo pipefail`` in a new session (its own
process group), so a timeout or a cancel kills the script and every child it
started, and a Ctrl-C in the terminal reaches dagrun only, which then stops
the groups itself. Live groups are registered with a :class:`CancelToken`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass

TERM_GRACE_SECONDS = 1.0


class CancelToken:
    """Shared by a run and its workers: ``cancel()`` kills every live group."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def register(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.add(proc)
        if self.cancelled:
            kill_group(proc)

    def unregister(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    def cancel(self) -> None:
        self._event.set()
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            threading.Thread(target=kill_group, args=(proc,), daemon=True).start()


def kill_group(proc: subprocess.Popen, grace: float = TERM_GRACE_SECONDS) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left of it."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:  # children may outlive the leader: kill the whole group regardless
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass(slots=True)
class ShellResult:
    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    cancelled: bool = False
    outputs: dict[str, str] | None = None


def run_script(script: str, *, env: dict[str, str], cwd: str | None = None, timeout: float | None = None,
               cancel: CancelToken | None = None) -> ShellResult:
    """Run ``script`` with bash; collect output and the ``$DAGRUN_OUTPUT`` file.

    Lines ``key=value`` written to ``$DAGRUN_OUTPUT`` become the step's
    result fields (``steps.<id>.result.key`` downstream).
    """
    with tempfile.TemporaryDirectory(prefix="dagrun-") as tmp:
        script_path = os.path.join(tmp, "script.sh")
        output_path = os.path.join(tmp, "output")
        with open(script_path, "w", encoding="utf-8") as fh:
            fh.write(script)
        open(output_path, "w").close()
        result = run_command(["bash", "--noprofile", "--norc", "-eo", "pipefail", script_path],
                             env={**env, "DAGRUN_OUTPUT": output_path}, cwd=cwd, timeout=timeout, cancel=cancel)
        outputs = {}
        with open(output_path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, sep, value = line.rstrip("\n").partition("=")
                if sep and key:
                    outputs[key.strip()] = value
    result.outputs = outputs
    return result


def run_command(argv: list[str], *, env: dict[str, str], cwd: str | None = None, timeout: float | None = None,
                cancel: CancelToken | None = None, input: bytes | None = None) -> ShellResult:
    """Run one program (no shell) in its own process group, with a timeout."""
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    except FileNotFoundError:
        return ShellResult(exit_code=127, stdout="", stderr=f"{argv[0]}: command not found")
    if cancel is not None:
        cancel.register(proc)
    timed_out = False
    try:
        try:
            out, err = proc.communicate(input=input, timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(proc)
            try:
                out, err = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:  # a grandchild left the group and holds the pipes
                proc.kill()
                out, err = b"", b"(output lost: a process outside the group kept the pipes open)"
    finally:
        if cancel is not None:
            cancel.unregister(proc)
    return ShellResult(
        exit_code=proc.returncode,
        stdout=out.decode("utf-8", errors="replace"),
        stderr=err.decode("utf-8", errors="replace"),
        timed_out=timed_out,
        cancelled=bool(cancel and cancel.cancelled),
    )
