"""The workspace being provisioned, as the read-only mapping templates see.

A workspace is a mapping with at least an ``id``. An object (a SQLAlchemy
model of the provisioner, say) is read through a declared list of fields:
the well-known ones below and those the template uses; it is never walked
attribute by attribute, so its tokens and password hashes stay where they
are. The well-known fields are always present (``None`` when not given) so
the seed's ``workspace.ssh_public_key IS NULL`` works for a workspace that
has no key. Values are plain data (strings, numbers, booleans, lists and
mappings of them); anything else is read as its text.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import os
import pwd
import re
import sys
from pathlib import Path
from collections.abc import Mapping  # for isinstance: typing's alias is several times slower
from typing import Any, Iterable

from .errors import InputError, TemplateError
from .spec import FrozenDict

KNOWN_FIELDS = ("id", "name", "linux_username", "db_name", "port", "ssh_public_key", "home_dir", "host")
# What a run keeps of its workspace besides the fields its template reads.
ALWAYS_STORED = ("id", "home_dir", "linux_username", "host")


def _plain(value: Any, name: str) -> Any:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{name}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v, f"{name}[]") for v in value]
    if isinstance(value, (datetime.date, datetime.time, decimal.Decimal)):
        return str(value)
    uuid = sys.modules.get("uuid")  # a UUID exists only once its module is loaded: validate need not load it
    if uuid is not None and isinstance(value, uuid.UUID):
        return str(value)
    if hasattr(value, "__fspath__"):
        return str(value)
    raise InputError(f"workspace field {name} is a {type(value).__name__}, not plain data "
                     "(a string, number, boolean, list or mapping)")


def _read(workspace: Any, fields: Iterable[str]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name in fields:
        try:
            value = getattr(workspace, name)
        except AttributeError:
            continue
        except Exception as exc:  # a property that raises
            raise InputError(f"workspace field {name!r} could not be read: {type(exc).__name__}: {exc}") from None
        if not callable(value):
            data[name] = value
    return data


def normalize_workspace(workspace: Any, fields: Iterable[str] = ()) -> Mapping[str, Any]:
    """A read-only mapping of the workspace. ``fields``: the names the
    template reads (for a workspace given as an object)."""
    if workspace is None:
        raise InputError("a workspace is required (a mapping or object with at least an 'id')")
    if isinstance(workspace, Mapping):
        data = dict(workspace)
    else:
        data = _read(workspace, dict.fromkeys([*KNOWN_FIELDS, *(f for f in fields if f != "*")]))
    if data.get("id") in (None, ""):
        raise InputError("the workspace has no 'id'")
    from .compile.loader import check_shape
    try:  # bounded before it is copied: a value repeated a billion times is refused, not expanded
        check_shape(data, "workspace")
    except TemplateError as exc:
        raise InputError(str(exc)) from None
    data = {str(k): _plain(v, str(k)) for k, v in data.items()}
    if not isinstance(data["id"], (str, int)) or isinstance(data["id"], bool):
        raise InputError(f"the workspace id must be a string or an integer, not {data['id']!r}")
    for name in KNOWN_FIELDS:
        data.setdefault(name, None)
    if data["home_dir"] is not None:
        data["home_dir"] = str(data["home_dir"])
    host = data["host"]
    if host is not None:  # it names a machine (a Dask resource, a lock's scope): a host name, said one way
        if not isinstance(host, str) or not _HOST.match(host.strip()):
            raise InputError(f"the workspace host {str(host)[:60]!r} is not a host name (letters, digits, '.', "
                             "'-' and '_', at most 253)")
        data["host"] = host.strip().lower()
    user = data["linux_username"]
    if user is not None and not (isinstance(user, str) and _USERNAME.match(user)):
        raise InputError(f"the workspace linux_username {str(user)[:40]!r} is not a Linux user name "
                         "(lowercase letters, digits, _ and -)")
    if user is not None:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            entry = None  # created by the run (create_linux_user)
        if user == "root" or entry is not None and not is_tenant_uid(entry.pw_uid):
            raise InputError(f"the workspace user {user!r} is a system account"
                             + (f" (uid {entry.pw_uid})" if entry is not None else "")
                             + ": steps never run as one")
    return FrozenDict(data)


def is_tenant_uid(uid: int) -> bool:
    """Is ``uid`` an ordinary account's (Debian's UID_MIN to UID_MAX)? Below
    are system accounts, above ``nobody`` and the like: never a workspace's."""
    return 1000 <= uid <= 60000


