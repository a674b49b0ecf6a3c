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
import functools
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Iterator

from ..compile.expressions import expand_path
from ..errors import PermanentError


def expand(text: str, home: str | None) -> str:
    """``~`` is the home, a relative path is relative to it; normalized."""
    text = expand_path(str(text), home)
    return os.path.normpath(text) if text else text


def home_ancestry_problem(home: str, root: str | None, owner: int | None) -> str | None:
    """Why root may not work in ``home``, if it may not: a folder between the
    allowed ``root`` and the home (or above the home, without a root) that is
    a symlink, not root's, or writable by others could be swapped, or is
    somebody else's; an existing home must be ``owner``'s (the workspace
    user's) or root's."""
    return home_state(home, root, owner)[0]


def home_state(home: str, root: str | None, owner: int | None) -> tuple[str | None, bool]:
    """``home_ancestry_problem`` and whether the home exists, from the same
    ``lstat`` calls: run before every attempt as root, and each system call
    lets another thread take the interpreter."""
    path, folders = _ancestry(home, root)
    for folder in folders:
        try:
            info = os.lstat(folder)
        except FileNotFoundError:
            return None, False  # made by root when the home is made
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
            return f"{folder} (above the workspace home {home}) is a symlink or not a folder", True
        if info.st_uid != 0:
            return (f"{folder} (above the workspace home {home}) belongs to uid {info.st_uid}, not root: its "
                    "owner could swap what is below it"), True
        if info.st_mode & 0o022:
            return f"{folder} (above the workspace home {home}) is writable by others: refused", True
    try:
        info = os.lstat(path)  # normalized: a trailing "/" would follow a symlink
    except FileNotFoundError:
        return None, False
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        return f"the workspace home {home} is a symlink or not a folder", True
    if info.st_uid not in (0, owner):
        return f"the workspace home {home} belongs to another user", True
    return None, True


@functools.lru_cache(maxsize=256)
def _ancestry(home: str, root: str | None) -> tuple[str, tuple[str, ...]]:
    """``home`` normalized, and the folders strictly between ``root`` (or
    ``/``) and it, top first: the same few homes are checked before every
    attempt."""
    path = os.path.normpath(home)
    top = os.path.normpath(root) if root else "/"
    if top.startswith("//"):  # (normpath keeps POSIX's "//": the same folder as "/" here)
        top = "/" + top.lstrip("/")
    folder = os.path.dirname(path)
    chain = []
    while folder != top and folder.startswith(top.rstrip(os.sep) + os.sep) and folder != os.path.dirname(folder):
        chain.append(folder)
        folder = os.path.dirname(folder)
    return path, tuple(reversed(chain))


def readable_by_everyone(path: str) -> bool:
    """Could any user read ``path`` (every folder down to it searchable by
    others, the file or folder itself readable by others)? What root may
    read on behalf of a value: nothing a local user could not."""
    try:
        real = os.path.realpath(path)
        info = os.stat(real)
    except OSError:
        return False
    if not info.st_mode & 0o004 or (stat.S_ISDIR(info.st_mode) and not info.st_mode & 0o001):
        return False
    folder = os.path.dirname(real)
    while True:
        try:
            if not os.stat(folder).st_mode & 0o001:
                return False
        except OSError:
            return False
        parent = os.path.dirname(folder)
        if parent == folder:
            return True
        folder = parent


def visibly_missing(path: str) -> bool:
    """Is ``path`` missing where any user could see that it is? Walked name
    by name as the kernel resolves it (symlinks followed where they are),
    every folder a name is looked up in must be one any user may search:
    saying "missing" then tells a value nothing a local user could not
    learn (root is no oracle for what folders others cannot enter hold)."""
    parts = [p for p in os.path.abspath(path).split("/") if p]
    current, hops = "/", 0
    while parts:
        name = parts.pop(0)
        if name == ".":
            continue
        if name == "..":
            current = os.path.dirname(current)
            continue
        try:
            info = os.stat(current)
        except OSError:
            return False
        if not stat.S_ISDIR(info.st_mode) or not info.st_mode & 0o001:
            return False  # looking a name up here is root's privilege
        candidate = os.path.join(current, name)
        try:
            entry = os.lstat(candidate)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        if stat.S_ISLNK(entry.st_mode):
            hops += 1
            if hops > 40:
                return False
            try:
                target = os.readlink(candidate)
            except OSError:
                return False
            parts = [p for p in target.split("/") if p] + parts
            if target.startswith("/"):
                current = "/"
            continue
        current = candidate
    return False  # it exists


