"""As whom, and inside what, a step's processes run.

Three independent restrictions, decided per step when an attempt starts:

- **run as the workspace user**: when dagrun runs as root and the workspace
  names a ``linux_username``, every command of a step that is not
  ``requires_sudo`` (and not ``run_as: root``) runs as that user: uid, gid,
  supplementary groups, ``HOME`` = the workspace home. The switch happens in
  the command's process with ``setpriv``, after it joined its process tree's
  cgroup (only root may place it there);
- **a sandbox** (bubblewrap) for user-defined actions, and for steps that ask
  (``sandbox: true``): the system read-only, secrets of ``/etc`` hidden,
  other homes and dagrun's data invisible, the workspace home and a private
  ``/tmp`` writable, its own PID namespace, and no network unless the action
  ``requires_network`` (then the host's; without it, a loopback of its own);
- **limits** from the action's ``limits:``, through ``prlimit`` (address
  space, file size, open files) and a pids cgroup for the number of
  processes (``RLIMIT_NPROC`` when no cgroup can be made: it counts per user).

:meth:`Isolation.wrap` turns a command line into the one that applies them;
every command a handler starts goes through it (``StepContext.run``).
"""

from __future__ import annotations

import contextlib
import functools
import grp
import os
import pwd
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PermanentError
from ..spec import Limits
from ..workspace import is_tenant_uid

STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What a sandboxed step sees of /etc: what programs need to run, resolve names
# and check certificates; nothing else (no shadow, sudoers, ssh host keys,
# private keys, service configuration).
ETC_VISIBLE = ("passwd", "group", "hosts", "hostname", "resolv.conf", "nsswitch.conf", "host.conf", "localtime",
               "timezone", "ssl/certs", "ca-certificates", "ca-certificates.conf", "alternatives", "ld.so.cache",
               "ld.so.conf", "ld.so.conf.d", "mime.types", "protocols", "services", "os-release",
               "debian_version", "lsb-release", "bash.bashrc", "profile", "environment", "inputrc", "locale.alias",
               "locale.gen", "default/locale", "gitconfig", "pip.conf", "python3", "python3.11", "npmrc", "magic",
               "mailcap", "papersize", "shells", "login.defs", "terminfo")


SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # where the tools dagrun runs as root come from


@functools.cache
def system_program(name: str) -> str | None:
    """A system tool by absolute path, never looked up in a step's PATH
    (the step's environment is the template's and may name its home)."""
    return shutil.which(name, path=SYSTEM_PATH)


def bwrap() -> str | None:
    return system_program("bwrap")


@dataclass(frozen=True, slots=True)
class User:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str

    @classmethod
    def lookup(cls, name: str) -> "User":
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise PermanentError(f"the workspace user {name!r} does not exist: create it first (create_linux_user), "
                                 "or run the step as root (run_as: root)") from None
        if not is_tenant_uid(entry.pw_uid) or name == "root":
            raise PermanentError(f"the workspace user {name!r} is a system account (uid {entry.pw_uid}): "
                                 "steps never run as one")
        groups = tuple(sorted({g.gr_gid for g in grp.getgrall() if name in g.gr_mem} | {entry.pw_gid}))
        return cls(name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)


@dataclass(frozen=True, slots=True)
class Isolation:
    """How one step's commands run. The default runs them as dagrun does."""

    user: User | None = None
    sandbox: bool = False
    network: bool = True
    limits: Limits | None = None
    home: str | None = None
    readable: tuple[str, ...] = field(default=())  # extra paths a sandbox may read (the Python worker's)
    writable: tuple[str, ...] = field(default=())  # extra paths a sandbox may write (a script's result file)
    pids_cgroup: bool = False  # the process tree limits the number of processes

    @property
    def restricted(self) -> bool:
        return self.user is not None or self.sandbox or self.limits is not None

    def environment(self, env: dict[str, str]) -> dict[str, str]:
        """A command's environment as the workspace user: their names, and a
        PATH of the folders they can reach (dagrun's own may be private)."""
        if self.user is None:
            return env
        path = ":".join(p for p in env.get("PATH", STANDARD_PATH).split(":") if p and reachable(p, self.user))
        return {**env, "USER": self.user.name, "LOGNAME": self.user.name, "PATH": path or STANDARD_PATH}

    def wrap(self, argv: list[str]) -> list[str]:
        """The command line that runs ``argv`` under this isolation. In a
        sandbox, bubblewrap runs first (as dagrun: it may show the step
        read-only paths its user could not reach, such as dagrun's own
        Python under a private folder) and the user switch happens inside."""
        prefix: list[str] = []
        if self.sandbox:
            prefix += self._bwrap()
        if self.user is not None:
            prefix += [_required("setpriv"), f"--reuid={self.user.uid}", f"--regid={self.user.gid}",
                       "--groups=" + ",".join(map(str, self.user.groups)), "--inh-caps=-all",
                       "--bounding-set=-all", "--no-new-privs", "--"]
        limits = self.limits
        if limits is not None:
            rl = [_required("prlimit")]
            if limits.memory_mb:
                rl.append(f"--as={limits.memory_mb * 1024 * 1024}")
            if limits.file_size_mb:
                rl.append(f"--fsize={limits.file_size_mb * 1024 * 1024}")
            if limits.open_files:
                rl.append(f"--nofile={limits.open_files}")
            if limits.processes and self.user is not None and not self.pids_cgroup:
                rl.append(f"--nproc={limits.processes}")  # counts per user: the fallback of a pids cgroup
            if len(rl) > 1:
                prefix += [*rl, "--"]
        return prefix + argv

    def _bwrap(self) -> list[str]:
        program = bwrap()
        if program is None:
            raise PermanentError("this step runs in a sandbox, but bubblewrap (bwrap) is not installed: "
                                 "apt-get install bubblewrap, or run it with sandbox: false / --no-sandbox")
        args = [program, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                "--unshare-cgroup-try"]
        if not self.network:
            args.append("--unshare-net")
        args += ["--ro-bind", "/usr", "/usr"]
        for link in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            if os.path.islink(link):
                args += ["--symlink", os.readlink(link), link]
            elif os.path.isdir(link):
                args += ["--ro-bind", link, link]
        args += ["--tmpfs", "/etc"]
        for name in ETC_VISIBLE:
            path = os.path.join("/etc", name)
            if os.path.exists(path):
                args += ["--ro-bind", path, path]
        args += ["--remount-ro", "/etc"]
        args += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/run"]
        made: set[str] = set()

        def folders_to(path: str) -> list[str]:
            # Folders above a mount point are made traversable (bubblewrap, as root, would make them 0700).
            out = []
            for folder in reversed(Path(path).parents):
                name = str(folder)
                if name != "/" and name not in made and not name.startswith(("/usr/", "/etc/", "/proc/", "/dev/")):
                    made.add(name)
                    out += ["--perms", "0755", "--dir", name]
            return out

        for path in self.readable:  # after the /tmp and /run tmpfs, which would hide them
            if os.path.exists(path):
                args += [*folders_to(path), "--ro-bind", path, path]
        for path in self.writable:
            if os.path.exists(path):
                args += [*folders_to(path), "--bind", path, path]
        if self.home:
            args += [*folders_to(self.home), "--bind", self.home, self.home]
        args += ["--remount-ro", "/"]  # the sandbox's own root too: only the home and /tmp are writable
        if self.user is None and os.geteuid() == 0:
            args += ["--cap-drop", "ALL"]
        return [*args, "--"]