_SAFE_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
# What slug() appends (and appended before it took 128 bits): an id that looks like it gets one too.
_HASHED = re.compile(r"-(?:[0-9a-f]{10}|[0-9a-f]{32})\Z")
_USERNAME = re.compile(r"\A[a-z_][a-z0-9_-]{0,31}\$?\Z")
_HOST = re.compile(r"\A[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?\Z")


def slug(workspace_id: Any) -> str:
    """A folder name for a workspace id: the id itself when it is a plain
    name, otherwise its safe characters and a hash (never a path: no ``/``,
    no ``..``, and two ids never share a folder: the hash has 128 bits, as
    it also marks the workspace's Linux accounts and PostgreSQL roles, and
    40 could be matched on purpose)."""
    text = str(workspace_id)
    if _SAFE_ID.match(text) and ".." not in text and not _HASHED.search(text):
        return text
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")[:40] or "workspace"
    return f"{safe}-{hashlib.sha256(text.encode()).hexdigest()[:32]}"


def default_home(workspace: Mapping[str, Any], root: Path | None = None) -> str:
    """Where a workspace given without ``home_dir`` lives: its Linux user's
    home when dagrun is root and it names one, else a folder of dagrun's data
    (never the caller's own home by surprise)."""
    user = workspace.get("linux_username")
    if user and os.geteuid() == 0:
        try:
            return pwd.getpwnam(str(user)).pw_dir
        except KeyError:
            return f"/home/{user}"  # where create_linux_user (useradd) will make it
    from .locations import workspaces_dir
    return str((root or workspaces_dir()) / slug(workspace["id"]))


def cli_workspace(fields: Mapping[str, Any], home: str | None = None) -> dict[str, Any]:
    """A workspace typed on the command line: ``id`` "local" unless given;
    the home from ``home`` (``--home``) or the fields, else the Linux user's
    (as root, when one is named), else ``./dagrun-workspaces/<id>`` in the
    current folder, never the caller's own home by surprise."""
    workspace = dict(fields)
    workspace.setdefault("id", "local")
    if home:
        workspace["home_dir"] = home
    if not workspace.get("home_dir") and not (workspace.get("linux_username") and os.geteuid() == 0):
        workspace["home_dir"] = str(Path("dagrun-workspaces") / slug(workspace["id"]))
    if workspace.get("home_dir"):
        workspace["home_dir"] = str(Path(os.path.expanduser(str(workspace["home_dir"]))).absolute())
    return workspace


HOME_ROOTS_ENV = "DAGRUN_WORKSPACE_ROOTS"
_HOME_PATH = re.compile(r"/[A-Za-z0-9._/@+=,:-]*")