def root_owned_program(path: str) -> bool:
    """Is ``path`` a program only root could have put there (it and every
    folder above it owned by root, writable by nobody else)?"""
    try:
        if not stat.S_ISREG(os.stat(os.path.realpath(path)).st_mode):
            return False
    except OSError:
        return False
    return root_only_folder(path)


def root_only_folder(path: str) -> bool:
    """Is ``path`` (a folder, or a file) something only root could have
    filled (it and every folder above it root's, writable by nobody else;
    a folder above it may be a sticky one everybody writes in, such as
    /tmp: nobody else may rename or remove root's entry there)? Where root
    may find commands and install from."""
    return root_only_problem(path) is None


def root_only_problem(path: str) -> str | None:
    """Why ``path`` is not something only root could have filled, or None
    (as :func:`root_only_folder` asks)."""
    current = os.path.realpath(path)
    first = True
    while True:
        try:
            info = os.stat(current)
        except OSError as exc:
            return f"{current} cannot be read ({exc.strerror})"
        if info.st_uid != 0:
            return f"{current} belongs to uid {info.st_uid}, not root: its owner could swap what is below it"
        if info.st_mode & 0o022 and (first or not info.st_mode & stat.S_ISVTX):
            return f"{current} is writable by others"
        first = False
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def root_only_search_path(value: str) -> str:
    """A PATH with only the folders only root could fill, by their real
    paths (as root, a command is never found where somebody else may put
    one, nor through a symlink somebody else may later point elsewhere)."""
    real = (os.path.realpath(f) for f in value.split(os.pathsep) if os.path.isabs(f))
    return os.pathsep.join(dict.fromkeys(f for f in real if root_only_folder(f)))


def own_program(name: str, default_path: str = os.defpath) -> str | None:
    """A program dagrun runs itself, found in its own PATH: as root, only in
    the folders only root could fill, and only a program only root could
    have installed (a link there may lead to anybody's file)."""
    search = os.environ.get("PATH") or default_path
    if os.geteuid() != 0:
        return shutil.which(name, path=search)
    for folder in root_only_search_path(search).split(os.pathsep):
        found = shutil.which(name, path=folder) if folder else None
        if found:
            checked = root_program(found)
            if checked:
                return checked
    return None


def root_program(path: str) -> str | None:
    """``path`` to run as root, if it leads to a program only root could
    have installed: as given when nobody else could change where it leads
    (a command keeps the name it was called by: snap's programs need it),
    else by its real path (what was checked is what runs); None if not."""
    real = os.path.realpath(path)
    if not root_owned_program(real):
        return None
    # (a ".." applies after the link before it is followed, which the check of the name reads as text)
    plain = os.path.normpath(path) == path and ".." not in path.split("/")
    return path if plain and unchangeable_by_others(path) else real


def unchangeable_by_others(path: str, _depth: int = 0) -> bool:
    """Could only root change what ``path``, as given, leads to? Each folder
    an entry of it is looked up in is root's and writable by nobody else
    (or sticky, with root's entry), the target of each symlink on the way
    too."""
    if _depth > 40 or ".." in path.split("/"):  # (as the kernel: too many levels of links; see root_program)
        return False
    folder = "/"
    parts = [p for p in os.path.abspath(path).split("/") if p]
    for i, part in enumerate(parts):
        entry = os.path.join(folder, part)
        try:
            info, found = os.stat(folder), os.lstat(entry)
        except FileNotFoundError:  # (a file still to be made: its folder is what matters)
            return i == len(parts) - 1 and root_only_folder(folder)
        except OSError:
            return False
        if info.st_uid != 0 or (info.st_mode & 0o022 and not (info.st_mode & stat.S_ISVTX and found.st_uid == 0)):
            return False
        if stat.S_ISLNK(found.st_mode):
            if not unchangeable_by_others(os.path.join(folder, os.readlink(entry)), _depth + 1):
                return False
            folder = os.path.realpath(entry)
        else:
            folder = entry
    return True


def inside_home(text: str, home: str | None, *, anywhere: bool = False) -> str:
    """The absolute path ``text`` names, refused when it leaves the home."""
    path = expand(text, home)
    if anywhere or not home:
        return path
    real_home = os.path.realpath(home)
    real = os.path.realpath(path)
    if real != real_home and not real.startswith(real_home + os.sep):
        # Where a symlink leads is not said: root resolved it through folders the tenant may not read (helper-62).
        shown = path if real == path else f"{path} (through a symlink)"
        raise PermanentError(f"{shown} is outside the workspace home {home}")
    return path


