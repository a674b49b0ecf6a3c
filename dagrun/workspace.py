"""The workspace being provisioned, as the read-only mapping templates see.

A workspace may be any mapping or object with at least an ``id``. The
well-known fields are always present (``None`` when not given) so the seed's
``workspace.ssh_public_key IS NULL`` works for a workspace that has no key.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

from .errors import InputError

KNOWN_FIELDS = ("id", "name", "linux_username", "db_name", "port", "ssh_public_key", "home_dir")


def normalize_workspace(workspace: Any) -> Mapping[str, Any]:
    if workspace is None:
        raise InputError("a workspace is required (a mapping or object with at least an 'id')")
    if isinstance(workspace, Mapping):
        data = dict(workspace)
    else:
        data = {k: getattr(workspace, k) for k in dir(workspace)
                if not k.startswith("_") and not callable(getattr(workspace, k, None))}
    if data.get("id") in (None, ""):
        raise InputError("the workspace has no 'id'")
    for name in KNOWN_FIELDS:
        data.setdefault(name, None)
    if data["home_dir"] is not None:
        data["home_dir"] = str(data["home_dir"])
    return MappingProxyType(data)