def home_roots(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The folders workspace homes may live in when dagrun runs as root:
    ``$DAGRUN_WORKSPACE_ROOTS`` (``:``-separated), else ``/home`` and
    ``/srv/workspaces``; and dagrun's own workspaces folder; plus ``extra``."""
    from .locations import workspaces_dir
    configured = os.environ.get(HOME_ROOTS_ENV)
    roots = configured.split(os.pathsep) if configured else ["/home", "/srv/workspaces"]
    # dagrun's own workspaces folder is always one: it is where a workspace without a home_dir lives
    return tuple(os.path.realpath(r) for r in [*roots, str(workspaces_dir()), *extra] if r and os.path.isabs(r))


def resolved_path(path: str) -> str:
    """``path`` with its existing part's symlinks resolved."""
    existing, rest = path, []
    while not os.path.lexists(existing) and os.path.dirname(existing) != existing:
        existing, name = os.path.dirname(existing), os.path.basename(existing)
        rest.insert(0, name)
    try:
        return os.path.join(os.path.realpath(existing, strict=False), *rest)
    except OSError as exc:  # e.g. /proc/1/root: a link the kernel will not read out
        raise InputError(f"the workspace home_dir {path} cannot be resolved: {exc.strerror or exc}") from None


def check_home_root(home: str, roots: Iterable[str], owner: int | None = None) -> str:
    """A home chosen by whoever fills in a workspace (a web form) is data: as
    root, dagrun works only in homes strictly inside the allowed roots, after
    symlinks (never ``/root``, ``/etc`` or a root itself), below folders only
    root can change, and in a home that is root's or the workspace user's
    (``owner``), never another tenant's. Returns the home after symlinks."""
    from .run.paths import home_ancestry_problem
    real = resolved_path(home)
    system = _system_folder(real)
    if system:  # whoever allowed it, even the operator typing it (the CLI allows the parent of what it is given)
        after = f" (after symlinks, {real})" if real != os.path.normpath(home) else ""
        raise InputError(f"the workspace home_dir {home}{after} is {system}: a run as root would write its files "
                         "there")
    roots = tuple(roots)
    inside = [root for root in roots if real.startswith(root.rstrip(os.sep) + os.sep) and real != root]
    if not inside:
        raise InputError(f"the workspace home_dir {home} is outside the folders workspaces may live in "
                         f"({', '.join(roots) or 'none'}): set {HOME_ROOTS_ENV} (or home_roots=) to allow another")
    problem = home_ancestry_problem(real, max(inside, key=len), owner)
    if problem:
        raise InputError(problem)
    return real


# The system's own folders: no workspace lives in them. (Top-level folders that hold homes, such as
# /home, /srv, /opt, /var and /root, may hold one below them, never be one.)
_SYSTEM_TREES = ("/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/proc", "/sys",
                 "/dev", "/run", "/var/lib", "/var/log", "/var/spool", "/var/cache", "/var/run", "/var/backups",
                 "/var/mail")


def _system_folder(real: str) -> str | None:
    for tree in _SYSTEM_TREES:
        if real == tree or real.startswith(tree + "/"):
            return f"in {tree}, a system folder" if real != tree else "a system folder"
    if real == "/" or os.path.dirname(real) == "/":  # (/root too: a workspace there writes root's ~/.ssh)
        return "the file system's root or a folder at its top"
    return None


def home_root(home: str, roots: Iterable[str]) -> str | None:
    """The allowed root ``home`` is inside (the deepest), if any."""
    real = resolved_path(home)
    inside = [root for root in roots if real.startswith(root.rstrip(os.sep) + os.sep) and real != root]
    return max(inside, key=len) if inside else None


def with_home(workspace: Mapping[str, Any], root: Path | None = None,
              roots: Iterable[str] | None = None) -> Mapping[str, Any]:
    """The workspace with an absolute, normalized ``home_dir``; as root, one
    inside the allowed roots (:func:`home_roots`, or ``roots``)."""
    home = workspace.get("home_dir")
    given = home is not None and home != ""
    if not given:
        home = default_home(workspace, root)  # (in the caller's folder: whatever its name, it is the caller's)
    elif not os.path.isabs(str(home)):
        raise InputError(f"the workspace home_dir must be an absolute path, not {home!r}")
    home = os.path.normpath(str(home))
    if given and not _HOME_PATH.fullmatch(home):
        raise InputError(f"the workspace home_dir {home[:80]!r} may hold only letters, digits and . _ - / @ + = , : "
                         "(scripts read $HOME, often unquoted or inside sh -c \"...\")")
    if len(home.encode()) > 1024 or any(len(part.encode()) > 255 for part in home.split("/")):
        raise InputError(f"the workspace home_dir {home[:80]!r}... is too long (at most 1024 bytes, 255 in a "
                         "folder's name)")
    if os.geteuid() == 0:
        owner = None
        if workspace.get("linux_username"):
            try:
                owner = pwd.getpwnam(str(workspace["linux_username"])).pw_uid
            except KeyError:
                owner = None  # made by the run: until then the home is root's or missing
        # checked after symlinks, used after symlinks: a link swapped later leads nowhere
        home = check_home_root(home, home_roots() if roots is None else roots, owner)
    return FrozenDict({**workspace, "home_dir": home})


def stored_fields(workspace: Mapping[str, Any], used: Iterable[str]) -> dict[str, Any]:
    """What a run record keeps of the workspace: the fields its template
    reads (all of them when it reads the whole workspace) and the few a
    resume needs."""
    used = set(used)
    if "*" in used:
        return dict(workspace)
    return {k: v for k, v in workspace.items() if k in used or k in ALWAYS_STORED}
