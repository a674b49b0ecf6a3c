"""Whole process trees: every process a step starts ends when the step does.

A shell script may start a daemon with ``setsid daemon &`` and exit: the
daemon leaves the script's process group, keeps the output pipes open, and
would outlive the step (and make it look "timed out"). So each command runs
in a :class:`ProcessTree`:

- a **cgroup** (v2) of its own when dagrun can create one under
  ``<cgroup2 mount>/dagrun/<run id>/``: the command is placed in it before it
  execs (a tiny ``sh`` prefix moves itself in), every descendant inherits it
  whatever it does with sessions, and ``cgroup.kill`` ends them all. The
  run's folder also lets a resume end the processes a dead run left behind
  (:func:`kill_run`);
- otherwise its **process group**, plus a tag in the environment
  (``DAGRUN_PROCESS_TAG``) that descendants inherit: processes that left the
  group are found by the tag in ``/proc`` (the trick Jenkins' process tree
  killer uses).

The command's end is its main process's exit, not the end of its output
(a daemon may hold the pipes): what is left of the tree is killed then.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from pathlib import Path
from typing import Callable, Iterator

TAG = "DAGRUN_PROCESS_TAG"
RUN_TAG = "DAGRUN_RUN_ID"


def _dagrun_folder(mounted: Callable[[list[str]], bool], probe: bool) -> Path | None:
    """``<mount>/dagrun`` under the first mount ``mounted`` picks (its
    /proc/self/mounts fields), if this process may create it (and, with
    ``probe``, folders in it)."""
    if os.environ.get("DAGRUN_NO_CGROUPS"):
        return None
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in mounts:
        parts = line.split()
        if mounted(parts):
            base = Path(parts[1]) / "dagrun"
            try:
                base.mkdir(exist_ok=True)
                if probe:
                    test = base / f"probe-{os.getpid()}"
                    test.mkdir()
                    test.rmdir()
            except OSError:
                return None
            return base
    return None


@functools.cache
def cgroup_base() -> Path | None:
    """``<cgroup2 mount>/dagrun`` if this process may create cgroups there."""
    return _dagrun_folder(lambda parts: len(parts) > 2 and parts[2] == "cgroup2", probe=True)


@functools.cache
def pids_base() -> Path | None:
    """``<pids cgroup v1 mount>/dagrun``, for a limit on a step's processes."""
    return _dagrun_folder(lambda parts: len(parts) > 3 and parts[2] == "cgroup" and "pids" in parts[3].split(","),
                          probe=False)


def _rmdir_tree(path: Path) -> None:
    for child in sorted(path.glob("**/"), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            child.rmdir()


class ProcessTree:
    """Where one command's processes live, and how to end all of them."""

    def __init__(self, run_id: str | None = None, name: str | None = None, *, pids_max: int | None = None):
        self.tag = f"{run_id or 'run'}:{name or os.urandom(6).hex()}:{os.urandom(4).hex()}"
        self.run_id = run_id
        self.cgroup = self._make(cgroup_base())
        self.pids = None if pids_max is None else self._make(pids_base())
        if self.pids is not None:
            try:
                (self.pids / "pids.max").write_text(str(pids_max))
            except OSError:
                self.pids = None
        self.leader: int | None = None

    def _make(self, base: Path | None) -> Path | None:
        if base is None:
            return None
        path = base / (self.run_id or "runs") / self.tag.replace(":", "_")
        try:
            path.mkdir(parents=True)
        except OSError:
            return None
        return path

    @property
    def limited(self) -> bool:
        """Is the number of processes limited by a cgroup?"""
        return self.pids is not None

    def env(self, env: dict[str, str]) -> dict[str, str]:
        extra = {TAG: self.tag}
        if self.run_id:
            extra[RUN_TAG] = self.run_id
        return {**env, **extra}

    def argv(self, argv: list[str]) -> list[str]:
        """``argv``, prefixed so the process joins its cgroups before it execs
        (and before it drops privileges: only root may place it there)."""
        groups = [str(g / "cgroup.procs") for g in (self.cgroup, self.pids) if g is not None]
        if not groups:
            return argv
        enter = 'while [ "$1" != -- ]; do echo 0 > "$1" || exit 126; shift; done; shift; exec "$@"'
        return ["/bin/sh", "-c", enter, "dagrun-enter", *groups, "--", *argv]

    def members(self) -> list[int]:
        for group in (self.cgroup, self.pids):
            if group is not None:
                try:
                    return [int(p) for p in (group / "cgroup.procs").read_text().split()]
                except OSError:
                    continue
        return tagged(TAG, self.tag)

    def signal(self, signum: int) -> None:
        if self.leader is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.leader, signum)
        for pid in self.members():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)

    def kill(self) -> None:
        """End every process of the tree (SIGKILL)."""
        if self.cgroup is not None:
            try:
                (self.cgroup / "cgroup.kill").write_text("1")
            except OSError:
                self.signal(signal.SIGKILL)
        else:
            self.signal(signal.SIGKILL)

    def close(self) -> None:
        """Kill what is left and remove the cgroups."""
        self.kill()
        if self.pids is not None and self.cgroup is None:
            self.signal(signal.SIGKILL)
        for group in (self.cgroup, self.pids):
            if group is None:
                continue
            for _ in range(50):  # the kernel empties a killed cgroup asynchronously
                try:
                    group.rmdir()
                    break
                except OSError:
                    time.sleep(0.01)
            with contextlib.suppress(OSError):
                group.parent.rmdir()  # the run's folder, once empty


def start_time(pid: int) -> float | None:
    """When a process started (clock ticks since boot): with its pid, names
    it uniquely, so a reused pid is never mistaken for it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return float(fh.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def has_exited(pid: int) -> bool:
    """Has the process ended, though its parent has not reaped it yet (a
    zombie: signals and /proc still find it)?"""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def kill_group(pgid: int, started: float | None) -> bool:
    """SIGKILL a recorded process group if its leader is still the process
    that was recorded (same start time)."""
    if started is None or start_time(pgid) != started:
        return False
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def tagged(name: str, value: str) -> list[int]:
    """Processes whose environment holds ``name=value`` (those we may read)."""
    needle = f"{name}={value}".encode()
    found = []
    for entry in _proc_entries():
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def _proc_entries() -> Iterator[str]:
    try:
        entries = os.listdir("/proc")
    except OSError:
        return iter(())
    me = str(os.getpid())
    return (e for e in entries if e.isdigit() and e != me)


def kill_run(run_id: str) -> int:
    """End every process a (dead) run left behind; how many were signalled."""
    pids: set[int] = set()
    folders = [base / run_id for base in (cgroup_base(), pids_base()) if base is not None]
    for folder in folders:
        for procs in folder.glob("**/cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids |= {int(p) for p in procs.read_text().split()}
    pids |= set(tagged(RUN_TAG, run_id))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    for folder in folders:
        for kill in folder.glob("**/cgroup.kill"):
            with contextlib.suppress(OSError):
                kill.write_text("1")
    if folders:
        time.sleep(0.05)
    for folder in folders:
        if folder.is_dir():
            _rmdir_tree(folder)
    return len(pids)