def _required(name: str) -> str:
    found = system_program(name)
    if found is None:
        raise PermanentError(f"{name} is not installed in {SYSTEM_PATH} (util-linux)")
    return found


def reachable(path: str, user: User) -> bool:
    """Can ``user`` traverse every folder down to ``path``?"""
    current = os.path.abspath(path)
    while True:
        try:
            info = os.stat(current)
        except OSError:
            return False
        if info.st_uid == user.uid:
            allowed = info.st_mode & 0o100
        elif info.st_gid in user.groups:
            allowed = info.st_mode & 0o010
        else:
            allowed = info.st_mode & 0o001
        if not allowed:
            return False
        parent = os.path.dirname(current)
        if parent == current:
            return True
        current = parent


def python_paths() -> tuple[str, ...]:
    """What a sandboxed Python worker must be able to read: the interpreter
    and the folders its modules come from."""
    import dagrun
    from ..compile.loader import package_dir
    interpreter = {sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))}

    def of_interpreter(path: str) -> bool:  # its standard library and installed packages
        return any(path == q or path.startswith(q + os.sep) for q in interpreter)

    found = interpreter | {p for p in sys.path if p and os.path.isdir(p)}
    # The interpreter is shown wherever it is (below a private folder: the sandbox makes the folders
    # above it enterable), unless it is itself private (0700: the step's user could not read it
    # through the bind either). Any other folder of the path (the host application's own, with its
    # settings) only if every user could reach it outside the sandbox too.
    shown = {p for p in found if (_enterable(p) if of_interpreter(p) else _reachable_by_others(p))}
    # dagrun's own packages, wherever they are (an editable install keeps them in its checkout)
    shown |= {os.path.dirname(os.path.realpath(dagrun.__file__)),
              *(str(package_dir(name)) for name in ("handlers", "schema", "seeds"))}
    return tuple(sorted(p for p in shown if not any(p.startswith(q + os.sep) for q in shown if q != p)))


def _enterable(path: str) -> bool:
    try:
        return bool(os.stat(path).st_mode & 0o001)
    except OSError:
        return False


def _reachable_by_others(path: str) -> bool:
    """Could any user enter ``path`` (it and every folder above it searchable by others)?"""
    current = os.path.realpath(path)
    while True:
        if not _enterable(current):
            return False
        parent = os.path.dirname(current)
        if parent == current:
            return True
        current = parent


def sandbox_available() -> bool:
    return bwrap() is not None


def home_owner(home: str | None, user: User | None) -> tuple[int, int] | None:
    """Who files written for the step should belong to."""
    if user is not None:
        return (user.uid, user.gid)
    return None


def ensure_home(home: str, user: User | None) -> None:
    """Create the workspace home if it is missing, owned by the user whose
    steps use it (so their steps can write in it)."""
    path = Path(home)
    if path.is_dir():
        return
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    from .paths import open_folder
    parent = open_folder(str(path.parent))
    try:  # made and handed over through the parent's descriptor: no path a swap could redirect
        with contextlib.suppress(FileExistsError):  # steps that start together make it once
            # Never readable by other users: a root workspace's home only root's, a user's its group's too.
            os.mkdir(path.name, (0o700 if os.geteuid() == 0 else 0o755) if user is None else 0o750, dir_fd=parent)
        if user is not None and os.geteuid() == 0:
            fd = os.open(path.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
            try:
                os.fchown(fd, user.uid, user.gid)
            finally:
                os.close(fd)
    finally:
        os.close(parent)