def _relative(path: str, home: str) -> list[str]:
    rel = os.path.relpath(path, home)
    if rel == "." or rel.startswith(".."):
        raise PermanentError(f"{path} is not a file inside the workspace home {home}")
    return [part for part in rel.split(os.sep) if part]


def open_folder(path: str, what: str = "the workspace home") -> int:
    """A descriptor of the folder ``path`` (absolute), opened component by
    component from ``/`` with O_NOFOLLOW."""
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in [p for p in os.path.normpath(path).split(os.sep) if p]:
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise PermanentError(f"{what} {path} goes through a symlink or a file") from None
        raise
    return fd


# A command started in /proc/self/fd/N starts in the folder the descriptor holds (the child's
# chdir happens before its descriptors are closed), however that folder's path changes meanwhile.
_BY_DESCRIPTOR = os.path.isdir("/proc/self/fd")


@contextlib.contextmanager
def working_folder(path: str, home: str | None, *, anywhere: bool = False) -> Iterator[str]:
    """``path`` as a command's working directory, checked and opened now:
    resolved, still inside the home (unless ``anywhere``), walked from ``/``
    without following a symlink, and given to the command as the descriptor
    (``/proc/self/fd/N``). A folder of the home swapped for a symlink after
    the check leads nowhere: root never enters, on the step's behalf, a
    folder the step could not reach itself (another tenant's)."""
    real = os.path.realpath(path)
    if not anywhere:
        inside_home(real, home)
    try:
        fd = open_folder(real, "the working directory")
    except (FileNotFoundError, NotADirectoryError):
        raise PermanentError(f"working directory {path} does not exist") from None
    try:
        yield f"/proc/self/fd/{fd}" if _BY_DESCRIPTOR else real
    finally:
        os.close(fd)


@contextlib.contextmanager
def _open_dir(home: str, parts: list[str], *, create: bool, mode: int = 0o755, owner: tuple[int, int] | None = None):
    """A descriptor of ``home/parts...``, walked from ``/`` without following
    a symlink anywhere (the home and every folder above it included: one
    swapped for a link after the home was checked leads nowhere)."""
    fd = open_folder(home)
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


def write_output(path: str, data: bytes, *, replace: bool, mode: int = 0o644, dir_fd: int | None = None) -> None:
    """Write a file dagrun makes outside any home (a CLI's output, a system
    file) in its folder opened once (``dir_fd``: the caller's, already open;
    as root, otherwise, a folder nobody else could point elsewhere): a new
    file of a random name, then renamed (or, not to ``replace``, linked)
    into place. Never through a link somebody else could change, which is
    replaced; the command's own streams (``/dev/stdout``) and a device or
    FIFO root (or the caller) put in a folder nobody else writes are written
    as they are; somebody else's there is refused. An existing file is
    refused with :class:`FileExistsError` unless ``replace``."""
    import secrets
    stream = _own_stream(os.path.abspath(path)) if dir_fd is None else None
    if stream is not None:  # the command's own output (/dev/stdout, /dev/fd/1...): as it is, appended to a file
        _write_all(stream, data)
        return
    folder, name = os.path.split(os.path.abspath(path))
    if dir_fd is None and os.geteuid() == 0 and not unchangeable_by_others(folder):
        # (a folder somebody else may point elsewhere would choose where root's file lands: /etc, say)
        raise PermanentError(f"{path} is in a folder somebody else could change (or lead elsewhere): as root, "
                             "dagrun writes there no file of its own")
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY) if dir_fd is None else dir_fd
    try:
        try:
            info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            info = None
        folder_info = os.fstat(fd)
        roots_folder = folder_info.st_uid in (0, os.geteuid()) and not folder_info.st_mode & 0o022
        if info is not None and stat.S_ISLNK(info.st_mode):
            if os.geteuid() != 0 or roots_folder:
                # the caller's own link, or root's: where it leads, if nobody else may change that
                if dir_fd is not None:
                    raise PermanentError(f"{path} is a symlink: not written through")
                stream = _own_stream(os.readlink(path))
                if stream is not None:  # a link to the command's own stream, as /dev/stdout is
                    _write_all(stream, data)
                    return
                real = os.path.realpath(path)
                if os.geteuid() == 0 and not unchangeable_by_others(real):
                    raise PermanentError(f"{path} leads to {real}, which somebody else could change: not written")
                return write_output(real, data, replace=replace, mode=mode)
            if not replace:
                raise FileExistsError(errno.EEXIST, "exists", path)
            info = None  # somebody else's link in a folder others may write: replaced, never followed
        if info is not None and (stat.S_ISCHR(info.st_mode) or stat.S_ISFIFO(info.st_mode)) and roots_folder \
                and info.st_uid in (0, os.geteuid()):
            # a device or a FIFO only root (or the caller) could have put there: written as it is, never blocking
            try:
                out = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
            except OSError as exc:
                raise PermanentError(f"cannot write {path}: {exc.strerror}") from None
            try:
                if os.fstat(out).st_ino != info.st_ino:
                    raise PermanentError(f"{path} changed while it was opened: not written")
                os.set_blocking(out, True)
                _write_all(out, data)
            finally:
                os.close(out)
            return
        if info is not None and (stat.S_ISCHR(info.st_mode) or stat.S_ISFIFO(info.st_mode)) and replace \
                and not roots_folder:
            info = None  # somebody else's device or FIFO in a folder others may write: replaced, never written to
        if info is not None and not stat.S_ISREG(info.st_mode):
            raise PermanentError(f"{path} is not a regular file: not written")
        if info is not None and not replace:
            raise FileExistsError(errno.EEXIST, "exists", path)
        tmp = f".{name}.{secrets.token_hex(6)}.dagrun-tmp"
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=fd)
        try:
            with os.fdopen(out, "wb") as stream:
                stream.write(data)
                os.fchmod(stream.fileno(), mode)
            if replace:
                os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)  # (a symlink at the name is replaced)
            else:
                os.link(tmp, name, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=fd)
    finally:
        if dir_fd is None:
            os.close(fd)


