"""Scratch folders for a command's script and result file.

A step's script and its ``$DAGRUN_OUTPUT`` file must be readable (the
script) and writable (the result) by the step's user and inside its
sandbox, but the user must never be able to rename, swap or replace them:
a folder in the workspace home can be exchanged for a symlink between the
moment dagrun creates it and the moment dagrun writes into it. So scratch
folders live in dagrun's own runtime folder (``/run/dagrun`` as root), owned
by dagrun and traversable but not listable by others (0711); every file in
one is created through the folder's descriptor, never followed through a
symlink, and removed the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from typing import Iterator

MAX_RESULT_BYTES = 1024 * 1024  # what a step may write to $DAGRUN_OUTPUT


def _base() -> str:
    """dagrun's runtime folder: made once, checked every time (owned by us,
    not a symlink, writable by nobody else)."""
    candidates = (["/run/dagrun"] if os.geteuid() == 0 else []) + [
        os.path.join(tempfile.gettempdir(), f"dagrun-{os.geteuid()}")]
    for path in candidates:
        try:
            os.mkdir(path, 0o711)
        except FileExistsError:
            pass
        except OSError:
            continue
        info = os.lstat(path)
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o022:
            os.chmod(path, 0o711)
            _sweep(path)
            return path
    raise OSError("no private runtime folder for step scripts (/run/dagrun or the temp folder)")


_swept: set[str] = set()


def _sweep(base: str) -> None:
    """Once per process: remove the scratch folders of processes that died
    without cleaning up (killed runs); each folder is named by its pid."""
    if base in _swept:
        return
    _swept.add(base)
    for name in os.listdir(base):
        parts = name.split("-")
        if len(parts) >= 3 and parts[0] == "step" and parts[1].isdigit() and not _alive(int(parts[1])):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True, slots=True)
class Scratch:
    path: str
    dir_fd: int

    @property
    def script(self) -> str:
        return os.path.join(self.path, "script.sh")

    @property
    def output(self) -> str:
        return os.path.join(self.path, "output")

    def read_output(self) -> bytes:
        """The result file as the step left it (a regular file only)."""
        try:
            fd = os.open("output", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=self.dir_fd)
        except OSError:
            return b""
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return b""
            return fh.read(MAX_RESULT_BYTES)


@contextlib.contextmanager
def scratch(script: str, owner: tuple[int, int] | None = None) -> Iterator[Scratch]:
    """A folder holding ``script.sh`` and an empty ``output``, both the
    step's (``owner``: its user) and nobody else's."""
    path = tempfile.mkdtemp(prefix=f"step-{os.getpid()}-", dir=_base())
    os.chmod(path, 0o711)  # the step's user reaches its two files by name, and lists nothing
    dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        fd = os.open("script.sh", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400, dir_fd=dir_fd)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(script)
            if owner is not None and os.geteuid() == 0:
                os.fchown(fh.fileno(), *owner)
        fd = os.open("output", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
        try:
            if owner is not None and os.geteuid() == 0:
                os.fchown(fd, *owner)
        finally:
            os.close(fd)
        yield Scratch(path, dir_fd)
    finally:
        for name in ("script.sh", "output"):
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)
        os.close(dir_fd)
        with contextlib.suppress(OSError):
            os.rmdir(path)
