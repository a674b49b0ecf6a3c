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
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping

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
    if isinstance(value, (datetime.date, datetime.time, decimal.Decimal, uuid.UUID)):
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
    data = {str(k): _plain(v, str(k)) for k, v in data.items()}
    if not isinstance(data["id"], (str, int)) or isinstance(data["id"], bool):
        raise InputError(f"the workspace id must be a string or an integer, not {data['id']!r}")
    from .compile.loader import check_shape
    try:
        check_shape(data, "workspace")
    except TemplateError as exc:
        raise InputError(str(exc)) from None
    for name in KNOWN_FIELDS:
        data.setdefault(name, None)
    if data["home_dir"] is not None:
        data["home_dir"] = str(data["home_dir"])
    user = data["linux_username"]
    if user is not None and not (isinstance(user, str) and _USERNAME.match(user)):
        raise InputError(f"the workspace linux_username {str(user)[:40]!r} is not a Linux user name "
                         "(lowercase letters, digits, _ and -)")
    return FrozenDict(data)


_SAFE_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_HASHED = re.compile(r"-[0-9a-f]{10}\Z")  # what slug() appends: an id that looks like it gets one too
_USERNAME = re.compile(r"\A[a-z_][a-z0-9_-]{0,31}\$?\Z")


def slug(workspace_id: Any) -> str:
    """A folder name for a workspace id: the id itself when it is a plain
    name, otherwise its safe characters and a hash (never a path: no ``/``,
    no ``..``, and two ids never share a folder)."""
    text = str(workspace_id)
    if _SAFE_ID.match(text) and ".." not in text and not _HASHED.search(text):
        return text
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")[:40] or "workspace"
    return f"{safe}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


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


def with_home(workspace: Mapping[str, Any], root: Path | None = None) -> Mapping[str, Any]:
    """The workspace with an absolute, normalized ``home_dir``."""
    home = workspace.get("home_dir")
    if home is None or home == "":
        home = default_home(workspace, root)
    elif not os.path.isabs(str(home)):
        raise InputError(f"the workspace home_dir must be an absolute path, not {home!r}")
    return FrozenDict({**workspace, "home_dir": os.path.normpath(str(home))})


def stored_fields(workspace: Mapping[str, Any], used: Iterable[str]) -> dict[str, Any]:
    """What a run record keeps of the workspace: the fields its template
    reads (all of them when it reads the whole workspace) and the few a
    resume needs."""
    used = set(used)
    if "*" in used:
        return dict(workspace)
    return {k: v for k, v in workspace.items() if k in used or k in ALWAYS_STORED}
