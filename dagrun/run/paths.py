"""Paths a step may touch: the workspace home, and nothing else.

Library actions that write files, venvs or checkouts resolve their target
with :func:`inside_home`: ``~`` and relative paths are in the home, the
result is resolved through symlinks and must still be inside the (resolved)
home. A ``~/../x``, an absolute path elsewhere, or a path through a symlinked
folder (``~/.vscode -> /etc``) is refused, unless the step's action is
``requires_sudo`` (system actions write where the system keeps things).

Checking a path and then writing it leaves a window in which a folder could
be swapped for a symlink. :func:`write_file` closes it: it walks from the
home to the target one component at a time with ``O_NOFOLLOW`` (creating
missing folders as it goes), writes a temporary file in the final folder
and renames it into place, all relative to folder descriptors, so nothing
it opens can be redirected by a symlink.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from pathlib import Path

from ..compile.expressions import expand_path
from ..errors import PermanentError


def expand(text: str, home: str | None) -> str:
    """``~`` is the home, a relative path is relative to it; normalized."""
    text = expand_path(str(text), home)
    return os.path.normpath(text) if text else text


def inside_home(text: str, home: str | None, *, anywhere: bool = False) -> str:
    """The absolute path ``text`` names, refused when it leaves the home."""
    path = expand(text, home)
    if anywhere or not home:
        return path
    real_home = os.path.realpath(home)
    real = os.path.realpath(path)
    if real != real_home and not real.startswith(real_home + os.sep):
        shown = path if real == path else f"{path} (which leads to {real})"
        raise PermanentError(f"{shown} is outside the workspace home {home}")
    return path


def _relative(path: str, home: str) -> list[str]:
    rel = os.path.relpath(path, home)
    if rel == "." or rel.startswith(".."):
        raise PermanentError(f"{path} is not a file inside the workspace home {home}")
    return [part for part in rel.split(os.sep) if part]


@contextlib.contextmanager
def _open_dir(home: str, parts: list[str], *, create: bool, mode: int = 0o755, owner: tuple[int, int] | None = None):
    """A descriptor of ``home/parts...``, walked without following symlinks
    (the home itself included)."""
    try:
        fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise PermanentError(f"the workspace home {home} is a symlink or not a folder") from None
        raise
    try:
        for part in parts:
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, mode, dir_fd=fd)
                if owner is not None:
                    os.chown(part, *owner, dir_fd=fd, follow_symlinks=False)
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise PermanentError(f"{os.path.join(home, *parts)}: {part} is a symlink or not a folder; "
                                         "a step writes only inside the workspace home") from None
                raise
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def write_file(path: str, data: bytes, *, home: str | None, mode: int | None = None,
               anywhere: bool = False, owner: tuple[int, int] | None = None, folder_mode: int = 0o755) -> bool:
    """Write ``data`` to ``path`` atomically; True if the file did not exist.
    Inside the home (unless ``anywhere``), never through a symlink; the file
    and the folders it creates belong to ``owner`` when given."""
    if anywhere or not home:
        target = Path(path)
        existed = target.exists()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.dagrun-tmp")
        tmp.write_bytes(data)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
        return not existed
    parts = _relative(inside_home(path, home), home)
    *folders, name = parts
    with _open_dir(home, folders, create=True, owner=owner, mode=folder_mode) as fd:
        try:
            info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
                raise PermanentError(f"{path} is a symlink or not a regular file: not replaced")
            existed = True
        except FileNotFoundError:
            existed = False
        tmp = f".{name}.dagrun-tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=fd)
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644 if mode is None else mode,
                      dir_fd=fd)
        try:
            with os.fdopen(out, "wb") as fh:
                fh.write(data)
                if mode is not None:
                    os.fchmod(fh.fileno(), mode)
                if owner is not None:
                    os.fchown(fh.fileno(), *owner)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=fd)
            raise
        os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
    return not existed


def read_file(path: str, *, home: str | None, limit: int = 16 * 1024 * 1024) -> bytes | None:
    """A file's content (None when missing), read without following symlinks."""
    if not home:
        try:
            with open(path, "rb") as fh:
                return fh.read(limit)
        except FileNotFoundError:
            return None
    *folders, name = _relative(inside_home(path, home), home)
    try:
        with _open_dir(home, folders, create=False) as fd:
            handle = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
            with os.fdopen(handle, "rb") as fh:
                return fh.read(limit)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PermanentError(f"{path} is a symlink: not read") from None
        raise


def remove_file(path: str, *, home: str | None) -> None:
    """Remove a file the step created (never through a symlinked folder)."""
    if not home:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        return
    *folders, name = _relative(path, home)
    try:
        with _open_dir(home, folders, create=False) as fd:
            os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        pass


def entries(path: str, *, home: str | None = None) -> set[str]:
    """The names in a folder (empty when it does not exist or is a symlink),
    read through a descriptor walked from the home without following symlinks."""
    if not home:
        try:
            return set(os.listdir(path)) if not os.path.islink(path) else set()
        except (FileNotFoundError, NotADirectoryError):
            return set()
    try:
        with _open_dir(home, _relative(path, home), create=False) as fd:
            return set(os.listdir(fd))
    except (FileNotFoundError, NotADirectoryError, PermanentError):
        return set()


def remove_created(path: str, created: list[str] | None, *, home: str | None = None) -> list[str]:
    """Undo a step that filled ``path``: remove ``path`` itself if ``created``
    is None (the step made the folder), else only the listed entries in it.
    Every removal happens relative to a folder descriptor walked from the
    home without following symlinks: a folder swapped for a symlink after
    the step is never followed (the symlink itself is what goes). Returns
    what was removed."""
    if not home:
        raise PermanentError("nothing is removed outside a workspace home")
    parts = _relative(path, home)
    removed = []
    try:
        if created is None:
            *folders, name = parts
            with _open_dir(home, folders, create=False) as fd:
                _remove_entry(fd, name)
            return [path]
        with _open_dir(home, parts, create=False) as fd:
            for name in created:
                if "/" in name or name in (".", ".."):
                    continue
                _remove_entry(fd, name)
                removed.append(os.path.join(path, name))
    except (FileNotFoundError, PermanentError):
        pass  # gone already, or no longer a folder of ours: nothing of the step's is left to remove there
    return removed


def _remove_entry(dir_fd: int, name: str) -> None:
    """Remove ``name`` in the folder ``dir_fd``: a file or symlink is
    unlinked, a folder removed with everything in it (shutil.rmtree's
    descriptor-based walk, which never follows symlinks)."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd, ignore_errors=True)
    else:
        os.unlink(name, dir_fd=dir_fd)