_OWN_STREAM = re.compile(r"/dev/(stdout|stderr)|/(?:dev|proc/self)/fd/([0-9]+)")


def _own_stream(path: str) -> int | None:
    """The descriptor ``path`` names, if it names one of the command's own."""
    found = _OWN_STREAM.fullmatch(path)
    if found is None:
        return None
    return {"stdout": 1, "stderr": 2}[found.group(1)] if found.group(1) else int(found.group(2))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_file(path: str, data: bytes, *, home: str | None, mode: int | None = None,
               anywhere: bool = False, owner: tuple[int, int] | None = None, folder_mode: int = 0o755) -> bool:
    """Write ``data`` to ``path`` atomically; True if the file did not exist.
    Inside the home (unless ``anywhere``), never through a symlink; the file
    and the folders it creates belong to ``owner`` when given."""
    if anywhere or not home:
        target = Path(path)
        existed = os.path.lexists(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_output(str(target), data, replace=True, mode=0o644 if mode is None else mode)
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
            # Non-blocking: a FIFO planted in its place would hold the opening thread forever.
            handle = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
            with os.fdopen(handle, "rb") as fh:
                if not stat.S_ISREG(os.fstat(handle).st_mode):
                    raise PermanentError(f"{path} is not a regular file: not read")
                os.set_blocking(handle, True)
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


def entries(path: str, *, home: str | None = None, strict: bool = False) -> set[str]:
    """The names in a folder (empty when it does not exist or is a symlink),
    read through a descriptor walked from the home without following symlinks.
    ``strict``: a path through a symlink, or to a file, is refused instead
    (PermanentError), for a caller judging what is there: an empty set read
    off a symlink hid what the link led to (helper-62)."""
    if not home:
        try:
            if os.path.islink(path) and strict:
                raise PermanentError(f"{path} is a symlink")
            return set(os.listdir(path)) if not os.path.islink(path) else set()
        except (FileNotFoundError, NotADirectoryError):
            if strict and os.path.lexists(path):
                raise PermanentError(f"{path} is not a folder") from None
            return set()
    try:
        parts = [] if os.path.normpath(path) == os.path.normpath(home) else _relative(path, home)
        with _open_dir(home, parts, create=False) as fd:
            return set(os.listdir(fd))
    except FileNotFoundError:
        return set()
    except (NotADirectoryError, PermanentError):
        if strict:
            raise PermanentError(f"{path} goes through a symlink or is not a folder") from None
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
